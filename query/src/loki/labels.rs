//! Loki labels and the `logs` columns behind them.
//!
//! A stream's labels are the container identity the store promotes to columns, under the names
//! Loki 3 gives OTLP resource attributes (`k8s_namespace_name`, …), plus `stream` for the output
//! stream. Promtail-style short names (`namespace`, `pod`, `container`, `node_name`) are
//! accepted in selectors as aliases. Stream selectors become SQL conditions; regular
//! expressions are anchored at both ends, as in Loki and Prometheus.

use logql::{LabelMatcher, MatchOp, StreamSelector};

use super::params::ParamError;

/// (label, column) of every stream label, in the order responses list them.
pub const STREAM_LABELS: [(&str, &str); 8] = [
    ("service_name", "service_name"),
    ("k8s_namespace_name", "k8s_namespace_name"),
    ("k8s_pod_name", "k8s_pod_name"),
    ("k8s_container_name", "k8s_container_name"),
    ("k8s_node_name", "k8s_node_name"),
    ("k8s_pod_uid", "k8s_pod_uid"),
    ("container_id", "container_id"),
    ("stream", "log_iostream"),
];

/// Names people type for the same labels (Promtail's, and the column names themselves).
const ALIASES: [(&str, &str); 6] = [
    ("namespace", "k8s_namespace_name"),
    ("pod", "k8s_pod_name"),
    ("container", "k8s_container_name"),
    ("node_name", "k8s_node_name"),
    ("log_iostream", "log_iostream"),
    ("service", "service_name"),
];

/// The column of a label, if it is one of the stream labels.
pub fn column_of(label: &str) -> Option<&'static str> {
    STREAM_LABELS
        .iter()
        .find(|(name, _)| *name == label)
        .or_else(|| ALIASES.iter().find(|(name, _)| *name == label))
        .map(|(_, column)| *column)
}

/// The label name under which a column is reported.
pub fn label_of(column: &str) -> Option<&'static str> {
    STREAM_LABELS.iter().find(|(_, c)| *c == column).map(|(name, _)| *name)
}

/// A SQL string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Whether the anchored regular expression `re` matches the empty string (an invalid one does
/// not; it is reported where the condition is built).
fn regex_matches_empty(re: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|re| re.is_match(""))
}

/// The SQL condition of one matcher. A label the streams do not have is the empty string, so
/// `{x=""}` matches every stream and `{x="a"}` none, as in Loki.
fn matcher_condition(matcher: &LabelMatcher) -> Result<String, ParamError> {
    let anchored = |re: &str| -> Result<String, ParamError> {
        let anchored = format!("^(?:{re})$");
        regex::Regex::new(&anchored)
            .map_err(|e| ParamError::new(format!("invalid regular expression {re:?} in {}: {e}", matcher.name)))?;
        Ok(quote(&anchored))
    };
    let Some(column) = column_of(&matcher.name) else {
        let matches_empty = match matcher.op {
            MatchOp::Eq => matcher.value.is_empty(),
            MatchOp::Neq => !matcher.value.is_empty(),
            MatchOp::Re => regex_matches_empty(&matcher.value),
            MatchOp::Nre => !regex_matches_empty(&matcher.value),
            _ => false,
        };
        return Ok(if matches_empty { "TRUE" } else { "FALSE" }.into());
    };
    let value = format!("coalesce({column}, '')");
    Ok(match matcher.op {
        MatchOp::Eq => format!("{value} = {}", quote(&matcher.value)),
        MatchOp::Neq => format!("{value} <> {}", quote(&matcher.value)),
        // The commonest regexes, without a regex: Grafana's "any value" is `=~".+"`.
        MatchOp::Re if matcher.value == ".+" => format!("{value} <> ''"),
        MatchOp::Re if matcher.value == ".*" => "TRUE".into(),
        MatchOp::Re => format!("regexp_like({value}, {})", anchored(&matcher.value)?),
        MatchOp::Nre => format!("NOT regexp_like({value}, {})", anchored(&matcher.value)?),
        other => return Err(ParamError::new(format!("unsupported matcher operator {other}"))),
    })
}

/// The SQL condition of a stream selector. Loki refuses selectors that would match every
/// stream, since they scan everything; so does Wake.
pub fn selector_condition(selector: &StreamSelector) -> Result<String, ParamError> {
    let selects_something = selector.matchers.iter().any(|m| match m.op {
        MatchOp::Eq => !m.value.is_empty(),
        MatchOp::Re => !regex_matches_empty(&m.value),
        _ => false,
    });
    if !selects_something {
        return Err(ParamError::new(
            "queries require at least one regexp or equality matcher that does not have an empty-compatible value. \
             For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will"
                .into(),
        ));
    }
    let conditions: Vec<String> = selector.matchers.iter().map(matcher_condition).collect::<Result<_, _>>()?;
    Ok(conditions.join(" AND "))
}

/// The SQL time range condition `[start, end)` on `timestamp` (literals coerce to the column's
/// type, so the store can prune files and row groups by time).
pub fn time_condition(start_ns: i64, end_ns: i64) -> String {
    format!(
        "timestamp >= '{}' AND timestamp < '{}'",
        crate::json::format_timestamp_ns(start_ns, true),
        crate::json::format_timestamp_ns(end_ns, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(text: &str) -> StreamSelector {
        logql::parse_selector(text).expect("a selector")
    }

    #[test]
    fn selectors_become_anchored_sql() {
        let sql = selector_condition(&selector(r#"{namespace="shop", pod=~"web-.*", stream!="stderr"}"#)).unwrap();
        assert_eq!(
            sql,
            "coalesce(k8s_namespace_name, '') = 'shop' AND regexp_like(coalesce(k8s_pod_name, ''), '^(?:web-.*)$') \
             AND coalesce(log_iostream, '') <> 'stderr'"
        );
        let sql = selector_condition(&selector(r#"{k8s_container_name="a'b", team="x"}"#)).unwrap();
        assert_eq!(sql, "coalesce(k8s_container_name, '') = 'a''b' AND FALSE");
        let sql = selector_condition(&selector(r#"{service_name="api", team=""}"#)).unwrap();
        assert!(sql.ends_with("AND TRUE"), "{sql}");
    }

    #[test]
    fn selectors_matching_everything_are_refused() {
        for text in [r#"{namespace=~".*"}"#, r#"{namespace!="x"}"#, r#"{namespace=""}"#] {
            assert!(selector_condition(&selector(text)).is_err(), "{text}");
        }
        assert_eq!(
            selector_condition(&selector(r#"{namespace=~".+"}"#)).unwrap(),
            "coalesce(k8s_namespace_name, '') <> ''"
        );
        assert!(selector_condition(&selector(r#"{namespace=~"(+"}"#)).is_err(), "invalid regex");
    }
}
