//! notify: a real-time notification service.
//!
//! - `contract`: what both edges share: the generated `notify.v1` types,
//!   their codec, request validation, Struct ⇄ JSON and pagination.
//! - `core`: `notify core`, the gRPC service that stores notifications and
//!   streams them live (store in the `notify-store` crate).
//! - `bridge`: `notify bridge`, Socket.IO for browsers, fed by the core.
//! - `telemetry`: logging and the Prometheus recorder.
//! - `shutdown`: SIGINT/SIGTERM as one future.
//!
//! `main.rs` only parses the command line and calls into these.

pub mod bridge;
pub mod contract;
pub mod core;
pub mod shutdown;
pub mod telemetry;
