//! Rule files in Prometheus' format (`groups:` of `rules:`), read and checked the way
//! Prometheus' `rulefmt` package does, so that `wake rules check` accepts and refuses what
//! `promtool check rules` accepts and refuses.
//!
//! Wake adds two group fields that Prometheus does not have: `lang` (`promql`, the default,
//! `logql` or `sql`) and `query_offset` (Prometheus 2.53's evaluation delay; Loki's
//! `evaluation_delay_duration`). A file that uses them is refused by older promtools, as any
//! unknown field is. Loki's rule files carry no `lang`: they are loaded with
//! [`Lang::Logql`] as the default instead (`loki_rule_files:`).
//!
//! Errors name the file and the line. YAML errors carry serde_yaml's position; errors found
//! after parsing (an invalid expression, a bad label name) point at the line of the rule's list
//! item, found by [`LineIndex`], a scan of the text for the group and rule list items.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::template;

/// The language of a group's expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Promql,
    Logql,
    Sql,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Promql => "promql",
            Lang::Logql => "logql",
            Lang::Sql => "sql",
        }
    }
}

/// A rule file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileSpec {
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub query_offset: Option<Duration>,
    /// Loki's name for the same delay.
    #[serde(default, deserialize_with = "optional_duration")]
    pub evaluation_delay_duration: Option<Duration>,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub lang: Option<Lang>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default)]
    pub expr: Option<String>,
    #[serde(default, rename = "for", deserialize_with = "optional_duration")]
    pub for_: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub keep_firing_for: Option<Duration>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// One rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleDef {
    Recording {
        record: String,
        expr: String,
        labels: BTreeMap<String, String>,
    },
    Alerting {
        alert: String,
        expr: String,
        hold: Duration,
        keep_firing_for: Duration,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    },
}

impl RuleDef {
    pub fn name(&self) -> &str {
        match self {
            RuleDef::Recording { record, .. } => record,
            RuleDef::Alerting { alert, .. } => alert,
        }
    }

    pub fn expr(&self) -> &str {
        match self {
            RuleDef::Recording { expr, .. } | RuleDef::Alerting { expr, .. } => expr,
        }
    }
}

/// One group, checked: what the ruler runs.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDef {
    pub file: PathBuf,
    pub name: String,
    /// `None`: the ruler's default interval.
    pub interval: Option<Duration>,
    /// `None`: the ruler's default offset.
    pub query_offset: Option<Duration>,
    pub limit: usize,
    pub lang: Lang,
    pub rules: Vec<RuleDef>,
}

/// Why a rule file was refused: every problem found, each with its line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| format!("{}: {p}", .file.display())).collect::<Vec<_>>().join("\n"))]
pub struct FileError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 { write!(f, "{}: {}", self.line, self.message) } else { write!(f, "{}", self.message) }
    }
}

/// Checks an expression in its language; `Err` holds the parser's message.
pub type ExprChecker = dyn Fn(Lang, &str) -> Result<(), String> + Sync;

/// Reads and checks one rule file. `default_lang` is the language of groups without `lang`.
pub fn load_file(path: &Path, default_lang: Lang, check_expr: &ExprChecker) -> Result<Vec<GroupDef>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError {
        file: path.to_path_buf(),
        problems: vec![Problem { line: 0, message: format!("cannot read the file: {error}") }],
    })?;
    parse(path, &text, default_lang, check_expr)
}

/// Parses and checks a rule file's text.
pub fn parse(
    path: &Path,
    text: &str,
    default_lang: Lang,
    check_expr: &ExprChecker,
) -> Result<Vec<GroupDef>, FileError> {
    let fail = |problems: Vec<Problem>| FileError { file: path.to_path_buf(), problems };
    // An empty file (or one of comments only) has no groups, as for Prometheus.
    let spec: RuleFileSpec = if text.trim().lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        RuleFileSpec::default()
    } else {
        // Only the first document, as Prometheus' decoder reads a file.
        let first = serde_yaml::Deserializer::from_str(text).next();
        first.map_or(Ok(RuleFileSpec::default()), RuleFileSpec::deserialize).map_err(|error| {
            let line = error.location().map_or(0, |l| l.line());
            fail(vec![Problem { line, message: yaml_message(&error) }])
        })?
    };
    let lines = LineIndex::new(text);
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut groups = Vec::with_capacity(spec.groups.len());
    for (g, group) in spec.groups.into_iter().enumerate() {
        let group_line = lines.group(g);
        if group.name.is_empty() {
            problems.push(Problem { line: group_line, message: "Groupname must not be empty".into() });
            continue;
        }
        if !seen.insert(group.name.clone()) {
            problems.push(Problem {
                line: group_line,
                message: format!("groupname: \"{}\" is repeated in the same file", group.name),
            });
            continue;
        }
        // A negative limit is no limit, as in Prometheus.
        let lang = group.lang.unwrap_or(default_lang);
        let mut rules = Vec::with_capacity(group.rules.len());
        for (r, rule) in group.rules.into_iter().enumerate() {
            let name = rule.alert.clone().or_else(|| rule.record.clone()).unwrap_or_default();
            match check_rule(rule, lang, check_expr) {
                Ok(rule) => rules.push(rule),
                Err(messages) => problems.extend(messages.into_iter().map(|message| Problem {
                    line: lines.rule(g, r).unwrap_or(group_line),
                    message: format!("group \"{}\", rule {}, \"{name}\": {message}", group.name, r + 1),
                })),
            }
        }
        groups.push(GroupDef {
            file: path.to_path_buf(),
            name: group.name,
            // 0 is the default interval, as in Prometheus.
            interval: group.interval.filter(|i| !i.is_zero()),
            query_offset: group.query_offset.or(group.evaluation_delay_duration),
            limit: usize::try_from(group.limit).unwrap_or(0),
            lang,
            rules,
        });
    }
    if problems.is_empty() { Ok(groups) } else { Err(fail(problems)) }
}

/// serde_yaml's message without the position it also carries (it is reported as the line).
fn yaml_message(error: &serde_yaml::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

/// Prometheus' `Rule.Validate` and its template check, in its order and words.
fn check_rule(rule: RuleSpec, lang: Lang, check_expr: &ExprChecker) -> Result<RuleDef, Vec<String>> {
    let mut errors = Vec::new();
    let record = rule.record.filter(|r| !r.is_empty());
    let alert = rule.alert.filter(|a| !a.is_empty());
    match (&record, &alert) {
        (Some(_), Some(_)) => errors.push("only one of 'record' and 'alert' must be set".to_string()),
        (None, None) => errors.push("one of 'record' or 'alert' must be set".to_string()),
        _ => {}
    }
    let expr = rule.expr.unwrap_or_default();
    if expr.trim().is_empty() {
        errors.push("field 'expr' must be set in rule".to_string());
    } else if let Err(message) = check_expr(lang, &expr) {
        errors.push(format!("could not parse expression: {message}"));
    }
    if let Some(record) = &record {
        if !rule.annotations.is_empty() {
            errors.push("invalid field 'annotations' in recording rule".to_string());
        }
        if rule.for_.is_some_and(|d| !d.is_zero()) {
            errors.push("invalid field 'for' in recording rule".to_string());
        }
        if rule.keep_firing_for.is_some_and(|d| !d.is_zero()) {
            errors.push("invalid field 'keep_firing_for' in recording rule".to_string());
        }
        if !is_valid_metric_name(record) {
            errors.push(format!("invalid recording rule name: {record}"));
        }
    }
    for name in rule.labels.keys() {
        if !is_valid_label_name(name) || name == "__name__" {
            errors.push(format!("invalid label name: {name}"));
        }
    }
    for name in rule.annotations.keys() {
        if !is_valid_label_name(name) {
            errors.push(format!("invalid annotation name: {name}"));
        }
    }
    if alert.is_some() {
        for (what, map) in [("label", &rule.labels), ("annotation", &rule.annotations)] {
            for (name, text) in map {
                if let Err(error) = template::check(text) {
                    errors.push(format!("{what} {name:?}: {error}"));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(match (record, alert) {
        (Some(record), _) => RuleDef::Recording { record, expr, labels: rule.labels },
        (None, Some(alert)) => RuleDef::Alerting {
            alert,
            expr,
            hold: rule.for_.unwrap_or_default(),
            keep_firing_for: rule.keep_firing_for.unwrap_or_default(),
            labels: rule.labels,
            annotations: rule.annotations,
        },
        (None, None) => return Err(vec!["one of 'record' or 'alert' must be set".to_string()]),
    })
}

/// Prometheus' `model.IsValidMetricName` (the legacy, pre-UTF-8 scheme).
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus' `model.LabelName.IsValid` (the legacy scheme).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Prometheus' `model.ParseDuration`: `[0-9]+` with units y, w, d, h, m, s, ms in that order,
/// or `0`. Fractions are not durations here (they are in PromQL).
pub fn parse_prometheus_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration string".into());
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let invalid = || format!("not a valid duration string: {text:?}");
    let mut rest = text;
    let mut next_unit = 0;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        // "ms" before "m": the longest unit that matches.
        let (index, (unit, ms)) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (unit, _))| rest.starts_with(unit))
            .max_by_key(|(_, (unit, _))| unit.len())
            .ok_or_else(invalid)?;
        rest = &rest[unit.len()..];
        next_unit = index + 1;
        total_ms = number.checked_mul(*ms).and_then(|v| total_ms.checked_add(v)).ok_or("duration out of range")?;
    }
    if i64::try_from(total_ms).is_err() {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_millis(total_ms))
}

fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|t| parse_prometheus_duration(&t).map_err(serde::de::Error::custom)).transpose()
}

/// Where the list items of groups and of their rules start, by a scan of the text: serde_yaml
/// does not keep positions past parsing. Flow-style YAML (`groups: [{…}]`) is not indexed and
/// errors then point at line 0 (unknown).
pub struct LineIndex {
    /// Per group: its line, and the lines of its rules.
    groups: Vec<(usize, Vec<usize>)>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        // Indentation of the group list items, and of the current group's rule items.
        let mut group_indent: Option<usize> = None;
        let mut rules_key_indent: Option<usize> = None;
        let mut rule_indent: Option<usize> = None;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            let item = trimmed.starts_with("- ") || trimmed == "-";
            if trimmed.starts_with("groups:") {
                group_indent = None;
                continue;
            }
            if item && group_indent.is_none_or(|g| g == indent) && rules_key_indent.is_none_or(|r| indent <= r) {
                group_indent = Some(indent);
                rules_key_indent = None;
                rule_indent = None;
                groups.push((number + 1, Vec::new()));
                // `- rules:` as the first key of the item.
                if trimmed.trim_start_matches('-').trim_start().starts_with("rules:") {
                    rules_key_indent = Some(indent + 2);
                }
                continue;
            }
            if trimmed.starts_with("rules:") && groups.last().is_some() {
                rules_key_indent = Some(indent);
                rule_indent = None;
                continue;
            }
            if let (true, Some(rules_indent), Some(group)) = (item, rules_key_indent, groups.last_mut())
                && indent >= rules_indent
                && rule_indent.is_none_or(|r| r == indent)
            {
                rule_indent = Some(indent);
                group.1.push(number + 1);
            }
        }
        LineIndex { groups }
    }

    fn group(&self, group: usize) -> usize {
        self.groups.get(group).map_or(0, |g| g.0)
    }

    fn rule(&self, group: usize, rule: usize) -> Option<usize> {
        self.groups.get(group).and_then(|g| g.1.get(rule)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_expr(_: Lang, expr: &str) -> Result<(), String> {
        if expr.contains('(') && !expr.contains(')') { Err("unclosed left parenthesis".into()) } else { Ok(()) }
    }

    fn load(text: &str) -> Result<Vec<GroupDef>, FileError> {
        parse(Path::new("rules.yml"), text, Lang::Promql, &any_expr)
    }

    #[test]
    fn prometheus_durations_follow_model_parse_duration() {
        assert_eq!(parse_prometheus_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_prometheus_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_prometheus_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse_prometheus_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "1.5h", "5x", "1m1h", "h", "-1m", "1 m", "99999999999999999999y"] {
            assert!(parse_prometheus_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_full_file_loads_with_every_field() {
        let groups = load(
            "groups:\n\
             - name: g\n  interval: 30s\n  limit: 5\n  lang: logql\n  query_offset: 1m\n  rules:\n\
             \x20 - alert: A\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 1m\n    labels: {severity: page}\n    annotations: {summary: \"{{ $labels.pod }} down\"}\n\
             \x20 - record: job:up:sum\n    expr: sum by (job) (up)\n",
        )
        .unwrap();
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        assert_eq!((group.interval, group.limit, group.lang), (Some(Duration::from_secs(30)), 5, Lang::Logql));
        assert_eq!(group.query_offset, Some(Duration::from_secs(60)));
        assert!(matches!(&group.rules[0], RuleDef::Alerting { hold, .. } if *hold == Duration::from_secs(300)));
        assert_eq!(group.rules[1].name(), "job:up:sum");
    }

    #[test]
    fn problems_name_the_group_the_rule_and_its_line() {
        let text = "groups:\n- name: g\n  rules:\n  - alert: Fine\n    expr: up\n  - record: 0bad\n    expr: sum(up\n";
        let error = load(text).unwrap_err();
        assert_eq!(error.problems.len(), 2, "{error}");
        assert!(error.problems.iter().all(|p| p.line == 6), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("rules.yml: 6: group \"g\", rule 2, \"0bad\": could not parse expression"), "{text}");
        assert!(text.contains("invalid recording rule name: 0bad"), "{text}");
    }

    #[test]
    fn yaml_errors_carry_their_line() {
        let error = load("groups:\n- name: g\n  rulez: []\n").unwrap_err();
        assert_eq!(error.problems[0].line, 3, "{error}");
        assert!(error.problems[0].message.contains("unknown field `rulez`"), "{error}");
    }

    #[test]
    fn group_names_must_be_set_and_unique() {
        let error = load("groups:\n- name: a\n  rules: []\n- name: a\n  rules: []\n- name: \"\"\n").unwrap_err();
        let messages: Vec<_> = error.problems.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(
            messages,
            [(4, "groupname: \"a\" is repeated in the same file"), (6, "Groupname must not be empty")]
        );
    }

    #[test]
    fn recording_rules_refuse_alert_fields_and_reserved_labels() {
        let error = load(
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: up\n    for: 1m\n    annotations: {a: b}\n    labels: {__name__: x}\n",
        )
        .unwrap_err()
        .to_string();
        for expected in ["invalid field 'for'", "invalid field 'annotations'", "invalid label name: __name__"] {
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn empty_and_comment_only_files_have_no_groups() {
        assert_eq!(load("").unwrap(), vec![]);
        assert_eq!(load("# nothing yet\n").unwrap(), vec![]);
        assert_eq!(load("groups: []\n").unwrap(), vec![]);
    }

    #[test]
    fn the_line_index_finds_groups_and_rules() {
        let text = "# c\ngroups:\n  - name: a\n    rules:\n      - alert: x\n        expr: up\n\n      - record: y\n        expr: up\n  - name: b\n    rules:\n    - record: z\n      expr: up\n";
        let index = LineIndex::new(text);
        assert_eq!((index.group(0), index.rule(0, 0), index.rule(0, 1)), (3, Some(5), Some(8)));
        assert_eq!((index.group(1), index.rule(1, 0)), (10, Some(12)));
    }
}
