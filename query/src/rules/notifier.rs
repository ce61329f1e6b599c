//! The ruler's Alertmanager client, with the semantics of Prometheus' `notifier/notifier.go`.
//!
//! [`Notifier::send`] is what rule evaluation calls: it never awaits and never waits on the
//! network, it only appends to a bounded queue. When the queue would overflow, the *oldest*
//! alerts go (and are counted in `wake_server_notifications_dropped_total`), because an alert that is
//! still firing is re-sent by the rule every `resend_delay` anyway, while the newest state of an
//! alert is the one Alertmanager needs.
//!
//! [`Notifier::run`] is the one task that drains the queue: it takes up to `max_batch_size`
//! alerts, POSTs them as Alertmanager API v2 JSON to `<url>/api/v2/alerts` of every configured
//! Alertmanager at once, each request bounded by that Alertmanager's `timeout`, and waits for
//! all of them before the next batch. A slow or unreachable Alertmanager therefore delays the
//! others by at most its own timeout, and never delays `send`. A batch counts as delivered when
//! at least one Alertmanager accepted it (a 2xx); otherwise its alerts are counted as dropped.
//! There is no retry: a firing alert is re-sent by its rule, so a retry queue would only send
//! stale states. On stop, what is queued is sent once more and `run` returns.
//!
//! Per Alertmanager, `wake_server_notifications_sent_total` and `wake_server_notifications_errors_total`
//! count *alerts* (not requests) as Prometheus does, and `wake_server_notifications_latency_seconds`
//! is a histogram (Prometheus' is a summary, which the `prometheus` crate does not have).
//!
//! HTTP is hyper-util's client (HTTP/1.1, no proxy, no redirects followed) and HTTPS is rustls
//! with the `ring` provider, configured here and handed to hyper-rustls' connector, so this
//! client needs no process-wide default `CryptoProvider` and no aws-lc. It does not use reqwest
//! either: a TLS feature enabled on reqwest for this client would, by Cargo's feature
//! unification, reach every other reqwest client of the binary.
//!
//! Credentials in files (`password_file`, `bearer_token_file`) are read once at
//! [`Notifier::new`] to fail fast, then again at every request, so a rotated token is picked up
//! without a restart (as Prometheus does). CA, certificate and key files are read once, at
//! [`Notifier::new`].

use std::collections::{HashSet, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{Notify, watch};
use url::Url;

use crate::prom::naming::Labels;

/// Prometheus' default `--alertmanager.notification-queue-capacity`.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;
/// Prometheus' `DefaultMaxBatchSize`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 256;
/// Prometheus' default Alertmanager `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Alertmanager API v2 endpoint, appended to each configured URL (after its path prefix).
const ALERTS_PATH: &str = "api/v2/alerts";
/// How much of a failed response is kept for the error message: Alertmanager explains a 400
/// in a line of text, and anything longer is not worth logging.
const MAX_ERROR_BODY: usize = 512;
/// How much of a response is read at most: enough for Alertmanager's answers, so the
/// connection can be reused, and no more, so a misbehaving server cannot make us buffer.
const MAX_READ_BODY: usize = 64 * 1024;
/// While a failure goes on (an Alertmanager down, a full queue), it is logged at `warn` once
/// per this interval and at `debug` in between: a down Alertmanager must not flood the log.
const LOUD_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// What is printed and serialized in place of a password or a token.
const REDACTED: &str = "<secret>";
/// The label of the per-Alertmanager metrics, as in Prometheus.
const ALERTMANAGER_LABEL: &str = "alertmanager";
/// Buckets of `wake_server_notifications_latency_seconds`: from a local Alertmanager's milliseconds
/// to the timeouts (10 s by default) that bound an unreachable one.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Sent with every request.
const USER_AGENT_VALUE: &str = concat!("Wake/", env!("CARGO_PKG_VERSION"));
/// How long an idle keep-alive connection to an Alertmanager is kept for the next batch
/// (as reqwest's default, which this client used before).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Where alerts go and how much may wait for them. Durations are strings such as `10s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Every batch goes to each of them; one accepting it is enough.
    #[serde(default)]
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// Alerts waiting to be sent; past it the oldest are dropped.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Alerts per request.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            alertmanagers: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
        }
    }
}

fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}

fn default_max_batch_size() -> usize {
    DEFAULT_MAX_BATCH_SIZE
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// One Alertmanager. At most one of `basic_auth`, `bearer_token` and `bearer_token_file`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// `http://host:9093`, or with a path prefix (`https://host/alertmanager`): alerts are
    /// POSTed to `<url>/api/v2/alerts`.
    pub url: String,
    /// Bounds each request: connecting, sending and reading the answer.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub bearer_token: Option<String>,
    /// Read at every request, surrounding whitespace trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Only with an `https` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl AlertmanagerConfig {
    /// An Alertmanager at `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        AlertmanagerConfig {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            tls: None,
        }
    }
}

/// Secrets stay out of logs: the derived `Debug` would print them.
impl fmt::Debug for AlertmanagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertmanagerConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("basic_auth", &self.basic_auth)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| REDACTED))
            .field("bearer_token_file", &self.bearer_token_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// HTTP basic authentication; the password inline or in a file (read at every request,
/// surrounding whitespace trimmed), not both. No password sends an empty one.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// TLS towards an `https` Alertmanager. Without `ca_file` the system's CA certificates are
/// trusted; with it, only the certificates in it (as Prometheus does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA certificates that the server's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. The handshake's signatures are still checked.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The name the server's certificate must be valid for, instead of the URL's host (for an
    /// Alertmanager reached by IP address). Only the check changes: the URL's host is still what
    /// is sent as SNI (none for an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Secrets are serialized as `<secret>`, as Prometheus prints its configuration.
fn redact<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_some(REDACTED),
        None => serializer.serialize_none(),
    }
}

/// serde's `with` for durations written as text (`10s`, `1m30s`, `500ms`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let text = if duration.subsec_nanos() == 0 {
            format!("{}s", duration.as_secs())
        } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", duration.as_millis())
        } else {
            format!("{}ns", duration.as_nanos())
        };
        serializer.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        wake_collector::time::parse_duration(&text).map_err(de::Error::custom)
    }
}

impl NotifierConfig {
    /// Checks everything that needs no IO: sizes, URLs, conflicting settings. The files named
    /// are read by [`Notifier::new`].
    pub fn validate(&self) -> Result<(), NotifierError> {
        if self.queue_capacity == 0 {
            return Err(NotifierError::InvalidSetting { field: "queue_capacity", reason: "must be at least 1" });
        }
        if self.max_batch_size == 0 {
            return Err(NotifierError::InvalidSetting { field: "max_batch_size", reason: "must be at least 1" });
        }
        let mut seen = HashSet::with_capacity(self.alertmanagers.len());
        for alertmanager in &self.alertmanagers {
            let url = alertmanager.validate()?;
            if !seen.insert(url.clone()) {
                return Err(NotifierError::DuplicateUrl { url: url.to_string() });
            }
        }
        Ok(())
    }
}

impl AlertmanagerConfig {
    /// The URL alerts are POSTed to, once the settings are known to be consistent.
    fn validate(&self) -> Result<Url, NotifierError> {
        let url = alerts_url(&self.url)?;
        let conflict = |reason: &'static str| NotifierError::Conflict { url: self.url.clone(), reason };
        if self.timeout.is_zero() {
            return Err(conflict("timeout must be more than 0s"));
        }
        if let Some(basic) = &self.basic_auth {
            if basic.username.is_empty() {
                return Err(conflict("basic_auth.username is empty"));
            }
            if basic.password.is_some() && basic.password_file.is_some() {
                return Err(conflict("basic_auth has both password and password_file"));
            }
            if self.bearer_token.is_some() || self.bearer_token_file.is_some() {
                return Err(conflict("basic_auth and a bearer token are both set"));
            }
        }
        if self.bearer_token.is_some() && self.bearer_token_file.is_some() {
            return Err(conflict("bearer_token and bearer_token_file are both set"));
        }
        if let Some(tls) = &self.tls {
            if url.scheme() != "https" {
                return Err(conflict("tls is set but the url is not https"));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(conflict("tls.cert_file and tls.key_file go together"));
            }
            if let Some(name) = &tls.server_name
                && ServerName::try_from(name.as_str()).is_err()
            {
                return Err(conflict("tls.server_name is not a DNS name or an IP address"));
            }
        }
        Ok(url)
    }
}

/// `<url>/api/v2/alerts`, keeping the URL's path prefix.
fn alerts_url(raw: &str) -> Result<Url, NotifierError> {
    let invalid = |reason: &'static str| NotifierError::InvalidUrl { url: raw.to_string(), reason: reason.into() };
    let mut url =
        Url::parse(raw).map_err(|e| NotifierError::InvalidUrl { url: raw.to_string(), reason: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    // Credentials in the URL would end up in the `alertmanager` label and in logs.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL: use basic_auth"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment has no place in an Alertmanager URL"));
    }
    let path = format!("{}/{ALERTS_PATH}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    // What the HTTP client is given; `Url` accepts a few URLs that `Uri` does not.
    if Uri::try_from(url.as_str()).is_err() {
        return Err(invalid("not a URL the HTTP client can request"));
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a [`Notifier`] cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("notifier: {field} {reason}")]
    InvalidSetting { field: &'static str, reason: &'static str },
    #[error("alertmanager url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("alertmanager {url}: listed twice")]
    DuplicateUrl { url: String },
    #[error("alertmanager {url}: {reason}")]
    Conflict { url: String, reason: &'static str },
    #[error("alertmanager {url}: cannot read {what} {path:?}: {source}")]
    ReadFile { url: String, what: &'static str, path: PathBuf, source: io::Error },
    #[error("alertmanager {url}: {what} {path:?}: {reason}")]
    BadFile { url: String, what: &'static str, path: PathBuf, reason: String },
    #[error("alertmanager {url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("alertmanager {url}: building the HTTP client: {source}")]
    Client { url: String, source: Box<dyn StdError + Send + Sync> },
    #[error("registering the notifier's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

// ---------------------------------------------------------------------------------------------
// Alerts
// ---------------------------------------------------------------------------------------------

/// One alert as Alertmanager receives it. Serialized as API v2's `postableAlert`: `labels`,
/// `annotations`, `startsAt`, `endsAt` (left out while `None`: Alertmanager then resolves the
/// alert by itself after its `resolve_timeout` unless it is sent again) and `generatorURL` (left
/// out when empty, as Prometheus' `omitempty`). Times are RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: SystemTime,
    /// In the past for a resolved alert; for a firing one, how long it stays valid without a
    /// resend (Prometheus sends `4 × max(resend_delay, evaluation interval)` from now).
    pub ends_at: Option<SystemTime>,
    pub generator_url: String,
}

impl Serialize for Alert {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("labels", &self.labels)?;
        map.serialize_entry("annotations", &self.annotations)?;
        map.serialize_entry("startsAt", &Rfc3339(self.starts_at))?;
        if let Some(ends_at) = self.ends_at {
            map.serialize_entry("endsAt", &Rfc3339(ends_at))?;
        }
        if !self.generator_url.is_empty() {
            map.serialize_entry("generatorURL", &self.generator_url)?;
        }
        map.end()
    }
}

/// A time as Alertmanager's `date-time`: `2024-05-01T12:00:00.123Z`.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let utc = utc(self.0).ok_or_else(|| serde::ser::Error::custom("time out of RFC 3339's range"))?;
        serializer.serialize_str(&utc.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

/// `chrono`'s `From<SystemTime>` panics out of its range; this says `None` instead.
fn utc(time: SystemTime) -> Option<chrono::DateTime<chrono::Utc>> {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).ok()?, after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).ok()?;
            match before.subsec_nanos() {
                0 => (secs.checked_neg()?, 0),
                nanos => (secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos),
            }
        }
    };
    chrono::DateTime::from_timestamp(secs, nanos)
}

// ---------------------------------------------------------------------------------------------
// The notifier
// ---------------------------------------------------------------------------------------------

/// The queue of alerts for Alertmanager and the task that sends them: see the module's doc.
pub struct Notifier {
    queue: Mutex<Queue>,
    capacity: usize,
    max_batch_size: usize,
    /// Woken by `send`; holds one permit, so a `send` while a batch is in flight is not lost.
    more: Notify,
    targets: Vec<Target>,
    metrics: Metrics,
}

struct Queue {
    alerts: VecDeque<Alert>,
    overflow_log: LogLimiter,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("alertmanagers", &self.targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>())
            .field("capacity", &self.capacity)
            .field("max_batch_size", &self.max_batch_size)
            .field("queued", &self.queue_len())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Validates `config`, reads the credential and TLS files it names, builds one HTTP client
    /// per Alertmanager and registers the metrics on `registry`. Does not connect: an
    /// Alertmanager that is down at start is only an error when alerts are sent.
    pub fn new(config: NotifierConfig, registry: &Registry) -> Result<Arc<Notifier>, NotifierError> {
        config.validate()?;
        let targets = config.alertmanagers.iter().map(Target::new).collect::<Result<Vec<_>, _>>()?;
        let metrics = Metrics::new(registry, &targets, config.queue_capacity)?;
        Ok(Arc::new(Notifier {
            // Not preallocated: a full queue is the exception, and 10,000 alerts are megabytes.
            queue: Mutex::new(Queue { alerts: VecDeque::new(), overflow_log: LogLimiter::default() }),
            capacity: config.queue_capacity,
            max_batch_size: config.max_batch_size,
            more: Notify::new(),
            targets,
            metrics,
        }))
    }

    /// Queues `alerts` for every Alertmanager. Never awaits and never touches the network: it
    /// holds the queue's lock just to append. When the queue would hold more than its
    /// capacity, the oldest alerts (queued first, or first in `alerts`) are dropped and counted.
    pub fn send(&self, mut alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let (dropped, queued, loud) = {
            let mut queue = self.queue.lock();
            // Capacity should be far above a batch, but a rule returning more than the whole
            // queue keeps its last alerts, as Prometheus does.
            let excess = alerts.len().saturating_sub(self.capacity);
            alerts.drain(..excess);
            let overflow = queue.alerts.len().saturating_add(alerts.len()).saturating_sub(self.capacity);
            queue.alerts.drain(..overflow);
            queue.alerts.extend(alerts);
            let dropped = excess + overflow;
            let loud = if dropped > 0 { queue.overflow_log.admit(Instant::now()) } else { None };
            self.metrics.queue_length.set(gauge(queue.alerts.len()));
            (dropped, queue.alerts.len(), loud)
        };
        if dropped > 0 {
            self.metrics.dropped.inc_by(count(dropped));
            match loud {
                Some(suppressed) => tracing::warn!(
                    dropped,
                    queued,
                    capacity = self.capacity,
                    overflows_not_logged = suppressed,
                    "alert notification queue full: dropped the oldest alerts"
                ),
                None => tracing::debug!(dropped, queued, "alert notification queue full: dropped the oldest alerts"),
            }
        }
        self.more.notify_one();
    }

    /// Alerts waiting to be sent.
    pub fn queue_len(&self) -> usize {
        self.queue.lock().alerts.len()
    }

    /// The URLs alerts are POSTed to (`.../api/v2/alerts`), in configuration order: what
    /// Prometheus' `/api/v1/alertmanagers` lists as active.
    pub fn alertmanager_urls(&self) -> Vec<String> {
        self.targets.iter().map(|target| target.label.clone()).collect()
    }

    /// Sends queued alerts until `stop` turns `true` (or its sender is dropped), then sends
    /// what is still queued once, in batches, and returns. A batch in flight when `stop` turns
    /// is finished first. The final drain ends early when a batch reached no Alertmanager:
    /// the rest would only wait out the same timeouts; those alerts are counted as dropped.
    ///
    /// Run it in one task. Stop it through `stop`, not by dropping the future: a batch in
    /// flight when the future is dropped is lost without being counted.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(alertmanagers = self.targets.len(), "notifier started");
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            tokio::select! {
                // A stop takes priority over sending further batches, as in Prometheus.
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                () = self.more.notified() => {}
            }
            self.send_one_batch().await;
            if self.queue_len() > 0 {
                self.more.notify_one();
            }
        }
        self.drain().await;
    }

    async fn drain(&self) {
        let queued = self.queue_len();
        if queued > 0 {
            tracing::info!(queued, "notifier stopping: sending the queued alerts");
            // Only what was queued at the stop: a sender that goes on must not hold us.
            for _ in 0..queued.div_ceil(self.max_batch_size) {
                if !self.send_one_batch().await {
                    break;
                }
            }
        }
        let left = {
            let mut queue = self.queue.lock();
            let left = queue.alerts.len();
            queue.alerts.clear();
            self.metrics.queue_length.set(0);
            left
        };
        if left > 0 {
            self.metrics.dropped.inc_by(count(left));
            tracing::warn!(dropped = left, "notifier stopped with alerts not sent");
        }
        tracing::info!("notifier stopped");
    }

    /// Takes the next batch off the queue and sends it; `false` when no Alertmanager took it.
    async fn send_one_batch(&self) -> bool {
        let batch = self.next_batch();
        if batch.is_empty() {
            return true;
        }
        let delivered = self.send_all(&batch).await;
        if !delivered {
            self.metrics.dropped.inc_by(count(batch.len()));
        }
        delivered
    }

    fn next_batch(&self) -> Vec<Alert> {
        let mut queue = self.queue.lock();
        let take = queue.alerts.len().min(self.max_batch_size);
        let batch: Vec<Alert> = queue.alerts.drain(..take).collect();
        self.metrics.queue_length.set(gauge(queue.alerts.len()));
        batch
    }

    /// POSTs `batch` to every Alertmanager at once and waits for all (each within its
    /// timeout). With no Alertmanager configured the batch is discarded as delivered, as
    /// Prometheus does.
    async fn send_all(&self, batch: &[Alert]) -> bool {
        if self.targets.is_empty() {
            return true;
        }
        let body = match serde_json::to_vec(batch) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(alerts = batch.len(), %error, "encoding alerts for Alertmanager failed");
                return false;
            }
        };
        let sends = self.targets.iter().map(|target| self.send_to(target, body.clone(), batch.len()));
        futures::future::join_all(sends).await.into_iter().any(|accepted| accepted)
    }

    async fn send_to(&self, target: &Target, body: Vec<u8>, alerts: usize) -> bool {
        let start = Instant::now();
        let result = match tokio::time::timeout(target.timeout, target.post(body)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(target.timeout)),
        };
        let elapsed = start.elapsed();
        self.metrics.latency.with_label_values(&[target.label.as_str()]).observe(elapsed.as_secs_f64());
        match result {
            Ok(()) => {
                self.metrics.sent.with_label_values(&[target.label.as_str()]).inc_by(count(alerts));
                target.failures.lock().succeeded(&target.label);
                true
            }
            Err(error) => {
                self.metrics.errors.with_label_values(&[target.label.as_str()]).inc_by(count(alerts));
                target.failures.lock().failed(&target.label, alerts, elapsed, &error);
                false
            }
        }
    }
}

/// The HTTP(S) client of one Alertmanager: plain HTTP or rustls over hyper-util's pooling
/// client, HTTP/1.1 only.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One Alertmanager as the notifier sends to it.
struct Target {
    /// Where alerts are POSTed: `<url>/api/v2/alerts`.
    uri: Uri,
    /// The same URL as text: the `alertmanager` label and the log field.
    label: String,
    client: HttpClient,
    timeout: Duration,
    auth: Auth,
    failures: Mutex<FailureLog>,
}

enum Auth {
    None,
    Basic { username: String, password: Option<Secret> },
    Bearer(Secret),
}

enum Secret {
    Inline(String),
    File(PathBuf),
}

impl Secret {
    /// The file is read asynchronously (Tokio's blocking pool): it may be on a slow mount.
    async fn value(&self) -> Result<String, SendError> {
        match self {
            Secret::Inline(value) => Ok(value.clone()),
            Secret::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => Ok(text.trim().to_string()),
                Err(source) => Err(SendError::Credentials { path: path.clone(), source }),
            },
        }
    }
}

impl Target {
    fn new(config: &AlertmanagerConfig) -> Result<Target, NotifierError> {
        let url = config.validate()?;
        let auth = auth(config)?;
        let tls = tls_config(config, &url)?;
        // `alerts_url` already made sure of it.
        let uri = Uri::try_from(url.as_str())
            .map_err(|source| NotifierError::Client { url: config.url.clone(), source: Box::new(source) })?;
        let mut http = HttpConnector::new();
        // `https` URLs go through it too, to hyper-rustls, which does the TLS.
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        // Prometheus ignores HTTP_PROXY unless told otherwise; so do we: this client has no
        // proxy support at all. An `http` URL is connected to as is, an `https` one with `tls`.
        let connector = HttpsConnector::from((http, Arc::new(tls)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Target {
            uri,
            label: url.to_string(),
            client,
            timeout: config.timeout,
            auth,
            failures: Mutex::new(FailureLog::default()),
        })
    }

    /// One POST of `body`, its answer read (within bounds). The caller bounds it in time.
    async fn post(&self, body: Vec<u8>) -> Result<(), SendError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if let Some(authorization) = self.authorization().await? {
            headers.insert(AUTHORIZATION, authorization);
        }
        let response = self.client.request(request).await.map_err(|e| SendError::Http(Box::new(e)))?;
        let status = response.status();
        // Read the (small) answer: the connection can then be reused, and a 4xx says why.
        let mut answer = response.into_body();
        let mut text = Vec::new();
        let mut read = 0usize;
        while read < MAX_READ_BODY
            && let Some(frame) = answer.frame().await
        {
            let frame = frame.map_err(|e| SendError::Http(Box::new(e)))?;
            // Anything but data is trailers, which say nothing here.
            let Ok(chunk) = frame.into_data() else { continue };
            read = read.saturating_add(chunk.len());
            let room = MAX_ERROR_BODY.saturating_sub(text.len());
            text.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if status.is_success() {
            Ok(())
        } else {
            let body = String::from_utf8_lossy(&text).trim().to_string();
            Err(SendError::Status { status: status.as_u16(), body })
        }
    }

    /// The `Authorization` header, its secret read now; marked sensitive (kept out of `Debug`).
    async fn authorization(&self) -> Result<Option<HeaderValue>, SendError> {
        let text = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Basic { username, password } => {
                let password = match password {
                    Some(secret) => secret.value().await?,
                    // No password: an empty one, as documented on `BasicAuth`.
                    None => String::new(),
                };
                let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                format!("Basic {credentials}")
            }
            Auth::Bearer(token) => format!("Bearer {}", token.value().await?),
        };
        let mut value = HeaderValue::try_from(text).map_err(|_| SendError::Header)?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

fn auth(config: &AlertmanagerConfig) -> Result<Auth, NotifierError> {
    let check = |path: &Path, what: &'static str| -> Result<(), NotifierError> {
        let value = std::fs::read_to_string(path).map_err(|source| NotifierError::ReadFile {
            url: config.url.clone(),
            what,
            path: path.to_path_buf(),
            source,
        })?;
        if what == "bearer_token_file" && value.trim().is_empty() {
            return Err(NotifierError::BadFile {
                url: config.url.clone(),
                what,
                path: path.to_path_buf(),
                reason: "empty".into(),
            });
        }
        Ok(())
    };
    if let Some(basic) = &config.basic_auth {
        let password = match (&basic.password, &basic.password_file) {
            (Some(password), _) => Some(Secret::Inline(password.clone())),
            (None, Some(path)) => {
                check(path, "basic_auth.password_file")?;
                Some(Secret::File(path.clone()))
            }
            (None, None) => None,
        };
        return Ok(Auth::Basic { username: basic.username.clone(), password });
    }
    if let Some(token) = &config.bearer_token {
        return Ok(Auth::Bearer(Secret::Inline(token.clone())));
    }
    if let Some(path) = &config.bearer_token_file {
        check(path, "bearer_token_file")?;
        return Ok(Auth::Bearer(Secret::File(path.clone())));
    }
    Ok(Auth::None)
}

/// Why one request to one Alertmanager failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{}", ErrorChain(.0.as_ref()))]
    Http(Box<dyn StdError + Send + Sync>),
    #[error("bad response status {status}: {body:?}")]
    Status { status: u16, body: String },
    #[error("no answer within the timeout of {0:?}")]
    Timeout(Duration),
    #[error("cannot read credentials file {path:?}: {source}")]
    Credentials { path: PathBuf, source: io::Error },
    /// Not the value itself: it is a secret.
    #[error("the credentials have a character that an HTTP header cannot carry")]
    Header,
}

/// An error and its causes on one line: hyper-util's top-level message ("client error
/// (Connect)") hides the reason (connection refused, certificate not valid for name, ...).
struct ErrorChain<'a>(&'a dyn StdError);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Failures of one Alertmanager, for logging the first of a streak loudly and then once per
/// [`LOUD_LOG_INTERVAL`], and for saying when it recovered.
#[derive(Default)]
struct FailureLog {
    consecutive: u64,
    limiter: LogLimiter,
}

impl FailureLog {
    fn failed(&mut self, alertmanager: &str, alerts: usize, elapsed: Duration, error: &SendError) {
        self.consecutive = self.consecutive.saturating_add(1);
        let consecutive_failures = self.consecutive;
        let duration_seconds = elapsed.as_secs_f64();
        match self.limiter.admit(Instant::now()) {
            Some(not_logged) => tracing::warn!(
                alertmanager,
                alerts,
                consecutive_failures,
                failures_not_logged = not_logged,
                duration_seconds,
                %error,
                "error sending alerts to Alertmanager"
            ),
            None => tracing::debug!(
                alertmanager,
                alerts,
                consecutive_failures,
                duration_seconds,
                %error,
                "error sending alerts to Alertmanager"
            ),
        }
    }

    fn succeeded(&mut self, alertmanager: &str) {
        if self.consecutive > 0 {
            tracing::info!(
                alertmanager,
                failed_attempts = self.consecutive,
                "sending alerts to Alertmanager recovered"
            );
            *self = FailureLog::default();
        }
    }
}

/// Lets an event through at most once per [`LOUD_LOG_INTERVAL`], counting the others.
#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// `Some(events held back since the last one let through)`, or `None` to stay quiet.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOUD_LOG_INTERVAL => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The rustls configuration of one Alertmanager's client, on the `ring` provider. Every client
/// gets one, `http` URLs too (hyper-rustls' connector wants one), though it is only used for
/// `https`.
fn tls_config(config: &AlertmanagerConfig, url: &Url) -> Result<rustls::ClientConfig, NotifierError> {
    let tls_error = |reason: String| NotifierError::Tls { url: config.url.clone(), reason };
    let provider = Arc::new(ring_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?;
    let mut tls = match (&config.tls, url.scheme()) {
        (Some(settings), "https") => {
            let verifier = server_verifier(config, settings, &provider)?;
            let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
            match (&settings.cert_file, &settings.key_file) {
                (Some(cert_file), Some(key_file)) => {
                    let chain = read_certificates(config, cert_file, "tls.cert_file")?;
                    let key = read_private_key(config, key_file)?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| tls_error(format!("client certificate: {e}")))?
                }
                _ => builder.with_no_client_auth(),
            }
        }
        (None, "https") => {
            let verifier = server_verifier(config, &TlsConfig::default(), &provider)?;
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
        // Plain HTTP: no handshake ever happens (no redirect to https is followed).
        _ => builder.with_root_certificates(RootCertStore::empty()).with_no_client_auth(),
    };
    // The client speaks HTTP/1.1 only; so does Alertmanager, besides HTTP/2.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// rustls' `ring` provider. rustls 0.23.48 deprecated it because ring has no post-quantum key
/// exchange (X25519MLKEM768); the provider that has one, aws-lc-rs, needs cmake and a long C
/// build. Classical X25519 key exchange is ample for a ruler talking to its Alertmanager.
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn server_verifier(
    config: &AlertmanagerConfig,
    settings: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, NotifierError> {
    let tls_error = |reason: String| NotifierError::Tls { url: config.url.clone(), reason };
    let verifier: Arc<dyn ServerCertVerifier> = if settings.insecure_skip_verify {
        Arc::new(SkipVerification(provider.signature_verification_algorithms))
    } else {
        let mut roots = RootCertStore::empty();
        match &settings.ca_file {
            Some(ca_file) => {
                for certificate in read_certificates(config, ca_file, "tls.ca_file")? {
                    roots.add(certificate).map_err(|e| NotifierError::BadFile {
                        url: config.url.clone(),
                        what: "tls.ca_file",
                        path: ca_file.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::debug!(alertmanager = %config.url, %error, "reading a system CA certificate");
                }
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(tls_error("no system CA certificates found: set tls.ca_file".into()));
                }
            }
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()
            .map_err(|e| tls_error(e.to_string()))?
    };
    match &settings.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone()).map_err(|e| tls_error(format!("server_name: {e}")))?;
            Ok(Arc::new(FixedServerName { inner: verifier, name }))
        }
        None => Ok(verifier),
    }
}

fn read_pem(config: &AlertmanagerConfig, path: &Path, what: &'static str) -> Result<Vec<u8>, NotifierError> {
    std::fs::read(path).map_err(|source| NotifierError::ReadFile {
        url: config.url.clone(),
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(
    config: &AlertmanagerConfig,
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, NotifierError> {
    let bad =
        |reason: String| NotifierError::BadFile { url: config.url.clone(), what, path: path.to_path_buf(), reason };
    let pem = read_pem(config, path, what)?;
    let certificates =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if certificates.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

fn read_private_key(config: &AlertmanagerConfig, path: &Path) -> Result<PrivateKeyDer<'static>, NotifierError> {
    let what = "tls.key_file";
    let pem = read_pem(config, path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| NotifierError::BadFile {
        url: config.url.clone(),
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Checks the server's certificate against `name` rather than the URL's host (`server_name`).
#[derive(Debug)]
struct FixedServerName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake must still be signed
/// by its key, so the connection is at least to whoever holds that key.
#[derive(Debug)]
struct SkipVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

struct Metrics {
    sent: IntCounterVec,
    errors: IntCounterVec,
    dropped: IntCounter,
    queue_length: IntGauge,
    latency: HistogramVec,
}

impl Metrics {
    fn new(registry: &Registry, targets: &[Target], capacity: usize) -> Result<Metrics, NotifierError> {
        let label = [ALERTMANAGER_LABEL];
        let sent = IntCounterVec::new(
            Opts::new("wake_server_notifications_sent_total", "Total number of alerts sent."),
            &label,
        )?;
        let errors = IntCounterVec::new(
            Opts::new("wake_server_notifications_errors_total", "Total number of sent alerts affected by errors."),
            &label,
        )?;
        let dropped = IntCounter::new(
            "wake_server_notifications_dropped_total",
            "Total number of alerts dropped due to errors when sending to Alertmanager.",
        )?;
        let queue_length =
            IntGauge::new("wake_server_notifications_queue_length", "The number of alert notifications in the queue.")?;
        let queue_capacity = IntGauge::new(
            "wake_server_notifications_queue_capacity",
            "The capacity of the alert notifications queue.",
        )?;
        let discovered = IntGauge::new(
            "wake_server_notifications_alertmanagers_discovered",
            "The number of alertmanagers discovered and active.",
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("wake_server_notifications_latency_seconds", "Latency of sending alert notifications.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &label,
        )?;
        queue_capacity.set(gauge(capacity));
        discovered.set(gauge(targets.len()));
        // Each Alertmanager's series exist from the start, at 0, as in Prometheus.
        for target in targets {
            sent.with_label_values(&[target.label.as_str()]);
            errors.with_label_values(&[target.label.as_str()]);
        }
        let all = || -> Vec<Box<dyn Collector>> {
            vec![
                Box::new(sent.clone()),
                Box::new(errors.clone()),
                Box::new(dropped.clone()),
                Box::new(queue_length.clone()),
                Box::new(queue_capacity.clone()),
                Box::new(latency.clone()),
                Box::new(discovered.clone()),
            ]
        };
        for (registered, collector) in all().into_iter().enumerate() {
            if let Err(error) = registry.register(collector) {
                // All or nothing, so that the caller can fix the clash and try again. The
                // registry finds a collector by its descriptions, so a clone unregisters it.
                for done in all().into_iter().take(registered) {
                    let _ = registry.unregister(done);
                }
                return Err(error.into());
            }
        }
        Ok(Metrics { sent, errors, dropped, queue_length, latency })
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU16, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn alert(name: &str) -> Alert {
        Alert {
            labels: labels(&[("alertname", name)]),
            annotations: Labels::new(),
            starts_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ends_at: None,
            generator_url: String::new(),
        }
    }

    fn names(alerts: &[Alert]) -> Vec<String> {
        alerts.iter().map(|a| a.labels["alertname"].clone()).collect()
    }

    /// A metric's value (counter, gauge, or a histogram's sample count) for one label value.
    fn metric(registry: &Registry, name: &str, alertmanager: Option<&str>) -> f64 {
        for family in registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                let matches = match alertmanager {
                    None => true,
                    Some(url) => m.get_label().iter().any(|l| l.name() == ALERTMANAGER_LABEL && l.value() == url),
                };
                if !matches {
                    continue;
                }
                return match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => m.get_histogram().get_sample_count() as f64,
                };
            }
        }
        panic!("no metric {name} {alertmanager:?}");
    }

    fn notifier(config: NotifierConfig) -> (Arc<Notifier>, Registry) {
        let registry = Registry::new();
        let notifier = Notifier::new(config, &registry).expect("notifier");
        (notifier, registry)
    }

    fn config_with(alertmanagers: Vec<AlertmanagerConfig>) -> NotifierConfig {
        NotifierConfig { alertmanagers, ..NotifierConfig::default() }
    }

    // ----- JSON ------------------------------------------------------------------------------

    #[test]
    fn alerts_serialize_as_alertmanager_v2_postable_alerts() {
        let full = Alert {
            labels: labels(&[("alertname", "HighLatency"), ("severity", "page")]),
            annotations: labels(&[("summary", "p99 above 1s")]),
            starts_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            ends_at: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_360_456) + Duration::from_nanos(789)),
            generator_url: "http://wake:3100/graph?g0.expr=up".into(),
        };
        let json = serde_json::to_value(&full).expect("json");
        let object = json.as_object().expect("object");
        // Every field of Alertmanager's `postableAlert` (api/v2/openapi.yaml), and no other.
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = vec!["annotations", "endsAt", "generatorURL", "labels", "startsAt"];
        expected.sort_unstable();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected);
        assert_eq!(json["labels"], serde_json::json!({"alertname": "HighLatency", "severity": "page"}));
        assert_eq!(json["annotations"], serde_json::json!({"summary": "p99 above 1s"}));
        assert_eq!(json["startsAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["endsAt"], "2023-11-14T22:19:20.456Z");
        assert_eq!(json["generatorURL"], "http://wake:3100/graph?g0.expr=up");

        // A firing alert without an end and without a generator URL: both left out, as
        // Prometheus' `omitempty`; annotations are still an object.
        let bare = serde_json::to_value(alert("Bare")).expect("json");
        assert_eq!(
            bare,
            serde_json::json!({"labels": {"alertname": "Bare"}, "annotations": {}, "startsAt": "2023-11-14T22:13:20.000Z"})
        );
        // A batch is a JSON array.
        let batch = serde_json::to_value(vec![alert("A"), alert("B")]).expect("json");
        assert_eq!(batch.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn times_before_the_epoch_and_out_of_range_do_not_panic() {
        let before = Alert { starts_at: UNIX_EPOCH - Duration::from_millis(1_500), ..alert("Old") };
        let json = serde_json::to_value(&before).expect("json");
        assert_eq!(json["startsAt"], "1969-12-31T23:59:58.500Z");
        let far = UNIX_EPOCH.checked_add(Duration::from_secs(400_000 * 366 * 86_400));
        if let Some(far) = far {
            let alert = Alert { starts_at: far, ..alert("Far") };
            assert!(serde_json::to_vec(&alert).is_err());
        }
    }

    // ----- configuration ---------------------------------------------------------------------

    #[test]
    fn config_defaults_and_durations() {
        let config: NotifierConfig = serde_yaml::from_str("{}").expect("yaml");
        assert_eq!(config, NotifierConfig::default());
        assert_eq!(config.queue_capacity, 10_000);
        assert_eq!(config.max_batch_size, 256);

        let config: NotifierConfig = serde_yaml::from_str(
            "alertmanagers:\n  - url: http://127.0.0.1:9093\n  - url: https://am.example/prefix\n    timeout: 1m30s\n    tls: {insecure_skip_verify: true}\n",
        )
        .expect("yaml");
        assert_eq!(config.alertmanagers[0].timeout, Duration::from_secs(10));
        assert_eq!(config.alertmanagers[1].timeout, Duration::from_secs(90));
        config.validate().expect("valid");

        // Round trip through serialization, durations as text.
        let text = serde_yaml::to_string(&config).expect("yaml");
        assert!(text.contains("timeout: 90s"), "{text}");
        let again: NotifierConfig = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(again, config);
    }

    #[test]
    fn config_refuses_unknown_fields_and_bad_durations() {
        assert!(serde_yaml::from_str::<NotifierConfig>("queue_size: 5").is_err());
        assert!(serde_yaml::from_str::<NotifierConfig>("alertmanagers: [{url: 'http://a', scheme: http}]").is_err());
        assert!(serde_yaml::from_str::<NotifierConfig>("alertmanagers: [{url: 'http://a', timeout: ten}]").is_err());
        assert!(
            serde_yaml::from_str::<NotifierConfig>("alertmanagers: [{url: 'https://a', tls: {verify: false}}]")
                .is_err()
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_and_serialization() {
        let mut am = AlertmanagerConfig::new("http://127.0.0.1:9093");
        am.basic_auth =
            Some(BasicAuth { username: "wake".into(), password: Some("hunter2".into()), password_file: None });
        let debug = format!("{am:?}");
        assert!(!debug.contains("hunter2") && debug.contains("<secret>"), "{debug}");
        let yaml = serde_yaml::to_string(&am).expect("yaml");
        assert!(!yaml.contains("hunter2"), "{yaml}");
        am.basic_auth = None;
        am.bearer_token = Some("tok3n".into());
        assert!(!format!("{am:?}").contains("tok3n"));
    }

    fn invalid(am: AlertmanagerConfig) -> NotifierError {
        config_with(vec![am]).validate().expect_err("invalid")
    }

    #[test]
    fn validation_refuses_bad_urls() {
        for url in
            ["", "127.0.0.1:9093", "ftp://am:21", "http://", "http://u:p@am:9093", "http://am:9093/?x=1", "http://am#f"]
        {
            let error = invalid(AlertmanagerConfig::new(url));
            assert!(matches!(error, NotifierError::InvalidUrl { .. }), "{url}: {error}");
        }
        let error =
            config_with(vec![AlertmanagerConfig::new("http://am:9093"), AlertmanagerConfig::new("http://am:9093/")])
                .validate()
                .expect_err("duplicate");
        assert!(matches!(error, NotifierError::DuplicateUrl { .. }), "{error}");
    }

    #[test]
    fn urls_keep_their_path_prefix() {
        let url = |raw: &str| alerts_url(raw).expect("url").to_string();
        assert_eq!(url("http://127.0.0.1:9093"), "http://127.0.0.1:9093/api/v2/alerts");
        assert_eq!(url("http://127.0.0.1:9093/"), "http://127.0.0.1:9093/api/v2/alerts");
        assert_eq!(url("https://h/alertmanager"), "https://h/alertmanager/api/v2/alerts");
        assert_eq!(url("https://h/a/b/"), "https://h/a/b/api/v2/alerts");
    }

    #[test]
    fn validation_refuses_conflicting_settings() {
        let base = || AlertmanagerConfig::new("https://am.example:9093");
        let basic = |password: Option<&str>, file: Option<&str>| BasicAuth {
            username: "wake".into(),
            password: password.map(String::from),
            password_file: file.map(PathBuf::from),
        };
        let cases: Vec<(AlertmanagerConfig, &str)> = vec![
            (
                AlertmanagerConfig {
                    basic_auth: Some(basic(Some("p"), None)),
                    bearer_token: Some("t".into()),
                    ..base()
                },
                "basic_auth and a bearer token",
            ),
            (
                AlertmanagerConfig {
                    basic_auth: Some(basic(None, None)),
                    bearer_token_file: Some("/t".into()),
                    ..base()
                },
                "basic_auth and a bearer token",
            ),
            (
                AlertmanagerConfig { basic_auth: Some(basic(Some("p"), Some("/p"))), ..base() },
                "both password and password_file",
            ),
            (
                AlertmanagerConfig {
                    basic_auth: Some(BasicAuth { username: String::new(), ..basic(None, None) }),
                    ..base()
                },
                "username is empty",
            ),
            (
                AlertmanagerConfig { bearer_token: Some("t".into()), bearer_token_file: Some("/t".into()), ..base() },
                "bearer_token and bearer_token_file",
            ),
            (AlertmanagerConfig { timeout: Duration::ZERO, ..base() }, "timeout"),
            (
                AlertmanagerConfig {
                    tls: Some(TlsConfig { cert_file: Some("/c".into()), ..TlsConfig::default() }),
                    ..base()
                },
                "go together",
            ),
            (
                AlertmanagerConfig {
                    tls: Some(TlsConfig { server_name: Some("not a name!".into()), ..TlsConfig::default() }),
                    ..base()
                },
                "server_name",
            ),
            (
                AlertmanagerConfig { tls: Some(TlsConfig::default()), ..AlertmanagerConfig::new("http://am:9093") },
                "not https",
            ),
        ];
        for (am, expected) in cases {
            let error = invalid(am);
            assert!(matches!(error, NotifierError::Conflict { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{error} should say {expected:?}");
        }
        for (capacity, batch) in [(0, 1), (1, 0)] {
            let config =
                NotifierConfig { queue_capacity: capacity, max_batch_size: batch, ..NotifierConfig::default() };
            assert!(matches!(config.validate(), Err(NotifierError::InvalidSetting { .. })));
        }
    }

    #[test]
    fn new_reads_the_files_it_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");

        let mut am = AlertmanagerConfig::new("http://127.0.0.1:9093");
        am.basic_auth = Some(BasicAuth { username: "u".into(), password: None, password_file: Some(missing.clone()) });
        let error = Notifier::new(config_with(vec![am]), &Registry::new()).expect_err("unreadable");
        assert!(matches!(error, NotifierError::ReadFile { .. }), "{error}");

        let mut am = AlertmanagerConfig::new("http://127.0.0.1:9093");
        am.bearer_token_file = Some(empty);
        let error = Notifier::new(config_with(vec![am]), &Registry::new()).expect_err("empty");
        assert!(matches!(error, NotifierError::BadFile { .. }), "{error}");

        let mut am = AlertmanagerConfig::new("https://127.0.0.1:9093");
        am.tls = Some(TlsConfig { ca_file: Some(garbage.clone()), ..TlsConfig::default() });
        let error = Notifier::new(config_with(vec![am]), &Registry::new()).expect_err("no certificate");
        assert!(matches!(error, NotifierError::BadFile { .. }), "{error}");

        let mut am = AlertmanagerConfig::new("https://127.0.0.1:9093");
        am.tls = Some(TlsConfig { cert_file: Some(missing), key_file: Some(garbage), ..TlsConfig::default() });
        let error = Notifier::new(config_with(vec![am]), &Registry::new()).expect_err("missing cert");
        assert!(matches!(error, NotifierError::ReadFile { .. }), "{error}");
    }

    #[test]
    fn metrics_are_registered_once_and_all_or_nothing() {
        let registry = Registry::new();
        let am = AlertmanagerConfig::new("http://127.0.0.1:9093");
        let notifier = Notifier::new(config_with(vec![am.clone()]), &registry).expect("first");
        let url = "http://127.0.0.1:9093/api/v2/alerts";
        assert_eq!(notifier.alertmanager_urls(), vec![url.to_string()]);
        assert_eq!(metric(&registry, "wake_server_notifications_sent_total", Some(url)), 0.0);
        assert_eq!(metric(&registry, "wake_server_notifications_errors_total", Some(url)), 0.0);
        assert_eq!(metric(&registry, "wake_server_notifications_queue_capacity", None), 10_000.0);
        assert_eq!(metric(&registry, "wake_server_notifications_alertmanagers_discovered", None), 1.0);
        let error = Notifier::new(config_with(vec![am.clone()]), &registry).expect_err("twice");
        assert!(matches!(error, NotifierError::Metrics(_)), "{error}");
        drop(notifier);

        // A clash on a later metric leaves none of the earlier ones registered.
        let registry = Registry::new();
        // (Same help: the registry remembers a name's shape even after an unregister.)
        let clash = IntCounter::new(
            "wake_server_notifications_dropped_total",
            "Total number of alerts dropped due to errors when sending to Alertmanager.",
        )
        .expect("counter");
        registry.register(Box::new(clash.clone())).expect("register");
        let error = Notifier::new(config_with(vec![am.clone()]), &registry).expect_err("clash");
        assert!(matches!(error, NotifierError::Metrics(_)), "{error}");
        let families: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(families, ["wake_server_notifications_dropped_total"]);
        registry.unregister(Box::new(clash)).expect("unregister");
        Notifier::new(config_with(vec![am]), &registry).expect("after the clash is gone");
    }

    // ----- queue -----------------------------------------------------------------------------

    #[test]
    fn overflow_drops_the_oldest_alerts_and_counts_them() {
        let (notifier, registry) =
            notifier(NotifierConfig { queue_capacity: 3, max_batch_size: 10, ..NotifierConfig::default() });
        notifier.send(vec![alert("a1"), alert("a2")]);
        assert_eq!(notifier.queue_len(), 2);
        notifier.send(vec![alert("a3"), alert("a4")]);
        assert_eq!(notifier.queue_len(), 3);
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 1.0);
        assert_eq!(metric(&registry, "wake_server_notifications_queue_length", None), 3.0);
        assert_eq!(names(&notifier.next_batch()), ["a2", "a3", "a4"]);

        // More than the whole capacity at once: the last ones are kept.
        notifier.send(vec![alert("b1")]);
        notifier.send((1..=5).map(|i| alert(&format!("c{i}"))).collect());
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 1.0 + 2.0 + 1.0);
        assert_eq!(names(&notifier.next_batch()), ["c3", "c4", "c5"]);
        assert_eq!(metric(&registry, "wake_server_notifications_queue_length", None), 0.0);
        notifier.send(Vec::new());
        assert_eq!(notifier.queue_len(), 0);
    }

    #[test]
    fn batches_are_at_most_max_batch_size_in_order() {
        let (notifier, _registry) =
            notifier(NotifierConfig { queue_capacity: 100, max_batch_size: 3, ..NotifierConfig::default() });
        notifier.send((0..7).map(|i| alert(&format!("a{i}"))).collect());
        assert_eq!(names(&notifier.next_batch()), ["a0", "a1", "a2"]);
        assert_eq!(names(&notifier.next_batch()), ["a3", "a4", "a5"]);
        assert_eq!(names(&notifier.next_batch()), ["a6"]);
        assert!(notifier.next_batch().is_empty());
    }

    #[test]
    fn log_limiter_lets_one_through_per_interval() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.admit(start + Duration::from_secs(2)), None);
        assert_eq!(limiter.admit(start + LOUD_LOG_INTERVAL + Duration::from_secs(1)), Some(2));
    }

    // ----- over the network, against tiny local servers --------------------------------------

    /// One request as a recording server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        request_line: String,
        headers: BTreeMap<String, String>,
        body: serde_json::Value,
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1 that records each request and answers `status`.
    struct Recorder {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        status: Arc<AtomicU16>,
        more: Arc<Notify>,
    }

    impl Recorder {
        async fn start() -> Recorder {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let status = Arc::new(AtomicU16::new(200));
            let more = Arc::new(Notify::new());
            let (seen2, status2, more2) = (Arc::clone(&seen), Arc::clone(&status), Arc::clone(&more));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, status, more) = (Arc::clone(&seen2), Arc::clone(&status2), Arc::clone(&more2));
                    tokio::spawn(async move { serve(stream, seen, status, more).await });
                }
            });
            Recorder { url, seen, status, more }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().clone()
        }

        /// Waits (bounded) until `n` requests arrived.
        async fn wait_for(&self, n: usize) -> Vec<Seen> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let notified = self.more.notified();
                let seen = self.seen();
                if seen.len() >= n {
                    return seen;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    panic!("{} requests after 10s, expected {n}", self.seen().len());
                }
            }
        }
    }

    async fn serve(
        mut stream: tokio::net::TcpStream,
        seen: Arc<Mutex<Vec<Seen>>>,
        status: Arc<AtomicU16>,
        more: Arc<Notify>,
    ) {
        let mut buffer = Vec::new();
        loop {
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default().to_string();
            let headers: BTreeMap<String, String> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            let body = serde_json::from_slice(&buffer[end + 4..end + 4 + length]).unwrap_or(serde_json::Value::Null);
            buffer.drain(..end + 4 + length);
            seen.lock().push(Seen { request_line, headers, body });
            let code = status.load(Ordering::SeqCst);
            let text = if code == 200 { "" } else { "bad things" };
            let response = format!("HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n{text}", text.len());
            more.notify_waiters();
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Accepts connections and never answers: an Alertmanager that hangs.
    async fn black_hole() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        url
    }

    /// A URL where nothing listens.
    async fn refused() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        url
    }

    fn start(notifier: &Arc<Notifier>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop, stop_rx) = watch::channel(false);
        (stop, tokio::spawn(Arc::clone(notifier).run(stop_rx)))
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn posts_json_with_basic_auth_under_the_path_prefix() {
        let server = Recorder::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "s3cret\n").expect("write");
        let mut am = AlertmanagerConfig::new(format!("{}/prefix/", server.url));
        am.basic_auth = Some(BasicAuth { username: "wake".into(), password: None, password_file: Some(password_file) });
        let (notifier, registry) = notifier(config_with(vec![am]));
        let (stop, task) = start(&notifier);

        notifier.send(vec![alert("One"), alert("Two")]);
        let seen = server.wait_for(1).await;
        assert_eq!(seen[0].request_line, "POST /prefix/api/v2/alerts HTTP/1.1");
        // base64("wake:s3cret"): the file's trailing newline is not part of the password.
        assert_eq!(seen[0].headers["authorization"], "Basic d2FrZTpzM2NyZXQ=");
        assert_eq!(seen[0].headers["content-type"], "application/json");
        assert!(seen[0].headers["user-agent"].starts_with("Wake/"));
        assert_eq!(seen[0].body[0]["labels"]["alertname"], "One");
        assert_eq!(seen[0].body[1]["labels"]["alertname"], "Two");

        let url = format!("{}/prefix/api/v2/alerts", server.url);
        wait_until("sent_total", || metric(&registry, "wake_server_notifications_sent_total", Some(&url)) == 2.0).await;
        assert_eq!(metric(&registry, "wake_server_notifications_latency_seconds", Some(&url)), 1.0);
        stop.send(true).expect("stop");
        task.await.expect("run");
    }

    #[tokio::test]
    async fn bearer_token_file_is_read_at_every_request() {
        let server = Recorder::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "first").expect("write");
        let mut am = AlertmanagerConfig::new(server.url.clone());
        am.bearer_token_file = Some(token_file.clone());
        let (notifier, _registry) = notifier(config_with(vec![am]));
        let (stop, task) = start(&notifier);

        notifier.send(vec![alert("A")]);
        server.wait_for(1).await;
        std::fs::write(&token_file, "second\n").expect("write");
        notifier.send(vec![alert("B")]);
        let seen = server.wait_for(2).await;
        assert_eq!(seen[0].headers["authorization"], "Bearer first");
        assert_eq!(seen[1].headers["authorization"], "Bearer second");
        stop.send(true).expect("stop");
        task.await.expect("run");
    }

    #[tokio::test]
    async fn a_token_no_header_can_carry_fails_the_request_not_the_notifier() {
        let server = Recorder::start().await;
        let mut am = AlertmanagerConfig::new(server.url.clone());
        am.bearer_token = Some("tok\nen".into());
        let (notifier, registry) = notifier(config_with(vec![am]));
        notifier.send(vec![alert("A")]);
        let (_stop, stop_rx) = watch::channel(true);
        Arc::clone(&notifier).run(stop_rx).await;
        let url = format!("{}/api/v2/alerts", server.url);
        assert_eq!(metric(&registry, "wake_server_notifications_errors_total", Some(&url)), 1.0);
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 1.0);
        assert!(server.seen().is_empty());
    }

    #[tokio::test]
    async fn batches_are_split_on_the_wire() {
        let server = Recorder::start().await;
        let config =
            NotifierConfig { max_batch_size: 3, ..config_with(vec![AlertmanagerConfig::new(server.url.clone())]) };
        let (notifier, _registry) = notifier(config);
        // Queued before `run`: all of it goes out, in order, three per request.
        notifier.send((0..7).map(|i| alert(&format!("a{i}"))).collect());
        let (stop, task) = start(&notifier);
        let seen = server.wait_for(3).await;
        let sizes: Vec<usize> = seen.iter().map(|s| s.body.as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let order: Vec<&str> = seen
            .iter()
            .flat_map(|s| s.body.as_array().into_iter().flatten())
            .filter_map(|a| a["labels"]["alertname"].as_str())
            .collect();
        assert_eq!(order, ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]);
        stop.send(true).expect("stop");
        task.await.expect("run");
    }

    #[tokio::test]
    async fn a_hanging_alertmanager_delays_nothing_beyond_its_timeout() {
        let server = Recorder::start().await;
        let hanging = black_hole().await;
        let down = refused().await;
        let mut slow = AlertmanagerConfig::new(hanging.clone());
        slow.timeout = Duration::from_secs(1);
        let config =
            config_with(vec![slow, AlertmanagerConfig::new(down.clone()), AlertmanagerConfig::new(server.url.clone())]);
        let (notifier, registry) = notifier(config);
        let (stop, task) = start(&notifier);

        let started = Instant::now();
        notifier.send(vec![alert("A")]);
        // The healthy one got it at once, not after the hanging one's timeout.
        server.wait_for(1).await;
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        // send() does not wait for the batch in flight.
        let during = Instant::now();
        notifier.send(vec![alert("B")]);
        assert!(during.elapsed() < Duration::from_millis(200), "{:?}", during.elapsed());

        // The next batch goes once the hanging request timed out.
        server.wait_for(2).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(5), "{waited:?}");
        let hanging_url = format!("{hanging}/api/v2/alerts");
        let down_url = format!("{down}/api/v2/alerts");
        wait_until("errors", || metric(&registry, "wake_server_notifications_errors_total", Some(&hanging_url)) == 2.0)
            .await;
        assert_eq!(metric(&registry, "wake_server_notifications_errors_total", Some(&down_url)), 2.0);
        let ok_url = format!("{}/api/v2/alerts", server.url);
        assert_eq!(metric(&registry, "wake_server_notifications_sent_total", Some(&ok_url)), 2.0);
        // Delivered to one: nothing dropped.
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 0.0);
        stop.send(true).expect("stop");
        task.await.expect("run");
    }

    #[tokio::test]
    async fn a_batch_no_alertmanager_took_is_dropped() {
        let server = Recorder::start().await;
        server.status.store(400, Ordering::SeqCst);
        let (notifier, registry) = notifier(config_with(vec![AlertmanagerConfig::new(server.url.clone())]));
        let (stop, task) = start(&notifier);
        notifier.send(vec![alert("A"), alert("B")]);
        server.wait_for(1).await;
        wait_until("dropped", || metric(&registry, "wake_server_notifications_dropped_total", None) == 2.0).await;
        let url = format!("{}/api/v2/alerts", server.url);
        assert_eq!(metric(&registry, "wake_server_notifications_errors_total", Some(&url)), 2.0);
        assert_eq!(metric(&registry, "wake_server_notifications_sent_total", Some(&url)), 0.0);
        stop.send(true).expect("stop");
        task.await.expect("run");
    }

    #[tokio::test]
    async fn stop_drains_the_queue_once() {
        let server = Recorder::start().await;
        let config =
            NotifierConfig { max_batch_size: 2, ..config_with(vec![AlertmanagerConfig::new(server.url.clone())]) };
        let (notifier, registry) = notifier(config);
        notifier.send((0..5).map(|i| alert(&format!("a{i}"))).collect());
        // Stopped before it ever ran: it still sends what is queued, then returns.
        let (stop, stop_rx) = watch::channel(true);
        tokio::time::timeout(Duration::from_secs(10), Arc::clone(&notifier).run(stop_rx)).await.expect("returns");
        drop(stop);
        assert_eq!(server.seen().len(), 3);
        assert_eq!(notifier.queue_len(), 0);
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 0.0);
    }

    #[tokio::test]
    async fn stop_with_every_alertmanager_down_returns_within_a_timeout() {
        let mut am = AlertmanagerConfig::new(black_hole().await);
        am.timeout = Duration::from_millis(200);
        let config = NotifierConfig { max_batch_size: 1, ..config_with(vec![am]) };
        let (notifier, registry) = notifier(config);
        let (stop, task) = start(&notifier);
        // The sender side goes away: that is a stop too.
        drop(stop);
        task.await.expect("run");

        notifier.send((0..50).map(|i| alert(&format!("a{i}"))).collect());
        let started = Instant::now();
        let (_stop, stop_rx) = watch::channel(true);
        Arc::clone(&notifier).run(stop_rx).await;
        // One batch waited out its timeout; the other 49 were not tried, and all are counted.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 50.0);
        assert_eq!(notifier.queue_len(), 0);
    }

    #[tokio::test]
    async fn no_alertmanager_discards_as_prometheus_does() {
        let (notifier, registry) = notifier(NotifierConfig::default());
        notifier.send(vec![alert("A")]);
        let (_stop, stop_rx) = watch::channel(true);
        Arc::clone(&notifier).run(stop_rx).await;
        assert_eq!(notifier.queue_len(), 0);
        assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 0.0);
        assert_eq!(metric(&registry, "wake_server_notifications_alertmanagers_discovered", None), 0.0);
    }
}
