//! The store's side of the generator: spans are shown to it once they are durable, off the
//! ingest path, and every `collection_interval_secs` its series are written to the metrics
//! table the way remote write writes them, so PromQL reads them like any other series.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge, Registry};

use super::{SpanMetricsConfig, SpanMetricsGenerator};
use crate::error::{Error, Result};
use crate::receiver::prometheus_to_otlp;

pub(crate) struct SpanMetricsRecorder {
    generator: Arc<Mutex<SpanMetricsGenerator>>,
    interval: Duration,
    series: IntGauge,
    pending_edges: IntGauge,
    dropped_series: IntCounter,
}

fn now_ms() -> i64 {
    crate::store::now_ns() / 1_000_000
}

impl SpanMetricsRecorder {
    /// `None` when span metrics are turned off.
    pub(crate) fn new(config: &SpanMetricsConfig, registry: &Registry) -> Result<Option<SpanMetricsRecorder>> {
        if !config.enabled {
            return Ok(None);
        }
        let register = |collector: Box<dyn prometheus::core::Collector>| {
            registry.register(collector).map_err(|e| Error::Internal(format!("registering a metric: {e}")))
        };
        let define = |e: prometheus::Error| Error::Internal(format!("defining a metric: {e}"));
        let series = IntGauge::new("wake_server_span_metrics_series", "Label sets held by the span metrics generator")
            .map_err(define)?;
        let pending_edges = IntGauge::new(
            "wake_server_service_graph_pending_edges",
            "Client or server spans waiting for their peer span to form a service graph edge",
        )
        .map_err(define)?;
        let dropped_series = IntCounter::new(
            "wake_server_span_metrics_dropped_series_total",
            "Span metrics updates dropped because span_metrics.max_series label sets were held",
        )
        .map_err(define)?;
        register(Box::new(series.clone()))?;
        register(Box::new(pending_edges.clone()))?;
        register(Box::new(dropped_series.clone()))?;
        Ok(Some(SpanMetricsRecorder {
            generator: Arc::new(Mutex::new(SpanMetricsGenerator::new(config.clone()))),
            interval: Duration::from_secs(config.collection_interval_secs),
            series,
            pending_edges,
            dropped_series,
        }))
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Folds the spans of an acknowledged request into the metrics on a blocking thread, so
    /// that the acknowledgement does not wait for it.
    pub(crate) fn observe(&self, request: ExportTraceServiceRequest) {
        let generator = self.generator.clone();
        tokio::task::spawn_blocking(move || generator.lock().observe(&request, now_ms()));
    }

    /// The series as of now, as an OTLP metrics request; `None` when there is nothing to write.
    pub(crate) async fn collect(&self) -> Result<Option<ExportMetricsServiceRequest>> {
        let generator = self.generator.clone();
        let (write, series, pending, dropped) = tokio::task::spawn_blocking(move || {
            let mut generator = generator.lock();
            let write = generator.collect(now_ms());
            (write, generator.series_count(), generator.pending_edges(), generator.dropped_series())
        })
        .await
        .map_err(|e| Error::Internal(format!("span metrics task failed: {e}")))?;
        self.series.set(i64::try_from(series).unwrap_or(i64::MAX));
        self.pending_edges.set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.dropped_series.inc_by(dropped.saturating_sub(self.dropped_series.get()));
        if write.timeseries.is_empty() {
            return Ok(None);
        }
        let request = prometheus_to_otlp(write).map_err(|e| Error::Internal(format!("span metrics: {e}")))?;
        Ok(Some(request))
    }
}
