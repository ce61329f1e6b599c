//! `wake server` configuration: defaults, then the optional YAML file, then environment
//! variables and flags (clap merges those two), each layer overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;
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
}

/// The resolved configuration of `wake server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: StoreConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc_addr: SocketAddr::from(([0, 0, 0, 0], 4317)),
            otlp_http_addr: SocketAddr::from(([0, 0, 0, 0], 4318)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 4380)),
            store: StoreConfig::default(),
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
        override_with!(store.data_dir, args.data_dir);
        override_with!(store.max_request_bytes, args.max_request_bytes);
        override_with!(store.flush_interval_secs, args.flush_interval_secs);
        override_with!(store.flush_max_bytes, args.flush_max_bytes);
        override_with!(store.max_buffered_bytes, args.max_buffered_bytes);
        override_with!(store.min_free_disk_bytes, args.min_free_disk_bytes);
        override_with!(store.fulltext_index, args.fulltext_index);
        config.store.validate().context("invalid configuration")?;
        Ok(config)
    }
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
