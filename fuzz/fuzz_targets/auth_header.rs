//! The `Authorization` and `X-Scope-OrgID` headers every request may carry
//! (`wake_query::auth::Authenticator::authorize`): nothing may panic, and only the configured
//! token, presented as a bearer token or as basic auth's password, is let through.
#![no_main]

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wake_query::auth::{AuthConfig, Authenticator, Scope, TokenConfig, hash_token};

const TOKEN: &str = "fuzz-token-0123456789abcdef";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let token = TokenConfig { name: "fuzz".into(), sha256: hash_token(TOKEN), scopes: vec![Scope::Read], tenant: None };
        Authenticator::new(AuthConfig { tokens: vec![token], ..AuthConfig::default() }).unwrap().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let (authorization, tenant) = match data.iter().position(|&b| b == 0) {
        Some(split) => (&data[..split], Some(&data[split + 1..])),
        None => (data, None),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(axum::http::header::AUTHORIZATION, value);
    }
    if let Some(Ok(value)) = tenant.map(HeaderValue::from_bytes) {
        headers.insert("x-scope-orgid", value);
    }
    if authenticator().authorize(&headers, Scope::Read).is_ok() {
        // Whitespace around a field value is not part of it (RFC 9110 5.5), and the server trims it.
        let text = String::from_utf8_lossy(authorization);
        let text = text.trim();
        assert!(text.contains(TOKEN) || text.to_ascii_lowercase().starts_with("basic"), "let through: {text:?}");
    }
    assert!(authenticator().authorize(&headers, Scope::Write).is_err(), "a read token never writes");
});
