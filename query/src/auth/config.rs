//! `auth:` in the server's config file, and the tokens file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Scope;

pub use wake_storage::DEFAULT_TENANT;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens in the config file itself.
    pub tokens: Vec<TokenConfig>,
    /// A YAML file of `tokens:` too, re-read when it changes (a mounted Secret, say).
    pub tokens_file: Option<PathBuf>,
    /// Paths anyone may reach (exact). `/metrics` may be added for a Prometheus that scrapes
    /// without a token.
    pub open_paths: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { tokens: Vec::new(), tokens_file: None, open_paths: vec!["/healthz".into(), "/readyz".into()] }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and errors, never the token.
    pub name: String,
    /// The token's SHA-256 as hex (`wake token hash`); the token itself is never stored.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// The tenant the token writes and reads as; default [`DEFAULT_TENANT`].
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenConfig>,
}

impl AuthConfig {
    /// Authentication is on once any token can exist.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.tokens_file.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        for token in &self.tokens {
            if token.scopes.is_empty() {
                return Err(format!("token {:?} has no scopes", token.name));
            }
        }
        if let Some(path) = self.open_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("open path {path:?} must start with /"));
        }
        Ok(())
    }
}

/// The tokens of a tokens file, and the file's modification time.
pub(super) fn read_tokens_file(path: &Path) -> Result<(Vec<TokenConfig>, Option<SystemTime>), String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file: TokensFile = serde_yaml::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    if let Some(token) = file.tokens.iter().find(|t| t.scopes.is_empty()) {
        return Err(format!("token {:?} has no scopes", token.name));
    }
    Ok((file.tokens, modified))
}
