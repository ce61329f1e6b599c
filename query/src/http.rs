//! The SQL endpoint: `POST /api/v1/sql` with `{"sql": "…"}`, or `GET /api/v1/sql?sql=…`.
//!
//! Answers `{"columns": [...], "rows": [[...], ...]}`, or CSV with a header line when the
//! request accepts `text/csv`. The answer is rendered batch by batch as the query produces
//! them, straight into the response's bytes (no JSON tree of the whole result), and stops at
//! `query.max_result_rows` rows or `query.max_result_bytes` bytes: then the request fails with
//! 413 naming the limit, unless it asked for `"truncate": true` (`truncate=true`), in which case
//! the answer holds the rows that fit and says `"truncated": true` (CSV: the header
//! `X-Wake-Truncated: true`). The rest of the query is cancelled either way.
//!
//! Errors are `{"error": "…"}`: 400 for SQL that does not parse or plan, 403 for statements
//! that are not read-only queries, 413 for answers over the caps, 422 for other query limits
//! (memory), 429 with `Retry-After` when the SQL queue is full, 503 on timeout, 500 (with a
//! `request_id` that the server's log also names) when Wake is at fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::QueryEngine;
use crate::error::Error;
use crate::json::array_to_json;
use crate::limits::Api;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    /// Answer the rows that fit the caps, marked truncated, instead of a 413.
    #[serde(default)]
    truncate: bool,
}

/// Routes `/api/v1/sql`, the Loki, Prometheus, Tempo and Jaeger APIs and the list of running
/// queries.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    Router::new()
        .route("/api/v1/sql", get(sql_get).post(sql_post))
        .route("/api/v1/admin/queries", get(active_queries))
        .with_state(engine.clone())
        .merge(crate::loki::router(engine.clone()))
        .merge(crate::prom::router(engine.clone()))
        .merge(crate::inventory::api::router(engine.clone()))
        .merge(crate::traces::router(engine))
}

async fn sql_get(
    State(engine): State<Arc<QueryEngine>>,
    headers: HeaderMap,
    query: Result<Query<SqlRequest>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(request)) => answer(engine, &headers, request).await,
        Err(rejection) => error_response(&Error::BadRequest(format!("the query string must hold `sql`: {rejection}"))),
    }
}

async fn sql_post(State(engine): State<Arc<QueryEngine>>, headers: HeaderMap, body: Body) -> Response {
    let body = match crate::body::read(engine.config(), &headers, body).await {
        Ok(body) => body,
        Err(crate::body::BodyRefusal::TooLarge(message)) => {
            return error_response(&Error::Limit { limit: "request_body", message });
        }
        Err(crate::body::BodyRefusal::Unreadable(message)) => return error_response(&Error::BadRequest(message)),
    };
    match serde_json::from_slice::<SqlRequest>(&body) {
        Ok(request) => answer(engine, &headers, request).await,
        Err(error) => {
            error_response(&Error::BadRequest(format!("the body must be JSON like {{\"sql\": \"SELECT …\"}}: {error}")))
        }
    }
}

/// The running queries of every API, oldest first.
async fn active_queries(State(engine): State<Arc<QueryEngine>>) -> Response {
    let queries: Vec<Value> = engine
        .limits()
        .active()
        .into_iter()
        .map(|(query, elapsed)| {
            json!({
                "id": query.id,
                "api": query.api,
                "query": query.query,
                "started": query.started,
                "elapsed_seconds": elapsed.as_secs_f64(),
            })
        })
        .collect();
    axum::Json(json!({ "queries": queries })).into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The answer as it is rendered: bytes so far, rows so far, and whether a cap cut it short.
struct Rendered {
    format: Format,
    body: Vec<u8>,
    rows: usize,
    truncated: bool,
    max_rows: usize,
    max_bytes: usize,
    truncate: bool,
}

impl Rendered {
    fn start(
        format: Format,
        schema: &SchemaRef,
        max_rows: usize,
        max_bytes: usize,
        truncate: bool,
    ) -> Result<Self, Error> {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut body = Vec::with_capacity(4096);
        match format {
            Format::Json => {
                body.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut body, &names).map_err(render_error)?;
                body.extend_from_slice(b",\"rows\":[");
            }
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(&mut body);
                writer.write_record(&names).map_err(csv_error)?;
                writer.flush().map_err(|e| Error::Task(format!("writing CSV: {e}")))?;
            }
        }
        Ok(Rendered { format, body, rows: 0, truncated: false, max_rows, max_bytes, truncate })
    }

    /// Appends a batch's rows; `Ok(false)` once a cap is reached (the query is then stopped).
    fn push(&mut self, batch: &RecordBatch) -> Result<bool, Error> {
        let columns: Vec<Vec<Value>> = batch
            .columns()
            .iter()
            .map(|c| array_to_json(c.as_ref()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::DataFusion(e.into()))?;
        for row in 0..batch.num_rows() {
            let mark = self.body.len();
            self.write_row(&columns, row)?;
            if self.rows >= self.max_rows || self.body.len() > self.max_bytes {
                self.body.truncate(mark);
                let (limit, message) = if self.rows >= self.max_rows {
                    (
                        "max_result_rows",
                        format!("the answer has more than {} rows (query.max_result_rows)", self.max_rows),
                    )
                } else {
                    (
                        "max_result_bytes",
                        format!("the answer is larger than {} bytes (query.max_result_bytes)", self.max_bytes),
                    )
                };
                if !self.truncate {
                    return Err(Error::Limit {
                        limit,
                        message: format!("{message}; add LIMIT, or ask for \"truncate\": true"),
                    });
                }
                self.truncated = true;
                return Ok(false);
            }
            self.rows += 1;
        }
        Ok(true)
    }

    fn write_row(&mut self, columns: &[Vec<Value>], row: usize) -> Result<(), Error> {
        match self.format {
            Format::Json => {
                if self.rows > 0 {
                    self.body.push(b',');
                }
                self.body.push(b'[');
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        self.body.push(b',');
                    }
                    serde_json::to_writer(&mut self.body, &column[row]).map_err(render_error)?;
                }
                self.body.push(b']');
            }
            Format::Csv => {
                // Strings as they are, everything else as its JSON text (maps and lists stay
                // readable).
                let mut writer = csv::Writer::from_writer(&mut self.body);
                let fields = columns.iter().map(|column| match &column[row] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                writer.write_record(fields).map_err(csv_error)?;
                writer.flush().map_err(|e| Error::Task(format!("writing CSV: {e}")))?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Response {
        match self.format {
            Format::Json => {
                self.body.push(b']');
                if self.truncated {
                    self.body.extend_from_slice(b",\"truncated\":true");
                }
                self.body.push(b'}');
                (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.body)
                    .into_response()
            }
            Format::Csv => {
                let mut response = (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"))],
                    self.body,
                )
                    .into_response();
                if self.truncated {
                    response.headers_mut().insert("x-wake-truncated", HeaderValue::from_static("true"));
                }
                response
            }
        }
    }
}

fn render_error(error: serde_json::Error) -> Error {
    Error::Task(format!("rendering the result: {error}"))
}

fn csv_error(error: csv::Error) -> Error {
    Error::Task(format!("writing CSV: {error}"))
}

async fn answer(engine: Arc<QueryEngine>, headers: &HeaderMap, request: SqlRequest) -> Response {
    let format = if headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")))
    {
        Format::Csv
    } else {
        Format::Json
    };
    let (max_rows, max_bytes) = (engine.config().max_result_rows, engine.config().max_result_bytes);
    let truncate = request.truncate;
    let sql = request.sql;
    let work = {
        let engine = engine.clone();
        let sql = sql.clone();
        async move {
            engine
                .sql_each(
                    &sql,
                    move |schema| Rendered::start(format, schema, max_rows, max_bytes, truncate),
                    |rendered, batch| rendered.push(batch),
                )
                .await
        }
    };
    match engine.run_request(Api::Sql, &sql, work).await {
        Ok(rendered) => rendered.finish(),
        Err(error) => error_response(&error),
    }
}

/// Numbers the internal errors, so that a client's report finds the server's log line.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

fn error_response(error: &Error) -> Response {
    let status = error.status();
    let mut body = json!({ "error": error.to_string() });
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        let request_id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
        tracing::error!(request_id, %error, "SQL API: internal error");
        body["request_id"] = json!(request_id);
    }
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = error.retry_after_secs() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
