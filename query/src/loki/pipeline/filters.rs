//! Line filters (`|=`, `!=`, `|~`, `!~`) and label filters (`| status >= 500 and level="error"`).

use logql::{FilterOp, FilterValue, LabelFilterExpr, LineFilter, LineFilterOp, MatchOp};
use regex::Regex;

use super::convert::{parse_go_bytes, parse_go_duration, parse_go_float};
use super::labels::{has_error, set_error};
use super::{LABEL_FILTER_ERROR, Labels, PipelineError, compile_regex};

// ---------------------------------------------------------------------------------------------
// Line filters

#[derive(Debug)]
pub(super) enum LineFilterStage {
    Contains(String),
    NotContains(String),
    Regex(Regex),
    NotRegex(Regex),
}

impl LineFilterStage {
    pub(super) fn compile(filter: &LineFilter) -> Result<Self, PipelineError> {
        if filter.is_ip {
            return Err(PipelineError::Unsupported("ip() line filters".into()));
        }
        Ok(match filter.op {
            LineFilterOp::Contains => LineFilterStage::Contains(filter.value.clone()),
            LineFilterOp::NotContains => LineFilterStage::NotContains(filter.value.clone()),
            LineFilterOp::Regex => LineFilterStage::Regex(compile_regex(&filter.value)?),
            LineFilterOp::NotRegex => LineFilterStage::NotRegex(compile_regex(&filter.value)?),
            other => return Err(PipelineError::Unsupported(format!("line filter operator {other:?}"))),
        })
    }

    pub(super) fn matches(&self, line: &str) -> bool {
        match self {
            LineFilterStage::Contains(needle) => line.contains(needle.as_str()),
            LineFilterStage::NotContains(needle) => !line.contains(needle.as_str()),
            LineFilterStage::Regex(regex) => regex.is_match(line),
            LineFilterStage::NotRegex(regex) => !regex.is_match(line),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Label filters (their matchers are also those of `drop` and `keep`)

/// A regex matching whole values, as label matchers do. The pattern is first compiled alone so that
/// an unbalanced `)` cannot escape the wrapping group and change what is anchored.
fn compile_anchored(pattern: &str, dot_matches_newline: bool) -> Result<Regex, PipelineError> {
    compile_regex(pattern)?;
    let flags = if dot_matches_newline { "?s:" } else { "?:" };
    Regex::new(&format!(r"\A({flags}{pattern})\z"))
        .map_err(|error| PipelineError::InvalidRegex { pattern: pattern.to_string(), message: error.to_string() })
}

#[derive(Debug)]
pub(super) enum Matcher {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

impl Matcher {
    pub(super) fn compile(op: MatchOp, value: &str, dot_matches_newline: bool) -> Result<Self, PipelineError> {
        Ok(match op {
            MatchOp::Eq => Matcher::Equal(value.to_string()),
            MatchOp::Neq => Matcher::NotEqual(value.to_string()),
            MatchOp::Re => Matcher::Regex(compile_anchored(value, dot_matches_newline)?),
            MatchOp::Nre => Matcher::NotRegex(compile_anchored(value, dot_matches_newline)?),
            other => return Err(PipelineError::Unsupported(format!("matcher operator {other}"))),
        })
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Equal(expected) => value == expected,
            Matcher::NotEqual(expected) => value != expected,
            Matcher::Regex(regex) => regex.is_match(value),
            Matcher::NotRegex(regex) => !regex.is_match(value),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Comparison {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    fn of(op: FilterOp) -> Result<Self, PipelineError> {
        Ok(match op {
            FilterOp::Eq | FilterOp::CmpEq => Comparison::Equal,
            FilterOp::Neq => Comparison::NotEqual,
            FilterOp::Gt => Comparison::Greater,
            FilterOp::Gte => Comparison::GreaterOrEqual,
            FilterOp::Lt => Comparison::Less,
            FilterOp::Lte => Comparison::LessOrEqual,
            other => return Err(PipelineError::Unsupported(format!("operator {other:?} against a number"))),
        })
    }

    fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            Comparison::Equal => left == right,
            Comparison::NotEqual => left != right,
            Comparison::Greater => left > right,
            Comparison::GreaterOrEqual => left >= right,
            Comparison::Less => left < right,
            Comparison::LessOrEqual => left <= right,
        }
    }
}

#[derive(Debug)]
pub(super) enum FilterNode {
    And(Box<FilterNode>, Box<FilterNode>),
    Or(Box<FilterNode>, Box<FilterNode>),
    Text { name: String, matcher: Matcher },
    Number { name: String, comparison: Comparison, value: f64 },
    Duration { name: String, comparison: Comparison, nanos: i128 },
    Bytes { name: String, comparison: Comparison, value: u64 },
}

impl FilterNode {
    pub(super) fn compile(expr: &LabelFilterExpr) -> Result<Self, PipelineError> {
        Ok(match expr {
            LabelFilterExpr::And(left, right) => {
                FilterNode::And(Box::new(Self::compile(left)?), Box::new(Self::compile(right)?))
            }
            LabelFilterExpr::Or(left, right) => {
                FilterNode::Or(Box::new(Self::compile(left)?), Box::new(Self::compile(right)?))
            }
            LabelFilterExpr::Pred(pred) => {
                let name = pred.name.clone();
                match &pred.value {
                    FilterValue::String(value) => {
                        let op = match pred.op {
                            FilterOp::Eq | FilterOp::CmpEq => MatchOp::Eq,
                            FilterOp::Neq => MatchOp::Neq,
                            FilterOp::Re => MatchOp::Re,
                            FilterOp::Nre => MatchOp::Nre,
                            other => {
                                return Err(PipelineError::Unsupported(format!("operator {other:?} against a string")));
                            }
                        };
                        FilterNode::Text { name, matcher: Matcher::compile(op, value, false)? }
                    }
                    FilterValue::Number(value) => {
                        FilterNode::Number { name, comparison: Comparison::of(pred.op)?, value: *value }
                    }
                    FilterValue::Duration(value) => FilterNode::Duration {
                        name,
                        comparison: Comparison::of(pred.op)?,
                        nanos: i128::try_from(value.as_nanos()).unwrap_or(i128::MAX),
                    },
                    FilterValue::Bytes(value) => {
                        FilterNode::Bytes { name, comparison: Comparison::of(pred.op)?, value: *value }
                    }
                    FilterValue::Ip(_) => return Err(PipelineError::Unsupported("ip() label filters".into())),
                    other => return Err(PipelineError::Unsupported(format!("label filter value {other:?}"))),
                }
            }
            other => return Err(PipelineError::Unsupported(format!("label filter {other:?}"))),
        })
    }

    pub(super) fn eval(&self, labels: &mut Labels) -> bool {
        match self {
            // Both sides run, as in Loki, so both can mark a conversion error.
            FilterNode::And(left, right) => {
                let left = left.eval(labels);
                let right = right.eval(labels);
                left && right
            }
            FilterNode::Or(left, right) => left.eval(labels) || right.eval(labels),
            FilterNode::Text { name, matcher } => matcher.matches(labels.get(name).map_or("", String::as_str)),
            FilterNode::Number { name, comparison, value } => {
                let parsed = labels.get(name).map(|v| parse_go_float(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *value))
            }
            FilterNode::Duration { name, comparison, nanos } => {
                let parsed = labels.get(name).map(|v| parse_go_duration(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *nanos))
            }
            FilterNode::Bytes { name, comparison, value } => {
                let parsed = labels.get(name).map(|v| parse_go_bytes(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *value))
            }
        }
    }
}

/// Loki's rules for converting label filters: a missing label fails the predicate; a label that
/// does not convert passes it but marks the line, unless an earlier error is already there.
fn compare_converted<T>(labels: &mut Labels, parsed: Option<Result<T, String>>, holds: impl Fn(T) -> bool) -> bool {
    match parsed {
        None => false,
        Some(Ok(value)) => holds(value),
        Some(Err(details)) => {
            if !has_error(labels) {
                set_error(labels, LABEL_FILTER_ERROR, Some(details));
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::pipeline::tests::{kept, run};
    use crate::loki::pipeline::{ERROR_DETAILS_LABEL, ERROR_LABEL, JSON_ERROR};

    #[test]
    fn chained_line_filters_all_apply_and_are_case_sensitive() {
        let q = r#"{app="a"} |= "error" != "timeout" |~ "code=[45][0-9]{2}" !~ "(?i)debug""#;
        assert!(kept(q, &[], "error code=503 upstream"));
        assert!(!kept(q, &[], "ERROR code=503 upstream"));
        assert!(!kept(q, &[], "error timeout code=503"));
        assert!(!kept(q, &[], "error code=200"));
        assert!(!kept(q, &[], "error code=503 DEBUG"));
        // `|~` searches anywhere in the line: it is not anchored.
        assert!(kept(r#"{a="b"} |~ "b+""#, &[], "aaabbbccc"));
    }

    #[test]
    fn numeric_label_filters_convert_values() {
        let q = r#"{a="b"} | logfmt | status >= 500"#;
        assert!(kept(q, &[], "status=503"));
        assert!(kept(q, &[], "status=500.0"));
        assert!(!kept(q, &[], "status=404"));
        // A missing label fails the comparison without an error.
        let (out, l) = run(q, &[], "other=1");
        assert!(out.is_none());
        assert!(!l.contains_key(ERROR_LABEL));
        // A label that does not convert keeps the line, marked.
        let (out, l) = run(q, &[], "status=abc");
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
        assert_eq!(l[ERROR_DETAILS_LABEL], r#"strconv.ParseFloat: parsing "abc": invalid syntax"#);
        assert!(!kept(r#"{a="b"} | logfmt | status >= 500 | __error__="""#, &[], "status=abc"));
        // An earlier, more useful error is not overwritten.
        let (_, l) = run(r#"{a="b"} | json | status > 1"#, &[("status", "x")], "not json");
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);

        assert!(kept(r#"{a="b"} | logfmt | status == 200"#, &[], "status=200"));
        assert!(kept(r#"{a="b"} | logfmt | status = 200"#, &[], "status=200"));
        assert!(kept(r#"{a="b"} | logfmt | status != 200"#, &[], "status=201"));
        assert!(kept(r#"{a="b"} | logfmt | ratio < 0.5"#, &[], "ratio=0.25"));
        assert!(!kept(r#"{a="b"} | logfmt | ratio <= 0.5"#, &[], "ratio=0.75"));
    }

    #[test]
    fn duration_and_bytes_label_filters() {
        let q = r#"{a="b"} | logfmt | duration > 1s"#;
        assert!(kept(q, &[], "duration=1.5s"));
        assert!(kept(q, &[], "duration=1m"));
        assert!(kept(q, &[], "duration=1h2m"));
        assert!(!kept(q, &[], "duration=250ms"));
        assert!(!kept(q, &[], "duration=1s"));
        assert!(kept(r#"{a="b"} | logfmt | duration >= 1s"#, &[], "duration=1000ms"));
        assert!(kept(r#"{a="b"} | logfmt | duration == 90s"#, &[], "duration=1m30s"));
        let (out, l) = run(q, &[], "duration=5");
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
        assert_eq!(l[ERROR_DETAILS_LABEL], r#"time: missing unit in duration "5""#);

        let q = r#"{a="b"} | logfmt | size > 10KB"#;
        assert!(kept(q, &[], "size=10.5kB"));
        assert!(kept(q, &[], "size=1MiB"));
        assert!(kept(q, &[], "size=20000"));
        assert!(!kept(q, &[], "size=10KB"));
        assert!(!kept(q, &[], "size=9KiB"));
        let (_, l) = run(q, &[], "size=lots");
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
    }

    #[test]
    fn and_binds_tighter_than_or_and_commas_mean_and() {
        let q = r#"{a="b"} | logfmt | level="error" or level="warn" and status >= 500"#;
        assert!(kept(q, &[], "level=error status=200"));
        assert!(kept(q, &[], "level=warn status=503"));
        assert!(!kept(q, &[], "level=warn status=200"));
        assert!(!kept(q, &[], "level=info status=503"));

        let q = r#"{a="b"} | logfmt | (level="error" or level="warn") and status >= 500"#;
        assert!(!kept(q, &[], "level=error status=200"));
        assert!(kept(q, &[], "level=error status=500"));

        let q = r#"{a="b"} | logfmt | level="error", status >= 500"#;
        assert!(kept(q, &[], "level=error status=500"));
        assert!(!kept(q, &[], "level=error status=499"));
        assert!(!kept(q, &[], "level=warn status=500"));
    }

    #[test]
    fn string_label_filters_and_anchored_regexes() {
        let q = r#"{a="b"} | logfmt | level =~ "err|warn""#;
        assert!(kept(q, &[], "level=err"));
        assert!(kept(q, &[], "level=warn"));
        assert!(!kept(q, &[], "level=error"), "=~ matches the whole value");
        assert!(!kept(q, &[], "level=xerr"));
        assert!(kept(r#"{a="b"} | logfmt | level !~ "err.*""#, &[], "level=warn"));
        assert!(!kept(r#"{a="b"} | logfmt | level !~ "err.*""#, &[], "level=error"));
        // A missing label compares as "".
        assert!(kept(r#"{a="b"} | logfmt | level = """#, &[], "msg=x"));
        assert!(kept(r#"{a="b"} | logfmt | level != "info""#, &[], "msg=x"));
        assert!(kept(r#"{a="b"} | logfmt | level == "info""#, &[], "level=info"));
        // Stream labels filter too.
        assert!(kept(r#"{a="b"} | app="web""#, &[("app", "web")], "x"));
    }
}
