//! The collector's listeners. Each one decodes its protocol and calls [`crate::ingest::Ingest`].

pub mod connections;
pub mod grpc;
pub mod http;
pub mod xray_udp;
