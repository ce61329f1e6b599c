//! Arrow values as JSON for the HTTP API.
//!
//! Timestamps become RFC 3339 strings with nanoseconds (`2026-11-23T09:16:54.123456789Z`),
//! maps become objects, lists arrays, structs objects and binary lowercase hex. Non-finite
//! floats, which JSON cannot carry, become the strings `NaN`, `Infinity` and `-Infinity`.
//! Other types fall back to Arrow's display form.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, GenericListArray, MapArray, OffsetSizeTrait, StructArray};
use arrow::datatypes::{
    DataType, Date32Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

/// One JSON value per row of `array`.
pub fn array_to_json(array: &dyn Array) -> Result<Vec<Value>, ArrowError> {
    let len = array.len();
    let values: Vec<Value> = match array.data_type() {
        DataType::Null => vec![Value::Null; len],
        DataType::Boolean => {
            let a: &BooleanArray = array.as_boolean();
            (0..len).map(|i| if a.is_null(i) { Value::Null } else { Value::Bool(a.value(i)) }).collect()
        }
        DataType::Int8 => integers(array.as_primitive::<Int8Type>().iter().map(|v| v.map(i64::from))),
        DataType::Int16 => integers(array.as_primitive::<Int16Type>().iter().map(|v| v.map(i64::from))),
        DataType::Int32 => integers(array.as_primitive::<Int32Type>().iter().map(|v| v.map(i64::from))),
        DataType::Int64 => integers(array.as_primitive::<Int64Type>().iter()),
        DataType::UInt8 => unsigned(array.as_primitive::<UInt8Type>().iter().map(|v| v.map(u64::from))),
        DataType::UInt16 => unsigned(array.as_primitive::<UInt16Type>().iter().map(|v| v.map(u64::from))),
        DataType::UInt32 => unsigned(array.as_primitive::<UInt32Type>().iter().map(|v| v.map(u64::from))),
        DataType::UInt64 => unsigned(array.as_primitive::<UInt64Type>().iter()),
        DataType::Float16 => floats(array.as_primitive::<Float16Type>().iter().map(|v| v.map(f64::from))),
        DataType::Float32 => floats(array.as_primitive::<Float32Type>().iter().map(|v| v.map(f64::from))),
        DataType::Float64 => floats(array.as_primitive::<Float64Type>().iter()),
        DataType::Utf8 => strings(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(array.as_string_view().iter()),
        DataType::Binary => hex_strings(array.as_binary::<i32>().iter()),
        DataType::LargeBinary => hex_strings(array.as_binary::<i64>().iter()),
        DataType::BinaryView => hex_strings(array.as_binary_view().iter()),
        DataType::Timestamp(unit, timezone) => {
            let utc = timezone.is_some();
            let nanos: Vec<Option<i64>> = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .iter()
                    .map(|v| v.and_then(|s| s.checked_mul(1_000_000_000)))
                    .collect(),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .iter()
                    .map(|v| v.and_then(|s| s.checked_mul(1_000_000)))
                    .collect(),
                TimeUnit::Microsecond => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .map(|v| v.and_then(|s| s.checked_mul(1_000)))
                    .collect(),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().iter().collect(),
            };
            nanos.into_iter().map(|v| v.map_or(Value::Null, |ns| Value::String(format_timestamp_ns(ns, utc)))).collect()
        }
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .iter()
            .map(|v| {
                v.and_then(|days| chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163))
                    .map_or(Value::Null, |d| Value::String(d.format("%Y-%m-%d").to_string()))
            })
            .collect(),
        DataType::List(_) => lists(array.as_list::<i32>())?,
        DataType::LargeList(_) => lists(array.as_list::<i64>())?,
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            (0..len)
                .map(|i| {
                    if list.is_null(i) {
                        Ok(Value::Null)
                    } else {
                        array_to_json(list.value(i).as_ref()).map(Value::Array)
                    }
                })
                .collect::<Result<_, _>>()?
        }
        DataType::Map(_, _) => maps(array.as_map())?,
        DataType::Struct(_) => structs(array.as_struct())?,
        DataType::Dictionary(_, value_type) => {
            let plain: ArrayRef = arrow::compute::cast(array, value_type)?;
            array_to_json(plain.as_ref())?
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            (0..len)
                .map(|i| if array.is_null(i) { Value::Null } else { Value::String(formatter.value(i).to_string()) })
                .collect()
        }
    };
    Ok(values)
}

/// `2026-11-23T09:16:54.123456789Z`; without the `Z` for timestamps that carry no time zone.
pub fn format_timestamp_ns(ns: i64, utc: bool) -> String {
    let time = chrono::DateTime::from_timestamp_nanos(ns);
    let mut text = time.format("%Y-%m-%dT%H:%M:%S%.9f").to_string();
    if utc {
        text.push('Z');
    }
    text
}

fn integers(values: impl Iterator<Item = Option<i64>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, |v| Value::Number(v.into()))).collect()
}

fn unsigned(values: impl Iterator<Item = Option<u64>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, |v| Value::Number(v.into()))).collect()
}

fn floats(values: impl Iterator<Item = Option<f64>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, float)).collect()
}

fn float(value: f64) -> Value {
    match Number::from_f64(value) {
        Some(number) => Value::Number(number),
        None if value.is_nan() => Value::String("NaN".into()),
        None if value > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string()))).collect()
}

fn hex_strings<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, |b| Value::String(hex::encode(b)))).collect()
}

fn lists<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Result<Vec<Value>, ArrowError> {
    (0..list.len())
        .map(
            |i| {
                if list.is_null(i) { Ok(Value::Null) } else { array_to_json(list.value(i).as_ref()).map(Value::Array) }
            },
        )
        .collect()
}

fn maps(map: &MapArray) -> Result<Vec<Value>, ArrowError> {
    let keys = array_to_json(map.keys().as_ref())?;
    let values = array_to_json(map.values().as_ref())?;
    let offsets = map.value_offsets();
    Ok((0..map.len())
        .map(|i| {
            if map.is_null(i) {
                return Value::Null;
            }
            let mut object = Map::new();
            for entry in offsets[i] as usize..offsets[i + 1] as usize {
                let key = match &keys[entry] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                object.insert(key, values[entry].clone());
            }
            Value::Object(object)
        })
        .collect())
}

fn structs(array: &StructArray) -> Result<Vec<Value>, ArrowError> {
    let columns: Vec<Vec<Value>> =
        array.columns().iter().map(|c| array_to_json(c.as_ref())).collect::<Result<_, _>>()?;
    Ok((0..array.len())
        .map(|i| {
            if array.is_null(i) {
                return Value::Null;
            }
            let object = array
                .fields()
                .iter()
                .zip(&columns)
                .map(|(field, values)| (field.name().clone(), values[i].clone()))
                .collect();
            Value::Object(object)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, ListBuilder, MapBuilder, StringBuilder, TimestampNanosecondArray, UInt64Builder};
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let array = TimestampNanosecondArray::from(vec![Some(1_795_392_000_123_456_789), None]).with_timezone("UTC");
        assert_eq!(array_to_json(&array).expect("json"), vec![json!("2026-11-23T00:00:00.123456789Z"), Value::Null]);
    }

    #[test]
    fn maps_become_objects_and_lists_arrays() {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("http.method");
        map.values().append_value("GET");
        map.append(true).expect("entry");
        map.append(true).expect("empty");
        let map = map.finish();
        assert_eq!(array_to_json(&map).expect("json"), vec![json!({"http.method": "GET"}), json!({})]);

        let mut list = ListBuilder::new(UInt64Builder::new());
        list.values().append_value(1);
        list.values().append_value(u64::MAX);
        list.append(true);
        list.append_null();
        let list = list.finish();
        assert_eq!(array_to_json(&list).expect("json"), vec![json!([1, u64::MAX]), Value::Null]);
    }

    #[test]
    fn non_finite_floats_are_strings() {
        let array: ArrayRef = Arc::new(Float64Array::from(vec![1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]));
        assert_eq!(
            array_to_json(array.as_ref()).expect("json"),
            vec![json!(1.5), json!("NaN"), json!("Infinity"), json!("-Infinity")]
        );
    }
}
