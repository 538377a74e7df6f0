//! What can go wrong inside the core, whatever edge asked. The gRPC
//! adapter (`service`) is the one place these become status codes.

use notify_store::StoreError;

/// Why a core verb failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CoreError {
    /// The store could not do it (unavailable, shutting down, corrupt).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the command names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A bug: something the core relies on did not hold.
    #[error("{0}")]
    Internal(String),
}
