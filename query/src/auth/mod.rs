//! Authentication and authorization of every HTTP and gRPC route: bearer tokens (or basic
//! auth whose password is the token, for Prometheus remote write and Grafana data sources),
//! each with scopes `write` (ingest), `read` (query) and `admin` (flush, retention, reloads,
//! rule changes) and bound to a tenant.
//!
//! - `config`: [`AuthConfig`], the tokens (stored as SHA-256 hashes) and the open paths.
//! - `scope`: which scope a route needs, and how each API shapes a refusal.
//!
//! Tokens are high-entropy secrets, so a SHA-256 of each is enough to store (no per-request
//! key stretching): a request's token is hashed once and looked up. The tokens file, when
//! configured, is re-read when it changes, without a restart. The layer wraps whole routers,
//! so a route added later needs a token unless its path is listed as open: deny by default.

mod config;
mod scope;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub use config::{AuthConfig, DEFAULT_TENANT, TokenConfig};
pub use scope::{Refusal, Scope, refusal_response, required_scope};

/// The tenant a request was authenticated for, put in its extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

/// A token as the server knows it.
#[derive(Clone, Debug)]
struct Token {
    name: String,
    scopes: Vec<Scope>,
    tenant: String,
}

/// Checks requests against the configured tokens; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    tokens: RwLock<HashMap<[u8; 32], Token>>,
    /// The tokens file and when it was last read.
    file_seen: RwLock<Option<SystemTime>>,
}

/// The SHA-256 of a token, as hex: what configuration stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

fn tokens_of(list: &[TokenConfig]) -> Result<HashMap<[u8; 32], Token>, String> {
    let mut tokens = HashMap::new();
    for token in list {
        let digest: [u8; 32] = hex::decode(token.sha256.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| format!("token {:?}: sha256 must be 64 hex digits", token.name))?;
        let known = Token {
            name: token.name.clone(),
            scopes: token.scopes.clone(),
            tenant: token.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.to_string()),
        };
        if tokens.insert(digest, known).is_some() {
            return Err(format!("token {:?}: the same token is configured twice", token.name));
        }
    }
    Ok(tokens)
}

impl Authenticator {
    /// `None` when no token is configured: every route is open, as before tokens existed.
    pub fn new(config: AuthConfig) -> Result<Option<Authenticator>, String> {
        config.validate()?;
        if !config.enabled() {
            return Ok(None);
        }
        let mut list = config.tokens.clone();
        let mut seen = None;
        if let Some(path) = &config.tokens_file {
            let (file_tokens, modified) = config::read_tokens_file(path)?;
            list.extend(file_tokens);
            seen = modified;
        }
        let tokens = tokens_of(&list)?;
        info!(tokens = tokens.len(), "authentication on");
        Ok(Some(Authenticator {
            inner: Arc::new(Inner { config, tokens: RwLock::new(tokens), file_seen: RwLock::new(seen) }),
        }))
    }

    /// Re-reads the tokens file if it changed; a file that does not parse keeps the tokens
    /// there were.
    pub fn reload(&self) {
        let Some(path) = &self.inner.config.tokens_file else { return };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == *self.inner.file_seen.read() {
            return;
        }
        match config::read_tokens_file(path).and_then(|(file_tokens, modified)| {
            let mut list = self.inner.config.tokens.clone();
            list.extend(file_tokens);
            Ok((tokens_of(&list)?, modified))
        }) {
            Ok((tokens, modified)) => {
                info!(path = %path.display(), tokens = tokens.len(), "tokens reloaded");
                *self.inner.tokens.write() = tokens;
                *self.inner.file_seen.write() = modified;
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "the tokens file does not load; keeping the tokens there were");
                *self.inner.file_seen.write() = modified;
            }
        }
    }

    /// Re-reads the tokens file every `every` until the process ends.
    pub fn watch(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.config.tokens_file.as_ref()?;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                this.reload();
            }
        }))
    }

    pub fn tokens_file(&self) -> Option<&PathBuf> {
        self.inner.config.tokens_file.as_ref()
    }

    /// The token's tenant if it may do what `scope` allows; the request's headers carry the
    /// token (`Authorization: Bearer …` or `Basic …`, or gRPC's `authorization` metadata).
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Tenant, Refusal> {
        let token = presented_token(headers).ok_or(Refusal::Unauthenticated("a token is required"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let tokens = self.inner.tokens.read();
        let known = tokens.get(&digest).ok_or(Refusal::Unauthenticated("the token is not known"))?;
        if !known.scopes.contains(&scope) {
            return Err(Refusal::Forbidden(format!(
                "token {:?} has no {} scope (it has {})",
                known.name,
                scope.name(),
                known.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(asked) = headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty())
            && asked != known.tenant
        {
            return Err(Refusal::Forbidden(format!(
                "token {:?} is bound to tenant {:?}, not {asked:?}",
                known.name, known.tenant
            )));
        }
        Ok(Tenant(known.tenant.clone()))
    }

    fn is_open(&self, path: &str) -> bool {
        self.inner.config.open_paths.iter().any(|open| open == path)
    }
}

/// The token a request presents, if any.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (kind, rest) = value.split_once(' ')?;
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string()).filter(|t| !t.is_empty());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_string()).filter(|t| !t.is_empty());
    }
    None
}

/// The axum middleware: `router.layer(axum::middleware::from_fn_with_state(auth, layer))`.
pub async fn layer(State(auth): State<Authenticator>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if auth.is_open(&path) {
        return next.run(request).await;
    }
    let scope = required_scope(request.method(), &path);
    match auth.authorize(request.headers(), scope) {
        Ok(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::debug!(%path, %refusal, "request refused");
            refusal_response(&path, request.headers(), &refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        let token = |name: &str, secret: &str, scopes: Vec<Scope>| TokenConfig {
            name: name.into(),
            sha256: hash_token(secret),
            scopes,
            tenant: None,
        };
        let config = AuthConfig {
            tokens: vec![
                token("agents", "w-secret", vec![Scope::Write]),
                token("grafana", "r-secret", vec![Scope::Read]),
            ],
            ..AuthConfig::default()
        };
        Authenticator::new(config).unwrap().unwrap()
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn tokens_are_checked_by_hash_and_scope() {
        let auth = authenticator();
        assert_eq!(auth.authorize(&headers("Bearer w-secret"), Scope::Write).unwrap(), Tenant(DEFAULT_TENANT.into()));
        assert!(matches!(auth.authorize(&headers("Bearer w-secret"), Scope::Read), Err(Refusal::Forbidden(_))));
        assert!(matches!(auth.authorize(&headers("Bearer nope"), Scope::Read), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(auth.authorize(&HeaderMap::new(), Scope::Read), Err(Refusal::Unauthenticated(_))));
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("prometheus:r-secret"));
        assert!(auth.authorize(&headers(&basic), Scope::Read).is_ok(), "basic auth's password is the token");
        let mut other_tenant = headers("Bearer r-secret");
        other_tenant.insert("x-scope-orgid", "team-b".parse().unwrap());
        assert!(matches!(auth.authorize(&other_tenant, Scope::Read), Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn no_tokens_means_no_authentication_and_bad_hashes_are_refused() {
        assert!(Authenticator::new(AuthConfig::default()).unwrap().is_none());
        let config = AuthConfig {
            tokens: vec![TokenConfig {
                name: "x".into(),
                sha256: "abc".into(),
                scopes: vec![Scope::Read],
                tenant: None,
            }],
            ..AuthConfig::default()
        };
        assert!(Authenticator::new(config).is_err());
    }

    #[test]
    fn the_tokens_file_is_reloaded_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let write = |secret: &str| {
            let text = format!("tokens:\n  - name: a\n    sha256: {}\n    scopes: [read]\n", hash_token(secret));
            std::fs::write(&path, text).unwrap();
        };
        write("first");
        let auth = Authenticator::new(AuthConfig { tokens_file: Some(path.clone()), ..AuthConfig::default() })
            .unwrap()
            .unwrap();
        assert!(auth.authorize(&headers("Bearer first"), Scope::Read).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        write("second");
        // A clock with a coarse resolution may see the same time: say it changed.
        *auth.inner.file_seen.write() = None;
        auth.reload();
        assert!(auth.authorize(&headers("Bearer first"), Scope::Read).is_err());
        assert!(auth.authorize(&headers("Bearer second"), Scope::Read).is_ok());
        std::fs::write(&path, "tokens: [").unwrap();
        *auth.inner.file_seen.write() = None;
        auth.reload();
        assert!(auth.authorize(&headers("Bearer second"), Scope::Read).is_ok(), "a broken file keeps the old tokens");
    }
}
