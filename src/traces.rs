//! `wake traces`: a trace by id as a tree in the terminal (durations, offsets, errors), and
//! TraceQL search, through the server's Tempo API.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use wake_collector::time::now_ns;

#[derive(clap::Subcommand, Debug)]
pub enum TracesCommand {
    /// Print one trace as a tree of spans.
    Get(GetArgs),
    /// Find traces with TraceQL, e.g. '{ resource.service.name = "checkout" && status = error }'.
    Search(SearchArgs),
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The trace id (hex).
    pub trace_id: String,
    /// The Wake query API.
    #[arg(long, env = "WAKE_URL", default_value = "http://127.0.0.1:4380")]
    pub url: String,
    /// Print Tempo's JSON answer instead of the tree.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// A TraceQL query.
    pub query: String,
    /// The Wake query API.
    #[arg(long, env = "WAKE_URL", default_value = "http://127.0.0.1:4380")]
    pub url: String,
    /// How far back to look, e.g. 15m, 2h, 7d.
    #[arg(long, default_value = "1h", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub since: Duration,
    /// Most traces to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print Tempo's JSON answer instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: TracesCommand) -> anyhow::Result<()> {
    let client = crate::cli::http_client(Duration::from_secs(300))?;
    match command {
        TracesCommand::Get(args) => {
            let url = format!("{}/api/traces/{}", args.url.trim_end_matches('/'), args.trace_id.trim());
            let body = get(&client, &url, &[]).await?;
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{body}")?;
            } else {
                write!(out, "{}", render_tree(&args.trace_id, &body))?;
            }
        }
        TracesCommand::Search(args) => {
            let url = format!("{}/api/search", args.url.trim_end_matches('/'));
            let end = now_ns() / 1_000_000_000;
            let start = end - i64::try_from(args.since.as_secs()).unwrap_or(i64::MAX).min(end);
            let params = [
                ("q", args.query.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("limit", args.limit.to_string()),
            ];
            let body = get(&client, &url, &params).await?;
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{body}")?;
            } else {
                write!(out, "{}", render_search(&body))?;
            }
        }
    }
    Ok(())
}

async fn get(client: &reqwest::Client, url: &str, params: &[(&str, String)]) -> anyhow::Result<Value> {
    let response = client.get(url).query(params).send().await.with_context(|| format!("connecting to {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {}", text.trim());
    }
    serde_json::from_str(&text).context("the answer is not JSON")
}

/// One span of Tempo's v1 JSON, flattened.
struct Span {
    id: String,
    parent: String,
    name: String,
    service: String,
    start_ns: i64,
    end_ns: i64,
    error: Option<String>,
    events: usize,
}

fn nanos(value: &Value) -> i64 {
    value.as_str().and_then(|s| s.parse().ok()).or_else(|| value.as_i64()).unwrap_or(0)
}

fn spans_of(body: &Value) -> Vec<Span> {
    let mut spans = Vec::new();
    for batch in body["batches"].as_array().into_iter().flatten() {
        let service = batch["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["key"] == "service.name")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or("unknown_service")
            .to_string();
        for scope in batch["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let status = &span["status"];
                let error = (status["code"] == 2 || status["code"] == "STATUS_CODE_ERROR")
                    .then(|| status["message"].as_str().unwrap_or_default().to_string());
                spans.push(Span {
                    id: span["spanId"].as_str().unwrap_or_default().to_string(),
                    parent: span["parentSpanId"].as_str().unwrap_or_default().to_string(),
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    service: service.clone(),
                    start_ns: nanos(&span["startTimeUnixNano"]),
                    end_ns: nanos(&span["endTimeUnixNano"]),
                    error,
                    events: span["events"].as_array().map_or(0, Vec::len),
                });
            }
        }
    }
    spans.sort_by_key(|s| s.start_ns);
    spans
}

fn millis(ns: i64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// The trace as an indented tree: each span with its service, its offset from the trace's
/// start, its duration and, when it failed, `ERROR` and the status message. Spans whose parent
/// is missing are shown at the top, marked.
fn render_tree(trace_id: &str, body: &Value) -> String {
    let spans = spans_of(body);
    let ids: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut tops = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        if !span.parent.is_empty() && ids.contains_key(span.parent.as_str()) && span.parent != span.id {
            children.entry(span.parent.as_str()).or_default().push(i);
        } else {
            tops.push(i);
        }
    }
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
    let errors = spans.iter().filter(|s| s.error.is_some()).count();
    let mut out =
        format!("trace {}  {}  {} spans  {} errors\n", trace_id.trim(), millis(end - start), spans.len(), errors);
    let mut stack: Vec<(usize, String, bool, bool)> =
        tops.iter().rev().enumerate().map(|(n, &i)| (i, String::new(), n == 0, true)).collect();
    let mut printed = 0;
    while let Some((i, prefix, last, top)) = stack.pop() {
        printed += 1;
        if printed > spans.len() {
            break;
        }
        let span = &spans[i];
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let mut line = format!(
            "{prefix}{branch}{}  [{}]  +{}  {}",
            span.name,
            span.service,
            millis(span.start_ns - start),
            millis(span.end_ns - span.start_ns)
        );
        if let Some(message) = &span.error {
            line.push_str("  ERROR");
            if !message.is_empty() {
                line.push_str(&format!(" {message}"));
            }
        }
        if span.events > 0 {
            line.push_str(&format!("  ({} events)", span.events));
        }
        if top && !span.parent.is_empty() {
            line.push_str(&format!("  (parent {} missing)", span.parent));
        }
        out.push_str(&line);
        out.push('\n');
        let child_prefix = if top { String::new() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
        let kids = children.get(span.id.as_str()).cloned().unwrap_or_default();
        for (n, &child) in kids.iter().rev().enumerate() {
            stack.push((child, child_prefix.clone(), n == 0, false));
        }
    }
    out
}

fn render_search(body: &Value) -> String {
    let mut out =
        String::from("TRACE ID                          START                    DURATION   SERVICE / NAME\n");
    for trace in body["traces"].as_array().into_iter().flatten() {
        let start_ns = nanos(&trace["startTimeUnixNano"]);
        // RFC 3339 with nanoseconds, shown to the millisecond with a space for the `T`.
        let stamp = wake_query::json::format_timestamp_ns(start_ns, true);
        let start = stamp.get(..23).unwrap_or(&stamp).replacen('T', " ", 1);
        out.push_str(&format!(
            "{}  {}  {:>8} ms  {} {}\n",
            trace["traceID"].as_str().unwrap_or_default(),
            start,
            trace["durationMs"].as_i64().unwrap_or(0),
            trace["rootServiceName"].as_str().unwrap_or_default(),
            trace["rootTraceName"].as_str().unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_nests_children_and_marks_errors_and_orphans() {
        let body = serde_json::json!({"batches": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
            "scopeSpans": [{"spans": [
                {"spanId": "a", "name": "GET /", "startTimeUnixNano": "0", "endTimeUnixNano": "10000000"},
                {"spanId": "b", "parentSpanId": "a", "name": "db", "startTimeUnixNano": "1000000",
                 "endTimeUnixNano": "3000000", "status": {"code": 2, "message": "timeout"}},
                {"spanId": "c", "parentSpanId": "a", "name": "render", "startTimeUnixNano": "4000000",
                 "endTimeUnixNano": "5000000"},
                {"spanId": "d", "parentSpanId": "zz", "name": "late", "startTimeUnixNano": "6000000",
                 "endTimeUnixNano": "7000000"}
            ]}]
        }]});
        let tree = render_tree("abc", &body);
        assert_eq!(
            tree,
            "trace abc  10.0 ms  4 spans  1 errors\n\
             GET /  [web]  +0.0 ms  10.0 ms\n\
             ├─ db  [web]  +1.0 ms  2.0 ms  ERROR timeout\n\
             └─ render  [web]  +4.0 ms  1.0 ms\n\
             late  [web]  +6.0 ms  1.0 ms  (parent zz missing)\n"
        );
    }
}
