//! Retention and the disk bound: which files to drop or trim so that no row older than its
//! signal's retention stays, and so that the store stays within `max_disk_bytes`.
//!
//! A file wholly older than the cutoff is dropped; a file that straddles it is rewritten with
//! only its rows at or after the cutoff (its full-text index with it). Either way the change is
//! one manifest commit (`replaced`: inputs out, rewritten files in), so a crash at any point
//! reopens to the files before or after it, never a mix; replaced files are deleted once the
//! last query holding them is done, and a file a crash left unreferenced is deleted when the
//! store opens. Past `max_disk_bytes`, whole files go, oldest data first across the signals
//! (the newest row of a file decides its age), ties broken by `eviction_order`.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampNanosecondType;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::DataFile;
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::schema::Signal;
use crate::writer;

/// `store.retention` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long every signal is kept unless it has its own; none: for ever.
    #[serde(deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub default: Option<Duration>,
    #[serde(deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub logs: Option<Duration>,
    #[serde(deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub metrics: Option<Duration>,
    #[serde(deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub spans: Option<Duration>,
    /// The Parquet files and indexes of all signals take at most this many bytes (0: no bound);
    /// past it the oldest files go.
    pub max_disk_bytes: u64,
    /// Which signal's files go first when files of several are equally old.
    pub eviction_order: Vec<Signal>,
    /// How often retention and the disk bound are applied.
    pub interval_secs: u64,
    /// Shorter retention for some streams: the rows a stream selector over the table's
    /// identity columns matches (`{k8s_namespace_name=~"dev-.*"}`) go after their own time.
    pub overrides: Vec<RetentionOverride>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverride {
    /// A LogQL stream selector; its labels are the table's string columns
    /// (`k8s_namespace_name`, `k8s_pod_name`, `service_name`, …).
    pub selector: String,
    #[serde(default, deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub logs: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub metrics: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration", serialize_with = "seconds")]
    pub spans: Option<Duration>,
}

impl RetentionOverride {
    pub fn of(&self, signal: Signal) -> Option<Duration> {
        match signal {
            Signal::Logs => self.logs,
            Signal::Metrics => self.metrics,
            Signal::Spans => self.spans,
        }
        .filter(|d| !d.is_zero())
    }
}

/// A selector compiled against a table's columns: every matcher must hold (a missing value is
/// the empty string, as in Loki).
#[derive(Debug, Clone)]
pub(crate) struct RowSelector {
    matchers: Vec<(String, Matcher)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Equal(String, bool),
    Regex(regex::Regex, bool),
}

impl RowSelector {
    pub(crate) fn compile(text: &str, signal: Signal) -> std::result::Result<RowSelector, String> {
        let selector = logql::parse_selector(text).map_err(|e| format!("selector {text:?}: {e}"))?;
        Self::from_matchers(text, selector, signal)
    }

    /// The selector `selector`, parsed from `text`, over `signal`'s string columns.
    pub(crate) fn from_matchers(
        text: &str,
        selector: logql::StreamSelector,
        signal: Signal,
    ) -> std::result::Result<RowSelector, String> {
        let schema = signal.schema();
        let mut matchers = Vec::new();
        for matcher in selector.matchers {
            let column = schema
                .field_with_name(&matcher.name)
                .ok()
                .filter(|f| *f.data_type() == arrow::datatypes::DataType::Utf8)
                .ok_or_else(|| format!("selector {text:?}: {} is no string column of {signal}", matcher.name))?;
            let compiled = match matcher.op {
                logql::MatchOp::Eq => Matcher::Equal(matcher.value, true),
                logql::MatchOp::Neq => Matcher::Equal(matcher.value, false),
                op => {
                    let regex = regex::Regex::new(&format!("^(?:{})$", matcher.value))
                        .map_err(|e| format!("selector {text:?}: {e}"))?;
                    Matcher::Regex(regex, matches!(op, logql::MatchOp::Re))
                }
            };
            matchers.push((column.name().clone(), compiled));
        }
        Ok(RowSelector { matchers })
    }

    /// Which rows of `batch` the selector matches.
    pub(crate) fn matches(&self, batch: &arrow::record_batch::RecordBatch) -> Result<Vec<bool>> {
        let mut selected = vec![true; batch.num_rows()];
        for (column, matcher) in &self.matchers {
            let values = batch
                .column_by_name(column)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| Error::Internal(format!("no string column {column}")))?;
            for (row, keep) in selected.iter_mut().enumerate() {
                if !*keep {
                    continue;
                }
                let value = if values.is_null(row) { "" } else { values.value(row) };
                *keep = match matcher {
                    Matcher::Equal(wanted, equal) => (value == wanted) == *equal,
                    Matcher::Regex(regex, positive) => regex.is_match(value) == *positive,
                };
            }
        }
        Ok(selected)
    }
}

/// `file` rewritten without the rows `selector` matches that are older than `cutoff_ns`;
/// `None` when it holds none.
pub(crate) fn trim_matching(
    data_dir: &std::path::Path,
    file: &Arc<DataFile>,
    selector: &RowSelector,
    cutoff_ns: i64,
    config: &StoreConfig,
    name: &str,
) -> Result<Option<Vec<Arc<DataFile>>>> {
    rewrite_without(data_dir, file, config, name, |batch, time| {
        Ok(selector
            .matches(batch)?
            .into_iter()
            .zip(time)
            .map(|(matched, t)| matched && t.is_some_and(|t| t < cutoff_ns))
            .collect())
    })
}

/// `file` rewritten without the rows `gone` picks (it is given each batch and the rows' times,
/// and answers one decision per row); `None` when it picks none. Retention's overrides and
/// deletion requests both rewrite files this way.
pub(crate) fn rewrite_without(
    data_dir: &std::path::Path,
    file: &Arc<DataFile>,
    config: &StoreConfig,
    name: &str,
    mut gone: impl FnMut(&arrow::record_batch::RecordBatch, Vec<Option<i64>>) -> Result<Vec<bool>>,
) -> Result<Option<Vec<Arc<DataFile>>>> {
    let signal = file.signal;
    let mut kept = Vec::new();
    let mut removed = 0;
    for batch in writer::read_files(std::slice::from_ref(file))? {
        let times = batch
            .column_by_name(signal.time_column())
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or_else(|| Error::Internal(format!("{signal} file lacks its time column")))?;
        let picked = gone(&batch, times.iter().collect())?;
        removed += picked.iter().filter(|&&p| p).count();
        let keep: BooleanArray = picked.into_iter().map(|p| Some(!p)).collect();
        kept.push(filter_record_batch(&batch, &keep)?);
    }
    if removed == 0 {
        return Ok(None);
    }
    writer::write_partitioned(data_dir, signal, &kept, config, name).map(Some)
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default: None,
            logs: None,
            metrics: None,
            spans: None,
            max_disk_bytes: 0,
            eviction_order: vec![Signal::Logs, Signal::Spans, Signal::Metrics],
            interval_secs: 60,
            overrides: Vec::new(),
        }
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "wake_collector::time::deserialize_duration")] Duration);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(duration)| duration))
}

#[allow(clippy::ref_option)] // serde's `serialize_with` hands the field by reference
fn seconds<S: Serializer>(duration: &Option<Duration>, serializer: S) -> std::result::Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_some(&duration.as_secs()),
        None => serializer.serialize_none(),
    }
}

impl RetentionConfig {
    /// How long `signal` is kept, if not for ever.
    pub fn of(&self, signal: Signal) -> Option<Duration> {
        let own = match signal {
            Signal::Logs => self.logs,
            Signal::Metrics => self.metrics,
            Signal::Spans => self.spans,
        };
        own.or(self.default).filter(|d| !d.is_zero())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.interval_secs == 0 {
            return Err("interval_secs must be at least 1".into());
        }
        let mut order = self.eviction_order.clone();
        order.sort_by_key(|signal| signal.table_name());
        order.dedup();
        if order.len() != self.eviction_order.len() || order.len() != Signal::ALL.len() {
            return Err("eviction_order must name logs, metrics and spans once each".into());
        }
        for signal in Signal::ALL {
            if let Some(keep) = self.of(signal)
                && keep < Duration::from_secs(3600)
            {
                return Err(format!("{signal}: retention below one hour (one partition) is not supported"));
            }
            for rule in &self.overrides {
                if let Some(keep) = rule.of(signal) {
                    if keep < Duration::from_secs(3600) {
                        return Err(format!("override {:?}: {signal} retention below one hour", rule.selector));
                    }
                    RowSelector::compile(&rule.selector, signal)?;
                }
            }
        }
        Ok(())
    }
}

/// What retention does to one signal's files.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Wholly older than the cutoff.
    pub(crate) drop: Vec<Arc<DataFile>>,
    /// Straddling the cutoff: rewritten with their newer rows.
    pub(crate) trim: Vec<Arc<DataFile>>,
}

pub(crate) fn plan(files: &[Arc<DataFile>], cutoff_ns: i64) -> Plan {
    let mut plan = Plan::default();
    for file in files {
        if file.max_time_ns < cutoff_ns {
            plan.drop.push(file.clone());
        } else if file.min_time_ns < cutoff_ns {
            plan.trim.push(file.clone());
        }
    }
    plan
}

/// `file` rewritten with only its rows at or after `cutoff_ns` (none, if none are).
pub(crate) fn trim(
    data_dir: &std::path::Path,
    file: &Arc<DataFile>,
    cutoff_ns: i64,
    config: &StoreConfig,
    name: &str,
) -> Result<Vec<Arc<DataFile>>> {
    let signal = file.signal;
    let mut kept = Vec::new();
    for batch in writer::read_files(std::slice::from_ref(file))? {
        let times = batch
            .column_by_name(signal.time_column())
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or_else(|| Error::Internal(format!("{signal} file lacks its time column")))?;
        let keep: BooleanArray = times.iter().map(|t| Some(t.is_some_and(|t| t >= cutoff_ns))).collect();
        kept.push(filter_record_batch(&batch, &keep)?);
    }
    writer::write_partitioned(data_dir, signal, &kept, config, name)
}

/// The files to drop, oldest first, so that `total_bytes` falls to `max_bytes`.
pub(crate) fn evict(
    files: &[(Signal, Vec<Arc<DataFile>>)],
    total_bytes: u64,
    max_bytes: u64,
    order: &[Signal],
) -> Vec<Arc<DataFile>> {
    if total_bytes <= max_bytes {
        return Vec::new();
    }
    let rank = |signal: Signal| order.iter().position(|s| *s == signal).unwrap_or(order.len());
    let mut candidates: Vec<&Arc<DataFile>> = files.iter().flat_map(|(_, files)| files).collect();
    candidates.sort_by_key(|file| (file.max_time_ns, rank(file.signal), file.path.clone()));
    let mut excess = total_bytes - max_bytes;
    let mut chosen = Vec::new();
    for file in candidates {
        if excess == 0 {
            break;
        }
        excess = excess.saturating_sub(file.size_bytes + file.index_bytes);
        chosen.push(file.clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::FileStats;

    fn file(signal: Signal, name: &str, min: i64, max: i64, bytes: u64) -> Arc<DataFile> {
        let stats = FileStats {
            size_bytes: bytes,
            index_bytes: 0,
            num_rows: 1,
            min_time_ns: min,
            max_time_ns: max,
            row_group_row_counts: vec![1],
        };
        Arc::new(DataFile::new(signal, format!("/nowhere/{name}").into(), None, stats))
    }

    #[test]
    fn files_older_than_the_cutoff_drop_and_straddling_ones_are_trimmed() {
        let files = vec![
            file(Signal::Logs, "old", 0, 9, 1),
            file(Signal::Logs, "mid", 5, 15, 1),
            file(Signal::Logs, "new", 10, 20, 1),
        ];
        let plan = plan(&files, 10);
        let names = |files: &[Arc<DataFile>]| -> Vec<String> {
            files.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(&plan.drop), ["old"]);
        assert_eq!(names(&plan.trim), ["mid"]);
    }

    #[test]
    fn the_disk_bound_drops_the_oldest_files_first_across_signals() {
        let logs = vec![file(Signal::Logs, "l1", 0, 10, 100), file(Signal::Logs, "l2", 10, 30, 100)];
        let metrics = vec![file(Signal::Metrics, "m1", 0, 10, 100), file(Signal::Metrics, "m2", 10, 20, 100)];
        let files = vec![(Signal::Logs, logs), (Signal::Metrics, metrics)];
        let order = [Signal::Logs, Signal::Spans, Signal::Metrics];
        let chosen = evict(&files, 400, 250, &order);
        let names: Vec<_> = chosen.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        // l1 and m1 are equally old; logs go first by the order, then m1.
        assert_eq!(names, ["l1", "m1"]);
        assert!(evict(&files, 400, 400, &order).is_empty());
    }

    #[test]
    fn configuration_reads_durations_and_checks_the_order() {
        let config: RetentionConfig =
            serde_json::from_str(r#"{"default": "30d", "logs": "14d", "max_disk_bytes": 1000}"#).expect("parses");
        assert_eq!(config.of(Signal::Logs), Some(Duration::from_secs(14 * 86400)));
        assert_eq!(config.of(Signal::Spans), Some(Duration::from_secs(30 * 86400)));
        config.validate().unwrap();
        let bad: RetentionConfig = serde_json::from_str(r#"{"eviction_order": ["logs", "logs", "spans"]}"#).unwrap();
        assert!(bad.validate().is_err());
        let short: RetentionConfig = serde_json::from_str(r#"{"logs": "10m"}"#).unwrap();
        assert!(short.validate().is_err());
        assert!(serde_json::from_str::<RetentionConfig>(r#"{"log": "1d"}"#).is_err(), "unknown fields are refused");
    }
}
