//! `GET /api/v1/containers`: where an image runs, or ran between two times; what ran on a
//! node; which containers of a pod restarted and why.
//!
//! Parameters (all optional): `image` (exact reference, tag glob or digest prefix: see
//! [`super::image`]), `status` (`running` or `exited`: the status now), `from` and `to`
//! (containers whose `[first_seen, last_seen]` overlaps the range, a running container's
//! reaching to now; `at` is both at once),
//! `node`, `namespace`, `pod`, `container`, `container_id` (exact), `limit` (default 1,000, at
//! most `query.max_entries_limit_per_query`). Times are RFC 3339 or Unix seconds.
//!
//! Answers `{"status":"success","data":{"containers":[…],"total":N,"truncated":bool}}`, most
//! recently seen first; each container carries `links` to its logs (LogQL) and metrics
//! (PromQL) over the time it ran. Bad parameters are 400s in the same envelope as the
//! Prometheus API's errors (`{"status":"error","errorType":"bad_data","error":"…"}`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use wake_storage::inventory::{ContainerRow, Status};

use super::image::ImageFilter;
use crate::engine::QueryEngine;
use crate::limits::Api;
use crate::loki::params::parse_time;

const DEFAULT_LIMIT: usize = 1000;
const PARAMETERS: [&str; 12] =
    ["image", "status", "from", "to", "at", "node", "namespace", "pod", "container", "container_id", "limit", "since"];

/// GET with a query string, or POST with a form body (as Grafana sends long Prometheus queries).
pub fn router(engine: Arc<QueryEngine>) -> Router {
    Router::new().route("/api/v1/containers", get(containers).post(containers_form)).with_state(engine)
}

/// What a request asks for, checked.
#[derive(Debug, Default)]
pub struct ContainerQuery {
    image: Option<ImageFilter>,
    status: Option<Status>,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    exact: Vec<(&'static str, String)>,
    limit: usize,
    /// A running container ran until now, whenever it was last heard of.
    now_ns: i64,
}

fn bad(message: impl Into<String>) -> Response {
    let body = json!({"status": "error", "errorType": "bad_data", "error": message.into()});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

impl ContainerQuery {
    pub fn parse(params: &HashMap<String, String>, max_limit: usize, now_ns: i64) -> Result<ContainerQuery, String> {
        if let Some(unknown) = params.keys().find(|key| !PARAMETERS.contains(&key.as_str())) {
            return Err(format!("unknown parameter {unknown:?} (known: {})", PARAMETERS.join(", ")));
        }
        let time = |name: &str| -> Result<Option<i64>, String> {
            params.get(name).map(|text| parse_time(text).map_err(|e| format!("{name}: {e}"))).transpose()
        };
        let mut query = ContainerQuery { limit: DEFAULT_LIMIT.min(max_limit), now_ns, ..Default::default() };
        query.image = params.get("image").map(|text| ImageFilter::parse(text)).transpose()?;
        query.status = match params.get("status").map(String::as_str) {
            None | Some("") => None,
            Some("running") => Some(Status::Running),
            Some("exited") => Some(Status::Exited),
            Some(other) => return Err(format!("status must be running or exited, not {other:?}")),
        };
        query.from_ns = time("from")?;
        query.to_ns = time("to")?;
        if let Some(since) = params.get("since") {
            let since = crate::loki::params::parse_duration(since).map_err(|e| format!("since: {e}"))?;
            let since = i64::try_from(since.as_nanos()).unwrap_or(i64::MAX);
            query.from_ns = Some(query.from_ns.unwrap_or(now_ns.saturating_sub(since)));
        }
        if let Some(at) = time("at")? {
            if query.from_ns.is_some() || query.to_ns.is_some() {
                return Err("at cannot be combined with from, to or since".into());
            }
            (query.from_ns, query.to_ns) = (Some(at), Some(at));
        }
        if let (Some(from), Some(to)) = (query.from_ns, query.to_ns)
            && from > to
        {
            return Err("from must not be after to".into());
        }
        for key in ["node", "namespace", "pod", "container", "container_id"] {
            if let Some(value) = params.get(key) {
                query.exact.push((key, value.clone()));
            }
        }
        if let Some(limit) = params.get("limit") {
            let limit: usize = limit.parse().map_err(|_| format!("limit must be a positive integer, not {limit:?}"))?;
            if limit == 0 || limit > max_limit {
                return Err(format!("limit must be between 1 and {max_limit}"));
            }
            query.limit = limit;
        }
        Ok(query)
    }

    pub fn matches(&self, row: &ContainerRow) -> bool {
        self.matches_but_image(row) && self.image_matches(row)
    }

    fn image_matches(&self, row: &ContainerRow) -> bool {
        self.image.as_ref().is_none_or(|image| {
            image.matches(row.image_name.as_deref(), row.image_id.as_deref(), row.image_digest.as_deref())
        })
    }

    fn matches_but_image(&self, row: &ContainerRow) -> bool {
        if self.status.is_some_and(|status| row.status != status) {
            return false;
        }
        let last_seen =
            if row.status == Status::Running { row.last_seen_ns.max(self.now_ns) } else { row.last_seen_ns };
        if self.from_ns.is_some_and(|from| last_seen < from) || self.to_ns.is_some_and(|to| row.first_seen_ns > to) {
            return false;
        }
        let field = |key: &str| match key {
            "node" => row.node.as_deref(),
            "namespace" => row.namespace.as_deref(),
            "pod" => row.pod.as_deref(),
            "container" => row.container.as_deref(),
            _ => Some(row.container_id.as_str()),
        };
        self.exact.iter().all(|(key, value)| field(key) == Some(value.as_str()))
    }
}

fn rfc3339(ns: i64) -> Value {
    json!(chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The LogQL and PromQL selectors of one container, over the time it ran.
fn links(row: &ContainerRow) -> Value {
    let logs = format!("{{container_id={}}}", quote(&row.container_id));
    let metrics = match (&row.namespace, &row.pod, &row.container) {
        (Some(namespace), Some(pod), Some(container)) => format!(
            "container_memory_working_set_bytes{{namespace={},pod={},container={}}}",
            quote(namespace),
            quote(pod),
            quote(container)
        ),
        _ => format!("container_memory_working_set_bytes{{container_id={}}}", quote(&row.container_id)),
    };
    let (start, end) = (row.first_seen_ns / 1_000_000_000, row.last_seen_ns / 1_000_000_000 + 1);
    json!({
        "logs": {"expr": logs, "start": start, "end": end},
        "metrics": {"expr": metrics, "start": start, "end": end},
    })
}

pub fn row_json(row: &ContainerRow) -> Value {
    json!({
        "container_id": row.container_id,
        "namespace": row.namespace,
        "pod": row.pod,
        "pod_uid": row.pod_uid,
        "container": row.container,
        "node": row.node,
        "status": row.status.as_str(),
        "first_seen": rfc3339(row.first_seen_ns),
        "last_seen": rfc3339(row.last_seen_ns),
        "exit_code": row.exit_code,
        "reason": row.reason,
        "restarts": row.restarts,
        "image_name": row.image_name,
        "image_id": row.image_id,
        "image_digest": row.image_digest,
        "workload_kind": row.workload_kind,
        "workload": row.workload,
        "runtime": row.runtime,
        "removed_at": row.removed_at_ns.map(rfc3339),
        "labels": row.labels,
        "links": links(row),
    })
}

/// The matching rows, most recently seen first, at most `query.limit`; and how many matched.
pub fn select(state: &wake_storage::inventory::InventoryState, query: &ContainerQuery) -> (Vec<ContainerRow>, usize) {
    let mut matched: Vec<&ContainerRow> = match &query.image {
        // The images first (a cluster runs far fewer images than containers), then only the
        // containers of those that match.
        Some(image) => state
            .images()
            .filter(|(key, _)| image.matches(key.name.as_deref(), key.id.as_deref(), key.digest.as_deref()))
            .flat_map(|(_, ids)| ids.iter().filter_map(|id| state.get(id)))
            .filter(|row| query.matches_but_image(row))
            .collect(),
        None => state.rows().filter(|row| query.matches_but_image(row)).collect(),
    };
    let total = matched.len();
    let by_recency = |a: &&ContainerRow, b: &&ContainerRow| {
        (b.last_seen_ns, &b.container_id).cmp(&(a.last_seen_ns, &a.container_id))
    };
    if matched.len() > query.limit {
        matched.select_nth_unstable_by(query.limit, by_recency);
        matched.truncate(query.limit);
    }
    matched.sort_unstable_by(by_recency);
    (matched.into_iter().cloned().collect(), total)
}

async fn containers(
    State(engine): State<Arc<QueryEngine>>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    match params {
        Ok(Query(params)) => answer(engine, params).await,
        Err(rejection) => bad(format!("unreadable query string: {rejection}")),
    }
}

async fn containers_form(State(engine): State<Arc<QueryEngine>>, headers: HeaderMap, body: Body) -> Response {
    let body = match crate::body::read(engine.config(), &headers, body).await {
        Ok(body) => body,
        Err(crate::body::BodyRefusal::TooLarge(message)) => {
            let body = json!({"status": "error", "errorType": "bad_data", "error": message});
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
        }
        Err(crate::body::BodyRefusal::Unreadable(message)) => return bad(message),
    };
    let params = form_urlencoded::parse(&body).map(|(key, value)| (key.into_owned(), value.into_owned())).collect();
    answer(engine, params).await
}

async fn answer(engine: Arc<QueryEngine>, params: HashMap<String, String>) -> Response {
    let max_limit = engine.config().max_entries_limit_per_query;
    let query = match ContainerQuery::parse(&params, max_limit, wake_storage::now_ns()) {
        Ok(query) => query,
        Err(message) => return bad(message),
    };
    let text = format!("containers {params:?}");
    let store = engine.store().clone();
    let work = async move {
        let (rows, total) = select(&store.inventory().read(), &query);
        let containers: Vec<Value> = rows.iter().map(row_json).collect();
        Ok(
            json!({"status": "success", "data": {"containers": containers, "total": total, "truncated": total > rows.len()}}),
        )
    };
    match engine.run_request(Api::Sql, &text, work).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(error) => {
            let status = error.status();
            let body = json!({"status": "error", "errorType": if status.is_server_error() { "internal" } else { "execution" }, "error": error.to_string()});
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(seconds) = error.retry_after_secs() {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wake_storage::inventory::{ContainerEvent, EventKind, InventoryState};

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn state() -> InventoryState {
        let mut state = InventoryState::default();
        let container = |id: &str, image: &str, start: i64, stop: Option<i64>| {
            let base = ContainerEvent {
                container_id: id.into(),
                image_name: Some(image.into()),
                node: Some("node-a".into()),
                ..Default::default()
            };
            let mut events = vec![ContainerEvent { kind: Some(EventKind::Start), time_ns: start, ..base.clone() }];
            if let Some(stop) = stop {
                events.push(ContainerEvent { kind: Some(EventKind::Stop), time_ns: stop, exit_code: Some(0), ..base });
            }
            events
        };
        state.apply(&container("a", "nginx:1.25.3", 100, Some(200)), 100);
        state.apply(&container("b", "docker.io/library/nginx:1.25", 150, None), 100);
        state.apply(&container("c", "redis:7", 300, Some(400)), 100);
        state
    }

    fn ids(pairs: &[(&str, &str)]) -> Vec<String> {
        let query = ContainerQuery::parse(&params(pairs), 100, 1000).unwrap();
        let mut ids: Vec<String> = select(&state(), &query).0.into_iter().map(|r| r.container_id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn image_status_and_time_range_select_containers() {
        assert_eq!(ids(&[("image", "nginx:1.25*")]), ["a", "b"]);
        assert_eq!(ids(&[("image", "nginx:1.25")]), ["b"]);
        assert_eq!(ids(&[("image", "nginx:1.25*"), ("status", "running")]), ["b"]);
        assert_eq!(ids(&[("status", "exited")]), ["a", "c"]);
        // [first_seen, last_seen] overlaps [from, to], the running b's reaching to now (1000);
        // times in Unix nanoseconds here.
        assert_eq!(ids(&[("from", "250000000000"), ("to", "260000000000")]), Vec::<String>::new());
        assert_eq!(ids(&[("from", "0.00000025"), ("to", "0.00000035")]), ["b", "c"]);
        assert_eq!(ids(&[("at", "0.00000018")]), ["a", "b"]);
        assert_eq!(ids(&[("at", "0.00000012")]), ["a"]);
        assert_eq!(ids(&[("node", "node-a"), ("image", "redis*")]), ["c"]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            vec![("status", "dead")],
            vec![("image", "")],
            vec![("image", "nginx@md5:1")],
            vec![("from", "yesterday")],
            vec![("from", "20"), ("to", "10")],
            vec![("at", "10"), ("from", "5")],
            vec![("limit", "0")],
            vec![("limit", "101")],
            vec![("limit", "-1")],
            vec![("images", "nginx")],
            vec![("since", "forever")],
        ] {
            assert!(ContainerQuery::parse(&params(&bad), 100, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_limit_keeps_the_most_recently_seen() {
        let query = ContainerQuery::parse(&params(&[("limit", "1")]), 100, 1000).unwrap();
        let (rows, total) = select(&state(), &query);
        assert_eq!((rows[0].container_id.as_str(), total), ("c", 3));
    }
}
