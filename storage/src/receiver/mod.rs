//! Receivers: OTLP over gRPC (the three `Export` services) and HTTP (`/v1/logs`, `/v1/metrics`,
//! `/v1/traces`), and Prometheus remote write 1.0 (`/api/v1/write`), all feeding
//! [`crate::Store::ingest`].

mod grpc;
mod http;
mod remote_write;

pub use grpc::grpc_routes;
pub use http::http_router;
pub use remote_write::{MAX_COMPRESSED_BYTES, MAX_DECOMPRESSED_BYTES, RemoteWriteError, remote_write_router};

use crate::schema::Signal;

pub(crate) fn transport_label(signal: Signal, transport: &'static str, outcome: &'static str) -> [&'static str; 3] {
    [signal.table_name(), transport, outcome]
}
