//! The contract both edges share: what the core's gRPC service and the
//! bridge's Socket.IO events agree on, so neither reaches into the other.
//!
//! - `proto`: the generated `notify.v1` types (from `proto/`).
//! - `codec`: prost's gRPC codec, with undecodable requests as INVALID_ARGUMENT.
//! - `validate`: request checks that name the offending field.
//! - `convert`: Struct ⇄ stored JSON, store values ⇄ proto messages.
//! - `paging`: page numbers for a count of records.

pub mod codec;
pub mod convert;
pub mod paging;
pub mod validate;

/// Generated from `proto/notify/v1/notify.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("notify.v1");

    /// The encoded descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/notify_descriptor.bin"));
}
