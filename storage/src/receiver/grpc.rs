//! OTLP/gRPC: the collector services of opentelemetry-proto, mapped onto the store.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::warn;

use super::transport_label;
use crate::error::{Error, ErrorClass};
use crate::store::{IngestOutcome, OtlpRequest, Store};

#[derive(Clone)]
struct Receiver {
    store: Arc<Store>,
}

/// OTLP/gRPC: UNAVAILABLE with RetryInfo is the spec's back-pressure signal; INVALID_ARGUMENT
/// is never retried.
fn to_status(error: &Error) -> Status {
    match error.class() {
        ErrorClass::BadRequest => Status::invalid_argument(error.to_string()),
        ErrorClass::TooLarge => Status::resource_exhausted(error.to_string()),
        ErrorClass::UnsupportedMediaType => Status::invalid_argument(error.to_string()),
        ErrorClass::Unavailable => Status::with_error_details(
            Code::Unavailable,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(error.retry_after_secs()))),
        ),
        ErrorClass::Internal => Status::internal(error.to_string()),
    }
}

impl Receiver {
    async fn export(&self, request: OtlpRequest) -> Result<IngestOutcome, Status> {
        let signal = request.signal();
        match self.store.ingest(request, None).await {
            Ok(outcome) => {
                self.store.metrics().requests.with_label_values(&transport_label(signal, "grpc", "ok")).inc();
                Ok(outcome)
            }
            Err(error) => {
                let outcome = if error.class() == ErrorClass::Unavailable { "unavailable" } else { "error" };
                self.store.metrics().requests.with_label_values(&transport_label(signal, "grpc", outcome)).inc();
                warn!(%signal, %error, transport = "grpc", "export refused");
                Err(to_status(&error))
            }
        }
    }
}

fn rejected(outcome: &IngestOutcome) -> Option<(i64, String)> {
    (outcome.rejected > 0).then(|| (outcome.rejected as i64, outcome.error_message.clone()))
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let outcome = Receiver::export(self, OtlpRequest::Logs(request.into_inner())).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: rejected(&outcome).map(|(rejected_log_records, error_message)| ExportLogsPartialSuccess {
                rejected_log_records,
                error_message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let outcome = Receiver::export(self, OtlpRequest::Metrics(request.into_inner())).await?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: rejected(&outcome).map(|(rejected_data_points, error_message)| {
                ExportMetricsPartialSuccess { rejected_data_points, error_message }
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let outcome = Receiver::export(self, OtlpRequest::Traces(request.into_inner())).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: rejected(&outcome)
                .map(|(rejected_spans, error_message)| ExportTracePartialSuccess { rejected_spans, error_message }),
        }))
    }
}

/// The three OTLP services, ready for `tonic::transport::Server::add_routes` or axum.
pub fn grpc_routes(store: Arc<Store>) -> tonic::service::Routes {
    let limit = store.config().max_request_bytes;
    let receiver = Receiver { store };
    let mut builder = tonic::service::Routes::builder();
    builder
        .add_service(
            LogsServiceServer::new(receiver.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(receiver.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            TraceServiceServer::new(receiver)
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip),
        );
    builder.routes()
}
