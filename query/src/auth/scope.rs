//! Which scope each route needs, and a refusal in the shape of the API that was asked: OTLP's
//! `google.rpc.Status` (and gRPC's status headers), Prometheus' and Loki's, Tempo's plain text,
//! Jaeger's error list, the SQL API's `{"error"}`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Ingest: OTLP (gRPC and HTTP) and Prometheus remote write.
    Write,
    /// Queries of every API.
    Read,
    /// Flush, retention, query lists, rule reloads and changes.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one no configuration names: 401.
    Unauthenticated(&'static str),
    /// A known token without the scope (or for another tenant): 403.
    Forbidden(String),
    /// `X-Scope-OrgID` names no valid tenant: 400.
    InvalidTenant(String),
    /// The tenant cannot be served now (too many tenants, its store does not open): 429 or 503.
    TenantUnavailable { message: String, too_many: bool },
}

impl From<wake_storage::TenantError> for Refusal {
    fn from(error: wake_storage::TenantError) -> Self {
        match error {
            wake_storage::TenantError::InvalidName(message) => Refusal::InvalidTenant(message),
            wake_storage::TenantError::TooManyTenants { .. } => {
                Refusal::TenantUnavailable { message: error.to_string(), too_many: true }
            }
            wake_storage::TenantError::Open { .. } => {
                Refusal::TenantUnavailable { message: error.to_string(), too_many: false }
            }
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unauthenticated(reason) => write!(f, "unauthenticated: {reason}"),
            Refusal::Forbidden(reason) => write!(f, "forbidden: {reason}"),
            Refusal::InvalidTenant(reason) => write!(f, "invalid tenant: {reason}"),
            Refusal::TenantUnavailable { message, .. } => write!(f, "{message}"),
        }
    }
}

const GRPC_PREFIX: &str = "/opentelemetry.proto.collector.";

/// The scope a request needs. Every path not named here is a query (`read`), so that a route
/// added without thought still needs a token.
pub fn required_scope(method: &Method, path: &str) -> Scope {
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if matches!(path, "/v1/logs" | "/v1/metrics" | "/v1/traces" | "/api/v1/write") || path.starts_with(GRPC_PREFIX) {
        return Scope::Write;
    }
    let rule_change = changes && path.contains("/rules");
    if path.starts_with("/api/v1/admin/")
        || path == "/-/reload"
        || path.starts_with("/loki/api/v1/delete")
        || rule_change
    {
        return Scope::Admin;
    }
    Scope::Read
}

/// The refusal as the API at `path` answers errors.
pub fn refusal_response(path: &str, headers: &HeaderMap, refusal: &Refusal) -> Response {
    let (status, grpc_code, message) = match refusal {
        Refusal::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated, refusal.to_string()),
        Refusal::Forbidden(_) => (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied, refusal.to_string()),
        Refusal::InvalidTenant(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, refusal.to_string()),
        // Retryable in every protocol: 429/503 and UNAVAILABLE.
        Refusal::TenantUnavailable { too_many: true, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, tonic::Code::Unavailable, refusal.to_string())
        }
        Refusal::TenantUnavailable { too_many: false, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable, refusal.to_string())
        }
    };
    let mut response = if path.starts_with(GRPC_PREFIX) {
        // A trailers-only gRPC response: the status is in the headers of an HTTP 200.
        let mut response = StatusCode::OK.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(grpc_code as i32));
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
        return response;
    } else if matches!(path, "/v1/logs" | "/v1/metrics" | "/v1/traces") {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if json {
            let body = json!({"code": grpc_code as i32, "message": message}).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        } else {
            let body = tonic_types::Status { code: grpc_code as i32, message, details: Vec::new() }.encode_to_vec();
            (status, [(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
        }
    } else if path == "/api/v1/sql" || path.starts_with("/api/v1/admin/") {
        (status, axum::Json(json!({ "error": message }))).into_response()
    } else if path.starts_with("/jaeger/") {
        let body = json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status.as_u16(), "msg": message}]});
        (status, axum::Json(body)).into_response()
    } else if path.starts_with("/api/v1/") || path.starts_with("/prometheus/") {
        // Prometheus' envelope (the inventory's and the ruler's APIs share it); remote write
        // answers plain text below.
        if path == "/api/v1/write" {
            (status, message).into_response()
        } else {
            let error_type = match status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::BAD_REQUEST => "bad_data",
                _ => "unavailable",
            };
            (status, axum::Json(json!({"status": "error", "errorType": error_type, "error": message}))).into_response()
        }
    } else {
        // Loki, Tempo, `/metrics`, `/-/reload`: plain text.
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    };
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wake\""));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_queries_and_administration_need_their_own_scopes() {
        for (method, path, scope) in [
            (Method::POST, "/v1/logs", Scope::Write),
            (Method::POST, "/api/v1/write", Scope::Write),
            (Method::POST, "/opentelemetry.proto.collector.logs.v1.LogsService/Export", Scope::Write),
            (Method::POST, "/api/v1/query", Scope::Read),
            (Method::GET, "/loki/api/v1/query_range", Scope::Read),
            (Method::GET, "/api/v1/rules", Scope::Read),
            (Method::POST, "/loki/api/v1/rules/ns", Scope::Admin),
            (Method::DELETE, "/loki/api/v1/rules/ns/group", Scope::Admin),
            (Method::POST, "/api/v1/admin/flush", Scope::Admin),
            (Method::GET, "/api/v1/admin/queries", Scope::Admin),
            (Method::POST, "/-/reload", Scope::Admin),
            (Method::GET, "/metrics", Scope::Read),
            (Method::GET, "/some/new/route", Scope::Read),
        ] {
            assert_eq!(required_scope(&method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn refusals_take_each_apis_shape() {
        let refusal = Refusal::Unauthenticated("a token is required");
        let none = HeaderMap::new();
        let grpc = refusal_response("/opentelemetry.proto.collector.logs.v1.LogsService/Export", &none, &refusal);
        assert_eq!((grpc.status(), grpc.headers()["grpc-status"].to_str().unwrap()), (StatusCode::OK, "16"));
        let otlp = refusal_response("/v1/logs", &none, &refusal);
        assert_eq!(otlp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(otlp.headers()[header::CONTENT_TYPE], "application/x-protobuf");
        assert_eq!(otlp.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"wake\"");
        let forbidden = refusal_response("/api/v1/query", &none, &Refusal::Forbidden("no read scope".into()));
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(forbidden.headers().get(header::WWW_AUTHENTICATE).is_none());
        let loki = refusal_response("/loki/api/v1/query", &none, &refusal);
        assert!(loki.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    }
}
