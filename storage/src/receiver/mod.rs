//! OTLP receivers: gRPC (the three `Export` services) and HTTP (`/v1/logs`, `/v1/metrics`,
//! `/v1/traces`), both feeding [`crate::Store::ingest`].

mod grpc;
mod http;

pub use grpc::grpc_routes;
pub use http::http_router;

use crate::schema::Signal;

pub(crate) fn transport_label(signal: Signal, transport: &'static str, outcome: &'static str) -> [&'static str; 3] {
    [signal.table_name(), transport, outcome]
}
