//! The agent's OTLP exporter: sends log and metric batches to the store over gRPC or HTTP/protobuf
//! and reports back only once the store acknowledged them, because the caller checkpoints file
//! offsets on `Ok` and anything checkpointed is never read again.
//!
//! # Retry policy
//!
//! As the OTLP specification prescribes ("Retryable response codes", "Throttling"):
//!
//! - gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retried;
//!   RESOURCE_EXHAUSTED only when the status carries a `google.rpc.RetryInfo` (the server promises
//!   that capacity comes back). Errors raised by the client itself (connection refused or reset,
//!   HTTP/2 failures) are retried whatever code tonic gave them. Every other code is permanent.
//! - HTTP: 429, 502, 503, 504 and transport errors are retried; any 2xx is an acknowledgement; every
//!   other status (400, 413, 415, ...) is permanent.
//! - An attempt that gets no answer within `ExportConfig::timeout` is retried, over a new connection,
//!   since a silently dead peer would otherwise stall every later attempt on the same connection.
//!
//! A delay given by the server (`RetryInfo.retry_delay`, `Retry-After` in seconds or as an HTTP date)
//! is used as it is, capped at five minutes. Otherwise the delay is exponential backoff with *equal
//! jitter*: for the n-th retry (n from 0) `d = min(max_backoff, initial_backoff * 2^n)` and the delay
//! is uniformly random in `[d/2, d]`, which spreads agents that failed together without ever
//! retrying almost immediately.
//!
//! Retries are unbounded: delivery is at-least-once and the log files are the buffer, so giving up
//! would only lose data. Each retry is logged at warn and counted. Shutdown (the `cancel` watch turning
//! `true`) interrupts the wait between attempts; an attempt already in flight is allowed to finish
//! (it is bounded by the timeout) so that a batch the store is accepting right now gets checkpointed.
//! Giving up loses nothing: the data was not checkpointed and is read again after the restart.
//!
//! Compression: with `ExportConfig::gzip` set, request bodies are gzipped at
//! `ExportConfig::gzip_level` (1 by default, the fastest: on the agent's requests of Loghub
//! lines, flate2's zlib-rs backend in a release build does 751 MiB/s there against 176 MiB/s at
//! zlib's default 6, for 16.3 % against 10.9 % of the size) once per request, off the runtime's
//! threads, and every retry sends the same bytes. gRPC messages use gRPC's gzip encoding
//! (`grpc-encoding: gzip`), HTTP bodies `Content-Encoding: gzip`. tonic's generated client
//! would compress at a fixed level 6 on every attempt, so unary gRPC calls are made here on
//! tonic's channel directly: the length-prefixed message, the `grpc-status` in the trailers (or
//! in the headers of a trailers-only response), and for a response without one the status gRPC
//! infers from the HTTP status.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Server-requested delays beyond this are not trusted: a store that asks for an hour is more
/// likely misconfigured than really needing it, and the agent should keep probing.
const MAX_SERVER_DELAY: Duration = Duration::from_secs(300);
/// Bodies of error responses are only read this far: they end up in a log line.
const MAX_ERROR_TEXT: usize = 512;
/// Responses larger than this are not read completely; an OTLP response is a few bytes.
const MAX_RESPONSE_BODY: usize = 4 << 20;
const PROTOBUF: &str = "application/x-protobuf";
const USER_AGENT: &str = concat!("wake-agent/", env!("CARGO_PKG_VERSION"));
/// The gzip level of request bodies unless configured otherwise: the fastest.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;
/// gRPC's message prefix: a compressed flag and a big-endian u32 length.
const GRPC_PREFIX: usize = 5;
/// Bodies below this are compressed in place: handing them to a blocking thread costs more.
const INLINE_COMPRESSION_BYTES: usize = 64 * 1024;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Base URL of the store's OTLP receiver, e.g. `http://127.0.0.1:4317` for gRPC or
    /// `http://127.0.0.1:4318` for HTTP (`/v1/logs` and `/v1/metrics` are appended).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Per attempt, connecting included.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Compress requests with gzip.
    pub gzip: bool,
    /// The gzip level, 0 (stored) to 9, when `gzip` is set.
    pub gzip_level: u32,
    /// Sent as `Authorization: Bearer …` with every request when the store wants a token.
    pub token: Option<BearerToken>,
    /// Sent as `X-Scope-OrgID` (gRPC metadata `x-scope-orgid`): the tenant whose data this is,
    /// for a store without tokens (a token names its tenant itself).
    pub tenant: Option<http::HeaderValue>,
    /// For an `https://` endpoint (gRPC or HTTP): the CA that signed the store's certificate (else the
    /// system's roots), and the agent's own certificate when the store asks for one.
    pub tls: ClientTls,
}

/// PEM contents, read at start.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .finish()
    }
}

/// A token, kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct BearerToken(http::HeaderValue);

impl BearerToken {
    pub fn new(token: &str) -> Result<BearerToken, String> {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| "the token holds characters a header cannot".to_string())?;
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }
}

/// The header that names the tenant, as Loki, Mimir and Tempo read it.
const TENANT_HEADER: &str = "x-scope-orgid";

/// What every request carries to say whose it is.
#[derive(Clone)]
struct Credentials {
    token: Option<BearerToken>,
    tenant: Option<http::HeaderValue>,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(…)")
    }
}

impl ExportConfig {
    /// A configuration with the default timeout (10s), backoff (500ms up to 30s) and gzip on at
    /// level 1.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        ExportConfig {
            endpoint: endpoint.into(),
            protocol,
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            gzip: true,
            gzip_level: DEFAULT_GZIP_LEVEL,
            token: None,
            tenant: None,
            tls: ClientTls::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid OTLP endpoint: {0}")]
    InvalidEndpoint(String),
    /// The store refused the batch for good; sending it again would be refused again.
    #[error("store refused the {signal} batch: {message}")]
    Permanent { signal: &'static str, message: String },
    /// Shutdown began before the store acknowledged; the batch was not delivered (as far as we know).
    #[error("export cancelled by shutdown")]
    Cancelled,
}

/// The store's acknowledgement of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// Records (log records or data points) the store accepted the request but dropped.
    pub rejected: u64,
    /// The store's explanation of a partial success, or a warning; empty on full success.
    pub message: String,
}

/// Prometheus instruments of the exporter.
#[derive(Clone)]
pub struct ExportMetrics {
    requests: IntCounterVec,
    retries: IntCounterVec,
    rejected: IntCounterVec,
    duration: HistogramVec,
}

impl ExportMetrics {
    /// Creates the instruments and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("wake_agent_export_requests_total", "OTLP export attempts by signal and outcome"),
            &["signal", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("wake_agent_export_retries_total", "OTLP export attempts that are retried"),
            &["signal"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "wake_agent_export_rejected_records_total",
                "Records the store dropped from acknowledged requests (OTLP partial success)",
            ),
            &["signal"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("wake_agent_export_duration_seconds", "Duration of one OTLP export attempt")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["signal"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(ExportMetrics { requests, retries, rejected, duration })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Acknowledged(Acknowledged),
    Retryable {
        error: String,
        /// The delay the server asked for, if it did.
        delay: Option<Duration>,
        /// The connection itself is suspect: dial a new one for the next attempt.
        reconnect: bool,
    },
    Permanent(String),
}

/// Sends OTLP requests to the store until acknowledged. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    config: ExportConfig,
    metrics: ExportMetrics,
    transport: Transport,
}

enum Transport {
    Grpc(Box<GrpcTransport>),
    Http(Box<HttpTransport>),
}

struct GrpcTransport {
    endpoint: Endpoint,
    /// Created on first use rather than in `Exporter::new`, because a tonic channel spawns its
    /// worker on the current tokio runtime; dropped to force a fresh connection.
    channel: Mutex<Option<Channel>>,
    logs_uri: http::Uri,
    metrics_uri: http::Uri,
}

impl GrpcTransport {
    fn channel(&self) -> Channel {
        self.channel.lock().get_or_insert_with(|| self.endpoint.connect_lazy()).clone()
    }

    fn reconnect(&self) {
        // In-flight requests keep their clone of the old channel; only new attempts redial.
        *self.channel.lock() = None;
    }
}

/// The OTLP/HTTP client: plain for `http://` endpoints, rustls for `https://` ones.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

struct HttpTransport {
    client: HttpClient,
    logs_url: reqwest::Url,
    metrics_url: reqwest::Url,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Exporter {
    /// Validates the endpoint; no connection is made until the first export.
    pub fn new(config: ExportConfig, metrics: ExportMetrics) -> Result<Self, ExportError> {
        let transport = match config.protocol {
            Protocol::Grpc => Transport::Grpc(Box::new(grpc_transport(&config)?)),
            Protocol::Http => Transport::Http(Box::new(http_transport(&config)?)),
        };
        Ok(Exporter { inner: Arc::new(Inner { config, metrics, transport }) })
    }

    pub fn config(&self) -> &ExportConfig {
        &self.inner.config
    }

    /// Sends `request` until the store acknowledged it. `Ok` carries the partial-success count
    /// (already logged and counted); `Err(Permanent)` means the store refused the batch for good and
    /// the caller should drop it; `Err(Cancelled)` means `cancel` turned true before an
    /// acknowledgement.
    pub async fn export_logs(
        &self,
        request: ExportLogsServiceRequest,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Acknowledged, ExportError> {
        self.export::<ExportLogsServiceRequest>(request.encode_to_vec(), cancel).await
    }

    /// [`Exporter::export_logs`] of a request already encoded (an `ExportLogsServiceRequest`'s
    /// protobuf), as the agent's reader queues them: the queue is bounded by their exact size.
    pub async fn export_logs_encoded(
        &self,
        encoded: Vec<u8>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Acknowledged, ExportError> {
        self.export::<ExportLogsServiceRequest>(encoded, cancel).await
    }

    /// Like [`Exporter::export_logs`], for metrics.
    pub async fn export_metrics(
        &self,
        request: ExportMetricsServiceRequest,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Acknowledged, ExportError> {
        self.export::<ExportMetricsServiceRequest>(request.encode_to_vec(), cancel).await
    }

    async fn export<R: ExportRequest>(
        &self,
        encoded: Vec<u8>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Acknowledged, ExportError> {
        if *cancel.borrow() {
            return Err(ExportError::Cancelled);
        }
        let timeout = self.inner.config.timeout;
        let token = Credentials { token: self.inner.config.token.clone(), tenant: self.inner.config.tenant.clone() };
        let body = self.wire_body(encoded).await?;
        let WireBody { bytes, gzip } = body;
        match &self.inner.transport {
            Transport::Grpc(grpc) => {
                let uri = R::uri(grpc);
                self.send_until_acknowledged(R::SIGNAL, cancel, move || {
                    grpc_attempt(
                        grpc.channel(),
                        uri.clone(),
                        bytes.clone(),
                        gzip,
                        timeout,
                        token.clone(),
                        R::decode_response,
                    )
                })
                .await
            }
            Transport::Http(http) => {
                let (client, url) = (&http.client, R::url(http));
                self.send_until_acknowledged(R::SIGNAL, cancel, move || {
                    http_attempt(client, url, bytes.clone(), gzip, token.clone(), R::decode_response)
                })
                .await
            }
        }
    }

    /// The request's bytes as every attempt sends them, compressed once.
    async fn wire_body(&self, encoded: Vec<u8>) -> Result<WireBody, ExportError> {
        let config = &self.inner.config;
        let level = config.gzip.then_some(config.gzip_level);
        let grpc = matches!(self.inner.transport, Transport::Grpc(_));
        if encoded.len() < INLINE_COMPRESSION_BYTES {
            return Ok(wire_body(&encoded, level, grpc));
        }
        // Milliseconds of CPU for a batch of a few MiB: not on the runtime's threads.
        tokio::task::spawn_blocking(move || wire_body(&encoded, level, grpc))
            .await
            // Only a runtime shutting down cancels a blocking task (gzip into a Vec does not
            // panic): the request was not sent, as with any cancellation.
            .map_err(|_| ExportError::Cancelled)
    }

    async fn send_until_acknowledged<F, Fut>(
        &self,
        signal: Signal,
        cancel: &watch::Receiver<bool>,
        mut attempt: F,
    ) -> Result<Acknowledged, ExportError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        let name = signal.as_str();
        let mut cancel = cancel.clone();
        let mut failures: u32 = 0;
        loop {
            if *cancel.borrow() {
                return Err(ExportError::Cancelled);
            }
            let started = Instant::now();
            let outcome = match tokio::time::timeout(config.timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Attempt::Retryable {
                    error: format!("no answer within {:?}", config.timeout),
                    delay: None,
                    reconnect: true,
                },
            };
            metrics.duration.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
            match outcome {
                Attempt::Acknowledged(ack) => {
                    metrics.requests.with_label_values(&[name, "ok"]).inc();
                    if ack.rejected > 0 || !ack.message.is_empty() {
                        metrics.rejected.with_label_values(&[name]).inc_by(ack.rejected);
                        tracing::warn!(
                            signal = name,
                            rejected = ack.rejected,
                            message = %ack.message,
                            "store accepted the export only partially"
                        );
                    }
                    return Ok(ack);
                }
                Attempt::Permanent(message) => {
                    metrics.requests.with_label_values(&[name, "permanent_error"]).inc();
                    return Err(ExportError::Permanent { signal: name, message });
                }
                Attempt::Retryable { error, delay, reconnect } => {
                    metrics.requests.with_label_values(&[name, "retryable_error"]).inc();
                    metrics.retries.with_label_values(&[name]).inc();
                    if reconnect && let Transport::Grpc(grpc) = &self.inner.transport {
                        grpc.reconnect();
                    }
                    let delay = match delay {
                        Some(delay) => delay.min(MAX_SERVER_DELAY),
                        None => backoff(config.initial_backoff, config.max_backoff, failures),
                    };
                    failures = failures.saturating_add(1);
                    tracing::warn!(signal = name, attempt = failures, %error, ?delay, "OTLP export failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown(&mut cancel) => return Err(ExportError::Cancelled),
                    }
                }
            }
        }
    }
}

/// Resolves once shutdown began; never if the sender is gone, since then it cannot begin.
async fn shutdown(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|shutting_down| *shutting_down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The delay before retry number `retry` (from 0) when the server did not ask for one: equal jitter,
/// uniformly random in `[d/2, d]` with `d = min(max, initial * 2^retry)`.
fn backoff(initial: Duration, max: Duration, retry: u32) -> Duration {
    // Never zero: with unbounded retries a zero delay would be a hot loop.
    let ceiling = initial.saturating_mul(1u32 << retry.min(31)).min(max).max(Duration::from_millis(1));
    let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(ceiling / 2..=ceiling))
}

fn grpc_transport(config: &ExportConfig) -> Result<GrpcTransport, ExportError> {
    let invalid = |why: String| ExportError::InvalidEndpoint(format!("{}: {why}", config.endpoint));
    let endpoint = Endpoint::from_shared(config.endpoint.clone()).map_err(|e| invalid(e.to_string()))?;
    let endpoint = match endpoint.uri().scheme_str() {
        Some("http") => endpoint,
        Some("https") => {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            tls = match &config.tls.ca_pem {
                Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &config.tls.identity_pem {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint.tls_config(tls).map_err(|e| invalid(format!("TLS: {e}")))?
        }
        _ => return Err(invalid("expected an http:// or https:// URL".into())),
    };
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    let endpoint = endpoint
        .user_agent(USER_AGENT)
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(config.timeout)
        .tcp_nodelay(true)
        // Detects a vanished store between exports, so the next export dials anew instead of timing out.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(config.timeout);
    // As tonic's clients do: the method's path goes after the endpoint's own path, if it has one.
    let method_uri = |method: &str| -> Result<http::Uri, ExportError> {
        let base = endpoint.uri();
        let prefix = base.path().trim_end_matches('/');
        let mut parts = base.clone().into_parts();
        parts.path_and_query =
            Some(format!("{prefix}{method}").parse().map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?);
        http::Uri::from_parts(parts).map_err(|e| invalid(e.to_string()))
    };
    let logs_uri = method_uri(ExportLogsServiceRequest::GRPC_METHOD)?;
    let metrics_uri = method_uri(ExportMetricsServiceRequest::GRPC_METHOD)?;
    Ok(GrpcTransport { endpoint, channel: Mutex::new(None), logs_uri, metrics_uri })
}

fn http_transport(config: &ExportConfig) -> Result<HttpTransport, ExportError> {
    let invalid = |why: String| ExportError::InvalidEndpoint(format!("{}: {why}", config.endpoint));
    let base = reqwest::Url::parse(&config.endpoint).map_err(|e| invalid(e.to_string()))?;
    let tls = match base.scheme() {
        "http" => plain_tls().map_err(|why| invalid(format!("TLS: {why}")))?,
        "https" => http_tls(&config.tls).map_err(|why| invalid(format!("TLS: {why}")))?,
        _ => return Err(invalid("expected an http:// or https:// URL".into())),
    };
    if base.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid("a query or fragment cannot take the /v1/<signal> path".into()));
    }
    // The endpoint is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: the signal path goes after its path.
    let signal_url = |signal: &str| {
        let path = format!("{}/v1/{signal}", base.path().trim_end_matches('/'));
        let mut url = base.clone();
        url.set_path(&path);
        url
    };
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    // `https` URLs go through it too, to hyper-rustls, which does the TLS.
    connector.enforce_http(false);
    connector.set_connect_timeout(Some(config.timeout));
    connector.set_nodelay(true);
    // No proxy and no redirects: a redirect would turn the POST into a GET or replay the body
    // elsewhere, and an OTLP receiver has no reason to redirect, so a 3xx is reported as it is.
    let connector = hyper_rustls::HttpsConnector::from((connector, std::sync::Arc::new(tls)));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    Ok(HttpTransport { client, logs_url: signal_url("logs"), metrics_url: signal_url("metrics") })
}

/// rustls' `ring` provider: see the same choice in the listeners (src/tls.rs); rustls
/// deprecated it only for its lack of a post-quantum key exchange.
#[allow(deprecated)]
fn ring_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS configuration that is never used: an `http://` endpoint connects in plaintext.
fn plain_tls() -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// rustls for OTLP/HTTP: the store's certificate checked against the CA file (else the
/// system's roots), and the agent's own certificate when it has one.
fn http_tls(tls: &ClientTls) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|e| format!("the CA file: {e}"))?;
                roots.add(certificate).map_err(|e| format!("the CA file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA file holds no PEM certificate".into());
            }
        }
        None => {
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err("no system CA certificates found: give --ca-file".into());
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &tls.identity_pem {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the client key: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("the client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    // The client speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What differs between exporting logs and metrics.
trait ExportRequest {
    const SIGNAL: Signal;
    /// The gRPC method's path.
    const GRPC_METHOD: &'static str;
    fn url(http: &HttpTransport) -> &reqwest::Url;
    fn uri(grpc: &GrpcTransport) -> &http::Uri;
    fn decode_response(body: &[u8]) -> Result<Acknowledged, prost::DecodeError>;
}

impl ExportRequest for ExportLogsServiceRequest {
    const SIGNAL: Signal = Signal::Logs;
    const GRPC_METHOD: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

    fn url(http: &HttpTransport) -> &reqwest::Url {
        &http.logs_url
    }

    fn uri(grpc: &GrpcTransport) -> &http::Uri {
        &grpc.logs_uri
    }

    fn decode_response(body: &[u8]) -> Result<Acknowledged, prost::DecodeError> {
        ExportLogsServiceResponse::decode(body).map(logs_acknowledged)
    }
}

impl ExportRequest for ExportMetricsServiceRequest {
    const SIGNAL: Signal = Signal::Metrics;
    const GRPC_METHOD: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

    fn url(http: &HttpTransport) -> &reqwest::Url {
        &http.metrics_url
    }

    fn uri(grpc: &GrpcTransport) -> &http::Uri {
        &grpc.metrics_uri
    }

    fn decode_response(body: &[u8]) -> Result<Acknowledged, prost::DecodeError> {
        ExportMetricsServiceResponse::decode(body).map(metrics_acknowledged)
    }
}

/// The bytes every attempt of one request sends.
struct WireBody {
    bytes: Bytes,
    /// Whether `bytes` are gzipped (so say the headers).
    gzip: bool,
}

/// The protobuf `encoded`, gzipped at `level` if given; for gRPC after the 5-byte message
/// prefix (compressed flag, big-endian length).
fn wire_body(encoded: &[u8], level: Option<u32>, grpc: bool) -> WireBody {
    let prefix = if grpc { GRPC_PREFIX } else { 0 };
    let gzipped = level.and_then(|level| {
        let mut out = Vec::with_capacity(prefix + encoded.len() / 4 + 64);
        out.resize(prefix, 0);
        let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level.min(9)));
        // Writing into a Vec cannot fail; were it to, the body goes uncompressed.
        encoder.write_all(encoded).and_then(|()| encoder.finish()).ok()
    });
    let gzip = gzipped.is_some();
    let mut out = match gzipped {
        Some(out) => out,
        None => {
            let mut out = Vec::with_capacity(prefix + encoded.len());
            out.resize(prefix, 0);
            out.extend_from_slice(encoded);
            out
        }
    };
    if grpc {
        // A batch is bounded far below 4 GiB; a length that does not fit is refused by the store.
        let len = u32::try_from(out.len() - GRPC_PREFIX).unwrap_or(u32::MAX);
        out[0] = u8::from(gzip);
        out[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
    }
    WireBody { bytes: Bytes::from(out), gzip }
}

/// `encoded` gzipped at `level`, as a request body is (for measurements).
#[cfg(test)]
pub(crate) fn gzip(encoded: &[u8], level: u32) -> Bytes {
    wire_body(encoded, Some(level), false).bytes
}

/// `grpc-timeout` in milliseconds: the format allows at most 8 digits.
fn grpc_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

/// One unary call: `body` is the prefixed (and maybe gzipped) request message.
async fn grpc_attempt(
    channel: Channel,
    uri: http::Uri,
    body: Bytes,
    gzip: bool,
    timeout: Duration,
    token: Credentials,
    decode: fn(&[u8]) -> Result<Acknowledged, prost::DecodeError>,
) -> Attempt {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, TE};

    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(TE, "trailers")
        .header(CONTENT_TYPE, "application/grpc")
        // Lets the store abandon work the agent no longer waits for.
        .header("grpc-timeout", grpc_timeout(timeout));
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    if let Some(BearerToken(value)) = token.token {
        request = request.header(AUTHORIZATION, value);
    }
    if let Some(tenant) = token.tenant {
        request = request.header(TENANT_HEADER, tenant);
    }
    // No grpc-accept-encoding: the store's answer is a few bytes, sent as they are.
    let request = match request.body(tonic::body::Body::new(http_body_util::Full::new(body))) {
        Ok(request) => request,
        Err(error) => return Attempt::Permanent(format!("building the gRPC request: {error}")),
    };
    let response = match tower::ServiceExt::oneshot(channel, request).await {
        Ok(response) => response,
        // Raised by the client itself (connecting, HTTP/2): says nothing about the request.
        Err(error) => return Attempt::Retryable { error: error_chain(&error), delay: None, reconnect: true },
    };
    let (parts, body) = response.into_parts();
    // A trailers-only response carries the status in its headers.
    let header_status = tonic::Status::from_header_map(&parts.headers);
    if let Some(status) = &header_status
        && status.code() != Code::Ok
    {
        return classify_status(status);
    }
    let (message, trailers) = match read_grpc_body(body).await {
        Ok(read) => read,
        Err(status) => {
            let error = format!("reading the gRPC response: {}", error_chain(&status));
            return Attempt::Retryable { error, delay: None, reconnect: true };
        }
    };
    let status = trailers.as_ref().and_then(tonic::Status::from_header_map).or(header_status);
    match status {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => return classify_status(&status),
        None => {
            let message = format!("HTTP {} without grpc-status", parts.status);
            return classify_status(&tonic::Status::new(code_of_http_status(parts.status), message));
        }
    }
    let compressed = parts.headers.get("grpc-encoding").is_some_and(|value| value.as_bytes() == b"gzip");
    match grpc_message(&message, compressed).map(|message| decode(&message)) {
        Some(Ok(ack)) => Attempt::Acknowledged(ack),
        // The status is the acknowledgement; the message only details a partial success.
        Some(Err(error)) => {
            tracing::warn!(%error, "gRPC response undecodable; taking the OK status as success");
            Attempt::Acknowledged(Acknowledged::default())
        }
        None => Attempt::Acknowledged(Acknowledged::default()),
    }
}

/// The response's data (at most [`MAX_RESPONSE_BODY`] of it) and trailers.
async fn read_grpc_body(mut body: tonic::body::Body) -> Result<(Vec<u8>, Option<http::HeaderMap>), tonic::Status> {
    use http_body_util::BodyExt;
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => {
                let room = MAX_RESPONSE_BODY.saturating_sub(data.len());
                data.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = Some(map);
                }
            }
        }
    }
    Ok((data, trailers))
}

/// The first message of a gRPC response body, inflated if it is flagged compressed; `None` if
/// there is none or it cannot be read.
fn grpc_message(data: &[u8], gzip: bool) -> Option<Vec<u8>> {
    let (&flag, rest) = data.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let message = rest.get(4..4 + usize::try_from(len).ok()?)?;
    match flag {
        0 => Some(message.to_vec()),
        1 if gzip => {
            let mut inflated = Vec::new();
            let mut reader = std::io::Read::take(flate2::read::GzDecoder::new(message), MAX_RESPONSE_BODY as u64);
            std::io::Read::read_to_end(&mut reader, &mut inflated).ok()?;
            Some(inflated)
        }
        _ => None,
    }
}

/// The status of a response without `grpc-status`, as gRPC maps HTTP statuses
/// (grpc/doc/http-grpc-status-mapping.md); a 200 without one is UNKNOWN.
fn code_of_http_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

fn classify_status(status: &tonic::Status) -> Attempt {
    let retry_info = status.get_details_retry_info();
    // Statuses the store sent carry no source; tonic attaches one to those it made up from a
    // connection or HTTP/2 failure, which say nothing about the request and are worth retrying even
    // when mapped to codes like UNKNOWN or INTERNAL.
    let local = std::error::Error::source(status).is_some();
    let retryable = local
        || match status.code() {
            Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss => true,
            // Not retryable by OTLP's table, but a token is fixed by an operator, not by
            // waiting: until then the agent keeps what it read rather than drop it.
            Code::Unauthenticated | Code::PermissionDenied => true,
            Code::ResourceExhausted => retry_info.is_some(),
            _ => false,
        };
    let error = if status.message().is_empty() {
        format!("gRPC {:?}", status.code())
    } else {
        format!("gRPC {:?}: {}", status.code(), status.message())
    };
    if retryable {
        let error = match std::error::Error::source(status) {
            Some(source) => format!("{error} ({})", error_chain(source)),
            None => error,
        };
        Attempt::Retryable { error, delay: retry_info.and_then(|info| info.retry_delay), reconnect: local }
    } else {
        Attempt::Permanent(error)
    }
}

fn logs_acknowledged(response: ExportLogsServiceResponse) -> Acknowledged {
    response
        .partial_success
        .map(|partial| Acknowledged {
            rejected: u64::try_from(partial.rejected_log_records).unwrap_or(0),
            message: partial.error_message,
        })
        .unwrap_or_default()
}

fn metrics_acknowledged(response: ExportMetricsServiceResponse) -> Acknowledged {
    response
        .partial_success
        .map(|partial| Acknowledged {
            rejected: u64::try_from(partial.rejected_data_points).unwrap_or(0),
            message: partial.error_message,
        })
        .unwrap_or_default()
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses; `details` (3) is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

async fn http_attempt(
    client: &HttpClient,
    url: &reqwest::Url,
    body: Bytes,
    gzip: bool,
    token: Credentials,
    decode: fn(&[u8]) -> Result<Acknowledged, prost::DecodeError>,
) -> Attempt {
    use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT as AGENT};

    let uri = match http::Uri::try_from(url.as_str()) {
        Ok(uri) => uri,
        Err(error) => return Attempt::Permanent(format!("{url}: {error}")),
    };
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, PROTOBUF)
        .header(AGENT, USER_AGENT);
    if gzip {
        request = request.header(CONTENT_ENCODING, "gzip");
    }
    if let Some(BearerToken(value)) = token.token {
        request = request.header(AUTHORIZATION, value);
    }
    if let Some(tenant) = token.tenant {
        request = request.header(TENANT_HEADER, tenant);
    }
    let request = match request.body(http_body_util::Full::new(body)) {
        Ok(request) => request,
        Err(error) => return Attempt::Permanent(format!("building the HTTP request: {error}")),
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return Attempt::Retryable { error: error_chain(&e), delay: None, reconnect: true },
    };
    let status = response.status();
    let retry_after =
        response.headers().get(RETRY_AFTER).and_then(|value| value.to_str().ok()).and_then(parse_retry_after);
    // Without a Content-Type the body is assumed to be what was asked for: protobuf.
    let protobuf = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_none_or(|ct| {
        let ct = ct.trim_start().to_ascii_lowercase();
        ct.starts_with(PROTOBUF) || ct.starts_with("application/protobuf")
    });
    let body = read_body(response.into_body()).await;

    if status.is_success() {
        // The status line is the acknowledgement; the body only details a partial success, so a
        // body that cannot be read or decoded does not undo it.
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                let error = error_chain(&e);
                tracing::warn!(%url, %error, "OTLP/HTTP response body unreadable; taking the 2xx as success");
                return Attempt::Acknowledged(Acknowledged::default());
            }
        };
        if body.is_empty() || !protobuf {
            return Attempt::Acknowledged(Acknowledged::default());
        }
        return Attempt::Acknowledged(decode(&body).unwrap_or_else(|e| {
            tracing::warn!(%url, error = %e, "OTLP/HTTP response body undecodable; taking the 2xx as success");
            Acknowledged::default()
        }));
    }

    let detail = match &body {
        Ok(body) => describe_error_body(body, protobuf),
        Err(e) => format!("(body unreadable: {})", error_chain(e)),
    };
    let error = if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {detail}") };
    match status.as_u16() {
        429 | 502 | 503 | 504 => Attempt::Retryable { error, delay: retry_after, reconnect: false },
        // As for gRPC's UNAUTHENTICATED and PERMISSION_DENIED: kept and retried.
        401 | 403 => Attempt::Retryable { error, delay: None, reconnect: false },
        _ => Attempt::Permanent(error),
    }
}

async fn read_body(mut body: hyper::body::Incoming) -> Result<Vec<u8>, hyper::Error> {
    use http_body_util::BodyExt;
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            read.extend_from_slice(&data);
            if read.len() >= MAX_RESPONSE_BODY {
                break;
            }
        }
    }
    Ok(read)
}

fn describe_error_body(body: &[u8], protobuf: bool) -> String {
    if protobuf && let Ok(status) = RpcStatus::decode(body) {
        return truncate(status.message.trim());
    }
    truncate(String::from_utf8_lossy(body).trim())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// `Retry-After` as delay-seconds or as an HTTP date (IMF-fixdate, which RFC 2822 parsing accepts).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    // A date in the past means "now".
    Some(at.duration_since(crate::time::now()).unwrap_or(Duration::ZERO))
}

/// An error with its causes: reqwest's and hyper's top-level messages alone rarely say what failed.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Waits until `condition` holds, asking every few milliseconds, or panics naming `what` once
/// `timeout` has passed: a test waits for the state it needs, not for a guess of how long that
/// takes (too short on a loaded machine, needlessly long on an idle one).
#[cfg(test)]
pub(crate) async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "still waiting for {what} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tokio::net::TcpListener;
    use tonic::codec::CompressionEncoding;
    use tonic::transport::server::TcpIncoming;
    use tonic_types::ErrorDetails;

    use super::*;

    type Reply = Result<ExportLogsServiceResponse, tonic::Status>;

    /// A LogsService answering from a script; once the script is exhausted, full success.
    #[derive(Default)]
    struct ScriptedLogs {
        script: Mutex<VecDeque<Reply>>,
        attempts: AtomicUsize,
        received: Mutex<Vec<ExportLogsServiceRequest>>,
        encodings: Mutex<Vec<Option<String>>>,
    }

    #[tonic::async_trait]
    impl LogsService for ScriptedLogs {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let encoding = request.metadata().get("grpc-encoding").and_then(|v| v.to_str().ok()).map(str::to_owned);
            self.encodings.lock().push(encoding);
            self.received.lock().push(request.into_inner());
            let reply = self.script.lock().pop_front().unwrap_or_else(|| Ok(ExportLogsServiceResponse::default()));
            reply.map(tonic::Response::new)
        }
    }

    fn scripted(replies: Vec<Reply>) -> Arc<ScriptedLogs> {
        Arc::new(ScriptedLogs { script: Mutex::new(replies.into()), ..Default::default() })
    }

    fn serve_grpc(listener: TcpListener, service: Arc<ScriptedLogs>) {
        let service = LogsServiceServer::from_arc(service).accept_compressed(CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpIncoming::from(listener)),
        );
    }

    async fn grpc_server(replies: Vec<Reply>) -> (SocketAddr, Arc<ScriptedLogs>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = scripted(replies);
        serve_grpc(listener, service.clone());
        (addr, service)
    }

    fn test_config(endpoint: String, protocol: Protocol) -> ExportConfig {
        ExportConfig {
            timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..ExportConfig::new(endpoint, protocol)
        }
    }

    fn exporter(config: ExportConfig) -> (Exporter, Registry) {
        let registry = Registry::new();
        let metrics = ExportMetrics::new(&registry).unwrap();
        (Exporter::new(config, metrics).unwrap(), registry)
    }

    fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                labels.iter().all(|(key, value)| {
                    metric.get_label().iter().any(|label| label.name() == *key && label.value() == *value)
                })
            })
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }

    fn logs_request(body: &str) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        body: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                            value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                body.into(),
                            )),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn partial(rejected: i64, message: &str) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message.into(),
            }),
        }
    }

    fn not_cancelled() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    #[tokio::test]
    async fn grpc_honours_retry_info_then_surfaces_partial_success() {
        let busy = tonic::Status::with_error_details(
            Code::Unavailable,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
        );
        let (addr, service) = grpc_server(vec![Err(busy), Ok(partial(3, "3 records too old"))]).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));

        let started = Instant::now();
        let ack = exporter.export_logs(logs_request("hello"), &not_cancelled()).await.unwrap();

        assert!(started.elapsed() >= Duration::from_millis(150), "RetryInfo delay ignored: {:?}", started.elapsed());
        assert_eq!(ack, Acknowledged { rejected: 3, message: "3 records too old".into() });
        assert_eq!(service.attempts.load(Ordering::SeqCst), 2);
        // The retry sent the same batch, gzip-compressed.
        assert!(service.received.lock().iter().all(|request| *request == logs_request("hello")));
        assert_eq!(*service.encodings.lock(), vec![Some("gzip".to_owned()); 2]);
        let outcome = |outcome| counter(&registry, "wake_agent_export_requests_total", &[("outcome", outcome)]);
        assert_eq!((outcome("ok"), outcome("retryable_error"), outcome("permanent_error")), (1.0, 1.0, 0.0));
        assert_eq!(counter(&registry, "wake_agent_export_retries_total", &[("signal", "logs")]), 1.0);
        assert_eq!(counter(&registry, "wake_agent_export_rejected_records_total", &[("signal", "logs")]), 3.0);
    }

    #[tokio::test]
    async fn grpc_resource_exhausted_without_retry_info_is_permanent() {
        let (addr, service) =
            grpc_server(vec![Err(tonic::Status::resource_exhausted("quota")), Ok(partial(0, ""))]).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));

        let error = exporter.export_logs(logs_request("x"), &not_cancelled()).await.unwrap_err();

        assert!(matches!(&error, ExportError::Permanent { signal: "logs", message } if message.contains("quota")));
        assert_eq!(service.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(counter(&registry, "wake_agent_export_requests_total", &[("outcome", "permanent_error")]), 1.0);
        assert_eq!(counter(&registry, "wake_agent_export_retries_total", &[]), 0.0);
    }

    #[tokio::test]
    async fn grpc_resource_exhausted_with_retry_info_and_data_loss_are_retried() {
        let throttled = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(10))),
        );
        let replies = vec![Err(throttled), Err(tonic::Status::data_loss("lost")), Ok(partial(0, ""))];
        let (addr, service) = grpc_server(replies).await;
        let (exporter, _registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));

        let ack = exporter.export_logs(logs_request("x"), &not_cancelled()).await.unwrap();

        assert_eq!(ack, Acknowledged::default());
        assert_eq!(service.attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn grpc_invalid_argument_is_permanent() {
        let (addr, service) = grpc_server(vec![Err(tonic::Status::invalid_argument("bad batch"))]).await;
        let config = ExportConfig { gzip: false, ..test_config(format!("http://{addr}"), Protocol::Grpc) };
        let (exporter, _registry) = exporter(config);

        let error = exporter.export_logs(logs_request("x"), &not_cancelled()).await.unwrap_err();

        assert!(matches!(error, ExportError::Permanent { .. }), "{error:?}");
        assert_eq!(service.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(*service.encodings.lock(), vec![None]);
    }

    /// An answer without `grpc-status` (a proxy's, say) gets the status gRPC infers from the
    /// HTTP status: 503 is UNAVAILABLE and retried, 404 is UNIMPLEMENTED and permanent.
    #[tokio::test]
    async fn grpc_answers_without_grpc_status_follow_the_http_status() {
        let answers = Arc::new(Mutex::new(VecDeque::from([StatusCode::SERVICE_UNAVAILABLE, StatusCode::NOT_FOUND])));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answer, record) = (answers.clone(), seen.clone());
        let router = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (answer, record) = (answer.clone(), record.clone());
            async move {
                let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                record.lock().push((request.uri().path().to_owned(), header("content-type"), header("grpc-encoding")));
                answer.lock().pop_front().unwrap_or(StatusCode::NOT_FOUND).into_response()
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));

        let error = exporter.export_logs(logs_request("x"), &not_cancelled()).await.unwrap_err();

        let ExportError::Permanent { message, .. } = error else { panic!("{error:?}") };
        assert!(message.contains("Unimplemented") && message.contains("404"), "{message}");
        let outcome = |outcome| counter(&registry, "wake_agent_export_requests_total", &[("outcome", outcome)]);
        assert_eq!((outcome("retryable_error"), outcome("permanent_error")), (1.0, 1.0));
        let expected = (
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export".to_owned(),
            Some("application/grpc".to_owned()),
            Some("gzip".to_owned()),
        );
        assert_eq!(*seen.lock(), vec![expected.clone(), expected]);
    }

    #[test]
    fn grpc_bodies_carry_the_message_prefix_and_the_configured_level() {
        let encoded = logs_request(&"a fairly repetitive log line ".repeat(200)).encode_to_vec();
        let plain = wire_body(&encoded, None, true);
        assert!(!plain.gzip);
        assert_eq!(plain.bytes[0], 0);
        assert_eq!(&plain.bytes[1..5], &u32::try_from(encoded.len()).unwrap().to_be_bytes());
        assert_eq!(&plain.bytes[5..], &encoded[..]);
        let fast = wire_body(&encoded, Some(1), true);
        assert_eq!(fast.bytes[0], 1);
        assert_eq!(
            usize::try_from(u32::from_be_bytes(fast.bytes[1..5].try_into().unwrap())).unwrap(),
            fast.bytes.len() - 5
        );
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&fast.bytes[5..]), &mut inflated).unwrap();
        assert_eq!(inflated, encoded);
        assert_eq!(grpc_message(&fast.bytes, true).unwrap(), encoded);
        // HTTP bodies are the gzip stream alone.
        assert_eq!(wire_body(&encoded, Some(1), false).bytes, fast.bytes.slice(5..));
        assert!(wire_body(&encoded, Some(9), false).bytes.len() <= fast.bytes.len() - 5);
    }

    #[tokio::test]
    async fn grpc_connection_refused_is_retried_until_a_server_appears() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));

        let export = tokio::spawn(async move { exporter.export_logs(logs_request("late"), &not_cancelled()).await });
        let retries = || counter(&registry, "wake_agent_export_retries_total", &[("signal", "logs")]);
        eventually("two refused attempts", Duration::from_secs(5), || retries() >= 2.0).await;
        assert!(!export.is_finished(), "the export gave up while nothing listened");
        let service = scripted(vec![]);
        serve_grpc(TcpListener::bind(addr).await.unwrap(), service.clone());

        let ack = tokio::time::timeout(Duration::from_secs(3), export).await.unwrap().unwrap().unwrap();

        assert_eq!(ack, Acknowledged::default());
        assert_eq!(service.attempts.load(Ordering::SeqCst), 1);
        // Every attempt but the last was refused and retried; the last was acknowledged.
        let outcome = |outcome| counter(&registry, "wake_agent_export_requests_total", &[("outcome", outcome)]);
        assert_eq!((outcome("ok"), outcome("retryable_error")), (1.0, retries()));
    }

    #[tokio::test]
    async fn cancel_stops_the_retry_loop() {
        let replies = (0..1000).map(|_| Err(tonic::Status::unavailable("down"))).collect();
        let (addr, service) = grpc_server(replies).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));
        let (shutdown, cancel) = watch::channel(false);

        let export = tokio::spawn(async move { exporter.export_logs(logs_request("x"), &cancel).await });
        eventually("two failed attempts", Duration::from_secs(5), || service.attempts.load(Ordering::SeqCst) >= 2)
            .await;
        shutdown.send(true).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(1), export).await.unwrap().unwrap();

        assert!(matches!(result, Err(ExportError::Cancelled)), "{result:?}");
        // The export has returned, so nothing of it is left to send; and every attempt the server
        // saw was answered, counted and retried, none left half-way at the cancel.
        let attempts = service.attempts.load(Ordering::SeqCst) as f64;
        let retryable = counter(&registry, "wake_agent_export_requests_total", &[("outcome", "retryable_error")]);
        assert_eq!((retryable, counter(&registry, "wake_agent_export_retries_total", &[])), (attempts, attempts));
    }

    #[tokio::test]
    async fn already_cancelled_sends_nothing() {
        let (addr, service) = grpc_server(vec![]).await;
        let (exporter, _registry) = exporter(test_config(format!("http://{addr}"), Protocol::Grpc));
        let (_shutdown, cancel) = watch::channel(true);

        let result = exporter.export_logs(logs_request("x"), &cancel).await;

        assert!(matches!(result, Err(ExportError::Cancelled)));
        assert_eq!(service.attempts.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn grpc_attempt_without_answer_times_out_and_is_retried() {
        // Accepts connections but never speaks HTTP/2, like a wedged peer.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        let config = ExportConfig {
            timeout: Duration::from_millis(100),
            ..test_config(format!("http://{addr}"), Protocol::Grpc)
        };
        let (exporter, registry) = exporter(config);
        let (shutdown, cancel) = watch::channel(false);

        let export = tokio::spawn(async move { exporter.export_logs(logs_request("x"), &cancel).await });
        let retries = || counter(&registry, "wake_agent_export_retries_total", &[]);
        eventually("two timed-out attempts", Duration::from_secs(5), || retries() >= 2.0).await;
        shutdown.send(true).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(1), export).await.unwrap().unwrap();

        assert!(matches!(result, Err(ExportError::Cancelled)), "{result:?}");
        // None was answered: every attempt timed out.
        let outcome = |outcome| counter(&registry, "wake_agent_export_requests_total", &[("outcome", outcome)]);
        assert_eq!((outcome("ok"), outcome("retryable_error")), (0.0, retries()));
        // Each timed-out attempt dropped the channel, so the next one dialled a new connection:
        // one per attempt (the server may not have accepted the last dial yet).
        let connections = accepted.load(Ordering::SeqCst) as f64;
        assert!(
            connections >= 2.0 && connections <= retries() + 1.0,
            "{connections} connections, {} retries",
            retries()
        );
    }

    /// An OTLP/HTTP receiver answering from a script; once exhausted, 200 with an empty body.
    #[derive(Default)]
    struct ScriptedHttp {
        script: Mutex<VecDeque<Response>>,
        attempts: AtomicUsize,
        received: Mutex<Vec<HttpRequest>>,
    }

    struct HttpRequest {
        signal: &'static str,
        content_type: Option<String>,
        content_encoding: Option<String>,
        /// Decompressed.
        body: Vec<u8>,
    }

    async fn http_server(replies: Vec<Response>) -> (SocketAddr, Arc<ScriptedHttp>) {
        let state = Arc::new(ScriptedHttp { script: Mutex::new(replies.into()), ..Default::default() });
        let handler = |signal: &'static str| {
            let state = state.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| async move {
                state.attempts.fetch_add(1, Ordering::SeqCst);
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let (content_type, content_encoding) = (header("content-type"), header("content-encoding"));
                let body = if content_encoding.as_deref() == Some("gzip") {
                    let mut inflated = Vec::new();
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut inflated).unwrap();
                    inflated
                } else {
                    body.to_vec()
                };
                state.received.lock().push(HttpRequest { signal, content_type, content_encoding, body });
                state.script.lock().pop_front().unwrap_or_else(|| StatusCode::OK.into_response())
            }
        };
        let router = axum::Router::new()
            .route("/otlp/v1/logs", axum::routing::post(handler("logs")))
            .route("/otlp/v1/metrics", axum::routing::post(handler("metrics")));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, state)
    }

    fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response {
        (status, [("content-type", PROTOBUF)], body).into_response()
    }

    #[tokio::test]
    async fn http_honours_retry_after_then_surfaces_partial_success() {
        let replies = vec![
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "overloaded").into_response(),
            protobuf_response(StatusCode::OK, partial(2, "2 records malformed").encode_to_vec()),
        ];
        let (addr, server) = http_server(replies).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}/otlp/"), Protocol::Http));

        let started = Instant::now();
        let ack = exporter.export_logs(logs_request("hello"), &not_cancelled()).await.unwrap();

        assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After ignored: {:?}", started.elapsed());
        assert_eq!(ack, Acknowledged { rejected: 2, message: "2 records malformed".into() });
        assert_eq!(server.attempts.load(Ordering::SeqCst), 2);
        for request in server.received.lock().iter() {
            assert_eq!(request.signal, "logs");
            assert_eq!(request.content_type.as_deref(), Some(PROTOBUF));
            assert_eq!(request.content_encoding.as_deref(), Some("gzip"));
            assert_eq!(ExportLogsServiceRequest::decode(request.body.as_slice()).unwrap(), logs_request("hello"));
        }
        assert_eq!(counter(&registry, "wake_agent_export_retries_total", &[("signal", "logs")]), 1.0);
        assert_eq!(counter(&registry, "wake_agent_export_rejected_records_total", &[("signal", "logs")]), 2.0);
    }

    #[tokio::test]
    async fn http_400_is_permanent_and_carries_the_status_message() {
        let status = RpcStatus { code: 3, message: "resource_logs[0] has no resource".into() };
        let (addr, server) =
            http_server(vec![protobuf_response(StatusCode::BAD_REQUEST, status.encode_to_vec())]).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}/otlp"), Protocol::Http));

        let error = exporter.export_logs(logs_request("x"), &not_cancelled()).await.unwrap_err();

        let ExportError::Permanent { signal, message } = error else { panic!("{error:?}") };
        assert_eq!(signal, "logs");
        assert!(message.contains("400") && message.contains("resource_logs[0] has no resource"), "{message}");
        assert_eq!(server.attempts.load(Ordering::SeqCst), 1);
        assert_eq!(counter(&registry, "wake_agent_export_requests_total", &[("outcome", "permanent_error")]), 1.0);
    }

    #[tokio::test]
    async fn http_metrics_go_to_v1_metrics_and_502_is_retried() {
        let replies = vec![
            (StatusCode::BAD_GATEWAY, "upstream down").into_response(),
            protobuf_response(
                StatusCode::OK,
                ExportMetricsServiceResponse {
                    partial_success: Some(ExportMetricsPartialSuccess {
                        rejected_data_points: 5,
                        error_message: "NaN".into(),
                    }),
                }
                .encode_to_vec(),
            ),
            // Empty 200 body: full success.
            StatusCode::OK.into_response(),
        ];
        let (addr, server) = http_server(replies).await;
        let (exporter, registry) = exporter(test_config(format!("http://{addr}/otlp"), Protocol::Http));

        let first = exporter.export_metrics(ExportMetricsServiceRequest::default(), &not_cancelled()).await.unwrap();
        let second = exporter.export_metrics(ExportMetricsServiceRequest::default(), &not_cancelled()).await.unwrap();

        assert_eq!(first, Acknowledged { rejected: 5, message: "NaN".into() });
        assert_eq!(second, Acknowledged::default());
        assert_eq!(server.attempts.load(Ordering::SeqCst), 3);
        assert!(server.received.lock().iter().all(|request| request.signal == "metrics"));
        assert_eq!(counter(&registry, "wake_agent_export_rejected_records_total", &[("signal", "metrics")]), 5.0);
    }

    #[tokio::test]
    async fn http_connection_refused_is_retried_and_cancellable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (exporter, registry) = exporter(test_config(format!("http://{addr}"), Protocol::Http));
        let (shutdown, cancel) = watch::channel(false);

        let export = tokio::spawn(async move { exporter.export_logs(logs_request("x"), &cancel).await });
        let refused = || counter(&registry, "wake_agent_export_requests_total", &[("outcome", "retryable_error")]);
        eventually("two refused attempts", Duration::from_secs(5), || refused() >= 2.0).await;
        shutdown.send(true).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(1), export).await.unwrap().unwrap();

        assert!(matches!(result, Err(ExportError::Cancelled)), "{result:?}");
        // Each refused attempt was retried; none was taken for an answer.
        let retries = counter(&registry, "wake_agent_export_retries_total", &[("signal", "logs")]);
        assert_eq!(
            (retries, counter(&registry, "wake_agent_export_requests_total", &[("outcome", "ok")])),
            (refused(), 0.0)
        );
    }

    #[test]
    fn invalid_endpoints_are_refused() {
        for (endpoint, protocol) in [
            ("not a url", Protocol::Grpc),
            ("127.0.0.1:4317", Protocol::Grpc),
            ("not a url", Protocol::Http),
            ("ftp://store:4318", Protocol::Http),
            ("http://store:4318/?x=1", Protocol::Http),
        ] {
            let metrics = ExportMetrics::new(&Registry::new()).unwrap();
            let result = Exporter::new(ExportConfig::new(endpoint, protocol), metrics);
            assert!(matches!(result, Err(ExportError::InvalidEndpoint(_))), "{endpoint} accepted");
        }
        // gRPC over TLS, checked against the system's roots without a CA file.
        let metrics = ExportMetrics::new(&Registry::new()).unwrap();
        assert!(Exporter::new(ExportConfig::new("https://store:4317", Protocol::Grpc), metrics).is_ok());
        let metrics = ExportMetrics::new(&Registry::new()).unwrap();
        let mut config = ExportConfig::new("https://store:4318", Protocol::Http);
        config.tls.ca_pem = Some(b"not a certificate".to_vec());
        assert!(
            matches!(Exporter::new(config, metrics), Err(ExportError::InvalidEndpoint(e)) if e.contains("TLS")),
            "a CA file without a certificate is refused"
        );
    }

    #[test]
    fn http_signal_urls_extend_the_base_path() {
        let metrics = ExportMetrics::new(&Registry::new()).unwrap();
        let exporter = Exporter::new(ExportConfig::new("http://store:4318", Protocol::Http), metrics).unwrap();
        let Transport::Http(http) = &exporter.inner.transport else { panic!("not HTTP") };
        assert_eq!(http.logs_url.as_str(), "http://store:4318/v1/logs");
        assert_eq!(http.metrics_url.as_str(), "http://store:4318/v1/metrics");
    }

    #[test]
    fn backoff_is_exponential_with_equal_jitter_and_capped() {
        let (initial, max) = (Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..200 {
            for (retry, ceiling) in [(0, 500), (1, 1000), (2, 2000), (5, 16_000), (6, 30_000), (40, 30_000)] {
                let delay = backoff(initial, max, retry);
                let ceiling = Duration::from_millis(ceiling);
                assert!(delay >= ceiling / 2 && delay <= ceiling, "retry {retry}: {delay:?}");
            }
        }
        assert!(backoff(Duration::ZERO, Duration::ZERO, 0) >= Duration::from_micros(500));
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = chrono::DateTime::<chrono::Utc>::from(crate::time::now() + Duration::from_secs(120));
        let parsed = parse_retry_after(&later.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap();
        assert!(parsed > Duration::from_secs(110) && parsed <= Duration::from_secs(120), "{parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-3"), None);
    }

    #[test]
    fn grpc_codes_follow_the_otlp_retry_table() {
        let retryable = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
            Code::PermissionDenied,
        ];
        for code in retryable {
            assert!(matches!(classify_status(&tonic::Status::new(code, "")), Attempt::Retryable { .. }), "{code:?}");
        }
        let permanent = [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
        ];
        for code in permanent {
            assert!(matches!(classify_status(&tonic::Status::new(code, "")), Attempt::Permanent(_)), "{code:?}");
        }
        // A locally raised transport failure is retried whatever code tonic mapped it to.
        let reset = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(reset.code(), Code::Unknown);
        assert!(matches!(classify_status(&reset), Attempt::Retryable { reconnect: true, .. }));
    }
}
