//! The SQL endpoint: `POST /api/v1/sql` with `{"sql": "…"}`, or `GET /api/v1/sql?sql=…`.
//!
//! Answers `{"columns": [...], "rows": [[...], ...]}`, or CSV with a header line when the
//! request accepts `text/csv`. Errors are `{"error": "…"}` with a 4xx status when the query is
//! at fault and 5xx when Wake is.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{QueryEngine, QueryOutput};
use crate::error::Error;
use crate::json::array_to_json;

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
}

/// Routes `/api/v1/sql`, the Loki API and the Prometheus API.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    Router::new()
        .route("/api/v1/sql", get(sql_get).post(sql_post))
        .with_state(engine.clone())
        .merge(crate::loki::router(engine.clone()))
        .merge(crate::prom::router(engine))
}

async fn sql_get(
    State(engine): State<Arc<QueryEngine>>,
    headers: HeaderMap,
    query: Result<Query<SqlRequest>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(request)) => answer(&engine, &headers, &request.sql).await,
        Err(_) => error_response(StatusCode::BAD_REQUEST, "missing query parameter `sql`"),
    }
}

async fn sql_post(State(engine): State<Arc<QueryEngine>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<SqlRequest>(&body) {
        Ok(request) => answer(&engine, &headers, &request.sql).await,
        Err(error) => error_response(
            StatusCode::BAD_REQUEST,
            &format!("the body must be JSON like {{\"sql\": \"SELECT …\"}}: {error}"),
        ),
    }
}

async fn answer(engine: &QueryEngine, headers: &HeaderMap, sql: &str) -> Response {
    let output = match engine.sql(sql).await {
        Ok(output) => output,
        Err(error) => return error_response(error.status(), &error.to_string()),
    };
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")));
    let rendered = if wants_csv { render_csv(&output) } else { render_json(&output) };
    match rendered {
        Ok(response) => response,
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("rendering the result: {error}")),
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Row-major JSON values of the whole result.
fn rows(output: &QueryOutput) -> Result<Vec<Vec<Value>>, Error> {
    let mut rows = Vec::with_capacity(output.num_rows());
    for batch in &output.batches {
        let columns: Vec<Vec<Value>> = batch
            .columns()
            .iter()
            .map(|c| array_to_json(c.as_ref()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::DataFusion(e.into()))?;
        for row in 0..batch.num_rows() {
            rows.push(columns.iter().map(|column| column[row].clone()).collect());
        }
    }
    Ok(rows)
}

fn column_names(output: &QueryOutput) -> Vec<String> {
    output.schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn render_json(output: &QueryOutput) -> Result<Response, Error> {
    let body = json!({ "columns": column_names(output), "rows": rows(output)? });
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// Strings as they are, everything else as its JSON text (maps and lists stay readable).
fn render_csv(output: &QueryOutput) -> Result<Response, Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| Error::Task(format!("writing CSV: {e}"));
    writer.write_record(column_names(output)).map_err(csv_error)?;
    for row in rows(output)? {
        let fields = row.into_iter().map(|value| match value {
            Value::Null => String::new(),
            Value::String(s) => s,
            other => other.to_string(),
        });
        writer.write_record(fields).map_err(csv_error)?;
    }
    let body = writer.into_inner().map_err(|e| Error::Task(format!("writing CSV: {e}")))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}
