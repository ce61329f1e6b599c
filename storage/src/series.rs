//! Series identity of metric rows: the `series_id` column.
//!
//! A series is what Prometheus calls one: the stored metric (name, type, unit, monotonicity,
//! instrumentation scope) together with every resource and data point attribute. Its id is
//! XXH64 (seed 0) over those fields in a fixed, length-prefixed encoding, with each attribute
//! map's entries sorted by key, so that the same series gets the same id whatever order a
//! client sent its attributes in, in every process and every version of Wake. The id is
//! computed once at ingest; files sort a metric's rows by it, which keeps each series'
//! points together, and a query reads a series by its id without decoding its attributes.
//!
//! Two series whose ids collide would be read as one. Nothing checks for it: with n series
//! the chance is about n² / 2⁶⁵ (below one in thirty million for a million series).

use std::hash::Hasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, MapArray, StringArray, UInt64Array};
use arrow::datatypes::Schema;
use twox_hash::XxHash64;

use crate::error::{Error, Result};
use crate::schema::{
    ATTRIBUTES, IS_MONOTONIC, METRIC_NAME, METRIC_TYPE, PROMOTED_RESOURCE_ATTRIBUTES, RESOURCE_ATTRIBUTES, SCOPE_NAME,
    UNIT,
};

/// Marks an absent (null) value, distinct from every length prefix a string can have.
const NULL: u32 = u32::MAX;

/// The identity columns of a metrics batch, borrowed.
struct IdentityColumns<'a> {
    strings: Vec<&'a StringArray>,
    is_monotonic: &'a BooleanArray,
    maps: [&'a MapArray; 2],
}

fn column<'a>(schema: &Schema, columns: &'a [ArrayRef], name: &str) -> Result<&'a ArrayRef> {
    let index = schema.index_of(name).map_err(|_| Error::Internal(format!("the metrics schema lacks {name}")))?;
    columns.get(index).ok_or_else(|| Error::Internal(format!("a metrics batch lacks {name}")))
}

fn string_column<'a>(schema: &Schema, columns: &'a [ArrayRef], name: &str) -> Result<&'a StringArray> {
    column(schema, columns, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Internal(format!("{name} is not a string column")))
}

fn map_column<'a>(schema: &Schema, columns: &'a [ArrayRef], name: &str) -> Result<&'a MapArray> {
    column(schema, columns, name)?.as_map_opt().ok_or_else(|| Error::Internal(format!("{name} is not a map column")))
}

impl<'a> IdentityColumns<'a> {
    fn new(schema: &Schema, columns: &'a [ArrayRef]) -> Result<Self> {
        let mut strings = Vec::with_capacity(4 + PROMOTED_RESOURCE_ATTRIBUTES.len());
        for name in [METRIC_NAME, METRIC_TYPE, UNIT, SCOPE_NAME] {
            strings.push(string_column(schema, columns, name)?);
        }
        for (_, name) in PROMOTED_RESOURCE_ATTRIBUTES {
            strings.push(string_column(schema, columns, name)?);
        }
        let is_monotonic = column(schema, columns, IS_MONOTONIC)?
            .as_boolean_opt()
            .ok_or_else(|| Error::Internal(format!("{IS_MONOTONIC} is not a boolean column")))?;
        let maps = [map_column(schema, columns, RESOURCE_ATTRIBUTES)?, map_column(schema, columns, ATTRIBUTES)?];
        Ok(IdentityColumns { strings, is_monotonic, maps })
    }

    fn series_id(&self, row: usize, entries: &mut Vec<(&'a str, Option<&'a str>)>) -> u64 {
        let mut hasher = XxHash64::with_seed(0);
        for strings in &self.strings {
            write_optional(&mut hasher, strings.is_valid(row).then(|| strings.value(row)));
        }
        // Unset and false are one and the same to every reader.
        hasher.write_u8(u8::from(self.is_monotonic.is_valid(row) && self.is_monotonic.value(row)));
        for map in self.maps {
            entries.clear();
            entries.extend(map_entries(map, row));
            entries.sort_unstable();
            hasher.write_u32(entries.len() as u32);
            for (key, value) in entries.iter() {
                write_optional(&mut hasher, Some(key));
                write_optional(&mut hasher, *value);
            }
        }
        hasher.finish()
    }
}

fn write_optional(hasher: &mut XxHash64, value: Option<&str>) {
    match value {
        Some(value) => {
            hasher.write_u32(value.len() as u32);
            hasher.write(value.as_bytes());
        }
        None => hasher.write_u32(NULL),
    }
}

/// The entries of one row of an attribute map, in stored order.
pub fn map_entries(map: &MapArray, row: usize) -> impl Iterator<Item = (&str, Option<&str>)> {
    let offsets = map.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_string::<i32>();
    (start..end).map(move |i| (keys.value(i), values.is_valid(i).then(|| values.value(i))))
}

/// The `series_id` of every row of a metrics batch given as `columns` in `schema`'s order
/// (the metrics schema, with or without its `series_id` column).
pub fn series_ids(schema: &Schema, columns: &[ArrayRef]) -> Result<UInt64Array> {
    let identity = IdentityColumns::new(schema, columns)?;
    let rows = columns.first().map_or(0, |c| c.len());
    let mut entries = Vec::new();
    Ok((0..rows).map(|row| identity.series_id(row, &mut entries)).collect::<Vec<u64>>().into())
}

/// `columns` of the metrics schema without `series_id`, completed with it.
pub(crate) fn with_series_ids(schema: &Schema, mut columns: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
    let ids = series_ids(schema, &columns)?;
    columns.push(Arc::new(ids));
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Signal;
    use arrow::array::RecordBatch;

    fn batch(rows: &[(&str, &[(&str, &str)])]) -> RecordBatch {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
        };
        let metrics = rows
            .iter()
            .map(|(name, attributes)| Metric {
                name: name.to_string(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        attributes: attributes
                            .iter()
                            .map(|(k, v)| KeyValue {
                                key: k.to_string(),
                                value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.to_string())) }),
                                ..Default::default()
                            })
                            .collect(),
                        time_unix_nano: 1_000,
                        value: Some(number_data_point::Value::AsDouble(1.0)),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            })
            .collect();
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
                ..Default::default()
            }],
        };
        crate::convert::metrics_to_batch(&request, 0).unwrap().batch
    }

    fn ids(batch: &RecordBatch) -> Vec<u64> {
        let stored =
            batch.column_by_name(crate::schema::SERIES_ID).unwrap().as_primitive::<arrow::datatypes::UInt64Type>();
        let computed = series_ids(&batch.schema(), batch.columns()).unwrap();
        assert_eq!(stored, &computed, "ingest and readers compute the same ids");
        computed.values().to_vec()
    }

    #[test]
    fn ids_follow_identity_not_attribute_order() {
        let batch = batch(&[
            ("up", &[("a", "1"), ("b", "2")]),
            ("up", &[("b", "2"), ("a", "1")]),
            ("up", &[("a", "1"), ("b", "3")]),
            ("down", &[("a", "1"), ("b", "2")]),
            // The length prefix keeps ("ab", "") and ("a", "b") apart.
            ("up", &[("ab", "")]),
            ("up", &[("a", "b")]),
        ]);
        let ids = ids(&batch);
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[3]);
        assert_ne!(ids[4], ids[5]);
    }

    #[test]
    fn ids_are_stable_across_versions() {
        // Stored in files: a change of the encoding would split every series at an upgrade.
        let ids = ids(&batch(&[("up", &[("job", "api")])]));
        assert_eq!(ids, [0x269b_cd4e_07ba_c4b5], "got {:#x}", ids[0]);
        assert_eq!(Signal::Metrics.schema().fields().last().unwrap().name(), crate::schema::SERIES_ID);
    }
}
