//! The TraceQL syntax tree, and its printing back to query text.
//!
//! A query is a pipeline of stages over spansets, optionally ended by a metrics stage and a
//! hints clause. `Display` prints every node so that parsing the text gives the same tree
//! (sub-expressions are parenthesised rather than relying on precedence), which is what the
//! round-trip tests check; the printing is in `ast/display.rs`.

use regex::Regex;

use super::super::model::{SpanKind, SpanStatus};

/// A whole query: `pipeline [| metrics] [with(hints)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub pipeline: Pipeline,
    pub metrics: Option<Metrics>,
    pub hints: Vec<Hint>,
}

/// The names of the span and resource attributes a query's conditions read, in first-use
/// order without repeats (`span.http.method` and `.http.method` are both `http.method`).
/// Tempo shows these on each matched span of a search result.
pub fn attribute_names(query: &Query) -> Vec<String> {
    fn walk(expr: &FieldExpr, names: &mut Vec<String>) {
        match expr {
            FieldExpr::Attribute(Attribute {
                scope: AttributeScope::Unscoped | AttributeScope::Span | AttributeScope::Resource,
                name,
            }) => {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            FieldExpr::Literal(_) | FieldExpr::Intrinsic(_) | FieldExpr::Attribute(_) => {}
            FieldExpr::Unary { expr, .. } => walk(expr, names),
            FieldExpr::Binary { lhs, rhs, .. } => {
                walk(lhs, names);
                walk(rhs, names);
            }
            FieldExpr::Match { lhs, .. } => walk(lhs, names),
        }
    }
    fn spanset(expr: &SpansetExpr, names: &mut Vec<String>) {
        match expr {
            SpansetExpr::Filter(filter) => walk(filter, names),
            SpansetExpr::Op { lhs, rhs, .. } => {
                spanset(lhs, names);
                spanset(rhs, names);
            }
            SpansetExpr::Pipeline(inner) => pipeline(inner, names),
        }
    }
    fn pipeline(pipeline: &Pipeline, names: &mut Vec<String>) {
        for stage in &pipeline.stages {
            if let Stage::Spanset(expr) = stage {
                spanset(expr, names);
            }
        }
    }
    let mut names = Vec::new();
    pipeline(&query.pipeline, &mut names);
    names
}

/// Stages separated by `|`; each turns the spansets of one trace into new spansets.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// A spanset expression; as a later stage it filters the spans of each spanset.
    Spanset(SpansetExpr),
    /// `count() > 2`, `avg(duration) > 1s`: keeps the spansets whose aggregate compares true.
    ScalarFilter(ScalarFilter),
    /// `by(expr)`: splits each spanset by the value of `expr`.
    By(FieldExpr),
    /// `select(a, b)`: records fields of each span.
    Select(Vec<Field>),
    /// `coalesce()`: merges all spansets into one.
    Coalesce,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    /// `{ expr }`; `{}` is a filter on `true`.
    Filter(FieldExpr),
    Op {
        op: SpansetOp,
        lhs: Box<SpansetExpr>,
        rhs: Box<SpansetExpr>,
    },
    /// A parenthesised pipeline used as an operand, `({a} | by(x)) && {b}`.
    Pipeline(Pipeline),
}

/// Operators between spansets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpansetOp {
    And,
    Or,
    Child,
    Parent,
    Descendant,
    Ancestor,
    Sibling,
    NotChild,
    NotParent,
    NotDescendant,
    NotAncestor,
    NotSibling,
    UnionChild,
    UnionParent,
    UnionDescendant,
    UnionAncestor,
    UnionSibling,
}

/// The tree relation a structural operator tests: right-hand span `r` relative to left-hand span `l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `r`'s parent is `l`.
    Child,
    /// `r` is `l`'s parent.
    Parent,
    /// `l` is above `r`.
    Descendant,
    /// `r` is above `l`.
    Ancestor,
    /// `r` and `l` share a parent and are different spans.
    Sibling,
}

impl Relation {
    /// The relation seen from the other side, for the union operators.
    pub fn converse(self) -> Relation {
        match self {
            Relation::Child => Relation::Parent,
            Relation::Parent => Relation::Child,
            Relation::Descendant => Relation::Ancestor,
            Relation::Ancestor => Relation::Descendant,
            Relation::Sibling => Relation::Sibling,
        }
    }
}

/// How a structural operator uses its relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationMode {
    /// Right-hand spans that have the relation to some left-hand span.
    Plain,
    /// Right-hand spans that have it to none.
    Not,
    /// Spans of both sides that take part in it.
    Union,
}

impl SpansetOp {
    pub fn symbol(self) -> &'static str {
        match self {
            SpansetOp::And => "&&",
            SpansetOp::Or => "||",
            SpansetOp::Child => ">",
            SpansetOp::Parent => "<",
            SpansetOp::Descendant => ">>",
            SpansetOp::Ancestor => "<<",
            SpansetOp::Sibling => "~",
            SpansetOp::NotChild => "!>",
            SpansetOp::NotParent => "!<",
            SpansetOp::NotDescendant => "!>>",
            SpansetOp::NotAncestor => "!<<",
            SpansetOp::NotSibling => "!~",
            SpansetOp::UnionChild => "&>",
            SpansetOp::UnionParent => "&<",
            SpansetOp::UnionDescendant => "&>>",
            SpansetOp::UnionAncestor => "&<<",
            SpansetOp::UnionSibling => "&~",
        }
    }

    /// The relation and mode of a structural operator; `None` for `&&` and `||`.
    pub fn relation(self) -> Option<(Relation, RelationMode)> {
        use Relation as R;
        use RelationMode as M;
        Some(match self {
            SpansetOp::And | SpansetOp::Or => return None,
            SpansetOp::Child => (R::Child, M::Plain),
            SpansetOp::Parent => (R::Parent, M::Plain),
            SpansetOp::Descendant => (R::Descendant, M::Plain),
            SpansetOp::Ancestor => (R::Ancestor, M::Plain),
            SpansetOp::Sibling => (R::Sibling, M::Plain),
            SpansetOp::NotChild => (R::Child, M::Not),
            SpansetOp::NotParent => (R::Parent, M::Not),
            SpansetOp::NotDescendant => (R::Descendant, M::Not),
            SpansetOp::NotAncestor => (R::Ancestor, M::Not),
            SpansetOp::NotSibling => (R::Sibling, M::Not),
            SpansetOp::UnionChild => (R::Child, M::Union),
            SpansetOp::UnionParent => (R::Parent, M::Union),
            SpansetOp::UnionDescendant => (R::Descendant, M::Union),
            SpansetOp::UnionAncestor => (R::Ancestor, M::Union),
            SpansetOp::UnionSibling => (R::Sibling, M::Union),
        })
    }
}

/// An expression evaluated on one span.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    Literal(Literal),
    Intrinsic(Intrinsic),
    Attribute(Attribute),
    Unary {
        op: UnaryOp,
        expr: Box<FieldExpr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<FieldExpr>,
        rhs: Box<FieldExpr>,
    },
    /// `lhs =~ "re"` or, negated, `lhs !~ "re"`; the pattern is anchored at both ends.
    Match {
        lhs: Box<FieldExpr>,
        negated: bool,
        pattern: Pattern,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
    /// `x != nil`
    Exists,
    /// `x = nil`
    NotExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    And,
    Or,
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
            BinaryOp::Eq => "=",
            BinaryOp::Neq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Lte => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Gte => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Pow => "^",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Neq | BinaryOp::Lt | BinaryOp::Lte | BinaryOp::Gt | BinaryOp::Gte)
    }

    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }

    pub fn is_arithmetic(self) -> bool {
        !self.is_comparison() && !self.is_logical()
    }

    /// The comparison with its operands swapped: `5 < x` is `x > 5`.
    pub fn flipped(self) -> BinaryOp {
        match self {
            BinaryOp::Lt => BinaryOp::Gt,
            BinaryOp::Lte => BinaryOp::Gte,
            BinaryOp::Gt => BinaryOp::Lt,
            BinaryOp::Gte => BinaryOp::Lte,
            other => other,
        }
    }
}

/// A literal written in a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    Status(SpanStatus),
    Kind(SpanKind),
}

/// A span's built-in field. `span:name` and `name` are one intrinsic, printed in one form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    Name,
    Status,
    Kind,
    Duration,
    StatusMessage,
    ChildCount,
    SpanId,
    ParentId,
    RootName,
    RootServiceName,
    TraceDuration,
    TraceId,
    NestedSetLeft,
    NestedSetRight,
    NestedSetParent,
    EventName,
    EventTimeSinceStart,
    LinkSpanId,
    LinkTraceId,
    InstrumentationName,
    InstrumentationVersion,
}

impl Intrinsic {
    /// The name Display prints (Tempo's own spelling of each).
    pub fn as_str(self) -> &'static str {
        match self {
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::Kind => "kind",
            Intrinsic::Duration => "duration",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::ChildCount => "span:childCount",
            Intrinsic::SpanId => "span:id",
            Intrinsic::ParentId => "span:parentID",
            Intrinsic::RootName => "rootName",
            Intrinsic::RootServiceName => "rootServiceName",
            Intrinsic::TraceDuration => "traceDuration",
            Intrinsic::TraceId => "trace:id",
            Intrinsic::NestedSetLeft => "nestedSetLeft",
            Intrinsic::NestedSetRight => "nestedSetRight",
            Intrinsic::NestedSetParent => "nestedSetParent",
            Intrinsic::EventName => "event:name",
            Intrinsic::EventTimeSinceStart => "event:timeSinceStart",
            Intrinsic::LinkSpanId => "link:spanID",
            Intrinsic::LinkTraceId => "link:traceID",
            Intrinsic::InstrumentationName => "instrumentation:name",
            Intrinsic::InstrumentationVersion => "instrumentation:version",
        }
    }

    /// Whether the value belongs to the trace rather than the span.
    pub fn is_trace_level(self) -> bool {
        matches!(self, Intrinsic::RootName | Intrinsic::RootServiceName | Intrinsic::TraceDuration | Intrinsic::TraceId)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeScope {
    /// `.x`: span attributes first, then resource attributes.
    Unscoped,
    Span,
    Resource,
    Event,
    Link,
    Instrumentation,
}

impl AttributeScope {
    fn prefix(self) -> &'static str {
        match self {
            AttributeScope::Unscoped => ".",
            AttributeScope::Span => "span.",
            AttributeScope::Resource => "resource.",
            AttributeScope::Event => "event.",
            AttributeScope::Link => "link.",
            AttributeScope::Instrumentation => "instrumentation.",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    pub scope: AttributeScope,
    pub name: String,
}

/// What `select()`, metrics `by` and metrics functions name: an intrinsic or an attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Intrinsic(Intrinsic),
    Attribute(Attribute),
}

impl Field {
    pub fn to_expr(&self) -> FieldExpr {
        match self {
            Field::Intrinsic(i) => FieldExpr::Intrinsic(*i),
            Field::Attribute(a) => FieldExpr::Attribute(a.clone()),
        }
    }
}

/// A compiled regex with the text it came from; two patterns are equal when their texts are.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends, as Tempo does (`"foo"` matches only "foo").
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$")).size_limit(1 << 22).build()?;
        Ok(Pattern { source: source.to_string(), regex })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

/// `lhs op rhs` with at least one aggregate, comparing a value computed per spanset.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFilter {
    pub op: BinaryOp,
    pub lhs: ScalarExpr,
    pub rhs: ScalarExpr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScalarExpr {
    Aggregate(Aggregate),
    Literal(Literal),
    Binary { op: BinaryOp, lhs: Box<ScalarExpr>, rhs: Box<ScalarExpr> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub op: AggregateOp,
    /// `None` only for `count()`.
    pub field: Option<FieldExpr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateOp {
    Count,
    Avg,
    Min,
    Max,
    Sum,
}

/// `| rate() by (a, b) | topk(5)`: parsed here, evaluated by the metrics module.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub function: MetricsFunction,
    pub by: Vec<Field>,
    pub second_stages: Vec<SecondStage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    Rate,
    CountOverTime,
    MinOverTime(Field),
    MaxOverTime(Field),
    AvgOverTime(Field),
    SumOverTime(Field),
    QuantileOverTime(Field, Vec<f64>),
    HistogramOverTime(Field),
    /// `compare({filter}, top_n, start, end)`; Tempo's defaults are 10, 0, 0.
    Compare {
        filter: FieldExpr,
        top_n: i64,
        start: i64,
        end: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SecondStage {
    TopK(i64),
    BottomK(i64),
    /// `> 10` after a metrics function: keeps the points that compare true. A duration
    /// literal is held in seconds (`> 100ms` is `> 0.1`), as Tempo holds it.
    Filter(BinaryOp, f64),
}

/// One `key=value` of `with(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub name: String,
    pub value: Literal,
}

mod display;
