//! `wake server` and `wake agent` configuration: defaults, then the optional YAML file, then
//! environment variables and flags (clap merges those two), each layer overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;
use wake_collector::AgentConfig;
use wake_collector::export::Protocol;
use wake_query::rules::notifier::AlertmanagerConfig;
use wake_storage::StoreConfig;

/// Flags of `wake server`; each has a `WAKE_…` environment variable. Unset flags fall back to
/// the config file, then to the defaults shown.
#[derive(clap::Args, Debug, Default)]
pub struct ServerArgs {
    /// YAML configuration file: the listen addresses at the top level and the storage settings
    /// under `store:`, keys as in the flags with underscores.
    #[arg(long, env = "WAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the WAL, Parquet files and indexes live [default: ./wake-data].
    #[arg(long, env = "WAKE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 0.0.0.0:4317].
    #[arg(long, env = "WAKE_OTLP_GRPC_ADDR")]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 0.0.0.0:4318].
    #[arg(long, env = "WAKE_OTLP_HTTP_ADDR")]
    pub otlp_http_addr: Option<SocketAddr>,
    /// Query and admin HTTP API listen address [default: 0.0.0.0:4380].
    #[arg(long, env = "WAKE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Largest OTLP request body, after decompression [default: 20971520].
    #[arg(long, env = "WAKE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Buffered rows are flushed to Parquet at least this often [default: 10].
    #[arg(long, env = "WAKE_FLUSH_INTERVAL_SECS")]
    pub flush_interval_secs: Option<u64>,
    /// A signal's buffer is flushed once it holds this many bytes [default: 134217728].
    #[arg(long, env = "WAKE_FLUSH_MAX_BYTES")]
    pub flush_max_bytes: Option<usize>,
    /// Above this many buffered bytes, ingest answers 429 / UNAVAILABLE [default: 1073741824].
    #[arg(long, env = "WAKE_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<usize>,
    /// Ingest answers 503 / UNAVAILABLE while the data dir has less free space [default: 67108864].
    #[arg(long, env = "WAKE_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// Build the tantivy index over log bodies [default: true].
    #[arg(long, env = "WAKE_FULLTEXT_INDEX")]
    pub fulltext_index: Option<bool>,
    /// Records older than this (seconds before their receipt) are refused; 0 accepts any age
    /// [default: 2592000, 30 days].
    #[arg(long, env = "WAKE_MAX_RECORD_AGE_SECS")]
    pub max_record_age_secs: Option<u64>,
    /// Records further ahead than this (seconds after their receipt) are refused; 0: no bound
    /// [default: 3600].
    #[arg(long, env = "WAKE_MAX_RECORD_FUTURE_SECS")]
    pub max_record_future_secs: Option<u64>,
    /// How often the server stores its own /metrics in itself (job="wake-server"), e.g. 15s;
    /// 0 disables [default: 15s].
    #[arg(long, env = "WAKE_SELF_METRICS_INTERVAL", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub self_metrics_interval: Option<std::time::Duration>,
    /// Prometheus rule files to evaluate (comma-separated globs); replaces `rule_files:`.
    #[arg(long, env = "WAKE_RULE_FILES", value_delimiter = ',')]
    pub rule_files: Option<Vec<String>>,
    /// Loki rule files, every expression LogQL (comma-separated globs); replaces
    /// `loki_rule_files:`.
    #[arg(long, env = "WAKE_LOKI_RULE_FILES", value_delimiter = ',')]
    pub loki_rule_files: Option<Vec<String>>,
    /// Alertmanagers to send alerts to (comma-separated URLs, e.g. http://127.0.0.1:9093);
    /// replaces `ruler.alertmanagers:`.
    #[arg(long, env = "WAKE_ALERTMANAGER_URL", value_delimiter = ',')]
    pub alertmanager_url: Option<Vec<String>>,
    /// A YAML file of `tokens:` (name, sha256, scopes, tenant), re-read when it changes; with
    /// it, every route but /healthz and /readyz needs a token.
    #[arg(long, env = "WAKE_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// TLS on every listener: the PEM certificate chain (with --tls-key-file), re-read when it changes.
    #[arg(long, env = "WAKE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "WAKE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Clients must present a certificate signed by a CA of this PEM file.
    #[arg(long, env = "WAKE_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
}

/// The resolved configuration of `wake server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// How often the server's own metrics are ingested into the store; 0 disables.
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub self_metrics_interval: std::time::Duration,
    pub store: StoreConfig,
    /// The query engine's resources and the limits of every query API.
    pub query: wake_query::QueryConfig,
    /// Globs of Prometheus rule files (groups may set `lang: promql|logql|sql`).
    pub rule_files: Vec<String>,
    /// Globs of Loki rule files: every expression is LogQL.
    pub loki_rule_files: Vec<String>,
    /// How rules are evaluated and where alerts go.
    pub ruler: wake_query::rules::RulerConfig,
    /// Tokens, their scopes and tenants; without any, every route is open.
    pub auth: wake_query::auth::AuthConfig,
    /// TLS on every listener; without a certificate, plaintext.
    pub tls: crate::tls::TlsConfig,
    /// How many tenants, and the limits of named ones.
    pub tenants: wake_storage::TenantsConfig<wake_query::QueryLimitOverrides>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc_addr: SocketAddr::from(([0, 0, 0, 0], 4317)),
            otlp_http_addr: SocketAddr::from(([0, 0, 0, 0], 4318)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 4380)),
            self_metrics_interval: std::time::Duration::from_secs(15),
            store: StoreConfig::default(),
            query: wake_query::QueryConfig::default(),
            rule_files: Vec::new(),
            loki_rule_files: Vec::new(),
            ruler: wake_query::rules::RulerConfig::default(),
            auth: wake_query::auth::AuthConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            tenants: wake_storage::TenantsConfig::default(),
        }
    }
}

impl ServerConfig {
    pub fn load(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
        let mut config = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                serde_yaml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => ServerConfig::default(),
        };
        let store = &mut config.store;
        macro_rules! override_with {
            ($target:expr, $value:expr) => {
                if let Some(value) = $value.clone() {
                    $target = value;
                }
            };
        }
        override_with!(config.otlp_grpc_addr, args.otlp_grpc_addr);
        override_with!(config.otlp_http_addr, args.otlp_http_addr);
        override_with!(config.http_addr, args.http_addr);
        override_with!(config.self_metrics_interval, args.self_metrics_interval);
        override_with!(store.data_dir, args.data_dir);
        override_with!(store.max_request_bytes, args.max_request_bytes);
        override_with!(store.flush_interval_secs, args.flush_interval_secs);
        override_with!(store.flush_max_bytes, args.flush_max_bytes);
        override_with!(store.max_buffered_bytes, args.max_buffered_bytes);
        override_with!(store.min_free_disk_bytes, args.min_free_disk_bytes);
        override_with!(store.fulltext_index, args.fulltext_index);
        override_with!(store.max_record_age_secs, args.max_record_age_secs);
        override_with!(store.max_record_future_secs, args.max_record_future_secs);
        override_with!(config.rule_files, args.rule_files);
        override_with!(config.loki_rule_files, args.loki_rule_files);
        if let Some(path) = &args.tokens_file {
            config.auth.tokens_file = Some(path.clone());
        }
        for (flag, field) in [
            (&args.tls_cert_file, &mut config.tls.cert_file),
            (&args.tls_key_file, &mut config.tls.key_file),
            (&args.tls_client_ca_file, &mut config.tls.client_ca_file),
        ] {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        if let Some(urls) = &args.alertmanager_url {
            config.ruler.alertmanagers = urls.iter().map(AlertmanagerConfig::new).collect();
        }
        config.store.validate().context("invalid configuration")?;
        config.query.validate().context("invalid configuration")?;
        config.ruler.validate().context("invalid configuration")?;
        config.tenants.validate().map_err(|e| anyhow::anyhow!("invalid configuration: tenants: {e}"))?;
        for (tenant, limits) in &config.tenants.overrides {
            limits
                .query
                .apply(&config.query)
                .validate()
                .with_context(|| format!("invalid configuration: tenants.overrides.{tenant}.query"))?;
        }
        Ok(config)
    }
}

/// Flags of `wake agent`; each has a `WAKE_…` environment variable. Unset flags fall back to the
/// config file, then to the defaults shown.
#[derive(clap::Args, Debug, Default)]
pub struct AgentArgs {
    /// YAML configuration file, keys as in the flags with underscores.
    #[arg(long, env = "WAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The store's OTLP endpoint [default: http://127.0.0.1:4317].
    #[arg(long, env = "WAKE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// OTLP transport: grpc or http (use the store's 4318 endpoint for http) [default: grpc].
    #[arg(long, env = "WAKE_PROTOCOL", value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Kubernetes pod logs [default: /var/log/pods].
    #[arg(long, env = "WAKE_LOG_ROOT")]
    pub log_root: Option<PathBuf>,
    /// kubelet's container-id symlinks [default: `containers` beside --log-root].
    #[arg(long, env = "WAKE_CONTAINERS_DIR")]
    pub containers_dir: Option<PathBuf>,
    /// Docker json-file logs [default: /var/lib/docker/containers].
    #[arg(long, env = "WAKE_DOCKER_ROOT")]
    pub docker_root: Option<PathBuf>,
    /// cgroup file system [default: /sys/fs/cgroup].
    #[arg(long, env = "WAKE_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// containers/storage of CRI-O and podman, for image names [default: /var/lib/containers/storage].
    #[arg(long, env = "WAKE_CONTAINERS_STORAGE_ROOT")]
    pub containers_storage_root: Option<PathBuf>,
    /// podman's events log, tailed for container starts and exits [default: /run/libpod/events/events.log].
    #[arg(long, env = "WAKE_PODMAN_EVENTS_FILE")]
    pub podman_events_file: Option<PathBuf>,
    /// A file holding the token the store wants (its `auth:` tokens).
    #[arg(long, env = "WAKE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The tenant of this node's data, sent as X-Scope-OrgID [default: the store's default tenant].
    #[arg(long, env = "WAKE_TENANT")]
    pub tenant: Option<String>,
    /// With an https:// endpoint: the PEM CA of the store's certificate [default: the system's roots].
    #[arg(long, env = "WAKE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The agent's PEM certificate and key, for a store that wants client certificates.
    #[arg(long, env = "WAKE_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    #[arg(long, env = "WAKE_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Checkpoints [default: /var/lib/wake-agent].
    #[arg(long, env = "WAKE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This node's name [default: $NODE_NAME, else the host name].
    #[arg(long, env = "WAKE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Only these namespaces (comma-separated globs).
    #[arg(long, env = "WAKE_INCLUDE_NAMESPACES", value_delimiter = ',')]
    pub include_namespaces: Option<Vec<String>>,
    /// Never these namespaces (comma-separated globs).
    #[arg(long, env = "WAKE_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Option<Vec<String>>,
    /// Only these pods (comma-separated globs).
    #[arg(long, env = "WAKE_INCLUDE_PODS", value_delimiter = ',')]
    pub include_pods: Option<Vec<String>>,
    /// Never these pods (comma-separated globs).
    #[arg(long, env = "WAKE_EXCLUDE_PODS", value_delimiter = ',')]
    pub exclude_pods: Option<Vec<String>>,
    /// Only these containers (comma-separated globs).
    #[arg(long, env = "WAKE_INCLUDE_CONTAINERS", value_delimiter = ',')]
    pub include_containers: Option<Vec<String>>,
    /// Never these containers (comma-separated globs).
    #[arg(long, env = "WAKE_EXCLUDE_CONTAINERS", value_delimiter = ',')]
    pub exclude_containers: Option<Vec<String>>,
    /// How often cgroup metrics are read, e.g. 10s [default: 10s].
    #[arg(long, env = "WAKE_METRICS_INTERVAL", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub metrics_interval: Option<std::time::Duration>,
    /// How often the agent sends its own /metrics to the store (job="wake-agent"), e.g. 15s;
    /// 0 disables [default: 15s].
    #[arg(long, env = "WAKE_SELF_METRICS_INTERVAL", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub self_metrics_interval: Option<std::time::Duration>,
    /// The agent's /metrics and /healthz [default: 0.0.0.0:4390].
    #[arg(long, env = "WAKE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Longer lines are cut and marked log.truncated=true [default: 1048576].
    #[arg(long, env = "WAKE_MAX_LINE_BYTES")]
    pub max_line_bytes: Option<usize>,
    /// A request's protobuf, before compression, holds at most this many bytes [default: 1048576]...
    #[arg(long, env = "WAKE_BATCH_MAX_BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// ...or this long after its first record [default: 1s].
    #[arg(long, env = "WAKE_BATCH_TIMEOUT", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub batch_timeout: Option<std::time::Duration>,
    /// A renamed or deleted file is released this long after its last byte was read [default: 5s].
    #[arg(long, env = "WAKE_RELEASE_AFTER", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub release_after: Option<std::time::Duration>,
    /// Encoded requests queued for the store, at most; while full, reading pauses and the log
    /// files are the buffer [default: 8388608].
    #[arg(long, env = "WAKE_QUEUE_MAX_BYTES")]
    pub queue_max_bytes: Option<usize>,
    /// gzip level of request bodies, 1 (fastest) to 9; 0 sends them uncompressed [default: 1].
    #[arg(long, env = "WAKE_GZIP_LEVEL")]
    pub gzip_level: Option<u32>,
    /// With inotify, how often every file is looked at anyway, in case an event was lost
    /// [default: 60s].
    #[arg(long, env = "WAKE_RESCAN_INTERVAL", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub rescan_interval: Option<std::time::Duration>,
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "grpc" => Ok(Protocol::Grpc),
        "http" | "http/protobuf" => Ok(Protocol::Http),
        other => Err(format!("expected grpc or http, got {other:?}")),
    }
}

pub fn load_agent_config(args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut config: AgentConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => AgentConfig::default(),
    };
    macro_rules! override_with {
        ($($field:ident),*) => {
            $(if let Some(value) = args.$field.clone() {
                config.$field = value;
            })*
        };
    }
    override_with!(
        endpoint,
        protocol,
        log_root,
        docker_root,
        cgroup_root,
        containers_storage_root,
        podman_events_file,
        state_dir,
        include_namespaces,
        exclude_namespaces,
        include_pods,
        exclude_pods,
        include_containers,
        exclude_containers,
        metrics_interval,
        self_metrics_interval,
        http_addr,
        max_line_bytes,
        batch_max_bytes,
        batch_timeout,
        release_after,
        queue_max_bytes,
        gzip_level,
        rescan_interval
    );
    if args.containers_dir.is_some() {
        config.containers_dir = args.containers_dir.clone();
    }
    if args.tenant.is_some() {
        config.tenant.clone_from(&args.tenant);
    }
    for (flag, field) in [
        (&args.token_file, &mut config.token_file),
        (&args.ca_file, &mut config.ca_file),
        (&args.client_cert_file, &mut config.client_cert_file),
        (&args.client_key_file, &mut config.client_key_file),
    ] {
        if flag.is_some() {
            field.clone_from(flag);
        }
    }
    if args.node_name.is_some() {
        config.node_name = args.node_name.clone();
    }
    if config.node_name.is_none() {
        config.node_name = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()).or_else(host_name);
    }
    config.validate().context("invalid configuration")?;
    Ok(config)
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wake.yaml");
        std::fs::write(&path, "http_addr: 127.0.0.1:9000\nstore:\n  data_dir: /from/file\n  flush_interval_secs: 3\n")
            .unwrap();
        let args =
            ServerArgs { config: Some(path), data_dir: Some(PathBuf::from("/from/flag")), ..ServerArgs::default() };
        let config = ServerConfig::load(&args).unwrap();
        assert_eq!(config.store.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.http_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.store.flush_interval_secs, 3);
        assert_eq!(config.otlp_grpc_addr.port(), 4317);
        assert_eq!(config.self_metrics_interval, std::time::Duration::from_secs(15));
    }

    #[test]
    fn self_metrics_interval_from_file_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wake.yaml");
        std::fs::write(&path, "self_metrics_interval: 30s\n").unwrap();
        let args = ServerArgs { config: Some(path.clone()), ..ServerArgs::default() };
        assert_eq!(ServerConfig::load(&args).unwrap().self_metrics_interval, std::time::Duration::from_secs(30));
        let args = ServerArgs {
            config: Some(path),
            self_metrics_interval: Some(std::time::Duration::ZERO),
            ..ServerArgs::default()
        };
        assert_eq!(ServerConfig::load(&args).unwrap().self_metrics_interval, std::time::Duration::ZERO);

        let agent = AgentArgs {
            self_metrics_interval: Some(std::time::Duration::from_secs(1)),
            node_name: Some("node-1".into()),
            ..AgentArgs::default()
        };
        assert_eq!(load_agent_config(&agent).unwrap().self_metrics_interval, std::time::Duration::from_secs(1));
    }

    #[test]
    fn the_agents_footprint_settings_have_flags() {
        let agent = AgentArgs {
            queue_max_bytes: Some(4 << 20),
            gzip_level: Some(6),
            rescan_interval: Some(std::time::Duration::from_secs(300)),
            node_name: Some("node-1".into()),
            ..AgentArgs::default()
        };
        let config = load_agent_config(&agent).unwrap();
        assert_eq!((config.queue_max_bytes, config.gzip_level), (4 << 20, 6));
        assert_eq!(config.rescan_interval, std::time::Duration::from_secs(300));
        let invalid = AgentArgs { gzip_level: Some(10), node_name: Some("n".into()), ..AgentArgs::default() };
        assert!(format!("{:#}", load_agent_config(&invalid).unwrap_err()).contains("gzip_level"));
    }

    #[test]
    fn ruler_flags_replace_the_files_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wake.yaml");
        std::fs::write(&path, "rule_files: [/etc/a/*.yml]\nruler:\n  evaluation_interval: 30s\n").unwrap();
        let args = ServerArgs {
            config: Some(path),
            rule_files: Some(vec!["/etc/b/*.yml".into()]),
            alertmanager_url: Some(vec!["http://am:9093".into()]),
            ..ServerArgs::default()
        };
        let config = ServerConfig::load(&args).unwrap();
        assert_eq!(config.rule_files, ["/etc/b/*.yml"]);
        assert_eq!(config.ruler.evaluation_interval, std::time::Duration::from_secs(30));
        assert_eq!(config.ruler.alertmanagers[0].url, "http://am:9093");
    }

    #[test]
    fn unknown_keys_and_invalid_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wake.yaml");
        std::fs::write(&path, "store:\n  data_dri: /typo\n").unwrap();
        let error = ServerConfig::load(&ServerArgs { config: Some(path), ..ServerArgs::default() }).unwrap_err();
        assert!(format!("{error:#}").contains("unknown field"), "{error:#}");

        let error =
            ServerConfig::load(&ServerArgs { flush_interval_secs: Some(0), ..ServerArgs::default() }).unwrap_err();
        assert!(format!("{error:#}").contains("flush_interval_secs"), "{error:#}");
    }
}
