//! Expands the labels and annotations of alerting rules the way Prometheus 2.x does
//! (`template/template.go` and `rules/alerting.go` of Prometheus 2.42), so that rules written
//! for Prometheus render the same text under Wake.
//!
//! Templates are Go `text/template` programs, run by the `gotmpl` crate (a port of Go's engine).
//! As in Prometheus, every text is prefixed with
//! `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}`,
//! runs with `missingkey=zero` over data with the fields `.Labels`, `.ExternalLabels`,
//! `.ExternalURL` and `.Value`, and is named `__alert_<alertname>` in messages. A text without
//! `{{` is returned as it is, unparsed.
//!
//! # Functions
//! - Go's builtins: `and`, `or`, `not`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `len`, `index`,
//!   `slice`, `call`, `html`, `js`, `urlquery`, `print`, `printf`, `println`.
//! - Prometheus': `humanize`, `humanize1024`, `humanizeDuration`, `humanizePercentage`,
//!   `humanizeTimestamp`, `toTime`, `parseDuration`, `toUpper`, `toLower`, `title`, `match`,
//!   `reReplaceAll`, `stripPort`, `stripDomain`, `safeHtml`, `pathPrefix`, `externalURL`,
//!   `args`, `graphLink`, `tableLink`, `strvalue`.
//! - Not supported: `query`, `first`, `label`, `value` and `sortByLabel` need Wake to run
//!   PromQL from inside a template, and `tmpl` exists only in Prometheus' console templates.
//!   A template naming one is refused when it is parsed (by [`check`] as by [`expand`]) with
//!   `function "query" is not supported by Wake`, so `wake rules check` reports it before the
//!   rule ever runs; Go's plain `function "x" not defined` is kept for names Prometheus does
//!   not know either.
//!
//! # How Go's semantics are kept
//! `gotmpl`'s values are untyped where Go's are typed, and it checks less while parsing, so each
//! parsed tree is checked and rewritten once before it runs (`Walker`):
//! - Go's parse-time checks are made: unknown functions, undefined variables, `{{break}}` and
//!   `{{continue}}` outside `{{range}}`, literals as later pipeline stages, and an `{{end}}` or
//!   `{{else}}` that closes nothing (which `gotmpl` takes as the end of the text).
//! - In Go a missing key of `map[string]string` is `""` under `missingkey=zero`; `gotmpl` gives
//!   nil, which prints `<no value>`. Every pipeline command (and every field access passed as an
//!   argument) is followed by an internal function that turns nil into `""`, so
//!   `{{ $labels.nope }}`, `{{ index $labels "nope" }}`, `{{ eq $labels.nope "" }}` and
//!   `{{ $labels.nope | toUpper }}` all behave as in Prometheus. The same function refuses a
//!   value larger than [`MAX_OUTPUT_BYTES`], which bounds memory however a template loops.
//! - Printed values use Go's `%v`: `$value` 1e6 prints `1e+06`, +Inf `+Inf` (`gotmpl` would
//!   print Rust's `1000000` and `inf`), `{{ . }}` the alert data as a Go struct. `print` and
//!   `println` are replaced for the same reason.
//! - A field the alert data does not have (`{{ .Foo }}`, `{{ $.labels }}`) fails as on
//!   Prometheus' struct rather than reading an empty map entry; so do an assignment to a
//!   variable never declared and a `{{range}}` over a number (Go 1.19, which built 2.42,
//!   ranges over slices and maps only).
//! - `%.4g`, which the humanize family prints with, is Go's algorithm ([`go_format_g`]):
//!   `gotmpl` keeps its `printf` private, and its `%.Ng` rounds differently from Go near powers
//!   of ten (9999.5 gives `10000` where Go gives `1e+04`).
//! - Numeric strings are read as Go's `strconv.ParseFloat` reads them (`parse_go_float`),
//!   hexadecimal floats and `_` separators included.
//! - Regular expressions are RE2's: `\d`, `\w`, `\s` and `\b` are ASCII-only as in Go,
//!   `\Q…\E` quotes, and `[`, `&&`, `~~` are literal in classes (`translate_go_regex`).
//! - `toUpper`, `toLower` and `title` use Unicode's one-rune mappings as Go does, not Rust's
//!   full ones (`ß` stays `ß`).
//!
//! # Bounds
//! At most [`MAX_RANGE_ITERATIONS`] `{{range}}` iterations per expansion, at most
//! [`MAX_OUTPUT_BYTES`] of output (and of any intermediate value), `gotmpl`'s own nesting limits
//! for parsing and for `{{template}}` recursion, `args` nested at most [`MAX_ARGS_NESTING`] deep,
//! and regular expressions compiled within [`REGEX_SIZE_LIMIT`].
//!
//! # Known differences from Prometheus 2.42
//! - Error messages carry `gotmpl`'s wording in places, and execution errors have no
//!   `line:column` or `at <...>` position.
//! - `printf` is `gotmpl`'s: `%v` of a float prints Rust's form (`printf "%v" 1e6` gives
//!   `1000000`, Go `1e+06`), infinities print `inf`, and `%.Ng` may round differently near
//!   powers of ten.
//! - `toTime` returns the time's text (`2015-06-23 13:19:44.128 +0000 UTC`), since `gotmpl`
//!   has no methods to call on a Go `time.Time` (`(toTime x).Format "2006"` fails).
//! - `strvalue` needs a sample, which only the unsupported `query` makes, so it can only fail
//!   in practice; it reads `Labels.__value__` of a `{Labels, Value}` map as Prometheus does.
//! - A missing field of the alert data reached other than through `.` or `$` of the body (in a
//!   `{{define}}` given `.`, or through a variable holding `.`) is `""` rather than an error,
//!   and a missing key of an `args` map is `""` where Go prints `<no value>`.
//! - Case mappings follow Rust's Unicode tables (16.0), Go 1.19's are 13.0: letters added
//!   since (Vithkuqi, Garay, a few Latin ones) change case here and not in Prometheus.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use gotmpl::parse::{BranchNode, CommandNode, Expr, ListNode, Node, PipeNode, Pos, SmolStr};
use gotmpl::{FuncMap, MissingKey, Template, Value, ValueFunc};

/// Label names to values, as Prometheus' `map[string]string` (Wake's label sets).
pub use crate::prom::naming::Labels;

/// What a template sees of one alert: Prometheus' `AlertTemplateData`.
#[derive(Debug, Clone, Copy)]
pub struct TemplateData<'a> {
    /// The alert's labels (`.Labels`, `$labels`).
    pub labels: &'a Labels,
    /// The external labels (`.ExternalLabels`, `$externalLabels`).
    pub external_labels: &'a Labels,
    /// The external URL (`.ExternalURL`, `$externalURL`, and `externalURL`/`pathPrefix`).
    pub external_url: &'a str,
    /// The value of the alert's sample (`.Value`, `$value`).
    pub value: f64,
}

/// Why a template could not be checked or expanded. The text is the one Prometheus puts
/// between `<error expanding template: ` and `>`, worded by `gotmpl`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text is not a valid template; Prometheus refuses such a rule when loading it.
    #[error("error parsing template {template}: {message}")]
    Parse {
        /// `__alert_<alertname>`.
        template: String,
        /// `gotmpl`'s message, Go-shaped: `template: <name>:<line>:<column>: <what>`.
        message: String,
    },
    /// The template calls a Prometheus function that Wake cannot run.
    #[error(
        "error parsing template {template}: template: {template}:{line}:{column}: function {function:?} is not supported by Wake ({reason})"
    )]
    UnsupportedFunction {
        /// `__alert_<alertname>`.
        template: String,
        /// The function's name.
        function: String,
        /// Line of the call in the text.
        line: usize,
        /// Column (in characters) of the call in the text.
        column: usize,
        /// Why Wake has no such function.
        reason: &'static str,
    },
    /// The template failed while running; Prometheus puts the error in the annotation.
    #[error("error executing template {template}: {message}")]
    Execute {
        /// `__alert_<alertname>`.
        template: String,
        /// `gotmpl`'s message, or the failing function's.
        message: String,
    },
    /// The expansion would be longer than [`MAX_OUTPUT_BYTES`].
    #[error("error executing template {template}: the output exceeds {limit} bytes")]
    OutputTooLarge {
        /// `__alert_<alertname>`.
        template: String,
        /// The limit, [`MAX_OUTPUT_BYTES`].
        limit: usize,
    },
}

/// Longest expansion, and longest value a template may build on the way: labels and
/// annotations are meant to be read by people and sent in notifications, and a template
/// that doubles a string in a loop must fail rather than take the server's memory.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// `{{range}}` iterations allowed in one expansion, all loops together: far more than any
/// alert's labels, few enough that a template looping over `{{range 1000000000}}` ends quickly.
pub const MAX_RANGE_ITERATIONS: u64 = 10_000;

/// Deepest nesting of `args` maps: deeper values would make printing and dropping them recurse
/// without bound, and no template needs more than a few levels.
pub const MAX_ARGS_NESTING: usize = 16;

/// Compiled size allowed to one regular expression of `match` or `reReplaceAll`.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Prometheus' convenience variables, prepended to every text (`rules/alerting.go`).
const PREFIX: &str =
    "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// Name of the template in [`check`]'s messages, which know no alert name.
const CHECK_NAME: &str = "__alert";

/// Internal function run after every command: nil to `""`, and the size bound.
const VALUE_FN: &str = "__wake_value";
/// Internal function that ends every printing action: Go's `%v`.
const PRINT_FN: &str = "__wake_print";
/// Internal function standing for a field the alert data does not have.
const NO_FIELD_FN: &str = "__wake_no_field";
/// Internal function standing for an assignment to a variable never declared.
const NO_VARIABLE_FN: &str = "__wake_no_variable";
/// Internal function ending every `{{range}}` pipeline: what Go 1.19 can range over.
const RANGE_FN: &str = "__wake_range";
/// Action appended to the text to find whether `gotmpl` parsed all of it (see `parse`).
const END_SENTINEL: &str = "__wake_end";

/// Go's `text/template` builtins, as `gotmpl` provides them (`print` and `println` replaced).
const GO_BUILTINS: &[&str] = &[
    "and", "call", "eq", "ge", "gt", "html", "index", "js", "le", "len", "lt", "ne", "not", "or", "print", "printf",
    "println", "slice", "urlquery",
];

/// Prometheus' functions that Wake provides.
const PROMETHEUS_FUNCTIONS: &[&str] = &[
    "args",
    "externalURL",
    "graphLink",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "match",
    "parseDuration",
    "pathPrefix",
    "reReplaceAll",
    "safeHtml",
    "stripDomain",
    "stripPort",
    "strvalue",
    "tableLink",
    "title",
    "toLower",
    "toTime",
    "toUpper",
];

/// Prometheus' functions that Wake does not provide, and why.
const UNSUPPORTED_FUNCTIONS: &[(&str, &str)] = &[
    ("query", "it runs a PromQL query from the template"),
    ("first", "it reads the result of query, which runs PromQL from the template"),
    ("label", "it reads the result of query, which runs PromQL from the template"),
    ("value", "it reads the result of query, which runs PromQL from the template"),
    ("sortByLabel", "it sorts the result of query, which runs PromQL from the template"),
    ("tmpl", "Prometheus defines it for console templates only"),
];

/// The fields of Prometheus' alert data, and its Go type as messages name it.
const ROOT_FIELDS: &[&str] = &["Labels", "ExternalLabels", "ExternalURL", "Value"];
const ROOT_TYPE: &str =
    "struct { Labels map[string]string; ExternalLabels map[string]string; ExternalURL string; Value float64 }";

/// Parses `text` as Prometheus does when it loads a rule (`rulefmt`), for `wake rules check`:
/// with the same prefix and functions, and Go's parse-time checks. Nothing is executed.
///
/// # Errors
/// [`TemplateError::Parse`] or [`TemplateError::UnsupportedFunction`].
pub fn check(text: &str) -> Result<(), TemplateError> {
    if !text.contains("{{") {
        return Ok(());
    }
    let empty = Labels::new();
    let data = TemplateData { labels: &empty, external_labels: &empty, external_url: "", value: 0.0 };
    prepare(CHECK_NAME, text, &data).map(|_| ())
}

/// Expands `text` for one alert. `name` is the alert's name: the template is called
/// `__alert_<name>` in messages, as in Prometheus.
///
/// # Errors
/// Any [`TemplateError`]; Prometheus shows it with [`expand_or_error_text`].
pub fn expand(name: &str, text: &str, data: &TemplateData<'_>) -> Result<String, TemplateError> {
    if !text.contains("{{") {
        return Ok(text.to_owned());
    }
    let template_name = format!("__alert_{name}");
    let template = prepare(&template_name, text, data)?;
    execute(&template_name, &template, &data_value(data))
}

/// Expands `text`, or gives the text Prometheus puts in a label or annotation whose template
/// fails: `<error expanding template: ...>`. An alert still fires with a broken annotation.
pub fn expand_or_error_text(name: &str, text: &str, data: &TemplateData<'_>) -> String {
    match expand(name, text, data) {
        Ok(expanded) => expanded,
        Err(error) => format!("<error expanding template: {error}>"),
    }
}

/// Parses `PREFIX + text` with the functions for `data`, then checks and rewrites every tree
/// (the body and each `{{define}}`) with a [`Walker`].
fn prepare(template_name: &str, text: &str, data: &TemplateData<'_>) -> Result<Template, TemplateError> {
    let source = format!("{PREFIX}{text}");
    let mut template = parse(template_name, &source, functions(data))?;
    let names: Vec<String> = template.templates().into_iter().map(str::to_owned).collect();
    for tree_name in names {
        let Some(tree) = template.lookup(&tree_name) else {
            continue;
        };
        let mut tree = tree.clone();
        let is_body = tree_name == template_name;
        let mut walker = Walker::new(template_name, &source, is_body);
        walker.list(&mut tree, is_body)?;
        template = template.add_parse_tree(&tree_name, tree);
    }
    Ok(template)
}

/// Parses `source`. `gotmpl` stops silently at an `{{end}}` or `{{else}}` that closes
/// nothing, dropping the rest of the text, where Go refuses the template: an action appended
/// to the text must therefore be the body's last node, and is then removed.
fn parse(template_name: &str, source: &str, functions: FuncMap) -> Result<Template, TemplateError> {
    let build = |source: &str| {
        // `gotmpl` denies panics in its own code; a panic there anyway must not take the
        // rule evaluation (or `wake rules check`) down with it.
        catch_unwind(AssertUnwindSafe(|| {
            Template::new(template_name)
                .missing_key(MissingKey::ZeroValue)
                .max_range_iters(MAX_RANGE_ITERATIONS)
                .funcs(functions.clone())
                .parse(source)
        }))
    };
    let parse_error = |message: String| TemplateError::Parse { template: template_name.to_owned(), message };
    match build(&format!("{source}{{{{{END_SENTINEL}}}}}")) {
        Ok(Ok(template)) => {
            let Some(mut body) = template.lookup(template_name).cloned() else {
                // The prefix makes the body non-empty, so `gotmpl` always registers it.
                return Err(parse_error(format!("template: {template_name}: the template has no body")));
            };
            if !body.nodes.last().is_some_and(is_end_sentinel) {
                return Err(parse_error(format!(
                    "template: {template_name}: unexpected {{{{end}}}} or {{{{else}}}} outside any block"
                )));
            }
            body.nodes.pop();
            Ok(template.add_parse_tree(template_name, body))
        }
        // The sentinel may have changed the error (an unclosed string or action takes it
        // in): report the text's own.
        Ok(Err(_)) => match build(source) {
            Ok(Err(error)) => Err(parse_error(describe_parse_error(template_name, &error))),
            Ok(Ok(_)) | Err(_) => Err(parse_error(format!("template: {template_name}: the template cannot be parsed"))),
        },
        Err(_) => Err(parse_error("the template parser failed".to_owned())),
    }
}

fn is_end_sentinel(node: &Node) -> bool {
    let Node::Action(action) = node else {
        return false;
    };
    matches!(
        action.pipe.commands.as_slice(),
        [CommandNode { args, .. }] if matches!(args.as_slice(), [Expr::Identifier(_, name)] if name.as_str() == END_SENTINEL)
    )
}

/// Runs the rewritten body of `template` over `data` into a bounded buffer.
fn execute(template_name: &str, template: &Template, data: &Value) -> Result<String, TemplateError> {
    let mut out = BoundedText::new(MAX_OUTPUT_BYTES);
    let result = catch_unwind(AssertUnwindSafe(|| template.execute_template_fmt(&mut out, template_name, data)));
    match result {
        Ok(Ok(())) => Ok(out.text),
        Ok(Err(_)) if out.exceeded => {
            Err(TemplateError::OutputTooLarge { template: template_name.to_owned(), limit: MAX_OUTPUT_BYTES })
        }
        Ok(Err(error)) => {
            Err(TemplateError::Execute { template: template_name.to_owned(), message: describe_exec_error(&error) })
        }
        Err(_) => Err(TemplateError::Execute {
            template: template_name.to_owned(),
            message: "the template engine failed".to_owned(),
        }),
    }
}

/// `gotmpl`'s parse error with the column counted in the user's text rather than after the
/// prefix (lines are the same: the prefix has no newline).
fn describe_parse_error(template_name: &str, error: &gotmpl::TemplateError) -> String {
    match error {
        gotmpl::TemplateError::Parse { line, col, message, .. }
        | gotmpl::TemplateError::Lex { line, col, message, .. } => {
            if *line == 0 {
                format!("template: {template_name}: {message}")
            } else {
                let column = if *line == 1 { col.saturating_sub(PREFIX.len()).max(1) } else { *col };
                format!("template: {template_name}:{line}:{column}: {message}")
            }
        }
        other => format!("template: {template_name}: {other}"),
    }
}

/// `gotmpl`'s execution error without its `execution error: ` preamble, which Go does not have.
fn describe_exec_error(error: &gotmpl::TemplateError) -> String {
    match error {
        gotmpl::TemplateError::Exec(message) => message.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// Prometheus' `AlertTemplateData` as a `gotmpl` value.
fn data_value(data: &TemplateData<'_>) -> Value {
    let mut root = BTreeMap::new();
    root.insert(Arc::from("Labels"), labels_value(data.labels));
    root.insert(Arc::from("ExternalLabels"), labels_value(data.external_labels));
    root.insert(Arc::from("ExternalURL"), Value::String(Arc::from(data.external_url)));
    root.insert(Arc::from("Value"), Value::Float(data.value));
    Value::Map(Arc::new(root))
}

fn labels_value(labels: &Labels) -> Value {
    let map: BTreeMap<Arc<str>, Value> = labels
        .iter()
        .map(|(name, value)| (Arc::from(name.as_str()), Value::String(Arc::from(value.as_str()))))
        .collect();
    Value::Map(Arc::new(map))
}

// ---------------------------------------------------------------------------------------------
// Tree checks and rewriting

/// Checks one parsed tree as Go's parser would and rewrites it for Go's semantics (see the
/// module's documentation).
struct Walker<'a> {
    template: &'a str,
    source: &'a str,
    /// Variables in scope, as Go's parser tracks them: a control structure's declarations
    /// end with it, a `{{define}}` body starts with `$` alone.
    vars: Vec<SmolStr>,
    /// `$` is the alert data (in the body), not a `{{template}}` argument.
    dollar_is_root: bool,
    range_depth: usize,
}

impl<'a> Walker<'a> {
    fn new(template: &'a str, source: &'a str, is_body: bool) -> Self {
        Walker { template, source, vars: vec![SmolStr::new("$")], dollar_is_root: is_body, range_depth: 0 }
    }

    /// `dot_is_root`: `.` is the alert data here (outside `with` and `range` bodies).
    fn list(&mut self, list: &mut ListNode, dot_is_root: bool) -> Result<(), TemplateError> {
        for node in &mut list.nodes {
            match node {
                Node::List(inner) => self.list(inner, dot_is_root)?,
                Node::Text(_) | Node::Define(_) => {}
                Node::Action(action) => {
                    let prints = action.pipe.decl.is_empty();
                    self.pipe(&mut action.pipe, dot_is_root)?;
                    if prints {
                        let pos = action.pipe.pos;
                        action.pipe.commands.push(call(PRINT_FN, pos, Vec::new()));
                    }
                }
                Node::If(branch) => self.branch(branch, dot_is_root, dot_is_root, false)?,
                Node::With(branch) => self.branch(branch, dot_is_root, false, false)?,
                Node::Range(branch) => self.branch(branch, dot_is_root, false, true)?,
                Node::Template(invocation) => {
                    if let Some(pipe) = &mut invocation.pipe {
                        self.pipe(pipe, dot_is_root)?;
                    }
                }
                Node::Break(pos) => self.inside_range(*pos, "{{break}}")?,
                Node::Continue(pos) => self.inside_range(*pos, "{{continue}}")?,
            }
        }
        Ok(())
    }

    fn inside_range(&self, pos: Pos, what: &str) -> Result<(), TemplateError> {
        if self.range_depth == 0 {
            return Err(self.parse_error(pos, &format!("{what} outside {{{{range}}}}")));
        }
        Ok(())
    }

    fn branch(
        &mut self,
        branch: &mut BranchNode,
        dot_is_root: bool,
        body_dot_is_root: bool,
        is_range: bool,
    ) -> Result<(), TemplateError> {
        let scope = self.vars.len();
        self.pipe(&mut branch.pipe, dot_is_root)?;
        if is_range {
            let pos = branch.pipe.pos;
            branch.pipe.commands.push(call(RANGE_FN, pos, Vec::new()));
            self.range_depth += 1;
        }
        let body = self.list(&mut branch.body, body_dot_is_root);
        if is_range {
            self.range_depth -= 1;
        }
        body?;
        if let Some(else_body) = &mut branch.else_body {
            self.list(else_body, dot_is_root)?;
        }
        self.vars.truncate(scope);
        Ok(())
    }

    /// Declares the pipeline's variables (before its commands, as Go's parser does), then
    /// follows every command with [`VALUE_FN`].
    fn pipe(&mut self, pipe: &mut PipeNode, dot_is_root: bool) -> Result<(), TemplateError> {
        // Go's parser: the operand of a later stage must be executable.
        for (stage, command) in pipe.commands.iter().enumerate().skip(1) {
            if let Some(first @ (Expr::Bool(..) | Expr::Dot(_) | Expr::Nil(_) | Expr::Number(..) | Expr::String(..))) =
                command.args.first()
            {
                return Err(
                    self.parse_error(first.pos(), &format!("non executable command in pipeline stage {}", stage + 1))
                );
            }
        }
        // Go declares an assigned variable for the parser, then fails when the assignment
        // runs if no enclosing scope has it; `gotmpl` would create it silently.
        let undeclared =
            if pipe.is_assign { pipe.decl.iter().find(|name| !self.vars.contains(name)).cloned() } else { None };
        self.vars.extend(pipe.decl.iter().cloned());
        if let Some(name) = undeclared {
            let pos = pipe.pos;
            pipe.commands = vec![call(NO_VARIABLE_FN, pos, vec![Expr::String(pos, Arc::from(name.as_str()))])];
            return Ok(());
        }
        let commands = std::mem::take(&mut pipe.commands);
        for mut command in commands {
            for (index, arg) in command.args.iter_mut().enumerate() {
                self.expr(arg, dot_is_root, index > 0)?;
            }
            let pos = command.pos;
            pipe.commands.push(command);
            pipe.commands.push(call(VALUE_FN, pos, Vec::new()));
        }
        Ok(())
    }

    /// `is_argument`: the expression is an argument of a function, so a field access in it
    /// gets its own [`VALUE_FN`] (a command's first word is covered by the one after it).
    fn expr(&mut self, expr: &mut Expr, dot_is_root: bool, is_argument: bool) -> Result<(), TemplateError> {
        let root_fields = match &*expr {
            Expr::Variable(_, name, fields) if self.dollar_is_root && name.as_str() == "$" => Some(fields),
            Expr::Field(_, fields) if dot_is_root => Some(fields),
            _ => None,
        };
        if let Some(missing) = root_fields
            .and_then(|fields| fields.first())
            .filter(|first| !ROOT_FIELDS.contains(&first.as_str()))
            .cloned()
        {
            *expr = no_field(expr.pos(), &missing);
            return Ok(());
        }
        let wrap = match expr {
            Expr::Identifier(pos, name) => {
                self.function(name, *pos)?;
                false
            }
            Expr::Variable(pos, name, fields) => {
                if !self.vars.contains(name) {
                    return Err(self.parse_error(*pos, &format!("undefined variable {:?}", name.as_str())));
                }
                is_argument && !fields.is_empty()
            }
            Expr::Field(..) => is_argument,
            Expr::Chain(_, inner, _) => {
                self.expr(inner, dot_is_root, false)?;
                is_argument
            }
            Expr::Pipe(_, pipe) => {
                self.pipe(pipe, dot_is_root)?;
                false
            }
            Expr::Dot(_) | Expr::String(..) | Expr::Number(..) | Expr::Bool(..) | Expr::Nil(_) => false,
        };
        if wrap {
            wrap_value(expr);
        }
        Ok(())
    }

    fn function(&self, name: &str, pos: Pos) -> Result<(), TemplateError> {
        if GO_BUILTINS.contains(&name) || PROMETHEUS_FUNCTIONS.contains(&name) {
            return Ok(());
        }
        if let Some((_, reason)) = UNSUPPORTED_FUNCTIONS.iter().find(|(unsupported, _)| *unsupported == name) {
            let (line, column) = self.position(pos);
            return Err(TemplateError::UnsupportedFunction {
                template: self.template.to_owned(),
                function: name.to_owned(),
                line,
                column,
                reason,
            });
        }
        Err(self.parse_error(pos, &format!("function {name:?} not defined")))
    }

    /// Line and column (in characters) of `pos` in the user's text.
    fn position(&self, pos: Pos) -> (usize, usize) {
        let offset = pos.offset.min(self.source.len());
        let before = self.source.get(..offset).unwrap_or(self.source);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let mut column = before.get(line_start..).map_or(0, |line| line.chars().count()) + 1;
        if pos.line <= 1 {
            column = column.saturating_sub(PREFIX.len()).max(1);
        }
        (pos.line.max(1), column)
    }

    fn parse_error(&self, pos: Pos, what: &str) -> TemplateError {
        let (line, column) = self.position(pos);
        TemplateError::Parse {
            template: self.template.to_owned(),
            message: format!("template: {}:{line}:{column}: {what}", self.template),
        }
    }
}

/// A command calling `name` with `args`.
fn call(name: &str, pos: Pos, args: Vec<Expr>) -> CommandNode {
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(Expr::Identifier(pos, SmolStr::new(name)));
    all.extend(args);
    CommandNode { pos, args: all }
}

/// `expr` becomes `(expr | __wake_value)`.
fn wrap_value(expr: &mut Expr) {
    let pos = expr.pos();
    let inner = std::mem::replace(expr, Expr::Nil(pos));
    *expr = Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode { pos, args: vec![inner] }, call(VALUE_FN, pos, Vec::new())],
            is_assign: false,
        },
    );
}

/// `(__wake_no_field "Name")`, which fails as Go does on a field the alert data lacks.
fn no_field(pos: Pos, field: &SmolStr) -> Expr {
    Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![call(NO_FIELD_FN, pos, vec![Expr::String(pos, Arc::from(field.as_str()))])],
            is_assign: false,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Functions

/// How a function failed: Go reports a failing call as `error calling f: ...`, and a misuse
/// (argument count or type) without that preamble.
enum FnError {
    Call(String),
    Usage(String),
}

type FnResult = Result<Value, FnError>;

/// Registers `f` under `name`, checking the argument count first when it is fixed.
fn add(
    map: &mut FuncMap,
    name: &'static str,
    arity: Option<usize>,
    f: impl Fn(&[Value]) -> FnResult + Send + Sync + 'static,
) {
    let function: ValueFunc = Arc::new(move |args: &[Value]| {
        if let Some(want) = arity
            && args.len() != want
        {
            return Err(gotmpl::TemplateError::Exec(format!(
                "wrong number of args for {name}: want {want} got {}",
                args.len()
            )));
        }
        f(args).map_err(|error| match error {
            FnError::Call(message) => gotmpl::TemplateError::Exec(format!("error calling {name}: {message}")),
            FnError::Usage(message) => gotmpl::TemplateError::Exec(message),
        })
    });
    map.insert(name.to_owned(), function);
}

fn string(text: impl Into<Arc<str>>) -> Value {
    Value::String(text.into())
}

/// The functions of Prometheus' `NewTemplateExpander` for `data`, plus Wake's internal ones.
fn functions(data: &TemplateData<'_>) -> FuncMap {
    let mut map = FuncMap::new();
    let external_url: Arc<str> = Arc::from(data.external_url);
    let path_prefix: Arc<str> = Arc::from(url_path(data.external_url));
    let regexes = RegexCache::default();

    add(&mut map, VALUE_FN, Some(1), |args| checked_value(&args[0]));
    add(&mut map, PRINT_FN, Some(1), |args| match &args[0] {
        Value::Nil => Ok(string("")),
        Value::String(text) => Ok(Value::String(Arc::clone(text))),
        other => go_sprint(std::slice::from_ref(other), false).map(string),
    });
    add(&mut map, NO_FIELD_FN, Some(1), |args| {
        Err(FnError::Usage(format!("can't evaluate field {} in type {ROOT_TYPE}", display(&args[0]))))
    });
    add(&mut map, NO_VARIABLE_FN, Some(1), |args| {
        Err(FnError::Usage(format!("undefined variable: {}", display(&args[0]))))
    });
    add(&mut map, RANGE_FN, Some(1), |args| match &args[0] {
        Value::List(_) | Value::Map(_) => Ok(args[0].clone()),
        other => Err(FnError::Usage(format!("range can't iterate over {}", display(other)))),
    });
    add(&mut map, "print", None, |args| go_sprint(args, false).map(string));
    add(&mut map, "println", None, |args| go_sprint(args, true).map(string));

    add(&mut map, "humanize", Some(1), |args| Ok(string(humanize(to_float(&args[0])?))));
    add(&mut map, "humanize1024", Some(1), |args| Ok(string(humanize1024(to_float(&args[0])?))));
    add(&mut map, "humanizeDuration", Some(1), |args| Ok(string(humanize_duration(to_float(&args[0])?))));
    add(&mut map, "humanizePercentage", Some(1), |args| {
        Ok(string(format!("{}%", go_format_g(to_float(&args[0])? * 100.0, Some(4)))))
    });
    add(&mut map, "humanizeTimestamp", Some(1), |args| {
        let v = to_float(&args[0])?;
        match float_to_time(v) {
            Ok(time) => Ok(string(time)),
            Err(TimeError::NotFinite) => Ok(string(go_format_g(v, Some(4)))),
            Err(TimeError::Other(message)) => Err(FnError::Call(message)),
        }
    });
    add(&mut map, "toTime", Some(1), |args| match float_to_time(to_float(&args[0])?) {
        Ok(time) => Ok(string(time)),
        Err(TimeError::NotFinite) => Err(FnError::Call("value is NaN or Inf".to_owned())),
        Err(TimeError::Other(message)) => Err(FnError::Call(message)),
    });
    add(&mut map, "parseDuration", Some(1), |args| {
        parse_duration_seconds(string_arg(&args[0])?).map(Value::Float).map_err(FnError::Call)
    });

    add(&mut map, "toUpper", Some(1), |args| Ok(string(go_to_upper(string_arg(&args[0])?))));
    add(&mut map, "toLower", Some(1), |args| Ok(string(go_to_lower(string_arg(&args[0])?))));
    add(&mut map, "title", Some(1), |args| Ok(string(go_title(string_arg(&args[0])?))));
    add(&mut map, "safeHtml", Some(1), |args| Ok(string(string_arg(&args[0])?)));
    add(&mut map, "stripPort", Some(1), |args| Ok(string(strip_port(string_arg(&args[0])?))));
    add(&mut map, "stripDomain", Some(1), |args| Ok(string(strip_domain(string_arg(&args[0])?))));
    add(&mut map, "graphLink", Some(1), |args| {
        Ok(string(format!("/graph?g0.expr={}&g0.tab=0", query_escape(string_arg(&args[0])?))))
    });
    add(&mut map, "tableLink", Some(1), |args| {
        Ok(string(format!("/graph?g0.expr={}&g0.tab=1", query_escape(string_arg(&args[0])?))))
    });
    add(&mut map, "pathPrefix", Some(0), move |_| Ok(Value::String(Arc::clone(&path_prefix))));
    add(&mut map, "externalURL", Some(0), move |_| Ok(Value::String(Arc::clone(&external_url))));
    add(&mut map, "args", None, |args| {
        if args.iter().any(|arg| nesting(arg, MAX_ARGS_NESTING) >= MAX_ARGS_NESTING) {
            return Err(FnError::Call(format!("arguments nest deeper than {MAX_ARGS_NESTING} levels")));
        }
        let map: BTreeMap<Arc<str>, Value> =
            args.iter().enumerate().map(|(index, arg)| (Arc::from(format!("arg{index}")), arg.clone())).collect();
        Ok(Value::Map(Arc::new(map)))
    });
    add(&mut map, "strvalue", Some(1), |args| strvalue(&args[0]));

    let match_regexes = regexes.clone();
    add(&mut map, "match", Some(2), move |args| {
        let regex = match_regexes.get(string_arg(&args[0])?)?;
        Ok(Value::Bool(regex.is_match(string_arg(&args[1])?)))
    });
    add(&mut map, "reReplaceAll", Some(3), move |args| {
        let regex = regexes.get(string_arg(&args[0])?)?;
        let replaced = regex.replace_all(string_arg(&args[2])?, string_arg(&args[1])?);
        if replaced.len() > MAX_OUTPUT_BYTES {
            return Err(FnError::Call(format!("the result exceeds {MAX_OUTPUT_BYTES} bytes")));
        }
        Ok(string(replaced.as_ref()))
    });

    for &(name, reason) in UNSUPPORTED_FUNCTIONS {
        // The walker refuses these when parsing; the stubs keep the message should a call
        // reach execution anyway.
        add(&mut map, name, None, move |_| {
            Err(FnError::Usage(format!("function {name:?} is not supported by Wake ({reason})")))
        });
    }
    map
}

/// [`VALUE_FN`]: Go's zero value for a missing map key, and the size bound.
fn checked_value(value: &Value) -> FnResult {
    match value {
        Value::Nil => Ok(string("")),
        Value::String(text) if text.len() > MAX_OUTPUT_BYTES => {
            Err(FnError::Usage(format!("a value exceeds the limit of {MAX_OUTPUT_BYTES} bytes")))
        }
        Value::List(_) | Value::Map(_) => {
            let mut budget = MAX_OUTPUT_BYTES;
            if consume(value, &mut budget) {
                Ok(value.clone())
            } else {
                Err(FnError::Usage(format!("a value exceeds the limit of {MAX_OUTPUT_BYTES} bytes")))
            }
        }
        other => Ok(other.clone()),
    }
}

/// Takes about the printed size of `value` from `budget`; false once it runs out. Stops
/// there, so the cost is bounded whatever `args` built.
fn consume(value: &Value, budget: &mut usize) -> bool {
    let cost = match value {
        Value::String(text) => text.len(),
        Value::List(items) => {
            for item in items.iter() {
                if !consume(item, budget) {
                    return false;
                }
            }
            2
        }
        Value::Map(entries) => {
            for (key, item) in entries.iter() {
                if *budget < key.len() + 2 {
                    return false;
                }
                *budget -= key.len() + 2;
                if !consume(item, budget) {
                    return false;
                }
            }
            5
        }
        _ => 8,
    };
    if *budget < cost {
        return false;
    }
    *budget -= cost;
    true
}

/// How deep lists and maps nest in `value`, counted up to `limit`.
fn nesting(value: &Value, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    match value {
        Value::List(items) => 1 + items.iter().map(|item| nesting(item, limit - 1)).max().unwrap_or(0),
        Value::Map(entries) => 1 + entries.values().map(|item| nesting(item, limit - 1)).max().unwrap_or(0),
        _ => 0,
    }
}

/// A string argument, as Go checks a `string` parameter.
fn string_arg(value: &Value) -> Result<&str, FnError> {
    match value {
        Value::String(text) => Ok(text),
        Value::Nil => Err(FnError::Usage("invalid value; expected string".to_owned())),
        other => Err(FnError::Usage(format!("wrong type for value; expected string; got {}", go_type(other)))),
    }
}

/// Go's name of the type a value has in Prometheus' templates.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Uint(_) => "uint",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "[]interface {}",
        Value::Map(entries) if entries.values().all(|value| matches!(value, Value::String(_))) => "map[string]string",
        Value::Map(_) => "map[string]interface {}",
        _ => "func",
    }
}

/// Prometheus' `convertToFloat`: numbers, and strings as Go's `strconv.ParseFloat` reads them.
fn to_float(value: &Value) -> Result<f64, FnError> {
    match value {
        Value::Float(v) => Ok(*v),
        Value::Int(v) => Ok(*v as f64),
        Value::Uint(v) => Ok(*v as f64),
        Value::String(text) => parse_go_float(text).map_err(FnError::Call),
        other => Err(FnError::Call(format!("can't convert {} to float", go_type(other)))),
    }
}

/// Go's `strconv.ParseFloat(text, 64)`, with Go's messages: decimal and hexadecimal
/// (`0x1.8p3`) text, `_` between digits, `inf`, `infinity` and `nan`.
fn parse_go_float(text: &str) -> Result<f64, String> {
    let syntax = || format!("strconv.ParseFloat: parsing {text:?}: invalid syntax");
    let out_of_range = || format!("strconv.ParseFloat: parsing {text:?}: value out of range");
    let (negative, signed, rest) = match text.as_bytes().first() {
        Some(b'+') => (false, true, &text[1..]),
        Some(b'-') => (true, true, &text[1..]),
        _ => (false, false, text),
    };
    let lower = rest.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Ok(if negative { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if lower == "nan" {
        return if signed { Err(syntax()) } else { Ok(f64::NAN) };
    }
    if rest.contains('_') && !underscores_ok(&lower) {
        return Err(syntax());
    }
    let digits: String = lower.chars().filter(|c| *c != '_').collect();
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        parse_hex_float(hex).ok_or_else(syntax)?
    } else {
        // Rust reads Go's decimal grammar, and also forms Go refuses: a second sign, and
        // the names of infinity and NaN (handled above, or invalid here).
        if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') || digits.contains(['i', 'n']) {
            return Err(syntax());
        }
        digits.parse::<f64>().map_err(|_| syntax())?
    };
    if magnitude.is_infinite() {
        return Err(out_of_range());
    }
    Ok(if negative { -magnitude } else { magnitude })
}

/// Go's `underscoreOK`: each `_` between digits (a base prefix counts as one).
fn underscores_ok(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut saw = b'^';
    let mut start = 0;
    let mut hex = false;
    if bytes.len() >= 2 && bytes[0] == b'0' && matches!(bytes[1], b'b' | b'o' | b'x') {
        start = 2;
        saw = b'0';
        hex = bytes[1] == b'x';
    }
    for &byte in &bytes[start..] {
        if byte.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&byte)) {
            saw = b'0';
        } else if byte == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
    }
    saw != b'_'
}

/// The magnitude of a hexadecimal float after its `0x` (lower case, no `_`): hex digits with
/// an optional point, then a binary exponent `p±N`, which Go requires.
fn parse_hex_float(text: &str) -> Option<f64> {
    let (mantissa_text, exponent_text) = text.split_once('p')?;
    let (whole, fraction) = mantissa_text.split_once('.').unwrap_or((mantissa_text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let exponent_digits = exponent_text.strip_prefix(['+', '-']).unwrap_or(exponent_text);
    if exponent_digits.is_empty() || !exponent_digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // Beyond ±10000 every value is zero or infinite: clamp as Go does.
    let mut exponent: i64 = exponent_digits.parse::<i64>().unwrap_or(10_000).min(10_000);
    if exponent_text.starts_with('-') {
        exponent = -exponent;
    }
    let mut mantissa: u64 = 0;
    let mut truncated = false;
    for (index, c) in whole.chars().chain(fraction.chars()).enumerate() {
        let digit = u64::from(c.to_digit(16)?);
        if index >= whole.len() {
            exponent -= 4;
        }
        if mantissa >> 60 == 0 {
            mantissa = mantissa * 16 + digit;
        } else {
            // The digit is past what a u64 holds: keep its weight, and whether it was zero
            // for rounding.
            exponent += 4;
            truncated |= digit != 0;
        }
    }
    // A sticky low bit makes the conversion to f64 round as if the lost digits were there.
    let value = (mantissa | u64::from(truncated)) as f64;
    let exponent = i32::try_from(exponent.clamp(-20_000, 20_000)).ok()?;
    // Scale in steps small enough to stay exact until the final result.
    let mut scaled = value;
    let mut remaining = exponent;
    while remaining != 0 {
        let step = remaining.clamp(-1000, 1000);
        scaled *= 2f64.powi(step);
        remaining -= step;
    }
    Some(scaled)
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_format_g(v, Some(4)))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_format_g(v, Some(4)))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_format_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", go_format_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        // Go's int64(v): whole seconds, truncated.
        let duration = v as i64;
        let seconds = duration % 60;
        let minutes = (duration / 60) % 60;
        let hours = (duration / 60 / 60) % 24;
        let days = duration / 60 / 60 / 24;
        if days != 0 {
            return format!("{sign}{days}d {hours}h {minutes}m {seconds}s");
        }
        if hours != 0 {
            return format!("{sign}{hours}h {minutes}m {seconds}s");
        }
        if minutes != 0 {
            return format!("{sign}{minutes}m {seconds}s");
        }
        return format!("{sign}{}s", go_format_g(v, Some(4)));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_format_g(v, Some(4)))
}

enum TimeError {
    NotFinite,
    Other(String),
}

/// Prometheus' `floatToTime` printed as Go prints a `time.Time` in UTC. Like Prometheus
/// (through `model.Time`), it keeps whole milliseconds.
fn float_to_time(v: f64) -> Result<String, TimeError> {
    if !v.is_finite() {
        return Err(TimeError::NotFinite);
    }
    let nanos = v * 1e9;
    // Go compares with math.MaxInt64 and math.MinInt64 converted to float64, as here.
    if nanos > i64::MAX as f64 || nanos < i64::MIN as f64 {
        return Err(TimeError::Other(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            go_format_g(v, None)
        )));
    }
    let millis = (nanos as i64) / 1_000_000;
    let Some(time) = chrono::DateTime::from_timestamp_millis(millis) else {
        return Err(TimeError::Other(format!("{} is out of the range of times", go_format_g(v, None))));
    };
    let mut text = time.format("%Y-%m-%d %H:%M:%S").to_string();
    let fraction = time.timestamp_subsec_nanos();
    if fraction != 0 {
        let digits = format!("{fraction:09}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    text.push_str(" +0000 UTC");
    Ok(text)
}

/// Prometheus' `model.ParseDuration` (units y, w, d, h, m, s, ms, each at most once and in
/// that order), in seconds as `parseDuration` returns them.
fn parse_duration_seconds(text: &str) -> Result<f64, String> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 1000 * 60 * 60 * 24 * 365),
        ("w", 1000 * 60 * 60 * 24 * 7),
        ("d", 1000 * 60 * 60 * 24),
        ("h", 1000 * 60 * 60),
        ("m", 1000 * 60),
        ("s", 1000),
        ("ms", 1),
    ];
    match text {
        "0" => return Ok(0.0),
        "" => return Err("empty duration string".to_owned()),
        _ => {}
    }
    let invalid = || format!("not a valid duration string: {text:?}");
    let out_of_range = || "duration out of range".to_owned();
    let mut rest = text;
    let mut next_unit = 0;
    let mut nanos: i64 = 0;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(invalid());
        }
        let (digits, after) = rest.split_at(digits_end);
        let unit_len = if after.starts_with("ms") { 2 } else { 1 };
        let unit = after.get(..unit_len).ok_or_else(invalid)?;
        let position = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .filter(|position| *position >= next_unit)
            .ok_or_else(invalid)?;
        next_unit = position + 1;
        rest = &after[unit_len..];
        let count: i64 = digits.parse().map_err(|_| out_of_range())?;
        let term = count
            .checked_mul(1_000_000)
            .and_then(|count| count.checked_mul(UNITS[position].1))
            .ok_or_else(out_of_range)?;
        nanos = nanos.checked_add(term).ok_or_else(out_of_range)?;
    }
    Ok(nanos as f64 / 1e9)
}

/// Go's `unicode.ToUpper` rune by rune.
fn go_to_upper(text: &str) -> String {
    text.chars().map(go_simple_upper).collect()
}

/// Unicode's simple (one-rune) upper case, which Go uses. Rust gives the full one, the same
/// but for runes that become several: those keep their one-rune form, or stay.
fn go_simple_upper(c: char) -> char {
    match c {
        // Greek with ypogegrammeni: the full mapping spells out the iota.
        '\u{1F80}'..='\u{1F87}' | '\u{1F90}'..='\u{1F97}' | '\u{1FA0}'..='\u{1FA7}' => {
            char::from_u32(u32::from(c) + 8).unwrap_or(c)
        }
        '\u{1FB3}' => '\u{1FBC}',
        '\u{1FC3}' => '\u{1FCC}',
        '\u{1FF3}' => '\u{1FFC}',
        _ => single(c.to_uppercase()).unwrap_or(c),
    }
}

/// Go's `unicode.ToLower` rune by rune.
fn go_to_lower(text: &str) -> String {
    text.chars().map(|c| if c == '\u{130}' { 'i' } else { single(c.to_lowercase()).unwrap_or(c) }).collect()
}

/// Go's deprecated `strings.Title`: the first rune of every word in title case, other runes
/// kept.
fn go_title(text: &str) -> String {
    let mut previous = ' ';
    text.chars()
        .map(|c| {
            let mapped = if is_word_separator(previous) { go_to_title(c) } else { c };
            previous = c;
            mapped
        })
        .collect()
}

fn go_to_title(c: char) -> char {
    match c {
        '\u{1C4}'..='\u{1C6}' => '\u{1C5}',
        '\u{1C7}'..='\u{1C9}' => '\u{1C8}',
        '\u{1CA}'..='\u{1CC}' => '\u{1CB}',
        '\u{1F1}'..='\u{1F3}' => '\u{1F2}',
        // Georgian Mkhedruli is its own title case (Unicode 11), not Mtavruli capitals.
        '\u{10D0}'..='\u{10FA}' | '\u{10FD}'..='\u{10FF}' => c,
        _ => go_simple_upper(c),
    }
}

/// `strings.Title`'s `isSeparator`.
fn is_word_separator(c: char) -> bool {
    if c.is_ascii() {
        return !(c.is_ascii_alphanumeric() || c == '_');
    }
    if c.is_alphabetic() || c.is_numeric() {
        return false;
    }
    c.is_whitespace()
}

fn single(mut mapped: impl Iterator<Item = char>) -> Option<char> {
    let first = mapped.next()?;
    mapped.next().is_none().then_some(first)
}

/// Go's `net.SplitHostPort`, without its error text (the callers only need to know it failed).
fn split_host_port(host_port: &str) -> Option<(&str, &str)> {
    let last_colon = host_port.rfind(':')?;
    let (host, inner_start, inner_end) = if host_port.starts_with('[') {
        let close = host_port.find(']')?;
        if close + 1 != last_colon {
            return None;
        }
        (&host_port[1..close], 1, close + 1)
    } else {
        let host = &host_port[..last_colon];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if host_port[inner_start..].contains('[') || host_port[inner_end..].contains(']') {
        return None;
    }
    Some((host, &host_port[last_colon + 1..]))
}

fn strip_port(host_port: &str) -> String {
    match split_host_port(host_port) {
        Some((host, _)) => host.to_owned(),
        None => host_port.to_owned(),
    }
}

fn strip_domain(host_port: &str) -> String {
    let (host, port) = split_host_port(host_port).unwrap_or((host_port, ""));
    if host.parse::<IpAddr>().is_ok() {
        return host_port.to_owned();
    }
    let host = host.split('.').next().unwrap_or(host);
    if port.is_empty() {
        host.to_owned()
    } else if host.contains(':') {
        // Go's net.JoinHostPort.
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's `url.QueryEscape`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

/// The path of a URL, decoded, as Go's `url.URL.Path` (for `pathPrefix`).
fn url_path(url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    let url = url.split('?').next().unwrap_or(url);
    let after_scheme = match url.find(':') {
        Some(colon)
            if url[..colon].starts_with(|c: char| c.is_ascii_alphabetic())
                && url[..colon].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            &url[colon + 1..]
        }
        _ => url,
    };
    let path = match after_scheme.strip_prefix("//") {
        Some(authority_and_path) => authority_and_path.find('/').map_or("", |slash| &authority_and_path[slash..]),
        None => after_scheme,
    };
    percent_decode(path)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%'
            && let Some(hex) = text.get(index + 1..index + 3)
            && hex.bytes().all(|digit| digit.is_ascii_hexdigit())
            && let Ok(decoded) = u8::from_str_radix(hex, 16)
        {
            out.push(decoded);
            index += 3;
            continue;
        }
        out.push(byte);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prometheus' `strvalue`: the `__value__` label of a sample (`{Labels, Value}`).
fn strvalue(value: &Value) -> FnResult {
    if let Value::Map(entries) = value
        && entries.len() == 2
        && entries.contains_key("Value")
        && let Some(Value::Map(labels)) = entries.get("Labels")
    {
        return Ok(match labels.get("__value__") {
            Some(Value::String(text)) => Value::String(Arc::clone(text)),
            _ => string(""),
        });
    }
    Err(FnError::Usage(format!("wrong type for value; expected *template.sample; got {}", go_type(value))))
}

/// Compiled expressions of one expansion, so a `match` in a `{{range}}` compiles once.
#[derive(Clone, Default)]
struct RegexCache(Arc<Mutex<HashMap<String, regex::Regex>>>);

impl RegexCache {
    const ENTRIES: usize = 64;

    fn get(&self, pattern: &str) -> Result<regex::Regex, FnError> {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(regex) = cache.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = go_regex(pattern).map_err(FnError::Call)?;
        if cache.len() >= Self::ENTRIES {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }
}

/// Compiles a Go (RE2) expression. The syntaxes agree but for Perl classes and word
/// boundaries, ASCII in Go and Unicode in Rust, and for classes, where Rust's nested classes
/// and set operators (`[`, `&&`, `~~`) are literal in Go: those are translated.
fn go_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&translate_go_regex(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| format!("error parsing regexp: {error}"))
}

fn translate_go_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(escaped) = chars.next() else {
                    out.push('\\');
                    break;
                };
                match escaped {
                    'd' => out.push_str("[0-9]"),
                    'D' => out.push_str("[^0-9]"),
                    'w' => out.push_str("[0-9A-Za-z_]"),
                    'W' => out.push_str("[^0-9A-Za-z_]"),
                    's' => out.push_str("[\\t\\n\\f\\r ]"),
                    'S' => out.push_str("[^\\t\\n\\f\\r ]"),
                    'b' if !in_class => out.push_str("(?-u:\\b)"),
                    'B' if !in_class => out.push_str("(?-u:\\B)"),
                    'Q' if !in_class => {
                        // Literal text up to \E.
                        let mut literal = String::new();
                        while let Some(next) = chars.next() {
                            if next == '\\' && chars.peek() == Some(&'E') {
                                chars.next();
                                break;
                            }
                            literal.push(next);
                        }
                        out.push_str(&regex::escape(&literal));
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str("\\]");
                }
            }
            '[' => {
                if chars.peek() == Some(&':') {
                    // A POSIX class, `[:alpha:]`, which both syntaxes read alike.
                    out.push('[');
                    while let Some(next) = chars.next() {
                        out.push(next);
                        if next == ':' && chars.peek() == Some(&']') {
                            chars.next();
                            out.push(']');
                            break;
                        }
                    }
                } else {
                    out.push_str("\\[");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Go's formatting

/// Text that refuses to grow past its limit, so that a template's output (and what `print`
/// builds) is bounded while it is written.
struct BoundedText {
    text: String,
    limit: usize,
    exceeded: bool,
}

impl BoundedText {
    fn new(limit: usize) -> Self {
        BoundedText { text: String::new(), limit, exceeded: false }
    }
}

impl fmt::Write for BoundedText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.text.len() + s.len() > self.limit {
            self.exceeded = true;
            return Err(fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// Go's `fmt.Sprint` (`fmt.Sprintln` with `line`), with floats as `%v`.
fn go_sprint(args: &[Value], line: bool) -> Result<String, FnError> {
    let mut out = BoundedText::new(MAX_OUTPUT_BYTES);
    let mut written = Ok(());
    for (index, arg) in args.iter().enumerate() {
        let is_string = |value: &Value| matches!(value, Value::String(_));
        if index > 0 && (line || !(is_string(&args[index - 1]) || is_string(arg))) {
            written = written.and_then(|()| out.write_str(" "));
        }
        written = written.and_then(|()| write_go_value(&mut out, arg));
    }
    if line {
        written = written.and_then(|()| out.write_str("\n"));
    }
    match written {
        Ok(()) => Ok(out.text),
        Err(_) => Err(FnError::Usage(format!("a value exceeds the limit of {MAX_OUTPUT_BYTES} bytes"))),
    }
}

/// A value as Go's `%v` prints it.
fn write_go_value(out: &mut impl fmt::Write, value: &Value) -> fmt::Result {
    match value {
        Value::Nil => out.write_str("<nil>"),
        Value::Float(v) => out.write_str(&go_format_g(*v, None)),
        Value::String(text) => out.write_str(text),
        Value::List(items) => {
            out.write_str("[")?;
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.write_str(" ")?;
                }
                write_go_value(out, item)?;
            }
            out.write_str("]")
        }
        // Prometheus' data is a Go struct: `{{ . }}` prints its fields in order.
        Value::Map(entries)
            if entries.len() == ROOT_FIELDS.len() && ROOT_FIELDS.iter().all(|field| entries.contains_key(*field)) =>
        {
            out.write_str("{")?;
            for (index, field) in ROOT_FIELDS.iter().enumerate() {
                if index > 0 {
                    out.write_str(" ")?;
                }
                if let Some(item) = entries.get(*field) {
                    write_go_value(out, item)?;
                }
            }
            out.write_str("}")
        }
        Value::Map(entries) => {
            out.write_str("map[")?;
            for (index, (key, item)) in entries.iter().enumerate() {
                if index > 0 {
                    out.write_str(" ")?;
                }
                out.write_str(key)?;
                out.write_str(":")?;
                write_go_value(out, item)?;
            }
            out.write_str("]")
        }
        other => write!(out, "{other}"),
    }
}

fn display(value: &Value) -> String {
    let mut out = BoundedText::new(256);
    let _ = write_go_value(&mut out, value);
    out.text
}

/// Go's `%g` of a float64: `%v` without `precision`, `%.Ng` with it (what `%.4g` in the
/// humanize family prints). Shortest or correctly rounded digits, then Go's choice between
/// `%e` and `%f` forms, trailing zeros dropped, exponents of at least two digits.
pub fn go_format_g(v: f64, precision: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let mut out = String::new();
    if v.is_sign_negative() {
        out.push('-');
    }
    if v == 0.0 {
        out.push('0');
        return out;
    }
    let (digits, point) = decimal_digits(v.abs(), precision);
    let count = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let (exponent_threshold, mut shown) = match precision {
        // Go: "if precision was the shortest possible, use precision 6 for this decision".
        None => (6, count),
        Some(precision) => {
            let precision = i64::try_from(precision.max(1)).unwrap_or(i64::MAX);
            let threshold = if precision > count && count >= point { count } else { precision };
            (threshold, precision)
        }
    };
    let exponent = point - 1;
    if exponent < -4 || exponent >= exponent_threshold {
        shown = shown.min(count);
        write_exponent_form(&mut out, &digits, exponent, shown - 1);
    } else {
        if shown > point {
            shown = count;
        }
        write_fixed_form(&mut out, &digits, point, (shown - point).max(0));
    }
    out
}

/// The significant digits of `v` > 0, without trailing zeros, and the position of the decimal
/// point: `v = 0.d₁d₂… × 10^point`. Shortest round-trip digits without `precision`, else
/// `precision` correctly rounded ones (Rust and Go both round exact halves to even).
fn decimal_digits(v: f64, precision: Option<usize>) -> (Vec<u8>, i64) {
    let scientific = match precision {
        None => format!("{v:e}"),
        Some(precision) => format!("{v:.*e}", precision.max(1) - 1),
    };
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    (digits, exponent + 1)
}

/// Go's `fmtE`: `d.ddde±XX` with `fraction` digits after the point.
fn write_exponent_form(out: &mut String, digits: &[u8], exponent: i64, fraction: i64) {
    out.push(char::from(digits.first().copied().unwrap_or(b'0')));
    if fraction > 0 {
        out.push('.');
        for index in 1..=fraction {
            let digit = usize::try_from(index).ok().and_then(|index| digits.get(index)).copied().unwrap_or(b'0');
            out.push(char::from(digit));
        }
    }
    out.push('e');
    out.push(if exponent < 0 { '-' } else { '+' });
    let magnitude = exponent.unsigned_abs();
    if magnitude < 10 {
        out.push('0');
    }
    let _ = write!(out, "{magnitude}");
}

/// Go's `fmtF`: the integer part, then `fraction` digits after the point.
fn write_fixed_form(out: &mut String, digits: &[u8], point: i64, fraction: i64) {
    let digit_at =
        |index: i64| usize::try_from(index).ok().and_then(|index| digits.get(index)).copied().map_or('0', char::from);
    if point > 0 {
        for index in 0..point {
            out.push(digit_at(index));
        }
    } else {
        out.push('0');
    }
    if fraction > 0 {
        out.push('.');
        for index in 0..fraction {
            out.push(digit_at(point + index));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// Expands `text` for an alert with a few labels and `value`, as Prometheus' tests run
    /// against `http://testhost:9090/path/prefix`.
    fn render_with(text: &str, value: f64) -> Result<String, TemplateError> {
        let labels = labels(&[("instance", "foo.example.com:9100"), ("job", "node"), ("severity", "critical")]);
        let external = labels_of_cluster();
        let data = TemplateData {
            labels: &labels,
            external_labels: &external,
            external_url: "http://testhost:9090/path/prefix",
            value,
        };
        expand("test", text, &data)
    }

    fn labels_of_cluster() -> Labels {
        labels(&[("cluster", "prod")])
    }

    fn render(text: &str) -> String {
        match render_with(text, 0.0) {
            Ok(out) => out,
            Err(error) => panic!("{text:?} failed: {error}"),
        }
    }

    fn render_error(text: &str) -> TemplateError {
        match render_with(text, 0.0) {
            Ok(out) => panic!("{text:?} should fail, gave {out:?}"),
            Err(error) => error,
        }
    }

    /// Prometheus' tests range over a Go slice given as data; `args` builds the same sequence
    /// (its keys `arg0`… sort in order for up to ten items).
    fn over(items: &str, body: &str) -> String {
        render(&format!("{{{{ range (args {items}) }}}}{body}{{{{ end }}}}"))
    }

    // --- Prometheus' template_test.go -------------------------------------------------

    #[test]
    fn plain_text_is_returned_unparsed() {
        assert_eq!(render("plain text"), "plain text");
        // Not a template, so not an error either.
        assert_eq!(render("a }} b {"), "a }} b {");
        assert_eq!(check("unbalanced }}"), Ok(()));
    }

    #[test]
    fn simple_value_and_no_html_escaping() {
        assert_eq!(render("{{ 1 }}"), "1");
        assert_eq!(render("{{ \"<b>\" }}"), "<b>");
        assert_eq!(render("{{ \"<b>\" | safeHtml }}"), "<b>");
    }

    #[test]
    fn args_pass_several_values_to_a_template() {
        assert_eq!(render("{{define \"x\"}}{{.arg0}} {{.arg1}}{{end}}{{template \"x\" (args 1 \"2\")}}"), "1 2");
    }

    #[test]
    fn prometheus_strip_port() {
        for (input, output) in [
            ("foo.example.com", "foo.example.com"),
            ("foo.example.com:12345", "foo.example.com"),
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:12345", "192.0.2.1"),
            ("2001:0DB8::1", "2001:0DB8::1"),
            ("[2001:0DB8::1]:12345", "2001:0DB8::1"),
            ("[2001:0DB8::1]::12345", "[2001:0DB8::1]::12345"),
        ] {
            assert_eq!(render(&format!("{{{{ {input:?} | stripPort }}}}")), output, "{input}");
        }
    }

    #[test]
    fn prometheus_strip_domain() {
        for (input, output) in [
            ("foo.example.com", "foo"),
            ("foo.example.com:12345", "foo:12345"),
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:12345", "192.0.2.1:12345"),
            ("2001:0DB8::1", "2001:0DB8::1"),
            ("[2001:0DB8::1]:12345", "[2001:0DB8::1]:12345"),
            ("[2001:0DB8::1]::12345", "[2001:0DB8::1]::12345"),
        ] {
            assert_eq!(render(&format!("{{{{ {input:?} | stripDomain }}}}")), output, "{input}");
        }
    }

    #[test]
    fn unclosed_action_is_a_parse_error() {
        let error = render_error("{{");
        assert!(matches!(error, TemplateError::Parse { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "error parsing template __alert_test: template: __alert_test:1:3: unclosed action"
        );
    }

    #[test]
    fn regex_replacement() {
        assert_eq!(render("{{ reReplaceAll \"(a)b\" \"x$1\" \"ab\" }}"), "xa");
    }

    #[test]
    fn humanize_floats_strings_and_ints() {
        assert_eq!(over("0.0 1.0 1234567.0 .12", "{{ humanize . }}:"), "0:1:1.235M:120m:");
        assert_eq!(over("\"0.0\" \"1.0\" \"1234567.0\" \".12\"", "{{ humanize . }}:"), "0:1:1.235M:120m:");
        assert_eq!(over("0 -1 1 1234567 9223372036854775807", "{{ humanize . }}:"), "0:-1:1:1.235M:9.223E:");
        let uint = |v: u64| to_float(&Value::Uint(v)).map(humanize).ok();
        assert_eq!(uint(u64::MAX).as_deref(), Some("18.45E"));
        assert_eq!(render("{{ humanize 0.001234 }}"), "1.234m");
    }

    #[test]
    fn humanize_refuses_a_non_number() {
        assert_eq!(
            render_error("{{ humanize \"one\" }}").to_string(),
            "error executing template __alert_test: error calling humanize: strconv.ParseFloat: parsing \"one\": invalid syntax"
        );
        assert_eq!(
            render_error("{{ humanize1024 true }}").to_string(),
            "error executing template __alert_test: error calling humanize1024: can't convert bool to float"
        );
    }

    #[test]
    fn prometheus_humanize1024() {
        assert_eq!(over("0.0 1.0 1048576.0 .12", "{{ humanize1024 . }}:"), "0:1:1Mi:0.12:");
        assert_eq!(over("\"0.0\" \"1.0\" \"1048576.0\" \".12\"", "{{ humanize1024 . }}:"), "0:1:1Mi:0.12:");
        assert_eq!(over("0 -1 1 1234567 9223372036854775807", "{{ humanize1024 . }}:"), "0:-1:1:1.177Mi:8Ei:");
        assert_eq!(to_float(&Value::Uint(u64::MAX)).map(humanize1024).ok().as_deref(), Some("16Ei"));
    }

    #[test]
    fn prometheus_humanize_duration() {
        assert_eq!(
            over("0 1 60 3600 86400 90000 -183845 899.99", "{{ humanizeDuration . }}:"),
            "0s:1s:1m 0s:1h 0m 0s:1d 0h 0m 0s:1d 1h 0m 0s:-2d 3h 4m 5s:14m 59s:"
        );
        assert_eq!(
            over("\"0\" \"1\" \"60\" \"3600\" \"86400\"", "{{ humanizeDuration . }}:"),
            "0s:1s:1m 0s:1h 0m 0s:1d 0h 0m 0s:"
        );
        assert_eq!(
            over(".1 .0001 .12345 60.1 60.5 1.2345 12.345", "{{ humanizeDuration . }}:"),
            "100ms:100us:123.5ms:1m 0s:1m 0s:1.234s:12.35s:"
        );
        assert_eq!(over("0 -1 1 1234567", "{{ humanizeDuration . }}:"), "0s:-1s:1s:14d 6h 56m 7s:");
        assert_eq!(render("{{ humanizeDuration 3661 }}|{{ humanizeDuration 0.5 }}"), "1h 1m 1s|500ms");
    }

    #[test]
    fn humanize_infinities_and_nan() {
        let body = "{{ humanize . }}:{{ humanize1024 . }}:{{ humanizeDuration . }}:{{humanizeTimestamp .}}:";
        let expected = "+Inf:+Inf:+Inf:+Inf:-Inf:-Inf:-Inf:-Inf:NaN:NaN:NaN:NaN:";
        assert_eq!(over("\"+Inf\" \"-Inf\" \"NaN\"", body), expected);
        let values = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN];
        let direct: String = values
            .iter()
            .map(|v| format!("{}:{}:{}:", humanize(*v), humanize1024(*v), humanize_duration(*v)))
            .collect();
        assert_eq!(direct, "+Inf:+Inf:+Inf:-Inf:-Inf:-Inf:NaN:NaN:NaN:");
    }

    #[test]
    fn prometheus_humanize_percentage() {
        assert_eq!(
            render(
                "{{ -0.22222 | humanizePercentage }}:{{ 0.0 | humanizePercentage }}:{{ 0.1234567 | humanizePercentage }}:{{ 1.23456 | humanizePercentage }}"
            ),
            "-22.22%:0%:12.35%:123.5%"
        );
        assert_eq!(
            over("0 -1 1 1234567 9223372036854775807", "{{ humanizePercentage . }}:"),
            "0%:-100%:100%:1.235e+08%:9.223e+20%:"
        );
        assert_eq!(render("{{ humanizePercentage 0.1234 }}"), "12.34%");
    }

    #[test]
    fn prometheus_humanize_timestamp() {
        assert_eq!(
            over("0 -1 1 1234567 9223372036", "{{ humanizeTimestamp . }}:"),
            "1970-01-01 00:00:00 +0000 UTC:1969-12-31 23:59:59 +0000 UTC:1970-01-01 00:00:01 +0000 UTC:1970-01-15 06:56:07 +0000 UTC:2262-04-11 23:47:16 +0000 UTC:"
        );
        assert_eq!(render("{{ 1435065584.128 | humanizeTimestamp }}"), "2015-06-23 13:19:44.128 +0000 UTC");
        assert_eq!(render("{{ \"1435065584.128\" | humanizeTimestamp }}"), "2015-06-23 13:19:44.128 +0000 UTC");
        assert_eq!(
            render_error("{{ humanizeTimestamp 9223372036854775807 }}").to_string(),
            "error executing template __alert_test: error calling humanizeTimestamp: 9.223372036854776e+18 cannot be represented as a nanoseconds timestamp since it overflows int64"
        );
        let overflow = float_to_time(u64::MAX as f64).err().map(|error| match error {
            TimeError::Other(message) => message,
            TimeError::NotFinite => String::new(),
        });
        assert_eq!(
            overflow.as_deref(),
            Some("1.8446744073709552e+19 cannot be represented as a nanoseconds timestamp since it overflows int64")
        );
    }

    #[test]
    fn to_time_gives_the_time_as_text() {
        assert_eq!(render("{{ 1435065584.128 | toTime }}"), "2015-06-23 13:19:44.128 +0000 UTC");
        assert_eq!(
            render_error("{{ toTime \"NaN\" }}").to_string(),
            "error executing template __alert_test: error calling toTime: value is NaN or Inf"
        );
    }

    #[test]
    fn case_functions() {
        assert_eq!(render("{{ \"aa bb CC\" | title }}"), "Aa Bb CC");
        assert_eq!(render("{{ \"aa bb CC\" | toUpper }}"), "AA BB CC");
        assert_eq!(render("{{ \"aA bB CC\" | toLower }}"), "aa bb cc");
        // Go's one-rune mappings, not Rust's full ones.
        assert_eq!(go_to_upper("ßtraße ﬁ ᾳ"), "ßTRAßE ﬁ ᾼ");
        assert_eq!(go_to_lower("İSTANBUL"), "istanbul");
        assert_eq!(go_title("ǆemal hello_world x.y über"), "ǅemal Hello_world X.Y Über");
        assert_eq!(go_title("ა"), "ა");
    }

    #[test]
    fn match_links_and_urls() {
        assert_eq!(render("{{ match \"a+\" \"aa\" }} {{ match \"a+\" \"b\" }}"), "true false");
        assert_eq!(render("{{ graphLink \"up\" }}"), "/graph?g0.expr=up&g0.tab=0");
        assert_eq!(render("{{ tableLink \"up\" }}"), "/graph?g0.expr=up&g0.tab=1");
        assert_eq!(
            render("{{ graphLink \"rate(x[5m]) > 0 ~*\" }}"),
            "/graph?g0.expr=rate%28x%5B5m%5D%29+%3E+0+~%2A&g0.tab=0"
        );
        assert_eq!(render("{{ pathPrefix }}"), "/path/prefix");
        assert_eq!(
            render("{{ externalURL }}|{{ $externalURL }}"),
            "http://testhost:9090/path/prefix|http://testhost:9090/path/prefix"
        );
        assert_eq!(url_path("https://h:1/a%20b?x=1#f"), "/a b");
        assert_eq!(url_path("http://h"), "");
    }

    #[test]
    fn prometheus_parse_duration() {
        assert_eq!(render("{{ printf \"%0.2f\" (parseDuration \"1h2m10ms\") }}"), "3720.01");
        assert_eq!(parse_duration_seconds("0"), Ok(0.0));
        assert_eq!(parse_duration_seconds("1w2d"), Ok(777_600.0));
        assert_eq!(parse_duration_seconds("10ms"), Ok(0.01));
        assert_eq!(parse_duration_seconds("292y"), Ok(9_208_512_000.0));
        assert_eq!(parse_duration_seconds("293y"), Err("duration out of range".to_owned()));
        assert_eq!(parse_duration_seconds("1h1d"), Err("not a valid duration string: \"1h1d\"".to_owned()));
        assert_eq!(parse_duration_seconds(""), Err("empty duration string".to_owned()));
    }

    // --- Alert templates ---------------------------------------------------------------

    #[test]
    fn missing_labels_are_empty() {
        assert_eq!(
            render(
                "[{{ $labels.nope }}][{{ .Labels.nope }}][{{ index $labels \"nope\" }}][{{ $externalLabels.nope }}]"
            ),
            "[][][][]"
        );
        assert_eq!(render("{{ if eq $labels.nope \"\" }}empty{{ end }}"), "empty");
        assert_eq!(
            render("[{{ $labels.nope | toUpper }}][{{ printf \"%s\" $labels.nope }}][{{ len $labels.nope }}]"),
            "[][][0]"
        );
        assert_eq!(render("{{ or $labels.nope \"default\" }}"), "default");
        assert_eq!(render("{{ with $labels.nope }}x{{ else }}none{{ end }}"), "none");
        assert_eq!(
            render("{{ $labels.job }} on {{ $labels.instance }} in {{ $externalLabels.cluster }}"),
            "node on foo.example.com:9100 in prod"
        );
    }

    #[test]
    fn value_prints_as_go_does() {
        for (value, text) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (1e6, "1e+06"),
            (123_456.0, "123456"),
            (1_234_567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(
                render_with("{{ $value }}|{{ .Value }}|{{ print $value }}", value).ok(),
                Some(format!("{text}|{text}|{text}")),
                "{value}"
            );
        }
        assert_eq!(render("{{ args 1 1.5 \"x\" 1e6 }}"), "map[arg0:1 arg1:1.5 arg2:x arg3:1e+06]");
        assert_eq!(render("{{ print 1 2 \"a\" 3 \"b\" \"c\" 1.5 }}|{{ println 1 \"a\" }}"), "1 2a3bc1.5|1 a\n");
    }

    #[test]
    fn pipelines_printf_conditions_and_ranges() {
        assert_eq!(render("{{ $labels.job | printf \"%s\" | toUpper | printf \"[%s]\" }}"), "[NODE]");
        assert_eq!(render_with("{{ $value | printf \"%.2f\" }}", 12.345_67).ok().as_deref(), Some("12.35"));
        assert_eq!(render_with("{{ printf \"%.2f\" $value }}", 2.0 / 3.0).ok().as_deref(), Some("0.67"));
        let condition = "{{ if gt $value 10.0 }}high{{ else }}low{{ end }}";
        assert_eq!(render_with(condition, 12.5).ok().as_deref(), Some("high"));
        assert_eq!(render_with(condition, 2.0).ok().as_deref(), Some("low"));
        assert_eq!(
            render("{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}"),
            "instance=foo.example.com:9100;job=node;severity=critical;"
        );
        assert_eq!(render("{{ range $labels }}{{ . }},{{ end }}"), "foo.example.com:9100,node,critical,");
        assert_eq!(render("{{ range $labels }}{{ $.Value }}{{ break }}{{ end }}"), "0");
    }

    #[test]
    fn the_alert_data_is_a_struct() {
        let error = render_error("{{ .labels.job }}");
        assert!(error.to_string().ends_with(&format!("can't evaluate field labels in type {ROOT_TYPE}")), "{error}");
        assert!(render_error("{{ $.Foo }}").to_string().contains("can't evaluate field Foo"));
        assert_eq!(
            render_with("{{ . }}", 1.5).ok().as_deref(),
            Some(
                "{map[instance:foo.example.com:9100 job:node severity:critical] map[cluster:prod] http://testhost:9090/path/prefix 1.5}"
            )
        );
        assert_eq!(render("{{ with .Labels }}{{ .job }}[{{ .nope }}]{{ end }}"), "node[]");
    }

    #[test]
    fn unsupported_functions_are_named_at_check() {
        for function in ["query", "first", "label", "value", "sortByLabel", "tmpl"] {
            let error = check(&format!("{{{{ {function} \"up\" }}}}"));
            assert!(
                matches!(&error, Err(TemplateError::UnsupportedFunction { function: name, .. }) if name == function),
                "{error:?}"
            );
        }
        let message = check("x\n{{ query \"up\" | first | value }}").err().map(|error| error.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "error parsing template __alert: template: __alert:2:4: function \"query\" is not supported by Wake (it runs a PromQL query from the template)"
            )
        );
    }

    #[test]
    fn check_makes_go_parse_time_checks() {
        assert_eq!(
            check("{{ $labels.job }} {{ humanize $value }} {{ range $k, $v := $labels }}{{ $k }}{{ end }}"),
            Ok(())
        );
        let message = |text: &str| check(text).err().map(|error| error.to_string()).unwrap_or_default();
        assert!(message("{{ foo }}").ends_with("__alert:1:4: function \"foo\" not defined"));
        assert!(message("{{ $lables.job }}").ends_with("__alert:1:4: undefined variable \"$lables\""));
        assert!(message("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}").contains("undefined variable \"$y\""));
        assert!(message("{{ define \"t\" }}{{ $labels.job }}{{ end }}").contains("undefined variable \"$labels\""));
        assert!(message("{{ break }}").contains("{{break}} outside {{range}}"));
        assert!(message("{{ \"a\" | 1 }}").contains("non executable command in pipeline stage 2"));
        assert!(message("a{{ end }}b").contains("unexpected {{end}} or {{else}}"));
        assert!(message("{{ if true }}a{{ end }}{{ else }}b").contains("unexpected {{end}} or {{else}}"));
        assert!(message("{{ \"abc").contains("__alert:1:"));
    }

    #[test]
    fn execution_errors_become_the_annotation_text() {
        let labels = Labels::new();
        let data = TemplateData { labels: &labels, external_labels: &labels, external_url: "", value: 0.0 };
        assert_eq!(
            expand_or_error_text("HighLoad", "load {{ humanize \"x\" }}", &data),
            "<error expanding template: error executing template __alert_HighLoad: error calling humanize: strconv.ParseFloat: parsing \"x\": invalid syntax>"
        );
        assert_eq!(
            expand_or_error_text("HighLoad", "{{ $z = 1 }}", &data),
            "<error expanding template: error executing template __alert_HighLoad: undefined variable: $z>"
        );
        assert_eq!(expand_or_error_text("HighLoad", "fine {{ 2 }}", &data), "fine 2");
        assert!(render_error("{{ range 3 }}x{{ end }}").to_string().ends_with("range can't iterate over 3"));
    }

    #[test]
    fn output_and_values_are_bounded() {
        let big = format!("{{{{ range (args {}) }}}}{}{{{{ end }}}}", "1 ".repeat(9), "x".repeat(8 * 1024));
        assert_eq!(
            render_error(&big),
            TemplateError::OutputTooLarge { template: "__alert_test".to_owned(), limit: MAX_OUTPUT_BYTES }
        );
        // A string doubled in a loop stops at the limit instead of taking the memory.
        let doubling = "{{ $s := \"x\" }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ $s = print $s $s $s $s $s $s $s $s }}{{ end }}{{ end }}{{ end }}{{ end }}";
        assert!(render_error(doubling).to_string().contains("exceeds the limit"));
        let nested = format!("{{{{ $m := 1 }}}}{}", "{{ range $labels }}{{ $m = args $m }}{{ end }}".repeat(6));
        assert!(render_error(&nested).to_string().contains("nest deeper"));
        let looping = "{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ range $labels }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}{{ end }}";
        assert!(render_error(looping).to_string().contains("range iteration budget"));
    }

    #[test]
    fn recursion_is_bounded() {
        let error = render_error("{{ define \"a\" }}{{ template \"a\" }}{{ end }}{{ template \"a\" }}");
        assert!(error.to_string().contains("recursion limit"), "{error}");
    }

    #[test]
    fn expand_refuses_what_check_refuses() {
        assert!(matches!(
            render_error("{{ query \"up\" }}"),
            TemplateError::UnsupportedFunction { line: 1, column: 4, .. }
        ));
        assert!(matches!(render_error("{{ $nope }}"), TemplateError::Parse { .. }));
        assert!(matches!(render_error("{{ end }}"), TemplateError::Parse { .. }));
        assert!(matches!(render_error("{{ nil }}"), TemplateError::Execute { .. }));
    }

    #[test]
    fn defined_templates_get_the_same_treatment() {
        assert_eq!(render("{{ define \"t\" }}{{ .job }}[{{ .nope }}]{{ end }}{{ template \"t\" $labels }}"), "node[]");
        assert_eq!(render("{{ block \"b\" . }}{{ .Labels.job }}{{ end }}"), "node");
        assert!(render_error("{{ define \"t\" }}{{ query 1 }}{{ end }}").to_string().contains("not supported by Wake"));
    }

    // --- Helpers -----------------------------------------------------------------------

    #[test]
    fn go_g_formatting() {
        for (value, precision, text) in [
            (1_234_567.0 / 1e6, Some(4), "1.235"),
            (0.12 * 1000.0, Some(4), "120"),
            (100_000.0, Some(4), "1e+05"),
            (1000.0, Some(4), "1000"),
            (9999.5, Some(4), "1e+04"),
            (12_345.0, Some(4), "1.234e+04"),
            (123.45, Some(4), "123.5"),
            (0.0001, Some(4), "0.0001"),
            (0.00001234, Some(4), "1.234e-05"),
            (1.5, Some(4), "1.5"),
            (-22.222, Some(4), "-22.22"),
            (1e100, Some(4), "1e+100"),
            (0.0, Some(4), "0"),
            (1e21, None, "1e+21"),
            (5e-324, None, "5e-324"),
            (f64::MAX, None, "1.7976931348623157e+308"),
            (999_999.9, None, "999999.9"),
            (12.5, None, "12.5"),
        ] {
            assert_eq!(go_format_g(value, precision), text, "{value} {precision:?}");
        }
    }

    #[test]
    fn prometheus_go_parse_float() {
        for (text, value) in [
            ("1.5", 1.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("+1e3", 1000.0),
            ("1_000", 1000.0),
            ("0x1p-2", 0.25),
            ("0x1.8p3", 12.0),
            ("-0X10P0", -16.0),
            ("Inf", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("1e-400", 0.0),
        ] {
            assert_eq!(parse_go_float(text), Ok(value), "{text}");
        }
        assert!(parse_go_float("NaN").is_ok_and(f64::is_nan));
        for text in ["", " 1", "1e", "+NaN", "infin", "_1", "1_", "1__0", "0x10", "+-1", "1.5.5"] {
            assert_eq!(
                parse_go_float(text),
                Err(format!("strconv.ParseFloat: parsing {text:?}: invalid syntax")),
                "{text}"
            );
        }
        assert_eq!(
            parse_go_float("1e400"),
            Err("strconv.ParseFloat: parsing \"1e400\": value out of range".to_owned())
        );
    }

    #[test]
    fn regexes_follow_re2() {
        let replace = |pattern: &str, replacement: &str, text: &str| {
            go_regex(pattern).map(|regex| regex.replace_all(text, replacement).into_owned())
        };
        assert_eq!(replace("\\d+", "N", "a1b22٣").as_deref(), Ok("aNbN٣"));
        assert_eq!(replace("\\w+", "W", "München").as_deref(), Ok("WüW"));
        assert_eq!(replace("[^\\w]", "_", "a-ü").as_deref(), Ok("a__"));
        assert_eq!(replace("[a[]", "X", "a[b").as_deref(), Ok("XXb"));
        assert_eq!(replace("\\Qa.b\\E", "X", "a.b axb").as_deref(), Ok("X axb"));
        assert_eq!(replace("^(.*):\\d+$", "$1", "host:9100").as_deref(), Ok("host"));
        assert!(go_regex("(").is_err());
    }

    #[test]
    fn host_ports_as_go_splits_them() {
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
        assert_eq!(split_host_port("a:b:c"), None);
        assert_eq!(split_host_port("[::1]"), None);
        assert_eq!(split_host_port("host"), None);
        assert_eq!(strip_domain("[foo.bar:baz]:80"), "foo:80");
        assert_eq!(strip_domain("[foo:bar]:80"), "[foo:bar]:80");
    }
}
