//! Errors of the agent. Per-file trouble (a file that vanished between listing and opening, an
//! unreadable cgroup file) is logged and skipped where it happens; these are the errors that
//! stop the agent or refuse its configuration.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },

    #[error("binding {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: io::Error },

    #[error(transparent)]
    Export(#[from] crate::export::ExportError),

    #[error("registering self-metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    #[error("the {0} task failed: {1}")]
    Task(&'static str, String),
}
