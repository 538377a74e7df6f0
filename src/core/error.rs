//! What can go wrong inside the core, whatever edge asked. The gRPC
//! adapter (`service`) is the one place these become status codes.

use notify_store::StoreError;

use crate::contract::validate::FieldError;

/// Why a core verb failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CoreError {
    /// The store could not do it (unavailable, shutting down, corrupt).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the command names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A field of the command names something the stored data does not
    /// have (an action the notification lacks).
    #[error("{0}")]
    Invalid(FieldError),
    /// The command cannot apply to the data as it is now (an action taken
    /// already), and never will.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bug: something the core relies on did not hold.
    #[error("{0}")]
    Internal(String),
}
