//! Deletion requests: Loki's `/loki/api/v1/delete` (a stream selector, optionally with line
//! filters, over a time range) and Prometheus' `delete_series` (the stored series a selector
//! matched, over a time range).
//!
//! A request is written to `deletes.json` (a temporary file, fsync, rename, fsync of the
//! directory) before it is acknowledged, then executed: the buffers are flushed so that every
//! row acknowledged before it is in a file, and every file of the signal that overlaps the
//! range is rewritten without the matching rows, in one manifest commit per file, as retention
//! rewrites files. Only then is it marked `processed`. A request found `received` when the
//! store opens (a crash or a failure part-way) is executed again at the next retention pass,
//! which is idempotent. Query caches are keyed by file, and a rewritten file is a new file, so
//! no cache answers deleted rows.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt64Type;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::catalog::DataFile;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::retention::RowSelector;
use crate::schema::{SERIES_ID, Signal};

const FILE_NAME: &str = "deletes.json";

/// Deepest nesting of brackets a deletion query may have.
const MAX_QUERY_NESTING: usize = 8;

/// What a request deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DeleteTarget {
    /// Log lines: a LogQL stream selector with optional line filters (`|= "x"`, `!~ "re"`).
    Logs { query: String },
    /// The metrics rows of these stored series (`selector` is what the client asked).
    Series { selector: String, series_ids: Vec<u64> },
}

impl DeleteTarget {
    pub fn signal(&self) -> Signal {
        match self {
            DeleteTarget::Logs { .. } => Signal::Logs,
            DeleteTarget::Series { .. } => Signal::Metrics,
        }
    }

    /// The text the client sent.
    pub fn query(&self) -> &str {
        match self {
            DeleteTarget::Logs { query } => query,
            DeleteTarget::Series { selector, .. } => selector,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteStatus {
    /// Recorded; not all of its rows are gone yet.
    Received,
    /// Its rows are gone from every file.
    Processed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub request_id: String,
    pub target: DeleteTarget,
    pub start_ns: i64,
    pub end_ns: i64,
    pub created_at_ns: i64,
    pub status: DeleteStatus,
}

/// The requests of one store, as `deletes.json` holds them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct DeleteLog {
    pub(crate) requests: Vec<DeleteRequest>,
}

impl DeleteLog {
    pub(crate) fn load(data_dir: &Path) -> Result<DeleteLog> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Manifest { path, reason: format!("the deletion requests do not parse: {e}") }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(DeleteLog::default()),
            Err(error) => Err(Error::io(path, error)),
        }
    }

    /// Replaces `deletes.json` atomically and durably.
    pub(crate) fn save(&self, data_dir: &Path) -> Result<()> {
        let path = data_dir.join(FILE_NAME);
        let temporary: PathBuf = data_dir.join(format!("{FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("deletion requests: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| Error::io(&path, e))
    }
}

/// Which rows of a batch a request deletes, compiled once per request.
pub(crate) enum RowPredicate {
    Logs { selector: RowSelector, lines: Vec<(LineMatch, bool)> },
    Series(HashSet<u64>),
}

pub(crate) enum LineMatch {
    Contains(String),
    Regex(regex::Regex),
}

/// Checks a Loki deletion query: a stream selector and line filters, nothing else (Loki's
/// compactor refuses the rest too).
pub fn validate_logs_query(query: &str) -> std::result::Result<(), String> {
    RowPredicate::compile(&DeleteTarget::Logs { query: query.to_string() }).map(|_| ())
}

impl RowPredicate {
    pub(crate) fn compile(target: &DeleteTarget) -> std::result::Result<RowPredicate, String> {
        match target {
            DeleteTarget::Series { series_ids, .. } => Ok(RowPredicate::Series(series_ids.iter().copied().collect())),
            DeleteTarget::Logs { query } => {
                // A selector with line filters nests a level or two: deeper text would only
                // deepen the parser's recursion.
                let mut depth = 0usize;
                for byte in query.bytes() {
                    match byte {
                        b'(' | b'[' | b'{' => depth += 1,
                        b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    if depth > MAX_QUERY_NESTING {
                        return Err(format!("{query:?} nests deeper than {MAX_QUERY_NESTING} levels"));
                    }
                }
                // logql-parser panics on some durations (`5555555555555555d` into `from_secs_f64`):
                // a client's text must not take the server down.
                let parsed = std::panic::catch_unwind(|| logql::parse_query(query))
                    .map_err(|_| format!("invalid query {query:?}: it cannot be parsed"))?
                    .map_err(|e| format!("invalid query {query:?}: {e}"))?;
                let selector = RowSelector::from_matchers(query, parsed.selector, Signal::Logs)?;
                let mut lines = Vec::new();
                for stage in parsed.pipeline {
                    let logql::PipelineStage::LineFilter(filter) = stage else {
                        return Err(format!("{query:?}: a deletion query is a stream selector with line filters only"));
                    };
                    if filter.is_ip {
                        return Err(format!("{query:?}: ip() line filters are not supported in deletions"));
                    }
                    let regex = || regex::Regex::new(&filter.value).map_err(|e| format!("{query:?}: {e}"));
                    lines.push(match filter.op {
                        logql::LineFilterOp::Contains => (LineMatch::Contains(filter.value.clone()), true),
                        logql::LineFilterOp::NotContains => (LineMatch::Contains(filter.value.clone()), false),
                        logql::LineFilterOp::Regex => (LineMatch::Regex(regex()?), true),
                        logql::LineFilterOp::NotRegex => (LineMatch::Regex(regex()?), false),
                        _ => return Err(format!("{query:?}: an unsupported line filter")),
                    });
                }
                Ok(RowPredicate::Logs { selector, lines })
            }
        }
    }

    /// Which rows of `batch` match.
    fn matches(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        match self {
            RowPredicate::Series(ids) => {
                let column = batch
                    .column_by_name(SERIES_ID)
                    .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                    .ok_or_else(|| Error::Internal("a metrics file lacks series_id".into()))?;
                Ok(column.iter().map(|id| id.is_some_and(|id| ids.contains(&id))).collect())
            }
            RowPredicate::Logs { selector, lines } => {
                let mut matched = selector.matches(batch)?;
                if lines.is_empty() {
                    return Ok(matched);
                }
                let bodies = batch
                    .column_by_name("body")
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| Error::Internal("a logs file lacks body".into()))?;
                for (row, keep) in matched.iter_mut().enumerate() {
                    if !*keep {
                        continue;
                    }
                    let body = if bodies.is_null(row) { "" } else { bodies.value(row) };
                    *keep = lines.iter().all(|(line, positive)| {
                        let found = match line {
                            LineMatch::Contains(text) => body.contains(text.as_str()),
                            LineMatch::Regex(regex) => regex.is_match(body),
                        };
                        found == *positive
                    });
                }
                Ok(matched)
            }
        }
    }
}

/// `file` rewritten without the rows `predicate` matches in `[start_ns, end_ns]`; `None` when
/// it holds none.
pub(crate) fn rewrite(
    data_dir: &Path,
    file: &Arc<DataFile>,
    predicate: &RowPredicate,
    (start_ns, end_ns): (i64, i64),
    config: &StoreConfig,
    name: &str,
) -> Result<Option<Vec<Arc<DataFile>>>> {
    crate::retention::rewrite_without(data_dir, file, config, name, |batch, times| {
        let matched = predicate.matches(batch)?;
        Ok(matched
            .into_iter()
            .zip(times)
            .map(|(m, t)| m && t.is_some_and(|t| (start_ns..=end_ns).contains(&t)))
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loki_queries_are_selectors_with_line_filters() {
        assert!(validate_logs_query(r#"{service_name="api"}"#).is_ok());
        assert!(validate_logs_query(r#"{service_name="api"} |= "password" !~ "ok.*""#).is_ok());
        assert!(validate_logs_query(r#"{service_name="api"} | json"#).is_err());
        assert!(validate_logs_query(r#"{nope="api"}"#).is_err(), "no such column");
        assert!(validate_logs_query("not logql").is_err());
        // Found by the fuzz target tenant_and_delete: the parser panicked on it.
        assert!(validate_logs_query("5555555555555555d").is_err());
        assert!(validate_logs_query(&"(".repeat(10_000)).is_err());
    }

    #[test]
    fn the_log_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = DeleteLog {
            requests: vec![DeleteRequest {
                request_id: "a1".into(),
                target: DeleteTarget::Series { selector: "up".into(), series_ids: vec![7] },
                start_ns: 1,
                end_ns: 2,
                created_at_ns: 3,
                status: DeleteStatus::Received,
            }],
        };
        log.save(dir.path()).unwrap();
        assert_eq!(DeleteLog::load(dir.path()).unwrap().requests, log.requests);
        assert!(DeleteLog::load(&dir.path().join("none")).unwrap().requests.is_empty());
    }
}
