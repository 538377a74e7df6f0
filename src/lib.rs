//! notify
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("notify.v1");
}
