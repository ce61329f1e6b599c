//! Tag names and values of spans, for the autocomplete of Grafana's Tempo search builder and
//! Jaeger's pickers: attribute keys by scope (resource, span, intrinsic) and the values of one
//! attribute or intrinsic over a time range, optionally among the spans a TraceQL filter's
//! prefilter selects.
//!
//! Values are typed as a TraceQL literal would compare against them: a stored text that reads
//! as an integer is `int`, as a number `float`, `true`/`false` a `bool`, anything else a
//! `string`; statuses and kinds are `keyword`s. Grafana quotes a value in the query it builds
//! only when its type is `string`, and Wake's TraceQL compares a number literal with an
//! attribute by reading its text as a number, so each typed value finds its spans again.

use serde_json::{Value as Json, json};
use wake_storage::schema::PROMOTED_RESOURCE_ATTRIBUTES;

use super::TracesError;
use super::load::TimeRange;
use crate::engine::QueryEngine;
use crate::loki::labels::quote;

/// Tempo's intrinsic tag names, as its `/api/v2/search/tags` lists them.
pub const INTRINSIC_TAGS: [&str; 12] = [
    "duration",
    "event:name",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "span:duration",
    "span:kind",
    "span:name",
    "span:status",
    "status",
    "statusMessage",
];

/// Where an attribute is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Resource,
    Span,
    /// Unscoped (`.x`, or a v1 tag name): span attributes, then resource ones.
    Any,
}

fn filter(range: TimeRange, prefilter: Option<&str>) -> String {
    let mut condition = format!(
        "start_time >= '{}' AND start_time < '{}'",
        crate::json::format_timestamp_ns(range.start_ns, true),
        crate::json::format_timestamp_ns(range.end_ns, true)
    );
    if let Some(prefilter) = prefilter {
        condition.push_str(&format!(" AND ({prefilter})"));
    }
    condition
}

/// The first column of `sql`'s rows, as text (NULLs left out).
pub(super) async fn strings(engine: &QueryEngine, sql: &str) -> Result<Vec<String>, TracesError> {
    Ok(engine
        .sql_each(
            sql,
            |_| Ok(Vec::new()),
            |values, batch| {
                use arrow::array::AsArray;
                if let Some(column) = batch.column(0).as_string_opt::<i32>() {
                    values.extend(column.iter().flatten().map(str::to_string));
                }
                Ok(true)
            },
        )
        .await?)
}

/// The attribute keys of `scope` (resource or span) on spans in `range`, sorted, at most `max`.
pub async fn tag_names(
    engine: &QueryEngine,
    scope: Scope,
    range: TimeRange,
    prefilter: Option<&str>,
    max: usize,
) -> Result<Vec<String>, TracesError> {
    let condition = filter(range, prefilter);
    let mut names = Vec::new();
    if matches!(scope, Scope::Resource | Scope::Any) {
        // Promoted resource attributes live in columns: each is listed if any span has it.
        let counts: Vec<String> =
            PROMOTED_RESOURCE_ATTRIBUTES.iter().map(|(_, column)| format!("count({column})")).collect();
        let sql = format!("SELECT {} FROM spans WHERE {condition}", counts.join(", "));
        let present = engine
            .sql_each(
                &sql,
                |_| Ok(vec![false; PROMOTED_RESOURCE_ATTRIBUTES.len()]),
                |present, batch| {
                    use arrow::array::AsArray;
                    use arrow::datatypes::Int64Type;
                    for (i, seen) in present.iter_mut().enumerate() {
                        let column = batch.column(i).as_primitive::<Int64Type>();
                        *seen |= column.values().first().is_some_and(|count| *count > 0);
                    }
                    Ok(true)
                },
            )
            .await?;
        for ((attribute, _), seen) in PROMOTED_RESOURCE_ATTRIBUTES.iter().zip(present) {
            if seen {
                names.push((*attribute).to_string());
            }
        }
        names.extend(keys(engine, "resource_attributes", &condition, max).await?);
    }
    if matches!(scope, Scope::Span | Scope::Any) {
        names.extend(keys(engine, "attributes", &condition, max).await?);
    }
    names.sort();
    names.dedup();
    names.truncate(max);
    Ok(names)
}

async fn keys(engine: &QueryEngine, column: &str, condition: &str, max: usize) -> Result<Vec<String>, TracesError> {
    let sql = format!(
        "SELECT DISTINCT key FROM (SELECT unnest(map_keys({column})) AS key FROM spans WHERE {condition}) \
         ORDER BY key LIMIT {max}"
    );
    strings(engine, &sql).await
}

/// The SQL expression of a tag, `None` for a tag that names nothing Wake stores.
pub fn tag_expression(scope: Scope, name: &str) -> Vec<String> {
    let resource = || match PROMOTED_RESOURCE_ATTRIBUTES.iter().find(|(attribute, _)| *attribute == name) {
        Some((_, column)) => (*column).to_string(),
        None => format!("resource_attributes[{}]", quote(name)),
    };
    match scope {
        Scope::Resource => vec![resource()],
        Scope::Span => vec![format!("attributes[{}]", quote(name))],
        Scope::Any => vec![format!("attributes[{}]", quote(name)), resource()],
    }
}

/// A TraceQL tag (`resource.service.name`, `span.http.method`, `.x`, `name`, `status`,
/// `span:kind`…) or a v1 tag name (unscoped) as the SQL expressions of its values, and whether
/// its values are keywords.
pub fn parse_tag(tag: &str, v2: bool) -> Result<(Vec<String>, bool), TracesError> {
    let intrinsic = |column: &str| Ok((vec![column.to_string()], false));
    let keyword = |column: &str| Ok((vec![column.to_string()], true));
    match tag {
        "name" | "span:name" => return intrinsic("name"),
        "status" | "span:status" => return keyword("status_code"),
        "kind" | "span:kind" => return keyword("kind"),
        "statusMessage" | "span:statusMessage" => return intrinsic("status_message"),
        "rootServiceName" | "trace:rootService" | "rootName" | "trace:rootName" => {
            // Root spans are those without a parent id.
            let column = if tag.contains("ervice") { "service_name" } else { "name" };
            return Ok((vec![format!("CASE WHEN parent_span_id IS NULL THEN {column} END")], false));
        }
        _ => {}
    }
    let unquote = |name: &str| name.trim_matches('"').to_string();
    if let Some(name) = tag.strip_prefix("resource.") {
        return Ok((tag_expression(Scope::Resource, &unquote(name)), false));
    }
    if let Some(name) = tag.strip_prefix("span.") {
        return Ok((tag_expression(Scope::Span, &unquote(name)), false));
    }
    if let Some(name) = tag.strip_prefix('.') {
        return Ok((tag_expression(Scope::Any, &unquote(name)), false));
    }
    if v2 && !tag.contains('.') && tag.contains(':') {
        return Err(TracesError::BadRequest(format!(
            "unsupported tag {:?}: intrinsics are name, status, kind, statusMessage, rootName and rootServiceName",
            crate::limits::truncated(tag, 64)
        )));
    }
    if tag.is_empty() {
        return Err(TracesError::BadRequest("a tag name is required".into()));
    }
    Ok((tag_expression(Scope::Any, tag), false))
}

/// The distinct values of `expressions` (any of them) on spans in `range`, sorted, at most `max`.
pub async fn tag_values(
    engine: &QueryEngine,
    expressions: &[String],
    range: TimeRange,
    prefilter: Option<&str>,
    max: usize,
) -> Result<Vec<String>, TracesError> {
    let condition = filter(range, prefilter);
    let selects: Vec<String> = expressions
        .iter()
        .map(|expression| format!("SELECT {expression} AS v FROM spans WHERE {condition} AND {expression} IS NOT NULL"))
        .collect();
    let sql = format!("SELECT DISTINCT v FROM ({}) ORDER BY v LIMIT {max}", selects.join(" UNION ALL "));
    strings(engine, &sql).await
}

/// A value as `/api/v2/search/tag/<tag>/values` lists it: `{"type", "value"}`.
pub fn typed_value(value: &str, keyword: bool) -> Json {
    let kind = if keyword {
        "keyword"
    } else if value.parse::<i64>().is_ok() {
        "int"
    } else if value.parse::<f64>().is_ok_and(f64::is_finite) && value.bytes().any(|b| b.is_ascii_digit()) {
        "float"
    } else if value == "true" || value == "false" {
        "bool"
    } else {
        "string"
    };
    json!({ "type": kind, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_sql_expressions() {
        assert_eq!(parse_tag("resource.service.name", true).unwrap().0, vec!["service_name"]);
        assert_eq!(parse_tag("span.http.method", true).unwrap().0, vec!["attributes['http.method']"]);
        assert_eq!(parse_tag(".team", true).unwrap().0, vec!["attributes['team']", "resource_attributes['team']"]);
        assert_eq!(parse_tag("status", true).unwrap(), (vec!["status_code".to_string()], true));
        assert_eq!(parse_tag("service.name", false).unwrap().0, vec!["attributes['service.name']", "service_name"]);
        assert!(parse_tag("trace:unknown", true).is_err());
        assert_eq!(parse_tag("span.\"a'b\"", true).unwrap().0, vec!["attributes['a''b']"]);
    }

    #[test]
    fn values_are_typed_as_literals_would_compare() {
        assert_eq!(typed_value("500", false)["type"], "int");
        assert_eq!(typed_value("1.5", false)["type"], "float");
        assert_eq!(typed_value("inf", false)["type"], "string");
        assert_eq!(typed_value("true", false)["type"], "bool");
        assert_eq!(typed_value("GET", false)["type"], "string");
        assert_eq!(typed_value("error", true)["type"], "keyword");
    }
}
