//! Loki's live tail, `GET /loki/api/v1/tail` over WebSocket, as Grafana's Explore "Live" mode and
//! `logcli query --tail` use it.
//!
//! Parameters, as Loki's: `query`, a LogQL *log* query (a metric query is refused); `start`
//! (default one hour ago, or `now - since`; at most `query.max_query_length_secs` ago, as Loki
//! checks the history query); `limit`, the number of past lines sent first (default 100, at most
//! `query.max_entries_limit_per_query`); `delay_for`, whole seconds (0 to [`MAX_DELAY_FOR_S`]) to
//! hold lines back so that slow senders can catch up. A bad parameter or query is answered with a
//! plain-text 400 before the upgrade; a failure once the socket is open closes it with code 1011
//! and the error as the reason.
//!
//! At most `query.max_concurrent_tail_requests` tails are open at once (Loki's limit of that
//! name); one more is answered with a plain-text 429 and `Retry-After` before the upgrade, and
//! counted in `wake_query_limit_hits_total{api="loki",limit="max_concurrent_tail_requests"}`. A
//! tail holds its place until its socket closes.
//!
//! Every server message is a text frame in the shape of Loki's `TailResponse`:
//! `{"streams":[{"stream":{<labels>},"values":[["<unix ns>","<line>"], …]}, …]}`, at most
//! [`MAX_ENTRIES_PER_MESSAGE`] lines each, in time order; consecutive lines of the same labels
//! share one stream object (Loki sends one per line; both read the same). `dropped_entries` is
//! left out, as Loki's encoder does when nothing was dropped: nothing here is dropped, a slow
//! client only slows the polling down.
//!
//! First, the newest `limit` lines in `[start, now - delay_for)` (a backward `query_range`), sent
//! oldest first. Then the store is polled every [`POLL_INTERVAL`] for lines up to
//! `now - delay_for`. Polling, because the store has no push feed for queries: rows are appended
//! by the receivers and become readable through the same DataFusion tables as any query, so a
//! tail is a repeated query, with the pipeline evaluated exactly as `query_range` does.
//!
//! Each poll reads `[now - delay_for - LATE_WINDOW, now - delay_for)`, not just what follows the
//! last line sent: agents batch and retry, so lines often arrive a few seconds after their own
//! timestamp, after newer lines of another container were already sent. A cursor on the last
//! timestamp would lose them; the window finds them. What was already sent is recognised by
//! (timestamp, hash of labels and line), counted, so that a line logged twice at the same instant
//! is sent twice, as the store holds it and `query_range` returns it; these counts are kept only
//! for the window ([`MAX_REMEMBERED`] at most), so memory stays bounded however long the tail
//! runs. A line that arrives more than `LATE_WINDOW` behind `now - delay_for` is not tailed
//! (queries still find it).
//!
//! A poll sends at most [`MAX_ENTRIES_PER_POLL`] lines and reads at most [`MAX_POLL_SPAN`] of
//! time; when there were more lines, or more time to read, the next poll starts at once, where
//! that one stopped. So a tail that fell behind (a burst larger than it can send) catches up a
//! span at a time: no poll sorts everything since it fell behind. The socket is read between
//! polls: a close frame, an error or the end of the stream ends the tail (tungstenite answers the
//! client's pings itself). While nothing is sent, a ping goes out every [`PING_INTERVAL`], which
//! finds dead peers and keeps proxies from closing an idle connection.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use logql::{LineFilterOp, LogQuery};
use serde_json::{Value as Json, json};
use tokio::time::Instant;

use super::eval::{self, LokiError, Parsed};
use super::labels::{STREAM_LABELS, quote, selector_condition, time_condition};
use super::params::{self, Direction, Params, first, now_ns};
use super::pipeline::{Labels, Pipeline};
use crate::QueryConfig;
use crate::engine::QueryEngine;
use crate::limits::{Api, TailPermit};

/// How often the store is asked for new lines.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How far behind `now - delay_for` each poll looks again for lines that arrived late.
pub const LATE_WINDOW: Duration = Duration::from_secs(10);
/// The most lines one poll sends; more wait for the next poll, which then follows at once.
pub const MAX_ENTRIES_PER_POLL: usize = 1000;
/// The longest time one poll reads, so that its query sorts a bounded span of rows however far
/// behind the tail is; twice [`LATE_WINDOW`], so that a tail that is not behind reads its whole
/// window in one poll.
pub const MAX_POLL_SPAN: Duration = Duration::from_secs(2 * LATE_WINDOW.as_secs());
/// The most lines in one message (Loki's `maxEntriesPerTailResponse`).
pub const MAX_ENTRIES_PER_MESSAGE: usize = 100;
/// The largest `delay_for`, in seconds (Loki's `maxDelayForInTailing`).
pub const MAX_DELAY_FOR_S: u64 = 5;
/// The most sent lines remembered to recognise them when a poll reads them again.
pub const MAX_REMEMBERED: usize = 100_000;
/// A ping goes out when nothing was sent for this long.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// A tail request, checked before the upgrade.
#[derive(Debug)]
pub struct TailRequest {
    query: LogQuery,
    pipeline: Arc<Pipeline>,
    /// The selector and the pushed-down line filters, as SQL.
    condition: String,
    start_ns: i64,
    limit: usize,
    delay_ns: i64,
}

/// Parses and checks the parameters and the query, so that every fault of the request is a 400
/// before the upgrade.
pub fn parse_request(config: &QueryConfig, params: &Params, now: i64) -> Result<TailRequest, LokiError> {
    let text = first(params, "query").ok_or_else(|| LokiError::BadQuery("missing query parameter `query`".into()))?;
    if text.len() > config.max_query_bytes {
        return Err(LokiError::Limit {
            limit: "max_query_bytes",
            message: format!("the query is longer than {} bytes (query.max_query_bytes)", config.max_query_bytes),
        });
    }
    let query = match eval::parse(text, config.max_query_depth)? {
        Parsed::Log(log) => log,
        Parsed::Metric(_) => {
            return Err(LokiError::BadQuery(format!(
                "tail needs a log query, not a metric query: {text} (drop the range aggregation to see its lines)"
            )));
        }
    };
    let pipeline = Pipeline::compile(&query.pipeline)?;
    let mut conditions = vec![selector_condition(&query.selector)?];
    for filter in pipeline.leading_line_filters() {
        if filter.is_ip {
            return Err(LokiError::BadQuery("ip() line filters are not supported".into()));
        }
        // `Pipeline::process` applies every filter again; these only narrow the scan.
        match filter.op {
            LineFilterOp::Contains => conditions.push(format!("contains_text(body, {})", quote(&filter.value))),
            LineFilterOp::NotContains => {
                conditions.push(format!("strpos(coalesce(body, ''), {}) = 0", quote(&filter.value)));
            }
            _ => {}
        }
    }
    let start_ns = match (first(params, "start"), first(params, "since")) {
        (Some(start), _) => params::parse_time(start)?,
        (None, Some(since)) => now.saturating_sub(params::duration_ns(params::parse_duration(since)?)),
        (None, None) => now - 3600 * 1_000_000_000,
    };
    let param_limits = params::ParamLimits::of(config);
    // Loki runs the history as a query over `[start, now)`, within `max_query_length`: a `start`
    // years back would otherwise sort every line of the store before the first is sent.
    param_limits.check_length(i128::from(now) - i128::from(start_ns))?;
    let limit = params::limit(params, &param_limits)?;
    let delay_s = match first(params, "delay_for") {
        None => 0,
        Some(text) => text.trim().parse::<u64>().map_err(|_| {
            LokiError::BadQuery(format!("invalid delay_for {text:?}: expected a whole number of seconds"))
        })?,
    };
    if delay_s > MAX_DELAY_FOR_S {
        return Err(LokiError::BadQuery(format!("delay_for can't be greater than {MAX_DELAY_FOR_S}")));
    }
    Ok(TailRequest {
        query,
        pipeline: Arc::new(pipeline),
        condition: conditions.join(" AND "),
        start_ns,
        limit,
        delay_ns: delay_s as i64 * 1_000_000_000,
    })
}

/// `GET /loki/api/v1/tail`: checks the request and takes a place among the open tails, then
/// upgrades to a WebSocket and tails.
pub async fn handler(
    State(engine): State<Arc<QueryEngine>>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let request = match parse_request(engine.config(), &params::parse_form(query.as_deref().unwrap_or("")), now_ns()) {
        Ok(request) => request,
        Err(error) => {
            if let Some(limit) = error.limit_name() {
                engine.limits().hit(Api::Loki, limit);
            }
            return super::api::error_response(error);
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Before the upgrade, so that the client gets a status it can act on (after it, all it could
    // get is a close frame), and after the checks above, so that a bad request takes no place.
    let permit = match engine.limits().admit_tail() {
        Ok(permit) => permit,
        Err(error) => return super::api::error_response(error.into()),
    };
    // The permit moves into the socket's task and is dropped when the tail ends; if the upgrade
    // never completes, the callback is dropped unrun, and the permit with it.
    upgrade.on_upgrade(move |socket| run(socket, engine, request, permit))
}

/// One log line as sent: final labels and line after the pipeline.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    ts: i64,
    labels: Labels,
    line: String,
}

/// The identity of an entry within its timestamp.
fn entry_key(labels: &Labels, line: &str) -> u64 {
    // SipHash with fixed keys: the same entry hashes alike in every poll.
    let mut hasher = DefaultHasher::new();
    labels.hash(&mut hasher);
    line.hash(&mut hasher);
    hasher.finish()
}

/// How many times each (timestamp, key) was sent, for the timestamps a poll can read again.
#[derive(Debug, Default)]
struct Sent {
    by_ts: BTreeMap<i64, HashMap<u64, u32>>,
    len: usize,
}

impl Sent {
    fn count(&self, ts: i64, key: u64) -> u32 {
        self.by_ts.get(&ts).and_then(|keys| keys.get(&key)).copied().unwrap_or(0)
    }

    fn record(&mut self, ts: i64, key: u64) {
        *self.by_ts.entry(ts).or_default().entry(key).or_default() += 1;
        self.len += 1;
    }

    /// Forgets what was sent before `ts`.
    fn forget_before(&mut self, ts: i64) {
        while let Some(entry) = self.by_ts.first_entry() {
            if *entry.key() >= ts {
                break;
            }
            self.len -= entry.remove().values().map(|&n| n as usize).sum::<usize>();
        }
    }

    /// Forgets the oldest timestamps until at most `max` sends are remembered; returns the
    /// timestamp from which everything is still remembered, if any was forgotten.
    fn shrink_to(&mut self, max: usize) -> Option<i64> {
        let mut forgotten = None;
        while self.len > max {
            let Some((ts, keys)) = self.by_ts.pop_first() else { break };
            self.len -= keys.values().map(|&n| n as usize).sum::<usize>();
            forgotten = Some(ts + 1);
        }
        forgotten
    }
}

/// One poll's reading of its window, in time order: counts the entries of the current timestamp
/// to tell the ones sent before from new ones, and collects the new ones up to a cap.
#[derive(Debug)]
struct Scan {
    sent: Sent,
    current_ts: Option<i64>,
    current: HashMap<u64, u32>,
    new: Vec<Entry>,
    cap: usize,
    /// The timestamp of the first new entry left for the next poll, when the cap was reached.
    stopped_at: Option<i64>,
}

impl Scan {
    fn new(sent: Sent, cap: usize) -> Scan {
        Scan { sent, current_ts: None, current: HashMap::new(), new: Vec::new(), cap, stopped_at: None }
    }

    /// Offers the next entry in time order; false once the cap is reached.
    fn offer(&mut self, ts: i64, labels: Labels, line: String) -> bool {
        if self.current_ts != Some(ts) {
            self.current_ts = Some(ts);
            self.current.clear();
        }
        let key = entry_key(&labels, &line);
        let seen = self.current.entry(key).or_default();
        *seen += 1;
        if *seen <= self.sent.count(ts, key) {
            return true;
        }
        if self.new.len() >= self.cap {
            self.stopped_at = Some(ts);
            return false;
        }
        self.sent.record(ts, key);
        self.new.push(Entry { ts, labels, line });
        true
    }
}

/// The state of one tail between polls.
struct Tailer {
    engine: Arc<QueryEngine>,
    request: TailRequest,
    /// Nothing before this is ever read again (`start`, or the oldest line of a full history).
    floor_ns: i64,
    /// Where the last poll stopped at its cap: the next one reads from there.
    backlog_ns: Option<i64>,
    sent: Sent,
}

impl Tailer {
    fn new(engine: Arc<QueryEngine>, request: TailRequest) -> Tailer {
        let floor_ns = request.start_ns;
        Tailer { engine, request, floor_ns, backlog_ns: None, sent: Sent::default() }
    }

    /// The newest `limit` entries before `end_ns`, oldest first.
    async fn history(&mut self, end_ns: i64) -> Result<Vec<Entry>, LokiError> {
        let limit = self.request.limit;
        let streams = if limit == 0 || end_ns <= self.floor_ns {
            Vec::new()
        } else {
            eval::log_query(&self.engine, &self.request.query, self.floor_ns, end_ns, limit, Direction::Backward)
                .await?
        };
        let mut entries: Vec<Entry> = streams
            .into_iter()
            .flat_map(|stream| {
                let labels = stream.labels;
                stream.entries.into_iter().map(move |entry| Entry {
                    ts: entry.ts,
                    labels: labels.clone(),
                    line: entry.line,
                })
            })
            .collect();
        entries.sort_by_key(|entry| entry.ts);
        if entries.len() >= limit {
            // Full: older lines were left out on purpose, and lines at the oldest timestamp may
            // have been too; later polls must not bring them back.
            self.floor_ns = entries.first().map_or(end_ns, |oldest| oldest.ts + 1).max(self.floor_ns);
        }
        for entry in &entries {
            self.sent.record(entry.ts, entry_key(&entry.labels, &entry.line));
        }
        Ok(entries)
    }

    /// New entries up to `end_ns` (exclusive), oldest first, and whether more are waiting.
    async fn poll(&mut self, end_ns: i64) -> Result<(Vec<Entry>, bool), LokiError> {
        let (low, high) = poll_window(end_ns, self.backlog_ns, self.floor_ns);
        self.sent.forget_before(low);
        if high <= low {
            return Ok((Vec::new(), false));
        }
        let labels = STREAM_LABELS.iter().map(|(_, column)| *column).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT CAST(timestamp AS BIGINT) AS ts, {labels}, body FROM logs WHERE {} AND {} ORDER BY timestamp ASC",
            time_condition(low, high),
            self.request.condition
        );
        let pipeline = self.request.pipeline.clone();
        let scan = Scan::new(std::mem::take(&mut self.sent), MAX_ENTRIES_PER_POLL);
        let scan = self
            .engine
            .sql_fold(&sql, scan, move |scan, batch| {
                let timestamps = batch.column(0).as_primitive::<Int64Type>();
                let bodies = batch.column(1 + STREAM_LABELS.len()).as_string::<i32>();
                for row in 0..batch.num_rows() {
                    let mut labels = Labels::new();
                    for (i, (label, _)) in STREAM_LABELS.iter().enumerate() {
                        if let Some(values) = batch.column(1 + i).as_string_opt::<i32>()
                            && values.is_valid(row)
                        {
                            labels.insert((*label).to_string(), values.value(row).to_string());
                        }
                    }
                    let body = if bodies.is_valid(row) { bodies.value(row) } else { "" };
                    if let Some(line) = pipeline.process(body, &mut labels)
                        && !scan.offer(timestamps.value(row), labels, line)
                    {
                        return false;
                    }
                }
                true
            })
            .await?;
        self.sent = scan.sent;
        self.backlog_ns = next_backlog(scan.stopped_at, high, end_ns);
        if let Some(remembered_from) = self.sent.shrink_to(MAX_REMEMBERED) {
            self.floor_ns = self.floor_ns.max(remembered_from);
        }
        Ok((scan.new, self.backlog_ns.is_some()))
    }
}

/// The window `[low, high)` a poll up to `end_ns` reads: from [`LATE_WINDOW`] behind `end_ns`,
/// or from where the last poll stopped (`backlog_ns`) if that is earlier, never before
/// `floor_ns`; and at most [`MAX_POLL_SPAN`] long.
fn poll_window(end_ns: i64, backlog_ns: Option<i64>, floor_ns: i64) -> (i64, i64) {
    let span_ns = |span: Duration| i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
    let low = end_ns.saturating_sub(span_ns(LATE_WINDOW)).min(backlog_ns.unwrap_or(i64::MAX)).max(floor_ns);
    let high = end_ns.min(low.saturating_add(span_ns(MAX_POLL_SPAN)));
    (low, high)
}

/// Where the next poll must start reading: where this one stopped at its line cap, else the end
/// of its window when the span cut it short of `end_ns`, else nowhere in particular (`None`).
/// Everything sent before that point is still remembered, so reading again from there sends
/// nothing twice.
fn next_backlog(stopped_at: Option<i64>, high: i64, end_ns: i64) -> Option<i64> {
    stopped_at.or((high < end_ns).then_some(high))
}

/// A `TailResponse` of `entries` (in time order): consecutive entries of the same labels share
/// one stream object.
fn tail_response(entries: &[Entry]) -> String {
    let mut streams: Vec<(&Labels, Vec<Json>)> = Vec::new();
    for entry in entries {
        let value = json!([entry.ts.to_string(), entry.line]);
        match streams.last_mut() {
            Some((labels, values)) if *labels == &entry.labels => values.push(value),
            _ => streams.push((&entry.labels, vec![value])),
        }
    }
    let streams: Vec<Json> = streams
        .into_iter()
        .map(|(labels, values)| {
            let labels: serde_json::Map<String, Json> =
                labels.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
            json!({ "stream": labels, "values": values })
        })
        .collect();
    json!({ "streams": streams }).to_string()
}

/// A close reason within the 123 bytes a close frame has room for.
fn close_reason(error: &str) -> String {
    let mut end = error.len().min(123);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_string()
}

/// Why a tail ended.
enum End {
    /// The client closed, or the socket failed: nothing more to say.
    Gone,
    Failed(LokiError),
}

impl From<axum::Error> for End {
    fn from(_: axum::Error) -> End {
        End::Gone
    }
}

impl From<LokiError> for End {
    fn from(error: LokiError) -> End {
        End::Failed(error)
    }
}

async fn send(socket: &mut WebSocket, entries: &[Entry]) -> Result<(), End> {
    for chunk in entries.chunks(MAX_ENTRIES_PER_MESSAGE) {
        socket.send(Message::Text(tail_response(chunk).into())).await?;
    }
    Ok(())
}

/// Tails until the client goes or the tail fails; `_permit`, the tail's place among the open
/// tails, is released when this returns.
async fn run(mut socket: WebSocket, engine: Arc<QueryEngine>, request: TailRequest, _permit: TailPermit) {
    if let End::Failed(error) = tail(&mut socket, Tailer::new(engine, request)).await {
        tracing::warn!(%error, "loki tail failed");
        let frame = CloseFrame { code: close_code::ERROR, reason: close_reason(&error.to_string()).into() };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
}

async fn tail(socket: &mut WebSocket, mut tailer: Tailer) -> End {
    let delay_ns = tailer.request.delay_ns;
    let history = match tailer.history(now_ns() - delay_ns).await {
        Ok(history) => history,
        Err(error) => return error.into(),
    };
    if let Err(end) = send(socket, &history).await {
        return end;
    }
    let mut last_write = Instant::now();
    let mut next_poll = Instant::now() + POLL_INTERVAL;
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::Gone,
                // Pings are answered by tungstenite; anything else the client says is ignored.
                Some(Ok(_)) => continue,
            },
            () = tokio::time::sleep_until(next_poll) => {}
        }
        let (entries, more) = match tailer.poll(now_ns() - delay_ns).await {
            Ok(polled) => polled,
            Err(error) => return error.into(),
        };
        if !entries.is_empty() {
            if let Err(end) = send(socket, &entries).await {
                return end;
            }
            last_write = Instant::now();
        } else if last_write.elapsed() >= PING_INTERVAL {
            if socket.send(Message::Ping(Default::default())).await.is_err() {
                return End::Gone;
            }
            last_write = Instant::now();
        }
        next_poll = if more { Instant::now() } else { Instant::now() + POLL_INTERVAL };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn request(query: &str) -> Result<TailRequest, LokiError> {
        parse_request(&QueryConfig::default(), &params::parse_form(query), 10_000 * 1_000_000_000)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn requests_default_like_loki_and_refuse_what_loki_refuses() {
        let tail = request("query=%7Bservice_name%3D%22api%22%7D").unwrap();
        assert_eq!((tail.start_ns, tail.limit, tail.delay_ns), (6_400 * 1_000_000_000, 100, 0));
        assert_eq!(tail.condition, "coalesce(service_name, '') = 'api'");
        let tail =
            request("query={service_name=\"api\"} |= \"x\" != \"y\" |~ \"z\"&start=5&limit=7&delay_for=3").unwrap();
        // `start=5` has at most 10 characters: Unix seconds, as Loki reads it.
        assert_eq!((tail.start_ns, tail.limit, tail.delay_ns), (5_000_000_000, 7, 3_000_000_000));
        assert_eq!(
            tail.condition,
            "coalesce(service_name, '') = 'api' AND contains_text(body, 'x') AND strpos(coalesce(body, ''), 'y') = 0"
        );
        assert_eq!(request("query={service_name=\"api\"}&since=10s").unwrap().start_ns, 9_990 * 1_000_000_000);

        for (query, message) in [
            ("", "missing query"),
            ("query=count_over_time({service_name=\"api\"}[1m])", "metric query"),
            ("query=sum(rate({service_name=\"api\"}[1m]))", "metric query"),
            ("query={service_name=~\".*\"}", "at least one"),
            ("query={service_name=\"api\"", "parse error"),
            ("query={service_name=\"api\"}&delay_for=6", "greater than 5"),
            ("query={service_name=\"api\"}&delay_for=1.5", "whole number"),
            ("query={service_name=\"api\"}&limit=5001", "max entries limit"),
            ("query={service_name=\"api\"}&start=yesterday", "cannot parse"),
        ] {
            match request(query) {
                Err(error @ (LokiError::BadQuery(_) | LokiError::Limit { .. })) => {
                    assert!(error.to_string().contains(message), "{query}: {error}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn history_reaches_back_at_most_the_longest_query() {
        let config = QueryConfig { max_query_length_secs: 3600, ..QueryConfig::default() };
        let now = 10_000 * 1_000_000_000;
        let tail = |query: &str| parse_request(&config, &params::parse_form(query), now);
        assert_eq!(tail("query={service_name=\"api\"}&since=1h").unwrap().start_ns, 6_400 * 1_000_000_000);
        for query in ["query={service_name=\"api\"}&since=61m", "query={service_name=\"api\"}&start=0"] {
            match tail(query) {
                Err(error @ LokiError::Limit { limit: "max_query_length_secs", .. }) => {
                    assert!(error.to_string().contains("query time range exceeds the limit"), "{query}: {error}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn one_tail_too_many_is_a_plain_text_429_with_retry_after() {
        let response = super::super::api::error_response(Error::TooManyTails { max: 10 }.into());
        assert_eq!(response.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[axum::http::header::RETRY_AFTER], crate::limits::RETRY_AFTER_SECS.to_string().as_str());
        assert_eq!(headers[axum::http::header::CONTENT_TYPE], "text/plain; charset=utf-8");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            "max concurrent tail requests limit exceeded, count > limit (11 > 10) (query.max_concurrent_tail_requests)"
        );
    }

    #[test]
    fn polls_read_a_bounded_span_and_a_tail_behind_catches_up_without_gaps() {
        const S: i64 = 1_000_000_000;
        let span = i64::try_from(MAX_POLL_SPAN.as_nanos()).unwrap();
        let now = 100_000 * S;
        // Not behind: the late window, in one poll.
        assert_eq!(poll_window(now, None, 0), (now - 10 * S, now));
        assert_eq!(next_backlog(None, now, now), None);
        assert_eq!(poll_window(now, None, now - 3 * S), (now - 3 * S, now), "never before the floor");
        // An hour behind (a burst stopped the last poll there): each poll reads one span from
        // where the last one ended, until it reaches the late window.
        let mut backlog = Some(now - 3600 * S);
        let mut read_up_to = now - 3600 * S;
        let mut polls = 0;
        loop {
            let (low, high) = poll_window(now, backlog, 0);
            assert!(low <= read_up_to && high > read_up_to, "poll {polls}: [{low}, {high}) leaves a gap");
            assert!(high - low <= span, "poll {polls} reads {} s", (high - low) / S);
            read_up_to = high;
            polls += 1;
            backlog = next_backlog(None, high, now);
            if backlog.is_none() {
                break;
            }
        }
        assert_eq!((read_up_to, polls), (now, 3600 / 20));
        // A poll stopped at its line cap resumes there, even within its window.
        assert_eq!(next_backlog(Some(now - 5 * S), now, now), Some(now - 5 * S));
    }

    #[test]
    fn scans_skip_what_was_sent_counting_repeats() {
        let a = labels(&[("service_name", "a")]);
        let mut sent = Sent::default();
        sent.record(5, entry_key(&a, "one"));
        sent.record(7, entry_key(&a, "same"));
        let mut scan = Scan::new(sent, 10);
        assert!(scan.offer(5, a.clone(), "one".into()));
        assert!(scan.offer(5, a.clone(), "two".into()), "same time, other line");
        assert!(scan.offer(7, a.clone(), "same".into()));
        assert!(scan.offer(7, a.clone(), "same".into()), "logged twice, sent once so far");
        assert!(scan.offer(8, labels(&[("service_name", "b")]), "one".into()));
        let new: Vec<(i64, &str)> = scan.new.iter().map(|e| (e.ts, e.line.as_str())).collect();
        assert_eq!(new, vec![(5, "two"), (7, "same"), (8, "one")]);

        // The next scan reads the same rows and finds nothing new.
        let mut again = Scan::new(scan.sent, 10);
        for (ts, line) in [(5, "one"), (5, "two"), (7, "same"), (7, "same")] {
            assert!(again.offer(ts, a.clone(), line.into()));
        }
        assert!(again.offer(8, labels(&[("service_name", "b")]), "one".into()));
        assert!(again.new.is_empty());
        assert_eq!(again.sent.len, 5);
    }

    #[test]
    fn scans_stop_at_their_cap_where_the_next_one_resumes() {
        let a = labels(&[("service_name", "a")]);
        let mut scan = Scan::new(Sent::default(), 2);
        assert!(scan.offer(1, a.clone(), "1".into()));
        assert!(scan.offer(2, a.clone(), "2".into()));
        assert!(!scan.offer(2, a.clone(), "2b".into()));
        assert_eq!(scan.stopped_at, Some(2));
        let mut next = Scan::new(scan.sent, 2);
        for (ts, line) in [(2, "2"), (2, "2b"), (3, "3")] {
            assert!(next.offer(ts, a.clone(), line.into()));
        }
        let lines: Vec<&str> = next.new.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, vec!["2b", "3"]);
        assert_eq!(next.stopped_at, None);
    }

    #[test]
    fn sent_lines_are_forgotten_by_age_and_beyond_the_bound() {
        let mut sent = Sent::default();
        for ts in 0..10 {
            sent.record(ts, 1);
            sent.record(ts, 2);
        }
        sent.forget_before(3);
        assert_eq!((sent.len, sent.count(2, 1), sent.count(3, 1)), (14, 0, 1));
        assert_eq!(sent.shrink_to(5), Some(8));
        assert_eq!((sent.len, sent.count(7, 2), sent.count(8, 2)), (4, 0, 1));
        assert_eq!(sent.shrink_to(5), None);
    }

    #[test]
    fn responses_keep_time_order_and_group_runs_of_a_stream() {
        let (a, b) = (labels(&[("service_name", "a")]), labels(&[("service_name", "b")]));
        let entry = |ts: i64, labels: &Labels, line: &str| Entry { ts, labels: labels.clone(), line: line.into() };
        let text = tail_response(&[entry(1, &a, "x"), entry(2, &a, "y"), entry(3, &b, "z"), entry(4, &a, "w")]);
        let json: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            json!({ "streams": [
                { "stream": { "service_name": "a" }, "values": [["1", "x"], ["2", "y"]] },
                { "stream": { "service_name": "b" }, "values": [["3", "z"]] },
                { "stream": { "service_name": "a" }, "values": [["4", "w"]] },
            ]})
        );
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let reason = close_reason(&long);
        assert!(reason.len() <= 123 && long.starts_with(&reason), "{}", reason.len());
    }
}
