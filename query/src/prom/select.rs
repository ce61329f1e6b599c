//! Reading Prometheus series out of the `metrics` table.
//!
//! A selector first finds the stored metrics whose Prometheus names it can match (from the
//! distinct names, types and units in the time range, see [`super::naming`]), then reads only
//! their rows in the range, one SQL scan, and groups the rows into series. Rows of one series
//! share their attributes byte for byte, so a row's series is found by a hash lookup of its raw
//! attribute text; labels are built once per series, not per row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, MapArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use promql_parser::label::Matcher;
use wake_storage::schema::PROMOTED_RESOURCE_ATTRIBUTES;

use super::eval::{PromError, Result, Sample, SeriesData, SeriesSource};
use super::naming::{Descriptor, Exposure, Labels, METRIC_NAME_LABEL, Part, RowAttributes, series_labels};
use crate::engine::QueryEngine;
use crate::loki::labels::quote;

/// The store as a [`SeriesSource`].
pub struct StoreSource {
    engine: Arc<QueryEngine>,
}

fn engine_error(error: crate::Error) -> PromError {
    match error.status().as_u16() {
        400..=499 => PromError::BadData(error.to_string()),
        _ => PromError::Internal(error.to_string()),
    }
}

/// `timestamp` within `[min_ms, max_ms]`, every nanosecond of `max_ms` included.
fn time_condition(min_ms: i64, max_ms: i64) -> String {
    let min_ns = min_ms.saturating_mul(1_000_000);
    let max_ns = max_ms.saturating_mul(1_000_000).saturating_add(999_999);
    format!(
        "timestamp >= '{}' AND timestamp <= '{}'",
        crate::json::format_timestamp_ns(min_ns, true),
        crate::json::format_timestamp_ns(max_ns, true)
    )
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

/// Where the rows of one series go, per exposure of its metric.
enum Target {
    /// Not selected (an alias that does not apply, or labels the matchers reject).
    Skip,
    /// One series.
    Series(usize),
    /// A series per bucket bound or quantile, created as bounds appear.
    PerBound { base: Labels, label: &'static str, series: HashMap<u64, Option<usize>> },
}

struct Scan {
    matchers: Arc<[Matcher]>,
    chosen: Vec<(Descriptor, Vec<Exposure>)>,
    identities: HashMap<Vec<u8>, Vec<Target>>,
    series: Vec<SeriesData>,
    keep_samples: bool,
    key: Vec<u8>,
}

fn map_entries(map: &MapArray, row: usize) -> impl Iterator<Item = (&str, &str)> {
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_string::<i32>();
    (start..end).map(move |i| (keys.value(i), if values.is_valid(i) { values.value(i) } else { "" }))
}

fn float_list(column: &ArrayRef, row: usize) -> Vec<f64> {
    let list = column.as_list::<i32>();
    if list.is_null(row) {
        return Vec::new();
    }
    let values = list.value(row);
    match values.as_primitive_opt::<Float64Type>() {
        Some(floats) => floats.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        None => values
            .as_primitive_opt::<arrow::datatypes::UInt64Type>()
            .map(|counts| counts.iter().map(|v| v.unwrap_or(0) as f64).collect())
            .unwrap_or_default(),
    }
}

/// The columns a scan reads, in order.
const COLUMNS: &str = "metric_name, metric_type, coalesce(unit, ''), coalesce(is_monotonic, false), \
    coalesce(scope_name, ''), service_name, k8s_namespace_name, k8s_pod_name, k8s_pod_uid, k8s_container_name, \
    container_id, k8s_node_name, resource_attributes, attributes, CAST(timestamp AS BIGINT), value, \
    CAST(count AS DOUBLE), sum, explicit_bounds, bucket_counts, quantiles, quantile_values";
const FIRST_PROMOTED: usize = 5;
const RESOURCE: usize = FIRST_PROMOTED + PROMOTED_RESOURCE_ATTRIBUTES.len();
const ATTRIBUTES: usize = RESOURCE + 1;
const TIMESTAMP: usize = ATTRIBUTES + 1;
const VALUE: usize = TIMESTAMP + 1;
const COUNT: usize = VALUE + 1;
const SUM: usize = COUNT + 1;
const BOUNDS: usize = SUM + 1;
const BUCKET_COUNTS: usize = BOUNDS + 1;
const QUANTILES: usize = BUCKET_COUNTS + 1;
const QUANTILE_VALUES: usize = QUANTILES + 1;

impl Scan {
    fn descriptor_of(&self, batch: &RecordBatch, row: usize) -> Option<usize> {
        let name = batch.column(0).as_string::<i32>().value(row);
        let metric_type = batch.column(1).as_string::<i32>().value(row);
        let unit = batch.column(2).as_string::<i32>().value(row);
        let monotonic = batch.column(3).as_boolean().value(row);
        let scope = batch.column(4).as_string::<i32>().value(row);
        self.chosen.iter().position(|(d, _)| {
            d.name == name
                && d.metric_type == metric_type
                && d.unit == unit
                && d.is_monotonic == monotonic
                && d.scope_name == scope
        })
    }

    fn identity_key(&mut self, descriptor: usize, batch: &RecordBatch, row: usize) {
        self.key.clear();
        self.key.extend_from_slice(&(descriptor as u32).to_le_bytes());
        for column in FIRST_PROMOTED..RESOURCE {
            let values: &StringArray = batch.column(column).as_string::<i32>();
            if values.is_valid(row) {
                self.key.extend_from_slice(values.value(row).as_bytes());
            } else {
                self.key.push(0xff);
            }
            self.key.push(0);
        }
        for column in [RESOURCE, ATTRIBUTES] {
            for (key, value) in map_entries(batch.column(column).as_map(), row) {
                self.key.extend_from_slice(key.as_bytes());
                self.key.push(1);
                self.key.extend_from_slice(value.as_bytes());
                self.key.push(0);
            }
            self.key.push(2);
        }
    }

    fn targets(&mut self, descriptor: usize, batch: &RecordBatch, row: usize) -> Vec<Target> {
        let mut attributes = RowAttributes::default();
        for (slot, (attribute, _)) in PROMOTED_RESOURCE_ATTRIBUTES.iter().enumerate() {
            let values = batch.column(FIRST_PROMOTED + slot).as_string::<i32>();
            if values.is_valid(row) {
                attributes.resource.push((attribute, values.value(row)));
            }
        }
        attributes.resource.extend(map_entries(batch.column(RESOURCE).as_map(), row));
        attributes.point.extend(map_entries(batch.column(ATTRIBUTES).as_map(), row));
        let (descriptor, exposures) = &self.chosen[descriptor];
        let mut targets = Vec::with_capacity(exposures.len());
        for exposure in exposures {
            let Some(labels) = series_labels(descriptor, exposure, &attributes) else {
                targets.push(Target::Skip);
                continue;
            };
            targets.push(match exposure.part {
                Part::Buckets => Target::PerBound { base: labels, label: "le", series: HashMap::new() },
                Part::Quantiles => Target::PerBound { base: labels, label: "quantile", series: HashMap::new() },
                _ if matches_all(&self.matchers, &labels) => {
                    self.series.push(SeriesData { labels, samples: Vec::new() });
                    Target::Series(self.series.len() - 1)
                }
                _ => Target::Skip,
            });
        }
        targets
    }

    fn push(&mut self, series: usize, sample: Sample) {
        if self.keep_samples {
            self.series[series].samples.push(sample);
        }
    }

    fn add_batch(&mut self, batch: &RecordBatch) {
        let timestamps = batch.column(TIMESTAMP).as_primitive::<Int64Type>();
        let values = batch.column(VALUE).as_primitive::<Float64Type>();
        let counts = batch.column(COUNT).as_primitive::<Float64Type>();
        let sums = batch.column(SUM).as_primitive::<Float64Type>();
        let optional = |array: &PrimitiveArray<Float64Type>, row: usize| array.is_valid(row).then(|| array.value(row));
        for row in 0..batch.num_rows() {
            let Some(descriptor) = self.descriptor_of(batch, row) else { continue };
            self.identity_key(descriptor, batch, row);
            // Taken out of the map while this row is added, so that new series can be pushed.
            let (key, mut targets) = match self.identities.remove_entry(self.key.as_slice()) {
                Some(entry) => entry,
                None => (self.key.clone(), self.targets(descriptor, batch, row)),
            };
            let time = timestamps.value(row).div_euclid(1_000_000);
            for (exposure, target) in targets.iter_mut().enumerate() {
                let part = &self.chosen[descriptor].1[exposure].part;
                match target {
                    Target::Skip => {}
                    Target::Series(index) => {
                        let value = match part {
                            Part::Value => optional(values, row),
                            Part::Count => optional(counts, row),
                            Part::Sum => optional(sums, row),
                            Part::Buckets | Part::Quantiles => None,
                        };
                        if let Some(value) = value {
                            self.push(*index, (time, value));
                        }
                    }
                    Target::PerBound { base, label, series } => {
                        let points: Vec<(f64, f64)> = if *part == Part::Buckets {
                            // OTLP buckets are per bucket with an implicit +Inf; Prometheus's `le`
                            // buckets are cumulative and end with `+Inf` = the count.
                            let bounds = float_list(batch.column(BOUNDS), row);
                            let bucket_counts = float_list(batch.column(BUCKET_COUNTS), row);
                            let mut cumulative = 0.0;
                            let mut points: Vec<(f64, f64)> = bounds
                                .iter()
                                .zip(&bucket_counts)
                                .map(|(bound, count)| {
                                    cumulative += count;
                                    (*bound, cumulative)
                                })
                                .collect();
                            let total = optional(counts, row).unwrap_or_else(|| bucket_counts.iter().sum());
                            points.push((f64::INFINITY, total));
                            points
                        } else {
                            let quantiles = float_list(batch.column(QUANTILES), row);
                            quantiles.into_iter().zip(float_list(batch.column(QUANTILE_VALUES), row)).collect()
                        };
                        for (bound, value) in points {
                            let slot = match series.get(&bound.to_bits()) {
                                Some(slot) => *slot,
                                None => {
                                    let mut labels = base.clone();
                                    labels.insert((*label).to_string(), super::format_value(bound));
                                    let slot = matches_all(&self.matchers, &labels).then(|| {
                                        self.series.push(SeriesData { labels, samples: Vec::new() });
                                        self.series.len() - 1
                                    });
                                    series.insert(bound.to_bits(), slot);
                                    slot
                                }
                            };
                            if let Some(index) = slot {
                                self.push(index, (time, value));
                            }
                        }
                    }
                }
            }
            self.identities.insert(key, targets);
        }
    }

    fn finish(self) -> Vec<SeriesData> {
        let keep_samples = self.keep_samples;
        self.series
            .into_iter()
            .filter_map(|mut s| {
                if keep_samples {
                    if s.samples.is_empty() {
                        return None;
                    }
                    // Rows come in file order; one sample per millisecond, the last one written.
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
        StoreSource { engine }
    }

    /// The distinct stored metrics with rows in `[min_ms, max_ms]`.
    pub async fn descriptors(&self, min_ms: i64, max_ms: i64) -> Result<Vec<Descriptor>> {
        let sql = format!(
            "SELECT metric_name, metric_type, coalesce(unit, ''), coalesce(is_monotonic, false), \
             coalesce(scope_name, ''), max(coalesce(metric_description, '')) FROM metrics WHERE {} \
             GROUP BY 1, 2, 3, 4, 5",
            time_condition(min_ms, max_ms)
        );
        self.engine
            .sql_fold(&sql, Vec::new(), |descriptors: &mut Vec<Descriptor>, batch| {
                for row in 0..batch.num_rows() {
                    let text = |column: usize| batch.column(column).as_string::<i32>().value(row).to_string();
                    descriptors.push(Descriptor {
                        name: text(0),
                        metric_type: text(1),
                        unit: text(2),
                        is_monotonic: batch.column(3).as_boolean().value(row),
                        scope_name: text(4),
                        description: text(5),
                    });
                }
                true
            })
            .await
            .map_err(engine_error)
    }

    /// Series matching `matchers` in the range; without their samples unless `keep_samples`.
    pub async fn scan(
        &self,
        matchers: &[Matcher],
        min_ms: i64,
        max_ms: i64,
        keep_samples: bool,
    ) -> Result<Vec<SeriesData>> {
        let chosen: Vec<(Descriptor, Vec<Exposure>)> = self
            .descriptors(min_ms, max_ms)
            .await?
            .into_iter()
            .map(|d| {
                let exposures = wanted_exposures(&d, matchers);
                (d, exposures)
            })
            .filter(|(_, exposures)| !exposures.is_empty())
            .collect();
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = chosen.iter().map(|(d, _)| quote(&d.name)).collect();
        names.sort();
        names.dedup();
        let sql = format!(
            "SELECT {COLUMNS} FROM metrics WHERE metric_name IN ({}) AND {}",
            names.join(", "),
            time_condition(min_ms, max_ms)
        );
        let scan = Scan {
            matchers: matchers.to_vec().into(),
            chosen,
            identities: HashMap::new(),
            series: Vec::new(),
            keep_samples,
            key: Vec::new(),
        };
        let scan = self
            .engine
            .sql_fold(&sql, scan, |scan, batch| {
                scan.add_batch(batch);
                true
            })
            .await
            .map_err(engine_error)?;
        Ok(scan.finish())
    }
}

#[async_trait::async_trait]
impl SeriesSource for StoreSource {
    async fn select(&self, matchers: &[Matcher], min_ms: i64, max_ms: i64) -> Result<Vec<SeriesData>> {
        self.scan(matchers, min_ms, max_ms, true).await
    }
}
