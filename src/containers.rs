//! `wake containers`: where an image runs or ran, what ran on a node, which containers of a
//! pod restarted and why, from the server's `GET /api/v1/containers`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct ContainersArgs {
    /// An image: exact (`nginx:1.25`, `docker.io/library/nginx:1.25`), a glob
    /// (`'nginx:1.25*'`) or a digest prefix (`sha256:4598c0`, `nginx@sha256:4598c0`).
    #[arg(long)]
    pub image: Option<String>,
    /// Containers seen in this window up to now, e.g. 1h, 7d.
    #[arg(long, value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub since: Option<Duration>,
    /// Containers that ran at this time (RFC 3339 or Unix seconds), e.g. with --node.
    #[arg(long)]
    pub at: Option<String>,
    /// Only `running` or `exited` containers (their status now).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub pod: Option<String>,
    /// Most containers to list, most recently seen first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// The Wake query API.
    #[arg(long, env = "WAKE_URL", default_value = "http://127.0.0.1:4380")]
    pub url: String,
    /// Print the API's JSON answer instead of the table.
    #[arg(long)]
    pub json: bool,
}

const COLUMNS: [&str; 10] =
    ["namespace", "pod", "container", "node", "image", "status", "first seen", "last seen", "exit", "restarts"];

fn text(value: &Value) -> Value {
    match value {
        Value::Null => json!(""),
        other => other.clone(),
    }
}

/// The table of an `/api/v1/containers` answer.
pub fn render(answer: &Value) -> String {
    let containers = answer["data"]["containers"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = containers
        .iter()
        .map(|c| {
            let exit = match (c["exit_code"].as_i64(), c["reason"].as_str()) {
                (Some(code), Some(reason)) => json!(format!("{code} ({reason})")),
                (Some(code), None) => json!(code.to_string()),
                _ => json!(""),
            };
            let status = match c["removed_at"].as_str() {
                Some(_) => json!(format!("{} (removed)", c["status"].as_str().unwrap_or(""))),
                None => text(&c["status"]),
            };
            json!([
                text(&c["namespace"]),
                text(&c["pod"]),
                text(&c["container"]),
                text(&c["node"]),
                text(&c["image_name"]),
                status,
                text(&c["first_seen"]),
                text(&c["last_seen"]),
                exit,
                text(&c["restarts"]),
            ])
        })
        .collect();
    let mut table = crate::cli::table(&json!({"columns": COLUMNS, "rows": rows}));
    if answer["data"]["truncated"].as_bool() == Some(true) {
        let total = answer["data"]["total"].as_u64().unwrap_or(0);
        table.push_str(&format!("({} of {total} shown: raise --limit for more)\n", containers.len()));
    }
    table
}

pub async fn run(args: ContainersArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/containers", args.url.trim_end_matches('/'));
    let mut params: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    let optional = [
        ("image", &args.image),
        ("at", &args.at),
        ("status", &args.status),
        ("node", &args.node),
        ("namespace", &args.namespace),
        ("pod", &args.pod),
    ];
    params.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value.clone()?))));
    if let Some(since) = args.since {
        params.push(("since", format!("{}s", since.as_secs())));
    }
    let client = crate::cli::http_client(Duration::from_secs(60))?;
    let response = client.get(&url).query(&params).send().await.with_context(|| format!("connecting to {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {}", answer["error"].as_str().unwrap_or(body.trim()));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{body}")?;
    } else {
        write!(out, "{}", render(&answer))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_removals_read_plainly() {
        let answer = json!({"status": "success", "data": {"total": 3, "truncated": true, "containers": [{
            "namespace": "shop", "pod": "web-0", "container": "app", "node": "n1", "image_name": "nginx:1.25",
            "status": "exited", "first_seen": "2026-12-07T10:00:00Z", "last_seen": "2026-12-07T10:05:00Z",
            "exit_code": 137, "reason": "OOMKilled", "restarts": 2, "removed_at": "2026-12-07T10:06:00Z"
        }]}});
        let table = render(&answer);
        assert!(table.contains("137 (OOMKilled)"), "{table}");
        assert!(table.contains("exited (removed)"), "{table}");
        assert!(table.contains("(1 of 3 shown"), "{table}");
    }
}
