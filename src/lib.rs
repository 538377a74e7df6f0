//! notify: a real-time notification service.
//!
//! - `proto`: the generated `notify.v1` gRPC types (from `proto/`).
//! - `core`: `notify core`, the gRPC service that stores notifications and
//!   streams them live (store in the `notify-store` crate).
//! - `bridge`: `notify bridge`, Socket.IO for browsers, fed by the core.
//! - `codec`: prost's gRPC codec, with undecodable requests as INVALID_ARGUMENT.
//! - `telemetry`: logging and the Prometheus recorder.
//! - `shutdown`: SIGINT/SIGTERM as one future.
//!
//! `main.rs` only parses the command line and calls into these.

pub mod bridge;
pub mod codec;
pub mod core;
pub mod shutdown;
pub mod telemetry;

/// Generated from `proto/notify/v1/notify.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("notify.v1");

    /// The encoded descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/notify_descriptor.bin"));
}
