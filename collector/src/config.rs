//! Configuration of `wake agent`: a serde struct with one default per field, validated before
//! the agent starts. The binary layers the YAML file, environment variables and flags over it.
//! Durations are [`crate::time`]'s (`10s`, `1h30m`) or a number of seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::discovery::{Discovery, Filters, RuntimeMetadata};
use crate::error::{Error, Result};
use crate::export::{DEFAULT_GZIP_LEVEL, ExportConfig, Protocol};
use crate::time::deserialize_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The store's OTLP endpoint (`http://host:4317` for gRPC, `http://host:4318` for HTTP).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Kubernetes pod logs: `<log_root>/<namespace>_<pod>_<uid>/<container>/<restart>.log`.
    pub log_root: PathBuf,
    /// kubelet's `<pod>_<namespace>_<container>-<id>.log` symlinks; default: `containers`
    /// beside `log_root`.
    pub containers_dir: Option<PathBuf>,
    /// Docker `json-file` logs: `<docker_root>/<id>/<id>-json.log`.
    pub docker_root: PathBuf,
    pub cgroup_root: PathBuf,
    /// containerd's task state, read for image names.
    pub containerd_task_root: PathBuf,
    /// containers/storage (CRI-O, podman), read for image names.
    pub containers_storage_root: PathBuf,
    /// podman's events log (`events_logger = "file"` in containers.conf), tailed for container
    /// starts, exits and removals.
    pub podman_events_file: PathBuf,
    /// CRI-O's exit files (conmon's `--exit-dir`), read for exit codes.
    pub crio_exits_dir: PathBuf,
    /// Send container lifecycle events (`container.start`, `container.stop`, …) for the
    /// store's inventory.
    pub lifecycle_events: bool,
    /// A file holding the token the store wants (`auth` in its config), sent as
    /// `Authorization: Bearer …`; read at start.
    pub token_file: Option<PathBuf>,
    /// The tenant the node's data belongs to, sent as `X-Scope-OrgID` (none: the store's
    /// default tenant, or the token's).
    pub tenant: Option<String>,
    /// With an `https://` endpoint: the PEM CA that signed the store's certificate (default:
    /// the system's roots)...
    pub ca_file: Option<PathBuf>,
    /// ...and the agent's own PEM certificate and key, for a store that wants client certificates.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Checkpoints live here; it must survive agent restarts (a hostPath in a DaemonSet).
    pub state_dir: PathBuf,
    /// Default: the `NODE_NAME` environment variable (the downward API), else the host name.
    pub node_name: Option<String>,
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_pods: Vec<String>,
    pub exclude_pods: Vec<String>,
    pub include_containers: Vec<String>,
    pub exclude_containers: Vec<String>,
    #[serde(deserialize_with = "deserialize_duration")]
    pub metrics_interval: Duration,
    /// How often the agent's own metrics (its `/metrics`) are sent to the store; 0 disables.
    #[serde(deserialize_with = "deserialize_duration")]
    pub self_metrics_interval: Duration,
    /// The agent's own `/metrics` and `/healthz`.
    pub http_addr: SocketAddr,
    /// A line longer than this is cut, and its record marked `log.truncated=true`.
    pub max_line_bytes: usize,
    /// A request's protobuf, before compression, holds at most this many bytes, however many
    /// files contributed (a single record larger than that is sent on its own)...
    pub batch_max_bytes: usize,
    /// ...and is sent once its oldest record waited this long.
    #[serde(deserialize_with = "deserialize_duration")]
    pub batch_timeout: Duration,
    /// Encoded requests queued for the store or being sent to it, at most: while the queue is
    /// full the agent stops reading, and the log files are the buffer.
    pub queue_max_bytes: usize,
    /// gzip level of request bodies, 1 (fastest) to 9; 0 sends them uncompressed.
    pub gzip_level: u32,
    /// A line whose last chunk is partial (no newline yet) is sent as it is after this long.
    #[serde(deserialize_with = "deserialize_duration")]
    pub partial_line_timeout: Duration,
    /// A renamed or deleted file is released this long after it was read to its end.
    #[serde(deserialize_with = "deserialize_duration")]
    pub release_after: Duration,
    /// Without inotify (or a directory it cannot watch): how often the directories are scanned
    /// and every file is looked at. Also how often a log directory that does not exist yet is
    /// looked for.
    #[serde(deserialize_with = "deserialize_duration")]
    pub scan_interval: Duration,
    /// With inotify: how often the directories are scanned and every file is looked at anyway,
    /// in case an event was lost. Events alone otherwise tell which files to read.
    #[serde(deserialize_with = "deserialize_duration")]
    pub rescan_interval: Duration,
    /// Checkpoints of files that are gone expire after this long.
    #[serde(deserialize_with = "deserialize_duration")]
    pub checkpoint_ttl: Duration,
    /// Per export attempt.
    #[serde(deserialize_with = "deserialize_duration")]
    pub export_timeout: Duration,
    #[serde(deserialize_with = "deserialize_duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_backoff: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: Protocol::Grpc,
            log_root: PathBuf::from("/var/log/pods"),
            containers_dir: None,
            docker_root: PathBuf::from("/var/lib/docker/containers"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            containerd_task_root: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"),
            containers_storage_root: PathBuf::from("/var/lib/containers/storage"),
            podman_events_file: PathBuf::from("/run/libpod/events/events.log"),
            crio_exits_dir: PathBuf::from("/var/run/crio/exits"),
            lifecycle_events: true,
            token_file: None,
            tenant: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            state_dir: PathBuf::from("/var/lib/wake-agent"),
            node_name: None,
            include_namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            include_pods: Vec::new(),
            exclude_pods: Vec::new(),
            include_containers: Vec::new(),
            exclude_containers: Vec::new(),
            metrics_interval: Duration::from_secs(10),
            self_metrics_interval: Duration::from_secs(15),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 4390)),
            max_line_bytes: 1024 * 1024,
            batch_max_bytes: 1024 * 1024,
            batch_timeout: Duration::from_secs(1),
            queue_max_bytes: 8 * 1024 * 1024,
            gzip_level: DEFAULT_GZIP_LEVEL,
            partial_line_timeout: Duration::from_secs(2),
            release_after: Duration::from_secs(5),
            scan_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(60),
            checkpoint_ttl: Duration::from_secs(24 * 3600),
            export_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return fail(format!("endpoint must be an http:// or https:// URL, got {:?}", self.endpoint));
        }
        if self.max_line_bytes < 1024 {
            return fail(format!("max_line_bytes must be at least 1024, got {}", self.max_line_bytes));
        }
        if self.batch_max_bytes < 1024 {
            return fail(format!("batch_max_bytes must be at least 1024, got {}", self.batch_max_bytes));
        }
        // The queue must take a full batch; its size is counted in u32 (far above any sane bound).
        if self.queue_max_bytes < self.batch_max_bytes || u32::try_from(self.queue_max_bytes).is_err() {
            return fail(format!(
                "queue_max_bytes must be at least batch_max_bytes ({}) and below 4 GiB, got {}",
                self.batch_max_bytes, self.queue_max_bytes
            ));
        }
        if self.gzip_level > 9 {
            return fail(format!("gzip_level must be 0 (no compression) to 9, got {}", self.gzip_level));
        }
        for (name, value) in [
            ("metrics_interval", self.metrics_interval),
            ("batch_timeout", self.batch_timeout),
            ("scan_interval", self.scan_interval),
            ("rescan_interval", self.rescan_interval),
            ("export_timeout", self.export_timeout),
            ("initial_backoff", self.initial_backoff),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be more than 0"));
            }
        }
        if self.max_backoff < self.initial_backoff {
            return fail("max_backoff must be at least initial_backoff".into());
        }
        self.filters()?;
        Ok(())
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.containers_dir.clone().unwrap_or_else(|| match self.log_root.parent() {
            Some(parent) => parent.join("containers"),
            None => PathBuf::from("/var/log/containers"),
        })
    }

    fn filters(&self) -> Result<Filters> {
        let compile = |patterns: &[String]| -> Result<Vec<glob::Pattern>> {
            patterns
                .iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| Error::Config(format!("invalid filter pattern {p:?}: {e}"))))
                .collect()
        };
        Ok(Filters {
            include_namespaces: compile(&self.include_namespaces)?,
            exclude_namespaces: compile(&self.exclude_namespaces)?,
            include_pods: compile(&self.include_pods)?,
            exclude_pods: compile(&self.exclude_pods)?,
            include_containers: compile(&self.include_containers)?,
            exclude_containers: compile(&self.exclude_containers)?,
        })
    }

    pub fn discovery(&self) -> Result<Discovery> {
        Ok(Discovery {
            log_root: self.log_root.clone(),
            containers_dir: self.containers_dir(),
            docker_root: self.docker_root.clone(),
            node_name: self.node_name.clone(),
            filters: self.filters()?,
            runtime: RuntimeMetadata {
                docker_root: self.docker_root.clone(),
                containerd_task_root: self.containerd_task_root.clone(),
                containers_storage_root: self.containers_storage_root.clone(),
            },
        })
    }

    pub fn export(&self) -> Result<ExportConfig> {
        Ok(ExportConfig {
            endpoint: self.endpoint.clone(),
            protocol: self.protocol,
            timeout: self.export_timeout,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            gzip: self.gzip_level > 0,
            gzip_level: self.gzip_level,
            token: self.token()?,
            tenant: self
                .tenant
                .as_deref()
                .map(|tenant| http::HeaderValue::from_str(tenant.trim()))
                .transpose()
                .map_err(|_| Error::Config("tenant holds characters a header cannot".into()))?,
            tls: self.client_tls()?,
        })
    }

    fn client_tls(&self) -> Result<crate::export::ClientTls> {
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|error| Error::Config(format!("{}: {error}", path.display())));
        let identity_pem = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(Error::Config("client_cert_file and client_key_file go together".into())),
        };
        Ok(crate::export::ClientTls { ca_pem: self.ca_file.as_ref().map(read).transpose()?, identity_pem })
    }

    /// The token of `token_file`, if one is configured.
    fn token(&self) -> Result<Option<crate::export::BearerToken>> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::Config(format!("token_file {}: {error}", path.display())))?;
        if text.trim().is_empty() {
            return Err(Error::Config(format!("token_file {} is empty", path.display())));
        }
        crate::export::BearerToken::new(&text)
            .map(Some)
            .map_err(|error| Error::Config(format!("token_file {}: {error}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_durations_and_defaults() {
        let config: AgentConfig =
            serde_yaml_ng_free_parse("{\"metrics_interval\": \"15s\", \"batch_timeout\": 2, \"protocol\": \"http\"}");
        assert_eq!(config.metrics_interval, Duration::from_secs(15));
        assert_eq!(config.self_metrics_interval, Duration::from_secs(15));
        assert_eq!(config.batch_timeout, Duration::from_secs(2));
        assert_eq!(config.protocol, Protocol::Http);
        assert_eq!(config.log_root, PathBuf::from("/var/log/pods"));
        assert_eq!(config.containers_dir(), PathBuf::from("/var/log/containers"));
        config.validate().unwrap();
    }

    /// JSON is YAML: the binary reads YAML, this crate only needs serde.
    fn serde_yaml_ng_free_parse(json: &str) -> AgentConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn invalid_settings_are_refused_with_their_name() {
        let config = AgentConfig { include_pods: vec!["[".into()], ..AgentConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("filter pattern"));
        let config = AgentConfig { endpoint: "127.0.0.1:4317".into(), ..AgentConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("endpoint"));
        let error = serde_json::from_str::<AgentConfig>("{\"batch_timeout\": \"ten\"}").unwrap_err().to_string();
        assert!(error.starts_with("invalid duration \"ten\""), "{error}");
        let config: AgentConfig = serde_yaml_ng_free_parse("{\"batch_timeout\": \"250ms\"}");
        assert_eq!(config.batch_timeout, Duration::from_millis(250));
        // 0 turns self-metrics off rather than being refused.
        let config: AgentConfig = serde_yaml_ng_free_parse("{\"self_metrics_interval\": 0}");
        assert_eq!(config.self_metrics_interval, Duration::ZERO);
        config.validate().unwrap();
        let config = AgentConfig { queue_max_bytes: 512 * 1024, ..AgentConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("queue_max_bytes"));
        let config = AgentConfig { gzip_level: 10, ..AgentConfig::default() };
        assert!(config.validate().unwrap_err().to_string().contains("gzip_level"));
        let config: AgentConfig = serde_yaml_ng_free_parse("{\"gzip_level\": 0, \"rescan_interval\": \"5m\"}");
        assert_eq!(config.rescan_interval, Duration::from_secs(300));
        assert!(!config.export().unwrap().gzip);
    }
}
