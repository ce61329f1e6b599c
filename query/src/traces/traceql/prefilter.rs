//! A SQL condition (DataFusion dialect) on the `spans` table that finds candidate traces
//! for a query: every trace with at least one result has at least one span meeting it.
//!
//! The condition may be weaker than the query (let through traces the evaluator then
//! drops) but never stronger. Each spanset expression is analysed into two conditions:
//! `member`, met by every span it yields, and `exists`, met by some span of the trace when
//! it yields anything. `{A} && {B}` yields spans of either side but needs both, so its
//! `member` is `A OR B` while its `exists` may be whichever of `A`, `B` looks more selective.
//! Whatever cannot be said exactly or more weakly in SQL becomes TRUE where it stands:
//! negation with `!`, events, links, trace-level intrinsics, arithmetic, field-to-field
//! comparisons. Each generated atom is TRUE (not NULL) on every span where the TraceQL
//! comparison holds, and atoms are only combined with AND and OR, so NULLs can only drop
//! spans the query would drop too.

use super::super::model::SpanStatus;
use super::ast::*;
use crate::loki::labels::quote;
use wake_storage::schema::PROMOTED_RESOURCE_ATTRIBUTES;

/// The SQL WHERE condition, or `None` when nothing narrows the search (`{}`, `{ !(…) }`).
pub fn sql_prefilter(query: &Query) -> Option<String> {
    let (_, exists) = pipeline(&query.pipeline);
    match exists {
        Cond::True => None,
        // Parenthesised, so that a caller may AND it with its own conditions.
        cond @ (Cond::And(_) | Cond::Or(_)) => Some(format!("({})", cond.sql())),
        cond => Some(cond.sql()),
    }
}

/// A condition on one span row.
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    True,
    False,
    /// One comparison; `score` guesses its selectivity (higher keeps fewer rows).
    Atom {
        sql: String,
        score: u8,
    },
    And(Vec<Cond>),
    Or(Vec<Cond>),
}

impl Cond {
    fn atom(sql: String, score: u8) -> Cond {
        Cond::Atom { sql, score }
    }

    fn and(a: Cond, b: Cond) -> Cond {
        match (a, b) {
            (Cond::True, x) | (x, Cond::True) => x,
            (Cond::False, _) | (_, Cond::False) => Cond::False,
            (Cond::And(mut xs), Cond::And(ys)) => {
                xs.extend(ys);
                Cond::And(xs)
            }
            (Cond::And(mut xs), y) => {
                xs.push(y);
                Cond::And(xs)
            }
            (x, Cond::And(mut ys)) => {
                ys.insert(0, x);
                Cond::And(ys)
            }
            (x, y) if x == y => x,
            (x, y) => Cond::And(vec![x, y]),
        }
    }

    fn or(a: Cond, b: Cond) -> Cond {
        match (a, b) {
            (Cond::False, x) | (x, Cond::False) => x,
            (Cond::True, _) | (_, Cond::True) => Cond::True,
            (Cond::Or(mut xs), Cond::Or(ys)) => {
                xs.extend(ys);
                Cond::Or(xs)
            }
            (Cond::Or(mut xs), y) => {
                xs.push(y);
                Cond::Or(xs)
            }
            (x, Cond::Or(mut ys)) => {
                ys.insert(0, x);
                Cond::Or(ys)
            }
            (x, y) if x == y => x,
            (x, y) => Cond::Or(vec![x, y]),
        }
    }

    fn any(conds: Vec<Cond>) -> Cond {
        conds.into_iter().fold(Cond::False, Cond::or)
    }

    fn score(&self) -> u8 {
        match self {
            Cond::True => 0,
            Cond::False => u8::MAX,
            Cond::Atom { score, .. } => *score,
            Cond::And(xs) => xs.iter().map(Cond::score).max().unwrap_or(0),
            Cond::Or(xs) => xs.iter().map(Cond::score).min().unwrap_or(0),
        }
    }

    fn sql(&self) -> String {
        let part = |c: &Cond| match c {
            Cond::And(_) | Cond::Or(_) => format!("({})", c.sql()),
            _ => c.sql(),
        };
        match self {
            Cond::True => "TRUE".to_string(),
            Cond::False => "FALSE".to_string(),
            Cond::Atom { sql, .. } => sql.clone(),
            Cond::And(xs) => xs.iter().map(part).collect::<Vec<_>>().join(" AND "),
            Cond::Or(xs) => xs.iter().map(part).collect::<Vec<_>>().join(" OR "),
        }
    }
}

/// The more selective looking of two conditions that are both valid; the first on a tie.
fn best(a: Cond, b: Cond) -> Cond {
    if b.score() > a.score() { b } else { a }
}

/// (member, exists) of a pipeline: its output is a subset of every stage's, so members
/// are ANDed; every stage must yield something, so any stage's `exists` will do.
fn pipeline(p: &Pipeline) -> (Cond, Cond) {
    let mut member = Cond::True;
    let mut exists = Cond::True;
    for stage in &p.stages {
        if let Stage::Spanset(e) = stage {
            let (m, x) = spanset(e);
            member = Cond::and(member, m);
            exists = best(exists, x);
        }
    }
    // On a tie the conjunction of all stages wins: it is at least as narrow as each part.
    let exists = best(member.clone(), exists);
    (member, exists)
}

fn spanset(e: &SpansetExpr) -> (Cond, Cond) {
    match e {
        SpansetExpr::Filter(f) => {
            let c = field(f);
            (c.clone(), c)
        }
        SpansetExpr::Pipeline(p) => pipeline(p),
        SpansetExpr::Op { op, lhs, rhs } => {
            let (ml, el) = spanset(lhs);
            let (mr, er) = spanset(rhs);
            match op.relation() {
                None if *op == SpansetOp::And => (Cond::or(ml, mr), best(el, er)),
                None => (Cond::or(ml, mr), Cond::or(el, er)),
                // Structural results are right-hand spans, and need a left-hand match too.
                Some((_, RelationMode::Plain)) => (mr, best(el, er)),
                // Negations yield right-hand spans whatever the left side holds.
                Some((_, RelationMode::Not)) => (mr, er),
                Some((_, RelationMode::Union)) => (Cond::or(ml, mr), best(el, er)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Field expressions
// ---------------------------------------------------------------------------------------

/// Resource attributes Wake keeps in columns of their own.
fn promoted_column(name: &str) -> Option<&'static str> {
    PROMOTED_RESOURCE_ATTRIBUTES.iter().find(|(attribute, _)| *attribute == name).map(|(_, column)| *column)
}

/// Where an attribute's text lives: one column for scoped attributes, span then resource
/// for unscoped ones (the query's value is the first present, so either matching is a
/// weaker condition), none for events, links and instrumentation scopes.
struct Column {
    sql: String,
    /// A promoted column, which may hold '' rather than NULL when the attribute is absent.
    promoted: bool,
}

fn attribute_columns(a: &Attribute) -> Vec<Column> {
    let span = || Column { sql: format!("attributes[{}]", quote(&a.name)), promoted: false };
    let resource = || match promoted_column(&a.name) {
        Some(c) => Column { sql: c.to_string(), promoted: true },
        None => Column { sql: format!("resource_attributes[{}]", quote(&a.name)), promoted: false },
    };
    match a.scope {
        AttributeScope::Span => vec![span()],
        AttributeScope::Resource => vec![resource()],
        AttributeScope::Unscoped => vec![span(), resource()],
        // The scope's name and version have columns; other scope attributes are not kept.
        AttributeScope::Instrumentation => match a.name.as_str() {
            "name" => vec![Column { sql: "scope_name".into(), promoted: false }],
            "version" => vec![Column { sql: "scope_version".into(), promoted: false }],
            _ => Vec::new(),
        },
        AttributeScope::Event | AttributeScope::Link => Vec::new(),
    }
}

/// The column of a string-valued intrinsic. Optional fields the evaluator reads as ""
/// are coalesced so that a NULL cannot drop a span the query keeps.
fn string_intrinsic_column(i: Intrinsic) -> Option<&'static str> {
    Some(match i {
        Intrinsic::Name => "name",
        Intrinsic::SpanId => "span_id",
        Intrinsic::ParentId => "coalesce(parent_span_id, '')",
        Intrinsic::StatusMessage => "coalesce(status_message, '')",
        Intrinsic::TraceId => "trace_id",
        Intrinsic::InstrumentationName => "scope_name",
        Intrinsic::InstrumentationVersion => "scope_version",
        _ => return None,
    })
}

fn sql_op(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Neq => "<>",
        other => other.symbol(),
    }
}

/// Selectivity guess: equality beats ranges beats inequality.
fn score(op: BinaryOp, equality: u8) -> u8 {
    match op {
        BinaryOp::Eq => equality,
        BinaryOp::Neq => 1,
        _ => 2,
    }
}

fn field(e: &FieldExpr) -> Cond {
    match e {
        FieldExpr::Literal(Literal::Bool(false)) => Cond::False,
        FieldExpr::Binary { op: BinaryOp::And, lhs, rhs } => Cond::and(field(lhs), field(rhs)),
        FieldExpr::Binary { op: BinaryOp::Or, lhs, rhs } => Cond::or(field(lhs), field(rhs)),
        FieldExpr::Binary { op, lhs, rhs } if op.is_comparison() => comparison(*op, lhs, rhs),
        // An attribute standing alone is true when its text is "true".
        FieldExpr::Attribute(a) => {
            let columns = attribute_columns(a);
            if columns.is_empty() {
                return Cond::True;
            }
            Cond::any(columns.iter().map(|c| Cond::atom(format!("{} = 'true'", c.sql), 2)).collect())
        }
        FieldExpr::Unary { op: UnaryOp::Exists, expr } => presence(expr, true),
        FieldExpr::Unary { op: UnaryOp::NotExists, expr } => presence(expr, false),
        FieldExpr::Match { lhs, negated, pattern } => regex(lhs, *negated, pattern),
        // `!`, arithmetic, intrinsics used as booleans, literals: nothing safe to say.
        _ => Cond::True,
    }
}

fn comparison(op: BinaryOp, lhs: &FieldExpr, rhs: &FieldExpr) -> Cond {
    let (subject, literal, op) = match (lhs, rhs) {
        (s, FieldExpr::Literal(l)) => (s, l, op),
        (FieldExpr::Literal(l), s) => (s, l, op.flipped()),
        _ => return Cond::True,
    };
    match subject {
        FieldExpr::Intrinsic(i) => intrinsic_comparison(*i, op, literal),
        FieldExpr::Attribute(a) => {
            let columns = attribute_columns(a);
            if columns.is_empty() {
                return Cond::True;
            }
            Cond::any(columns.iter().map(|c| attribute_comparison(c, op, literal)).collect())
        }
        _ => Cond::True,
    }
}

fn intrinsic_comparison(i: Intrinsic, op: BinaryOp, literal: &Literal) -> Cond {
    match (i, literal) {
        (Intrinsic::TraceId, Literal::Str(s)) if matches!(op, BinaryOp::Eq | BinaryOp::Neq) => {
            // The evaluator compares trace ids without leading zeros, as Tempo does.
            let trimmed = s.trim_start_matches('0');
            Cond::atom(format!("ltrim(trace_id, '0') {} {}", sql_op(op), quote(trimmed)), score(op, 6))
        }
        (_, Literal::Str(s)) => match string_intrinsic_column(i) {
            Some(column) => {
                let equality = if matches!(i, Intrinsic::SpanId | Intrinsic::TraceId) { 6 } else { 4 };
                Cond::atom(format!("{column} {} {}", sql_op(op), quote(s)), score(op, equality))
            }
            None => Cond::True,
        },
        (Intrinsic::Status, Literal::Status(s)) => {
            let equality = if *s == SpanStatus::Error { 3 } else { 1 };
            Cond::atom(format!("status_code {} {}", sql_op(op), quote(s.as_str())), score(op, equality))
        }
        (Intrinsic::Kind, Literal::Kind(k)) => {
            Cond::atom(format!("kind {} {}", sql_op(op), quote(k.as_str())), score(op, 2))
        }
        (Intrinsic::Duration, Literal::Duration(n) | Literal::Int(n)) => {
            Cond::atom(format!("duration_ns {} {n}", sql_op(op)), score(op, 3))
        }
        (Intrinsic::Duration, Literal::Float(x)) => {
            Cond::atom(format!("duration_ns {} {x:?}", sql_op(op)), score(op, 3))
        }
        _ => Cond::True,
    }
}

/// Doubles hold every integer up to 2^53 exactly; past that a cast can merge neighbours.
const EXACT_DOUBLE_LIMIT: u64 = 1 << 53;

fn attribute_comparison(column: &Column, op: BinaryOp, literal: &Literal) -> Cond {
    let c = &column.sql;
    let equality = if column.promoted { 5 } else { 4 };
    match literal {
        Literal::Str(s) => Cond::atom(format!("{c} {} {}", sql_op(op), quote(s)), score(op, equality)),
        Literal::Int(n) => {
            // The evaluator compares integers exactly; through DOUBLE, 2^53+1 < 2^53+2 may
            // read as equal, so beyond 2^53 strict comparisons are loosened.
            let op = match op {
                _ if n.unsigned_abs() <= EXACT_DOUBLE_LIMIT => op,
                BinaryOp::Lt => BinaryOp::Lte,
                BinaryOp::Gt => BinaryOp::Gte,
                BinaryOp::Neq => return Cond::True,
                other => other,
            };
            Cond::atom(format!("try_cast({c} AS DOUBLE) {} {n}", sql_op(op)), score(op, 3))
        }
        Literal::Float(x) => Cond::atom(format!("try_cast({c} AS DOUBLE) {} {x:?}", sql_op(op)), score(op, 3)),
        // Text compared with a boolean must be "true" or "false" exactly.
        Literal::Bool(b) => match op {
            BinaryOp::Eq => Cond::atom(format!("{c} = '{b}'"), 2),
            BinaryOp::Neq => Cond::atom(format!("{c} = '{}'", !b), 2),
            _ => Cond::False,
        },
        // Go duration text cannot be compared in SQL.
        Literal::Duration(_) => Cond::True,
        // Attribute text never equals a status or kind: the comparison is always false.
        Literal::Status(_) | Literal::Kind(_) => Cond::False,
    }
}

/// `x != nil` (`present`) or `x = nil`.
fn presence(e: &FieldExpr, present: bool) -> Cond {
    let FieldExpr::Attribute(a) = e else { return Cond::True };
    let columns = attribute_columns(a);
    if columns.is_empty() {
        return Cond::True;
    }
    let conds = columns.iter().map(|c| {
        if present {
            Cond::atom(format!("{} IS NOT NULL", c.sql), 1)
        } else if c.promoted {
            Cond::atom(format!("({c} IS NULL OR {c} = '')", c = c.sql), 1)
        } else {
            Cond::atom(format!("{} IS NULL", c.sql), 1)
        }
    });
    // Present: in the span or the resource. Absent: in both.
    if present { Cond::any(conds.collect()) } else { conds.fold(Cond::True, Cond::and) }
}

fn regex(lhs: &FieldExpr, negated: bool, pattern: &Pattern) -> Cond {
    let columns: Vec<String> = match lhs {
        FieldExpr::Intrinsic(i) => string_intrinsic_column(*i).map(str::to_string).into_iter().collect(),
        FieldExpr::Attribute(a) => attribute_columns(a).into_iter().map(|c| c.sql).collect(),
        _ => Vec::new(),
    };
    if columns.is_empty() {
        return Cond::True;
    }
    let anchored = quote(&format!("^(?:{})$", pattern.source()));
    let (not, score) = if negated { ("NOT ", 1) } else { ("", 2) };
    Cond::any(columns.iter().map(|c| Cond::atom(format!("{not}regexp_like({c}, {anchored})"), score)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::*;

    fn sql(q: &str) -> Option<String> {
        sql_prefilter(&parse(q, 64).unwrap_or_else(|e| panic!("{q}: {e}")))
    }

    #[test]
    fn simple_filters_map_to_columns() {
        let cases = [
            (r#"{ name = "GET /" }"#, "name = 'GET /'"),
            ("{ status = error }", "status_code = 'error'"),
            ("{ span:status != ok }", "status_code <> 'ok'"),
            ("{ kind = server }", "kind = 'server'"),
            ("{ duration > 100ms }", "duration_ns > 100000000"),
            ("{ span:duration <= 5 }", "duration_ns <= 5"),
            (r#"{ statusMessage = "x" }"#, "coalesce(status_message, '') = 'x'"),
            (r#"{ span:id = "00000000000000ab" }"#, "span_id = '00000000000000ab'"),
            (r#"{ span:parentID = "ab" }"#, "coalesce(parent_span_id, '') = 'ab'"),
            (r#"{ trace:id = "000123" }"#, "ltrim(trace_id, '0') = '123'"),
            (r#"{ resource.service.name = "api" }"#, "service_name = 'api'"),
            (r#"{ resource.k8s.pod.name = "p" }"#, "k8s_pod_name = 'p'"),
            (
                r#"{ resource.deployment.environment = "prod" }"#,
                "resource_attributes['deployment.environment'] = 'prod'",
            ),
            (r#"{ span.http.method = "it's" }"#, "attributes['http.method'] = 'it''s'"),
            (r#"{ instrumentation:name = "grpc" }"#, "scope_name = 'grpc'"),
            (r#"{ instrumentation.version = "1.0" }"#, "scope_version = '1.0'"),
            ("{ span.http.status_code >= 500 }", "try_cast(attributes['http.status_code'] AS DOUBLE) >= 500"),
            ("{ 500 <= span.code }", "try_cast(attributes['code'] AS DOUBLE) >= 500"),
            ("{ span.ratio > 0.5 }", "try_cast(attributes['ratio'] AS DOUBLE) > 0.5"),
            ("{ span.flag = true }", "attributes['flag'] = 'true'"),
            ("{ span.flag != true }", "attributes['flag'] = 'false'"),
            ("{ span.flag }", "attributes['flag'] = 'true'"),
            ("{ span.x = nil }", "attributes['x'] IS NULL"),
            ("{ span.x != nil }", "attributes['x'] IS NOT NULL"),
            ("{ resource.container.id = nil }", "(container_id IS NULL OR container_id = '')"),
            (r#"{ span.db =~ "post.*" }"#, "regexp_like(attributes['db'], '^(?:post.*)$')"),
            (r#"{ name !~ "GET.*" }"#, "NOT regexp_like(name, '^(?:GET.*)$')"),
            ("{ span.x = ok }", "FALSE"),
            ("{ false }", "FALSE"),
            (r#"{ span.x > 9007199254740993 }"#, "try_cast(attributes['x'] AS DOUBLE) >= 9007199254740993"),
        ];
        for (q, want) in cases {
            assert_eq!(sql(q).as_deref(), Some(want), "{q}");
        }
    }

    #[test]
    fn unscoped_attributes_look_in_span_and_resource() {
        assert_eq!(
            sql(r#"{ .service.name = "api" }"#).as_deref(),
            Some("(attributes['service.name'] = 'api' OR service_name = 'api')")
        );
        assert_eq!(
            sql("{ .x = nil }").as_deref(),
            Some("(attributes['x'] IS NULL AND resource_attributes['x'] IS NULL)")
        );
    }

    #[test]
    fn nothing_useful_is_none() {
        for q in [
            "{}",
            "{ true }",
            r#"{ !(name = "a") }"#,
            "{ trace:duration > 1s }",
            r#"{ trace:rootName = "x" }"#,
            r#"{ rootServiceName = "x" }"#,
            "{ nestedSetParent < 0 }",
            r#"{ event:name = "exception" }"#,
            r#"{ event.exception.message =~ ".*x.*" }"#,
            r#"{ link.opentracing.ref_type = "child_of" }"#,
            "{ span.a = span.b }",
            "{ span.x + 1 > 2 }",
            "{ span.d > 1s }",
            "{ span.x != 9007199254740993 }",
            "{ } | count() > 2",
            "{} !< {}",
        ] {
            assert_eq!(sql(q), None, "{q}");
        }
    }

    #[test]
    fn filters_combine_safely() {
        let cases = [
            (r#"{ name = "a" && status = error }"#, "(name = 'a' AND status_code = 'error')"),
            (r#"{ name = "a" || status = error }"#, "(name = 'a' OR status_code = 'error')"),
            (r#"{ name = "a" || !(status = error) }"#, ""),
            (r#"{ name = "a" && !(status = error) }"#, "name = 'a'"),
            (
                r#"({ name = "a" && (span.x = 1 || span.y = 2) })"#,
                "(name = 'a' AND (try_cast(attributes['x'] AS DOUBLE) = 1 OR try_cast(attributes['y'] AS DOUBLE) = 2))",
            ),
            // `&&` between spansets: one side suffices; the equality looks more selective.
            (r#"{ span.x > 1 } && { name = "db" }"#, "name = 'db'"),
            (r#"{ name = "db" } && { span.x > 1 }"#, "name = 'db'"),
            (r#"{ name = "a" } || { name = "b" }"#, "(name = 'a' OR name = 'b')"),
            (r#"{ name = "a" } || { }"#, ""),
            (r#"{ name = "a" } >> { status = error }"#, "name = 'a'"),
            (r#"{ status = error } > { name = "b" }"#, "name = 'b'"),
            // Negated structure: the results are right-hand spans.
            (r#"{ } !< { resource.service.name = "foo" }"#, "service_name = 'foo'"),
            (r#"{ name = "a" } !> { }"#, ""),
            (r#"{ name = "a" } &>> { status = error }"#, "name = 'a'"),
            // Later filter stages narrow the spans of earlier ones.
            (
                r#"{ status = error } | by(resource.service.name) | { name = "x" }"#,
                "(status_code = 'error' AND name = 'x')",
            ),
            (r#"{ status = error } | count() > 1"#, "status_code = 'error'"),
            (
                r#"{ span.a = "1" } | { span.b = "2" } && { span.c = "3" }"#,
                "(attributes['a'] = '1' AND (attributes['b'] = '2' OR attributes['c'] = '3'))",
            ),
            (r#"{ name = "a" } | rate() by (resource.service.name)"#, "name = 'a'"),
        ];
        for (q, want) in cases {
            let want = if want.is_empty() { None } else { Some(want.to_string()) };
            assert_eq!(sql(q), want, "{q}");
        }
    }
}
