//! Command-line clients for people without Grafana: `wake sql` prints a query's result as a
//! table, `wake logs` prints log lines through the Loki API (LogQL or a plain search string).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use wake_collector::time::now_ns;

/// Flags of `wake sql`.
#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// The SQL statement (read-only), e.g. "SELECT count(*) FROM logs".
    pub query: String,
    /// The Wake query API.
    #[arg(long, env = "WAKE_URL", default_value = "http://127.0.0.1:4380")]
    pub url: String,
    /// Output: an aligned table, JSON (the API's answer) or CSV.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SqlFormat {
    Table,
    Json,
    Csv,
}

/// Flags of `wake logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// A LogQL log query (`{namespace="shop"} |= "error"`), or words to search for in every
    /// container's logs (lines holding all of them).
    pub query: String,
    /// The Wake query API.
    #[arg(long, env = "WAKE_URL", default_value = "http://127.0.0.1:4380")]
    pub url: String,
    /// How far back to look, e.g. 15m, 2h, 7d.
    #[arg(long, default_value = "1h", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub since: Duration,
    /// Start of the range (RFC 3339, or Unix seconds/nanoseconds); overrides --since.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// Most lines to print.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Keep printing new lines as they arrive.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output: `text` (time, labels, line; coloured by stream on a terminal) or `jsonl`.
    #[arg(long, value_enum, default_value = "text")]
    pub output: LogsOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum LogsOutput {
    Text,
    Jsonl,
}

fn client() -> anyhow::Result<reqwest::Client> {
    http_client(Duration::from_secs(300))
}

/// The HTTP client of every command that talks to a server: it sends `WAKE_TOKEN` as a bearer
/// token, and `WAKE_TENANT` as `X-Scope-OrgID`, when they are set.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = std::env::var("WAKE_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("WAKE_TOKEN holds characters a header cannot")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    if let Some(tenant) = std::env::var("WAKE_TENANT").ok().filter(|t| !t.trim().is_empty()) {
        let value = reqwest::header::HeaderValue::from_str(tenant.trim()).context("WAKE_TENANT is no header value")?;
        headers.insert("x-scope-orgid", value);
    }
    Ok(reqwest::Client::builder().timeout(timeout).default_headers(headers).build()?)
}

/// Reads an error answer: `{"error": …}` from the SQL API, plain text from the Loki API.
async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or(text);
    anyhow::anyhow!("{status}: {}", message.trim())
}

pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let mut request = client()?.post(&url).json(&serde_json::json!({ "sql": args.query }));
    if matches!(args.format, SqlFormat::Csv) {
        request = request.header("accept", "text/csv");
    }
    let response = request.send().await.with_context(|| format!("connecting to {url}"))?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let body = response.text().await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        SqlFormat::Csv | SqlFormat::Json => writeln!(out, "{}", body.trim_end())?,
        SqlFormat::Table => {
            let answer: Value = serde_json::from_str(&body).context("the answer is not JSON")?;
            write!(out, "{}", table(&answer))?;
        }
    }
    Ok(())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// An aligned text table of a `{"columns", "rows"}` answer, as psql prints one.
pub fn table(answer: &Value) -> String {
    let columns: Vec<String> = answer["columns"].as_array().map(|c| c.iter().map(cell).collect()).unwrap_or_default();
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter().map(|r| r.as_array().map(|r| r.iter().map(cell).collect()).unwrap_or_default()).collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &rows {
        for (i, value) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(value.chars().count());
            }
        }
    }
    let line = |values: &[String]| -> String {
        let cells: Vec<String> =
            values.iter().zip(&widths).map(|(v, w)| format!("{v}{}", " ".repeat(w - v.chars().count()))).collect();
        format!(" {}\n", cells.join(" | ").trim_end())
    };
    let mut text = line(&columns);
    text.push_str(&format!("{}\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+")));
    for row in &rows {
        text.push_str(&line(row));
    }
    text.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    text
}

/// A LogQL query for `text`: LogQL as it is; plain words as a search over every container
/// for lines that hold every word, wherever they are in the line (one `|=` per word).
pub fn logql_for(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('{') {
        return text.to_string();
    }
    let mut query = String::from("{service_name=~\".+\"}");
    for word in text.split_whitespace() {
        query.push_str(&format!(" |= \"{}\"", word.replace('\\', "\\\\").replace('"', "\\\"")));
    }
    query
}

/// One printed log line: (time ns, labels, line).
type Entry = (i64, serde_json::Map<String, Value>, String);

async fn fetch(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    start_ns: &str,
    end_ns: &str,
    limit: usize,
) -> anyhow::Result<Vec<Entry>> {
    let url = format!("{}/loki/api/v1/query_range", base.trim_end_matches('/'));
    let limit = limit.to_string();
    let params =
        [("query", query), ("start", start_ns), ("end", end_ns), ("limit", limit.as_str()), ("direction", "backward")];
    let response = client.get(&url).query(&params).send().await.with_context(|| format!("connecting to {url}"))?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let answer: Value = response.json().await.context("the answer is not JSON")?;
    if answer["data"]["resultType"] != "streams" {
        bail!("`wake logs` prints log queries; use a metric query in Grafana or the Loki API");
    }
    let mut entries = Vec::new();
    for stream in answer["data"]["result"].as_array().into_iter().flatten() {
        let labels = stream["stream"].as_object().cloned().unwrap_or_default();
        for value in stream["values"].as_array().into_iter().flatten() {
            let time = value[0].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
            entries.push((time, labels.clone(), value[1].as_str().unwrap_or_default().to_string()));
        }
    }
    // Streams come one after the other: print in time order, oldest first, like `tail`.
    entries.sort_by_key(|(time, _, _)| *time);
    Ok(entries)
}

fn print(out: &mut impl Write, entries: &[Entry], output: LogsOutput, colour: bool) -> std::io::Result<()> {
    for (time, labels, line) in entries {
        match output {
            LogsOutput::Jsonl => {
                let record = serde_json::json!({
                    "time": wake_query::json::format_timestamp_ns(*time, true),
                    "labels": labels,
                    "line": line,
                });
                writeln!(out, "{record}")?;
            }
            LogsOutput::Text => {
                let label = |name: &str| labels.get(name).and_then(Value::as_str).unwrap_or("");
                let source = format!(
                    "{}/{}/{}",
                    label("k8s_namespace_name"),
                    label("k8s_pod_name"),
                    label("k8s_container_name")
                );
                let stderr = label("stream") == "stderr";
                let time = wake_query::json::format_timestamp_ns(*time, true);
                if colour {
                    let colour = if stderr { "\x1b[31m" } else { "\x1b[0m" };
                    writeln!(out, "\x1b[2m{time}\x1b[0m \x1b[36m{source}\x1b[0m {colour}{line}\x1b[0m")?;
                } else {
                    writeln!(out, "{time} {source} {line}")?;
                }
            }
        }
    }
    out.flush()
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = client()?;
    let query = logql_for(&args.query);
    let end = match &args.to {
        Some(to) => wake_query::loki::params::parse_time(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        None => now_ns(),
    };
    let start = match &args.from {
        Some(from) => wake_query::loki::params::parse_time(from).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        None => end - args.since.as_nanos() as i64,
    };
    let colour = args.output == LogsOutput::Text && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let entries = fetch(&client, &args.url, &query, &start.to_string(), &end.to_string(), args.limit).await?;
    print(&mut out, &entries, args.output, colour)?;
    if !args.follow {
        return Ok(());
    }
    // Follow by polling from just after the newest line printed.
    let mut after = entries.last().map_or(end, |(time, _, _)| time + 1);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = now_ns();
        let entries = fetch(&client, &args.url, &query, &after.to_string(), &now.to_string(), 5000).await?;
        if let Some((time, _, _)) = entries.last() {
            after = time + 1;
        }
        print(&mut out, &entries, args.output, colour)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_psql() {
        let answer = serde_json::json!({ "columns": ["pod", "n"], "rows": [["web-1", 12], ["db", null]] });
        assert_eq!(table(&answer), " pod   | n\n-------+----\n web-1 | 12\n db    |\n(2 rows)\n");
    }

    #[test]
    fn plain_words_become_a_search_over_every_container() {
        assert_eq!(logql_for(r#"{pod="x"} |= "y""#), r#"{pod="x"} |= "y""#);
        assert_eq!(logql_for(r#"say "hi""#), r#"{service_name=~".+"} |= "say" |= "\"hi\"""#);
        assert_eq!(logql_for("  timeout   db-1 "), r#"{service_name=~".+"} |= "timeout" |= "db-1""#);
    }
}
