//! Tidewater's own protobuf messages. OTLP comes from `opentelemetry-proto`, not from here.

pub mod bus {
    pub mod v1 {
        tonic::include_proto!("tidewater.bus.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("tidewater.events.v1");
    }
}

pub mod depth;
pub mod json;

pub use bus::v1::{Compression, Encoding, Envelope, Signal};

impl Signal {
    /// The lowercase name used in metrics labels, file names and config.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Unspecified => "unspecified",
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Events => "events",
            Signal::XraySegments => "xray",
        }
    }
}
