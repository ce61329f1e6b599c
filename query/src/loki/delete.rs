//! Loki's log deletion API (the compactor's): `POST /loki/api/v1/delete?query=…&start=…&end=…`
//! records and executes a deletion (204), `GET` lists the requests, `DELETE ?request_id=…`
//! cancels one not yet processed. Errors are plain text, as Loki answers them. The store
//! executes a request before the 204, so no later query returns its lines (Loki's own default
//! waits out a 24 h cancel period first; here a request can be cancelled only while a failure
//! keeps it from being processed).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use wake_storage::deletion::{DeleteRequest, DeleteStatus, DeleteTarget};

use super::params::{self, first, now_ns};
use crate::engine::QueryEngine;

type Engine = std::sync::Arc<QueryEngine>;

pub fn router(engine: Engine) -> Router {
    Router::new().route("/loki/api/v1/delete", get(list).post(create).put(create).delete(cancel)).with_state(engine)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.into()).into_response()
}

fn store_error(error: &wake_storage::Error) -> Response {
    let status = match error.class() {
        wake_storage::ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
        wake_storage::ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, error.to_string())
}

async fn create(State(engine): State<Engine>, RawQuery(raw): RawQuery) -> Response {
    let params = params::parse_form(raw.as_deref().unwrap_or(""));
    let Some(query) = first(&params, "query") else { return text(StatusCode::BAD_REQUEST, "query is required") };
    if query.len() > engine.config().max_query_bytes {
        return text(StatusCode::BAD_REQUEST, "the query is longer than query.max_query_bytes");
    }
    if let Err(message) = wake_storage::deletion::validate_logs_query(query) {
        return text(StatusCode::BAD_REQUEST, message);
    }
    let time = |key: &str, default: i64| match first(&params, key) {
        Some(value) => params::parse_time(value).map_err(|e| format!("{key}: {}", e.message)),
        None => Ok(default),
    };
    let (start, end) = match (time("start", 0), time("end", now_ns())) {
        (Ok(start), Ok(end)) => (start, end),
        (Err(message), _) | (_, Err(message)) => return text(StatusCode::BAD_REQUEST, message),
    };
    let target = DeleteTarget::Logs { query: query.to_string() };
    match engine.store().request_delete(target, start, end).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => store_error(&error),
    }
}

fn seconds(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// Loki's shape: `request_id`, `start_time`, `end_time`, `created_at` (Unix seconds),
/// `query`, `status` (`received` or `processed`).
fn request_json(request: &DeleteRequest) -> serde_json::Value {
    json!({
        "request_id": request.request_id,
        "start_time": seconds(request.start_ns),
        "end_time": seconds(request.end_ns),
        "created_at": seconds(request.created_at_ns),
        "query": request.target.query(),
        "status": match request.status { DeleteStatus::Received => "received", DeleteStatus::Processed => "processed" },
    })
}

async fn list(State(engine): State<Engine>) -> Response {
    let requests: Vec<serde_json::Value> = engine
        .store()
        .delete_requests()
        .await
        .iter()
        .filter(|r| r.target.signal() == wake_storage::Signal::Logs)
        .map(request_json)
        .collect();
    axum::Json(requests).into_response()
}

async fn cancel(State(engine): State<Engine>, RawQuery(raw): RawQuery) -> Response {
    let params = params::parse_form(raw.as_deref().unwrap_or(""));
    let Some(id) = first(&params, "request_id") else { return text(StatusCode::BAD_REQUEST, "request_id is required") };
    match engine.store().cancel_delete(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => text(StatusCode::NOT_FOUND, format!("no deletion request {id}")),
        Err(error) => store_error(&error),
    }
}
