//! Label names and error marks shared by the stages, and the matchers of `drop` and `keep`.

use logql::LabelPredicate;

use super::filters::Matcher;
use super::{DUPLICATE_SUFFIX, ERROR_DETAILS_LABEL, ERROR_LABEL, Labels, PipelineError};

pub(super) fn set_error(labels: &mut Labels, kind: &str, details: Option<String>) {
    labels.insert(ERROR_LABEL.to_string(), kind.to_string());
    if let Some(details) = details {
        labels.insert(ERROR_DETAILS_LABEL.to_string(), details);
    }
}

pub(super) fn has_error(labels: &Labels) -> bool {
    labels.get(ERROR_LABEL).is_some_and(|error| !error.is_empty())
}

/// The label an extracted `name` is stored under: stream labels are never overwritten by parsers.
pub(super) fn extracted_name(stream: &[String], name: &str) -> String {
    if stream.binary_search_by(|label| label.as_str().cmp(name)).is_ok() {
        format!("{name}{DUPLICATE_SUFFIX}")
    } else {
        name.to_string()
    }
}

pub(super) fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Appends `key` as a label-name fragment: characters outside `[a-zA-Z0-9_]` become `_`, and a name
/// that would start with a digit gets a leading `_`, as Loki does for JSON and logfmt keys.
pub(super) fn push_sanitized(out: &mut String, key: &str) {
    let key = key.trim();
    if out.is_empty() && key.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
}

pub(super) fn sanitize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    push_sanitized(&mut out, key);
    out
}

#[derive(Debug)]
pub(super) struct NamedMatcher {
    pub(super) name: String,
    pub(super) matcher: Option<Matcher>,
}

impl NamedMatcher {
    pub(super) fn compile_all(predicates: &[LabelPredicate]) -> Result<Vec<NamedMatcher>, PipelineError> {
        predicates
            .iter()
            .map(|predicate| {
                let matcher = match &predicate.matcher {
                    // `drop`/`keep` matchers are Prometheus matchers, whose `.` matches newlines.
                    Some((op, value)) => Some(Matcher::compile(*op, value, true)?),
                    None => None,
                };
                Ok(NamedMatcher { name: predicate.name.clone(), matcher })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::pipeline::tests::{labels, run};

    #[test]
    fn drop_and_keep_with_matchers() {
        let stream = [("app", "web"), ("env", "prod")];
        let line = "level=info method=GET path=/x";
        let (_, l) = run(r#"{a="b"} | logfmt | drop level, method="GET", path=~"/y.*", env!="dev""#, &stream, line);
        assert_eq!(l, labels(&[("app", "web"), ("path", "/x")]));

        let (_, l) = run(r#"{a="b"} | logfmt | keep app, method="POST", path=~"/x""#, &stream, line);
        assert_eq!(l, labels(&[("app", "web"), ("path", "/x")]));

        // keep never removes the error labels; drop does.
        let (out, l) = run(r#"{a="b"} | json | keep app"#, &stream, "not json");
        assert!(out.is_some());
        assert_eq!(l.keys().collect::<Vec<_>>(), [ERROR_LABEL, ERROR_DETAILS_LABEL, "app"]);
        let (_, l) = run(r#"{a="b"} | json | drop __error__="JSONParserErr""#, &stream, "not json");
        assert!(!l.contains_key(ERROR_LABEL));
        let (_, l) = run(r#"{a="b"} | json | drop __error__="LogfmtParserErr""#, &stream, "not json");
        assert!(l.contains_key(ERROR_LABEL));
    }
}
