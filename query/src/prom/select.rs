//! Reading Prometheus series out of the `metrics` table.
//!
//! A selector is answered in two steps, as a TSDB answers it from its postings and chunks:
//! first the [`SeriesIndex`] lists the series of the files (and unflushed rows) in the time
//! range with their identities, from which the selector's matchers pick the series they
//! want, without reading any samples; then only those series' rows are read, only the
//! columns their values come from, and appended to the series they belong to. Labels are
//! built once per series, never per row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, RecordBatch, UInt64Array};
use arrow::datatypes::{Float64Type, TimestampNanosecondType, UInt64Type};
use promql_parser::label::Matcher;
use wake_storage::DataFile;
use wake_storage::schema::{self, Signal};

use super::eval::{PromError, Result, Sample, SeriesData, SeriesSource};
use super::index::{FileSeries, SeriesIndex, SeriesInfo, overlaps};
use super::naming::{Descriptor, Exposure, Labels, METRIC_NAME_LABEL, Part};
use crate::engine::QueryEngine;

/// The store as a [`SeriesSource`].
pub struct StoreSource {
    engine: Arc<QueryEngine>,
    index: Arc<SeriesIndex>,
}

fn engine_error(error: crate::Error) -> PromError {
    PromError::from(error)
}

/// Nanosecond bounds of `[min_ms, max_ms]`, every nanosecond of `max_ms` included.
fn nanosecond_bounds(min_ms: i64, max_ms: i64) -> (i64, i64) {
    (min_ms.saturating_mul(1_000_000), max_ms.saturating_mul(1_000_000).saturating_add(999_999))
}

fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or("")))
}

/// The exposures of a stored metric that a selector's `__name__` matchers accept.
fn wanted_exposures(descriptor: &Descriptor, matchers: &[Matcher]) -> Vec<Exposure> {
    descriptor
        .exposures()
        .into_iter()
        .filter(|exposure| matchers.iter().filter(|m| m.name == METRIC_NAME_LABEL).all(|m| m.is_match(&exposure.name)))
        .collect()
}

/// A stored metric without its description: what tells series of different metrics apart.
type MetricKey = (String, String, String, bool, String);

fn metric_key(descriptor: &Descriptor) -> MetricKey {
    (
        descriptor.name.clone(),
        descriptor.metric_type.clone(),
        descriptor.unit.clone(),
        descriptor.is_monotonic,
        descriptor.scope_name.clone(),
    )
}

/// Where the rows of one series go, per exposure of its metric.
enum Target {
    /// Not selected (an alias that does not apply, or labels the matchers reject).
    Skip,
    /// One series.
    Series(usize),
    /// A series per bucket bound or quantile, created as bounds appear.
    PerBound { base: Labels, label: &'static str, series: HashMap<u64, Option<usize>> },
}

/// A metric's exposures, and those a selector's `__name__` accepts (`positions` among `all`).
#[derive(Clone)]
struct MetricExposures {
    all: Arc<[Exposure]>,
    positions: Arc<[usize]>,
    wanted: Arc<[Exposure]>,
}

/// A stored series the selector wants: which value each of its targets takes.
struct Selected {
    exposures: Arc<[Exposure]>,
    targets: Vec<Target>,
}

/// Where a selection's rows are: the files of its time range, indexed, and the unflushed rows.
struct Sources {
    /// Files in the range and their index entries.
    files: Vec<(Arc<DataFile>, Arc<FileSeries>)>,
    /// Rows not flushed yet, and their series ids.
    buffered: Vec<(RecordBatch, UInt64Array)>,
}

/// Indexes the files that may hold rows in `[min_ns, max_ns]` and the unflushed rows, so that
/// the index knows every series with rows there.
fn sources(engine: &QueryEngine, index: &SeriesIndex, min_ns: i64, max_ns: i64) -> crate::Result<Sources> {
    let snapshot = engine.store().snapshot(Signal::Metrics);
    let in_range: Vec<_> = snapshot.files.iter().filter(|f| overlaps(f, min_ns, max_ns)).cloned().collect();
    let entries = index.files(&in_range, &snapshot.files)?;
    let mut buffered = Vec::with_capacity(snapshot.buffered.len());
    for batch in snapshot.buffered {
        let ids = index.learn(&batch)?;
        buffered.push((batch, ids));
    }
    Ok(Sources { files: in_range.into_iter().zip(entries).collect(), buffered })
}

/// Reads the rows of the series `wanted` from `files` on up to `threads` threads, handing each
/// batch to `on_batch` on the calling thread. Decompressing pages is most of a selector's
/// time, and a range's files are independent; batches of different files interleave.
fn read_files(
    index: &SeriesIndex,
    files: &[(Arc<DataFile>, Arc<FileSeries>)],
    wanted: &[u64],
    columns: &[&str],
    threads: usize,
    on_batch: &mut dyn FnMut(&RecordBatch, &UInt64Array),
) -> parquet::errors::Result<()> {
    let threads = threads.min(files.len());
    if threads <= 1 {
        for (file, entry) in files {
            index.read(file, entry, wanted, columns, on_batch)?;
        }
        return Ok(());
    }
    let next_file = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Bounded: readers wait for the consumer rather than holding a range's rows.
        let (sender, receiver) = mpsc::sync_channel(threads * 2);
        for _ in 0..threads {
            let sender = sender.clone();
            let (next_file, stop) = (&next_file, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some((file, entry)) = files.get(next_file.fetch_add(1, Ordering::Relaxed)) else { break };
                    let mut send = |batch: &RecordBatch, ids: &UInt64Array| {
                        if sender.send(Ok((batch.clone(), ids.clone()))).is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                    };
                    if let Err(error) = index.read(file, entry, wanted, columns, &mut send) {
                        let _ = sender.send(Err(error));
                        break;
                    }
                }
            });
        }
        drop(sender);
        for message in receiver {
            let (batch, ids) = message?;
            on_batch(&batch, &ids);
        }
        Ok(())
    })
}

fn optional<T: arrow::datatypes::ArrowPrimitiveType>(
    array: Option<&PrimitiveArray<T>>,
    row: usize,
) -> Option<T::Native> {
    array.filter(|a| a.is_valid(row)).map(|a| a.value(row))
}

fn float_list(column: Option<&ArrayRef>, row: usize) -> Vec<f64> {
    let Some(list) = column.and_then(|c| c.as_list_opt::<i32>()) else { return Vec::new() };
    if list.is_null(row) {
        return Vec::new();
    }
    let values = list.value(row);
    match values.as_primitive_opt::<Float64Type>() {
        Some(floats) => floats.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        None => values
            .as_primitive_opt::<UInt64Type>()
            .map(|counts| counts.iter().map(|v| v.unwrap_or(0) as f64).collect())
            .unwrap_or_default(),
    }
}

/// The series a selector builds, and where each stored series' rows go.
struct Scan {
    matchers: Arc<[Matcher]>,
    min_ns: i64,
    max_ns: i64,
    keep_samples: bool,
    selected: Vec<Selected>,
    by_id: HashMap<u64, usize>,
    series: Vec<SeriesData>,
    /// Whether a series had a row in the range (for selections without samples).
    seen: Vec<bool>,
}

impl Scan {
    /// `candidates`: the series of every metric whose names the selector can match.
    fn new(
        matchers: &[Matcher],
        mut candidates: Vec<(u64, Arc<SeriesInfo>)>,
        min_ns: i64,
        max_ns: i64,
        keep_samples: bool,
    ) -> Scan {
        let mut scan = Scan {
            matchers: matchers.to_vec().into(),
            min_ns,
            max_ns,
            keep_samples,
            selected: Vec::new(),
            by_id: HashMap::new(),
            series: Vec::new(),
            seen: Vec::new(),
        };
        // Series of one metric share its descriptor (interned by the index): its exposures,
        // and which of them the selector's `__name__` accepts, are worked out once.
        let mut exposures_of: HashMap<*const Descriptor, MetricExposures> = HashMap::new();
        // Series in a stable order, whatever the hash map's.
        candidates.sort_unstable_by_key(|(id, _)| *id);
        for (id, info) in &candidates {
            let MetricExposures { all, positions, wanted } = exposures_of
                .entry(Arc::as_ptr(&info.descriptor))
                .or_insert_with(|| {
                    let all: Arc<[Exposure]> = info.descriptor.exposures().into();
                    let wanted = wanted_exposures(&info.descriptor, matchers);
                    let positions = wanted.iter().filter_map(|w| all.iter().position(|e| e == w)).collect();
                    MetricExposures { all, positions, wanted: wanted.into() }
                })
                .clone();
            if wanted.is_empty() {
                continue;
            }
            let targets = scan.targets(info, &all, &positions, &wanted);
            if targets.iter().all(|t| matches!(t, Target::Skip)) {
                continue;
            }
            scan.by_id.insert(*id, scan.selected.len());
            scan.selected.push(Selected { exposures: wanted, targets });
        }
        scan
    }

    fn new_series(&mut self, labels: Labels) -> usize {
        self.series.push(SeriesData { labels, samples: Vec::new() });
        self.seen.push(false);
        self.series.len() - 1
    }

    /// Where the rows of `info` go, per wanted exposure (at `positions` among `all` of its
    /// metric's), from the series' labels, which the index computes once per series.
    fn targets(
        &mut self,
        info: &SeriesInfo,
        all: &[Exposure],
        positions: &[usize],
        wanted: &[Exposure],
    ) -> Vec<Target> {
        let labels = info.labels(all);
        let mut targets = Vec::with_capacity(wanted.len());
        for (exposure, position) in wanted.iter().zip(positions) {
            let Some(labels) = &labels[*position] else {
                targets.push(Target::Skip);
                continue;
            };
            targets.push(match exposure.part {
                Part::Buckets => Target::PerBound { base: labels.clone(), label: "le", series: HashMap::new() },
                Part::Quantiles => Target::PerBound { base: labels.clone(), label: "quantile", series: HashMap::new() },
                _ if matches_all(&self.matchers, labels) => Target::Series(self.new_series(labels.clone())),
                _ => Target::Skip,
            });
        }
        targets
    }

    /// The columns the selected series' values come from.
    /// (Every column read costs a page decompressed per run of rows, in every file.)
    fn columns(&self) -> Vec<&'static str> {
        let mut columns = vec![schema::TIMESTAMP];
        let parts = || self.selected.iter().flat_map(|s| s.exposures.iter().map(|e| &e.part));
        if parts().any(|p| *p == Part::Value) {
            columns.push(schema::VALUE);
        }
        // A bucket series' `+Inf` is the count.
        if parts().any(|p| matches!(p, Part::Count | Part::Buckets)) {
            columns.push(schema::COUNT);
        }
        if parts().any(|p| *p == Part::Sum) {
            columns.push(schema::SUM);
        }
        if parts().any(|p| *p == Part::Buckets) {
            columns.extend([schema::EXPLICIT_BOUNDS, schema::BUCKET_COUNTS]);
        }
        if parts().any(|p| *p == Part::Quantiles) {
            columns.extend([schema::QUANTILES, schema::QUANTILE_VALUES]);
        }
        columns
    }

    fn record(&mut self, series: usize, sample: Sample) {
        self.record_all(series, std::iter::once(sample));
    }

    fn record_all(&mut self, series: usize, samples: impl Iterator<Item = Sample>) {
        if self.keep_samples {
            let before = self.series[series].samples.len();
            self.series[series].samples.extend(samples);
            self.seen[series] |= self.series[series].samples.len() > before;
        } else {
            self.seen[series] |= samples.count() > 0;
        }
    }

    /// The points of a bucket or quantile row: (bound, value) per `le` or `quantile`.
    fn bound_points(part: &Part, batch: &RecordBatch, row: usize, count: Option<f64>) -> Vec<(f64, f64)> {
        if *part == Part::Buckets {
            // OTLP buckets are per bucket with an implicit +Inf; Prometheus's `le` buckets are
            // cumulative and end with `+Inf` = the count.
            let bounds = float_list(batch.column_by_name(schema::EXPLICIT_BOUNDS), row);
            let bucket_counts = float_list(batch.column_by_name(schema::BUCKET_COUNTS), row);
            let mut cumulative = 0.0;
            let mut points: Vec<(f64, f64)> = bounds
                .iter()
                .zip(&bucket_counts)
                .map(|(bound, count)| {
                    cumulative += count;
                    (*bound, cumulative)
                })
                .collect();
            let total = count.unwrap_or_else(|| bucket_counts.iter().sum());
            points.push((f64::INFINITY, total));
            points
        } else {
            let quantiles = float_list(batch.column_by_name(schema::QUANTILES), row);
            quantiles.into_iter().zip(float_list(batch.column_by_name(schema::QUANTILE_VALUES), row)).collect()
        }
    }

    fn add_batch(&mut self, batch: &RecordBatch, ids: &UInt64Array) {
        let Some(times) =
            batch.column_by_name(schema::TIMESTAMP).and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        else {
            return;
        };
        let floats = |name| batch.column_by_name(name).and_then(|c| c.as_primitive_opt::<Float64Type>());
        let (values, sums) = (floats(schema::VALUE), floats(schema::SUM));
        let counts = batch.column_by_name(schema::COUNT).and_then(|c| c.as_primitive_opt::<UInt64Type>());
        let ids = ids.values();
        // Rows of one series come in runs: each run is looked up once and its rows, in the
        // time range, go to the run's targets.
        let mut start = 0;
        while start < ids.len() {
            let id = ids[start];
            let end = start + ids[start..].iter().position(|other| *other != id).unwrap_or(ids.len() - start);
            let run = start..end;
            start = end;
            let Some(&selected) = self.by_id.get(&id) else { continue };
            let in_range: Vec<usize> =
                run.filter(|row| (self.min_ns..=self.max_ns).contains(&times.value(*row))).collect();
            if in_range.is_empty() {
                continue;
            }
            let time_ms = |row: usize| times.value(row).div_euclid(1_000_000);
            for target in 0..self.selected[selected].targets.len() {
                let part = self.selected[selected].exposures[target].part.clone();
                match &self.selected[selected].targets[target] {
                    Target::Skip => {}
                    Target::Series(index) => {
                        let index = *index;
                        let column = match part {
                            Part::Value => values,
                            Part::Sum => sums,
                            Part::Count => {
                                let samples = in_range.iter().filter_map(|row| {
                                    optional(counts, *row).map(|count| (time_ms(*row), count as f64))
                                });
                                self.record_all(index, samples);
                                continue;
                            }
                            Part::Buckets | Part::Quantiles => None,
                        };
                        let samples =
                            in_range.iter().filter_map(|row| optional(column, *row).map(|v| (time_ms(*row), v)));
                        self.record_all(index, samples);
                    }
                    Target::PerBound { .. } => {
                        for row in &in_range {
                            let count = optional(counts, *row).map(|c| c as f64);
                            for (bound, value) in Self::bound_points(&part, batch, *row, count) {
                                if let Some(index) = self.bound_series(selected, target, bound) {
                                    self.record(index, (time_ms(*row), value));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The series of one bucket bound or quantile of a stored series, created on first sight.
    fn bound_series(&mut self, selected: usize, target: usize, bound: f64) -> Option<usize> {
        let Target::PerBound { base, label, series } = &self.selected[selected].targets[target] else { return None };
        if let Some(slot) = series.get(&bound.to_bits()) {
            return *slot;
        }
        let mut labels = base.clone();
        labels.insert((*label).to_string(), super::format_value(bound));
        let slot = matches_all(&self.matchers, &labels).then(|| self.new_series(labels));
        if let Target::PerBound { series, .. } = &mut self.selected[selected].targets[target] {
            series.insert(bound.to_bits(), slot);
        }
        slot
    }

    fn finish(self) -> Vec<SeriesData> {
        let keep_samples = self.keep_samples;
        self.series
            .into_iter()
            .zip(self.seen)
            .filter_map(|(mut s, seen)| {
                if !seen {
                    return None;
                }
                if keep_samples {
                    // Files come in no particular order; one sample per millisecond, the last
                    // one written.
                    s.samples.sort_by_key(|(t, _)| *t);
                    s.samples.dedup_by(|later, earlier| {
                        if later.0 == earlier.0 {
                            *earlier = *later;
                            true
                        } else {
                            false
                        }
                    });
                }
                Some(s)
            })
            .collect()
    }
}

impl StoreSource {
    pub fn new(engine: Arc<QueryEngine>) -> Self {
        StoreSource { engine, index: Arc::new(SeriesIndex::default()) }
    }

    pub fn engine(&self) -> &Arc<QueryEngine> {
        &self.engine
    }

    /// The distinct stored metrics with rows in the files and buffers of `[min_ms, max_ms]`.
    pub async fn descriptors(&self, min_ms: i64, max_ms: i64) -> Result<Vec<Descriptor>> {
        let (engine, index) = (self.engine.clone(), self.index.clone());
        let (min_ns, max_ns) = nanosecond_bounds(min_ms, max_ms);
        let work = move || {
            let sources = sources(&engine, &index, min_ns, max_ns)?;
            let in_files = sources.files.iter().flat_map(|(_, entry)| entry.descriptors().iter().cloned());
            let in_memory =
                index.descriptors_of(sources.buffered.iter().flat_map(|(_, ids)| ids.values().iter().copied()));
            let mut metrics: HashMap<MetricKey, Descriptor> = HashMap::new();
            for descriptor in in_files.chain(in_memory) {
                let descriptor = &descriptor;
                metrics
                    .entry(metric_key(descriptor))
                    .and_modify(|known| {
                        if descriptor.description > known.description {
                            known.description.clone_from(&descriptor.description);
                        }
                    })
                    .or_insert_with(|| (**descriptor).clone());
            }
            let mut descriptors: Vec<Descriptor> = metrics.into_values().collect();
            descriptors.sort();
            Ok(descriptors)
        };
        self.engine.run_blocking("promql: metric names", work).await.map_err(engine_error)
    }

    /// Series matching `matchers` with samples in the range; without their samples unless
    /// `keep_samples`.
    pub async fn scan(
        &self,
        matchers: &[Matcher],
        min_ms: i64,
        max_ms: i64,
        keep_samples: bool,
    ) -> Result<Vec<SeriesData>> {
        let (engine, index) = (self.engine.clone(), self.index.clone());
        let (min_ns, max_ns) = nanosecond_bounds(min_ms, max_ms);
        let matchers = matchers.to_vec();
        let work = move || {
            let sources = sources(&engine, &index, min_ns, max_ns)?;
            let candidates = index.series_of(|descriptor| !wanted_exposures(descriptor, &matchers).is_empty());
            let mut scan = Scan::new(&matchers, candidates, min_ns, max_ns, keep_samples);
            if scan.selected.is_empty() {
                return Ok(Vec::new());
            }
            let columns = scan.columns();
            let mut wanted: Vec<u64> = scan.by_id.keys().copied().collect();
            wanted.sort_unstable();
            read_files(&index, &sources.files, &wanted, &columns, engine.threads(), &mut |batch, ids| {
                scan.add_batch(batch, ids)
            })?;
            for (batch, ids) in &sources.buffered {
                scan.add_batch(batch, ids);
            }
            Ok(scan.finish())
        };
        self.engine.run_blocking("promql: select", work).await.map_err(engine_error)
    }
}

impl StoreSource {
    /// The ids of the stored series `matchers` select among the files of the range (what
    /// `delete_series` deletes: a histogram's `_bucket`, `_sum` and `_count` are one).
    pub async fn series_ids(&self, matchers: &[Matcher], min_ms: i64, max_ms: i64) -> Result<Vec<u64>> {
        let (engine, index) = (self.engine.clone(), self.index.clone());
        let (min_ns, max_ns) = nanosecond_bounds(min_ms, max_ms);
        let matchers = matchers.to_vec();
        let work = move || {
            sources(&engine, &index, min_ns, max_ns)?;
            let candidates = index.series_of(|descriptor| !wanted_exposures(descriptor, &matchers).is_empty());
            let scan = Scan::new(&matchers, candidates, min_ns, max_ns, false);
            let mut ids: Vec<u64> = scan.by_id.keys().copied().collect();
            ids.sort_unstable();
            Ok(ids)
        };
        self.engine.run_blocking("promql: series ids", work).await.map_err(engine_error)
    }
}

#[async_trait::async_trait]
impl SeriesSource for StoreSource {
    async fn select(&self, matchers: &[Matcher], min_ms: i64, max_ms: i64) -> Result<Vec<SeriesData>> {
        self.scan(matchers, min_ms, max_ms, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryConfig;
    use promql_parser::label::MatchOp;
    use serde_json::json;
    use wake_storage::{OtlpRequest, Store, StoreConfig};

    const HOUR_MS: i64 = 3_600_000;
    const START_MS: i64 = 1_795_305_600_000;

    /// An hour of `temperature` gauges of `series` instances at a 15 s interval, as OTLP/JSON;
    /// the value tells the instance and the time apart.
    fn hour_of_gauges(hour: i64, series: usize) -> OtlpRequest {
        let points: Vec<_> = (0..series)
            .flat_map(|s| {
                (0..240).map(move |step| {
                    let time_ms = START_MS + hour * HOUR_MS + step * 15_000;
                    json!({
                        "timeUnixNano": (time_ms * 1_000_000).to_string(),
                        "asDouble": (time_ms + s as i64) as f64,
                        "attributes": [{ "key": "instance", "value": { "stringValue": format!("host-{s}") } }],
                    })
                })
            })
            .collect();
        let body = json!({ "resourceMetrics": [{ "scopeMetrics": [{ "metrics": [
            { "name": "temperature", "gauge": { "dataPoints": points } },
        ] }] }] });
        OtlpRequest::decode_json(Signal::Metrics, body.to_string().as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn files_read_on_several_threads_give_what_one_thread_reads() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            min_free_disk_bytes: 0,
            max_record_age_secs: 0,
            ..Default::default()
        };
        let registry = prometheus::Registry::new();
        let store = Store::open(config, &registry).unwrap();
        let hours = 5;
        for hour in 0..hours {
            store.ingest(hour_of_gauges(hour, 6), None).await.unwrap();
            store.flush(Signal::Metrics).await.unwrap();
        }
        assert_eq!(store.snapshot(Signal::Metrics).files.len(), hours as usize);
        let matchers = [
            Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, "temperature"),
            Matcher::new(MatchOp::NotEqual, "instance", "host-2"),
        ];
        let mut answers = Vec::new();
        for threads in [1, 3] {
            let config = QueryConfig { threads, ..Default::default() };
            let engine = QueryEngine::with_config(store.clone(), config, &prometheus::Registry::new()).unwrap();
            let source = StoreSource::new(Arc::new(engine));
            let mut series = source.scan(&matchers, START_MS, START_MS + hours * HOUR_MS, true).await.expect("scan");
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            answers.push(series);
        }
        assert_eq!(answers[0], answers[1]);
        let series = &answers[1];
        assert_eq!(series.len(), 5);
        for one in series {
            let instance: i64 = one.labels["instance"].trim_start_matches("host-").parse().unwrap();
            let expected: Vec<Sample> = (0..hours * 240)
                .map(|step| START_MS + step * 15_000)
                .map(|time| (time, (time + instance) as f64))
                .collect();
            assert_eq!(one.samples, expected, "{:?}", one.labels);
        }
    }
}
