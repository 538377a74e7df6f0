//! What every test and benchmark needs to run notify for real, written once:
//!
//! - `process`: a child process that printed its ready line
//!   (`notify core ready grpc=… metrics=…`), with its `key=value` fields,
//!   killed when dropped.
//! - `postgres`: the test PostgreSQL server (`NOTIFY_TEST_POSTGRES_URL`, which
//!   `scripts/test` starts), throwaway databases on it, and servers of a
//!   test's own (`scripts/postgres`) for tests that restart them.
//! - `nats`: a throwaway `nats-server` on a free loopback port.
//! - `core` (feature `grpc`): `notify core` on ephemeral loopback ports, its
//!   command line stated once, and gRPC clients for it.
//! - `requests` (feature `grpc`): typed requests and Struct ⇄ JSON.

#[cfg(feature = "grpc")]
pub mod core;
pub mod nats;
pub mod postgres;
pub mod process;
#[cfg(feature = "grpc")]
pub mod requests;

pub use process::Process;

/// The workspace's root directory (where `scripts/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
