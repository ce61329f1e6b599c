//! The nesting limit of PromQL and LogQL, so that no expression can exhaust a thread's stack.
//!
//! Both parsers and Wake's evaluators recurse once per level of an expression, and a thread
//! that runs out of stack aborts the whole process: the one outcome a server must never
//! have. So an expression is checked three times:
//! - before parsing, on its text: brackets nested deeper than the limit are refused at once;
//! - while parsing, which runs on a stack grown for it ([`parse_guarded`]), since a long chain of
//!   operators (`1+1+1+…`) nests no brackets yet makes a deep tree; a panic of the parser
//!   (a third-party crate) becomes an error instead of a dropped connection;
//! - after parsing: the tree is measured with a walk that stops at the limit, and a tree too
//!   deep is refused (and dropped on the grown stack too).
//!
//! An accepted expression is at most `max_query_depth` deep, which the evaluators' recursion
//! can always afford.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Stack that parsing, measuring and dropping an expression may use, always a fresh one: the
/// caller's may be nearly used up. Virtual memory: only the pages a deep expression touches
/// are ever committed.
const PARSE_STACK_BYTES: usize = 256 << 20;

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepthError {
    #[error(
        "the query nests deeper than {limit} levels of parentheses, brackets and operators (query.max_query_depth)"
    )]
    TooDeep { limit: usize },
    #[error("{0}")]
    Parse(String),
}

/// The bytes of `text` with every quoted string (`"…"`, `'…'` with backslash escapes, raw
/// `` `…` ``, quotes included) blanked out, as both languages quote: what is left is the
/// expression's structure.
fn outside_quotes(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for byte in &mut bytes {
        let current = *byte;
        match quote {
            Some(open) => {
                if escaped {
                    escaped = false;
                } else if current == b'\\' && open != b'`' {
                    escaped = true;
                } else if current == open {
                    quote = None;
                }
                *byte = b' ';
            }
            None if matches!(current, b'"' | b'\'' | b'`') => {
                quote = Some(current);
                *byte = b' ';
            }
            None => {}
        }
    }
    bytes
}

/// The deepest nesting of `(`, `[` and `{` outside quoted strings.
pub fn bracket_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for byte in outside_quotes(text) {
        match byte {
            b'(' | b'[' | b'{' => {
                depth = depth.saturating_add(1);
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Operators at one level of brackets make a tree at least this fraction as deep as their
/// number: PromQL has six precedence levels and no way but brackets to balance a chain.
const OPERATORS_PER_LEVEL: usize = 6;

/// The most binary operators of PromQL (`+ - * / % ^`, comparisons, `and or unless atan2`)
/// between one pair of brackets, outside quoted strings. promql-parser takes time quadratic
/// in the length of such a chain (20,000 terms: 2 s), so a chain that would be refused for its
/// depth anyway is refused before it is parsed.
pub fn operator_run(text: &str) -> usize {
    let bytes = outside_quotes(text);
    let mut runs: Vec<usize> = vec![0];
    let mut longest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let mut operator = false;
        match bytes[i] {
            b'(' | b'[' | b'{' => runs.push(0),
            b')' | b']' | b'}' if runs.len() > 1 => {
                runs.pop();
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' => operator = true,
            b'=' | b'!' if bytes.get(i.saturating_add(1)) == Some(&b'=') => {
                operator = true;
                i = i.saturating_add(1);
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while bytes
                    .get(i.saturating_add(1))
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':'))
                {
                    i = i.saturating_add(1);
                }
                let word = &bytes[start..=i];
                operator = [&b"and"[..], b"or", b"unless", b"atan2"].iter().any(|op| word.eq_ignore_ascii_case(op));
            }
            _ => {}
        }
        if operator && let Some(run) = runs.last_mut() {
            *run = run.saturating_add(1);
            longest = longest.max(*run);
        }
        i = i.saturating_add(1);
    }
    longest
}

/// [`parse_guarded`] for PromQL, whose parser is also refused chains of operators too long
/// for the depth limit ([`operator_run`]).
pub fn parse_promql(text: &str, limit: usize) -> Result<promql_parser::parser::Expr, DepthError> {
    if operator_run(text) > limit.saturating_mul(OPERATORS_PER_LEVEL) {
        return Err(DepthError::TooDeep { limit });
    }
    parse_guarded(text, limit, promql_parser::parser::parse, promql_depth)
}

/// Parses `text` with `parse` and measures the tree with `depth` (which must stop counting
/// at the limit it is given), on a grown stack, turning a parser's panic into an error.
pub fn parse_guarded<T, E: std::fmt::Display>(
    text: &str,
    limit: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
    depth: impl FnOnce(&T, usize) -> usize,
) -> Result<T, DepthError> {
    if bracket_depth(text) > limit {
        return Err(DepthError::TooDeep { limit });
    }
    stacker::grow(PARSE_STACK_BYTES, || {
        let parsed = catch_unwind(AssertUnwindSafe(|| parse(text)))
            .map_err(|panic| DepthError::Parse(format!("cannot parse the query: {}", panic_message(&panic))))?
            .map_err(|error| DepthError::Parse(error.to_string()))?;
        if depth(&parsed, limit) > limit {
            // Dropped here, on the grown stack: dropping a deep tree recurses as deeply.
            drop(parsed);
            return Err(DepthError::TooDeep { limit });
        }
        Ok(parsed)
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the parser failed".into())
}

/// The depth of a PromQL expression, counted up to `limit + 1`.
pub fn promql_depth(expr: &promql_parser::parser::Expr, limit: usize) -> usize {
    use promql_parser::parser::Expr;
    if limit == 0 {
        return 1;
    }
    let below = |e: &Expr| promql_depth(e, limit.saturating_sub(1));
    1usize.saturating_add(match expr {
        Expr::Aggregate(a) => below(&a.expr).max(a.param.as_deref().map_or(0, below)),
        Expr::Unary(u) => below(&u.expr),
        Expr::Binary(b) => below(&b.lhs).max(below(&b.rhs)),
        Expr::Paren(p) => below(&p.expr),
        Expr::Subquery(s) => below(&s.expr),
        Expr::Call(call) => call.args.args.iter().map(|arg| below(arg)).max().unwrap_or(0),
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => 0,
    })
}

/// The depth of a LogQL query (metric expressions and label-filter expressions), counted up
/// to `limit + 1`.
pub fn logql_depth(expr: &logql::Expr, limit: usize) -> usize {
    match expr {
        logql::Expr::Log(log) => log_query_depth(log, limit),
        logql::Expr::Metric(metric) => metric_depth(metric, limit),
        _ => 1,
    }
}

fn metric_depth(query: &logql::MetricQuery, limit: usize) -> usize {
    use logql::MetricQuery;
    if limit == 0 {
        return 1;
    }
    let below = limit.saturating_sub(1);
    1usize.saturating_add(match query {
        MetricQuery::Range(range) => log_query_depth(&range.log_query, below),
        MetricQuery::Vector(aggregation) => metric_depth(&aggregation.inner, below),
        MetricQuery::Binary(binary) => metric_depth(&binary.left, below).max(metric_depth(&binary.right, below)),
        MetricQuery::LabelReplace(replace) => metric_depth(&replace.inner, below),
        _ => 0,
    })
}

fn log_query_depth(query: &logql::LogQuery, limit: usize) -> usize {
    query
        .pipeline
        .iter()
        .map(|stage| match stage {
            logql::PipelineStage::LabelFilter(filter) => filter_depth(filter, limit),
            _ => 1,
        })
        .max()
        .unwrap_or(1)
}

fn filter_depth(filter: &logql::LabelFilterExpr, limit: usize) -> usize {
    use logql::LabelFilterExpr;
    if limit == 0 {
        return 1;
    }
    let below = limit.saturating_sub(1);
    1usize.saturating_add(match filter {
        LabelFilterExpr::And(a, b) | LabelFilterExpr::Or(a, b) => filter_depth(a, below).max(filter_depth(b, below)),
        _ => 0,
    })
}

/// The depth of an SQL statement's expressions and queries, counted up to `limit + 1`: the
/// walk stops below the limit, so it recurses at most that deep. sqlparser bounds the nesting
/// of parentheses itself, but not a chain like `a AND b AND …`, whose tree DataFusion's
/// planner would then recurse through to the end of a thread's stack.
pub fn sql_depth(statement: &datafusion::sql::parser::Statement, limit: usize) -> usize {
    use datafusion::sql::parser::{CopyToSource, Statement};
    use datafusion::sql::sqlparser::ast::Visit;
    let mut visitor = SqlDepth { depth: 0, deepest: 0, limit };
    match statement {
        Statement::Statement(statement) => {
            let _ = statement.visit(&mut visitor);
        }
        Statement::CopyTo(copy) => {
            if let CopyToSource::Query(query) = &copy.source {
                let _ = query.visit(&mut visitor);
            }
        }
        Statement::Explain(explain) => return sql_depth(&explain.statement, limit).saturating_add(1),
        _ => {}
    }
    visitor.deepest
}

struct SqlDepth {
    depth: usize,
    deepest: usize,
    limit: usize,
}

impl SqlDepth {
    fn enter(&mut self) -> std::ops::ControlFlow<()> {
        self.depth = self.depth.saturating_add(1);
        self.deepest = self.deepest.max(self.depth);
        if self.depth > self.limit { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) }
    }

    fn leave(&mut self) -> std::ops::ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        std::ops::ControlFlow::Continue(())
    }
}

impl datafusion::sql::sqlparser::ast::Visitor for SqlDepth {
    type Break = ();

    fn pre_visit_query(&mut self, _: &datafusion::sql::sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &datafusion::sql::sqlparser::ast::Query) -> std::ops::ControlFlow<()> {
        self.leave()
    }

    fn pre_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.leave()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promql(text: &str, limit: usize) -> Result<promql_parser::parser::Expr, DepthError> {
        parse_promql(text, limit)
    }

    fn logql(text: &str, limit: usize) -> Result<logql::Expr, DepthError> {
        parse_guarded(text, limit, logql::parse, logql_depth)
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(bracket_depth(r#"sum(rate(x{a="((("}[5m]))"#), 3);
        assert_eq!(bracket_depth(r#"{a="\"(("} |~ `((\`"#), 1);
        assert_eq!(bracket_depth(&"(".repeat(10_000)), 10_000);
    }

    #[test]
    fn deep_parentheses_are_refused_before_parsing() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(promql(&deep, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
        let deep_logql = format!("{}count_over_time({{a=\"b\"}}[5m]){}", "sum(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(logql(&deep_logql, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
    }

    #[test]
    fn operators_are_counted_per_level_of_brackets_outside_strings() {
        assert_eq!(operator_run("a + b - c"), 2);
        assert_eq!(operator_run("(a + b) * (c / d) and e"), 2);
        assert_eq!(operator_run(r#"x{a!="+-*", b=~"a|b"} > 1"#), 1);
        assert_eq!(operator_run("sum by (band, order) (x) unless y"), 1);
        assert_eq!(operator_run(&vec!["up"; 10_000].join(" or ")), 9_999);
    }

    #[test]
    fn long_operator_chains_are_refused_before_parsing() {
        // No brackets at all, yet a tree 100,000 levels deep, which promql-parser would take
        // minutes to build: refused from the text.
        let chain = vec!["1"; 100_000].join("+");
        assert_eq!(promql(&chain, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
        // Short enough to be parsed, too deep to be kept: measured after parsing.
        let chain = vec!["1"; 1_000].join("+");
        assert_eq!(promql(&chain, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
        assert!(promql(&vec!["1"; 200].join("+"), 256).is_ok());
    }

    #[test]
    fn long_logql_chains_are_measured_after_parsing_without_overflowing() {
        let filters = vec!["a=\"b\""; 50_000].join(" and ");
        assert_eq!(logql(&format!("{{a=\"b\"}} | {filters}"), 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
        let binary = vec!["count_over_time({a=\"b\"}[1m])"; 20_000].join(" + ");
        assert_eq!(logql(&binary, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
    }

    #[test]
    fn ordinary_expressions_pass_with_their_depth() {
        let expr = promql("sum by (le) (rate(x_bucket[5m])) / 2", 256).expect("parses");
        assert_eq!(promql_depth(&expr, 256), 4);
        let parsed = logql(r#"sum(count_over_time({a="b"} | json | x > 1 and y < 2 [5m]))"#, 256).expect("parses");
        assert_eq!(logql_depth(&parsed, 256), 4);
        assert!(promql("sum(", 256).is_err());
    }

    fn sql(text: &str, limit: usize) -> Result<datafusion::sql::parser::Statement, DepthError> {
        let parse = |text: &str| {
            datafusion::sql::parser::DFParser::parse_sql(text).map(|mut statements| statements.pop_front())
        };
        parse_guarded(text, limit, parse, |statement, limit| statement.as_ref().map_or(0, |s| sql_depth(s, limit)))
            .map(|statement| statement.expect("one statement"))
    }

    #[test]
    fn sql_expression_chains_are_refused_without_overflowing() {
        let chain = format!("SELECT 1 WHERE {}", vec!["1 = 1"; 30_000].join(" AND "));
        assert_eq!(sql(&chain, 256).unwrap_err(), DepthError::TooDeep { limit: 256 });
        let statement = sql("SELECT a FROM t WHERE a = 1 AND (b > 2 OR c IN (SELECT x FROM u))", 256).expect("parses");
        assert_eq!(sql_depth(&statement, 256), 7);
    }

    #[test]
    fn a_panicking_parser_is_an_error() {
        // logql-parser turns `1e20s` into a `Duration` with `from_secs_f64`, which panics.
        let error = logql(r#"count_over_time({a="b"}[1e20s])"#, 256).unwrap_err();
        assert!(matches!(error, DepthError::Parse(_)), "{error:?}");
    }
}
