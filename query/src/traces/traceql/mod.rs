//! TraceQL, Grafana Tempo's trace query language: parser, in-memory evaluator over one
//! [`Trace`](super::model::Trace), and a SQL prefilter to find candidate traces.
//!
//! # Supported
//! - Spanset filters `{ expr }` (`{}` matches every span) combined with `&&`, `||`, the
//!   structural operators `>` `<` `>>` `<<` `~`, their negations `!>` `!<` `!>>` `!<<` `!~`,
//!   their union forms `&>` `&<` `&>>` `&<<` `&~`, and parentheses, also around pipelines.
//! - Pipelines: `| count() > 2`, `avg|min|max|sum(expr) <op> value` (arithmetic over
//!   aggregates allowed), `by(expr)`, `select(fields)`, `coalesce()`, and spanset filters as
//!   later stages (`{a} | by(x) | {b}`), which filter the spans of each spanset.
//! - Field expressions: intrinsics (`name`, `status`, `kind`, `duration`, `statusMessage`,
//!   `childCount`, `rootName`, `rootServiceName`, `traceDuration`, `nestedSetLeft|Right|Parent`,
//!   `span:…`, `trace:…`, `event:name|timeSinceStart`, `link:spanID|traceID`,
//!   `instrumentation:name|version`), attributes (`span.x`, `resource.x`, `event.x`, `link.x`,
//!   `instrumentation.x`, unscoped `.x`, quoted `span."a b"`), literals (strings with Go
//!   escapes or backticks, ints, floats, durations in Go or Prometheus form, booleans, status
//!   and kind names, `minInt`/`maxInt`), `= != < <= > >= =~ !~`, `&& || !`, `+ - * / % ^`,
//!   unary minus, `= nil` / `!= nil`. Precedence is that of Tempo's `expr.y`: `&&` and `||`
//!   share one level, left to right.
//! - Metrics stages: `rate`, `count_over_time`, `min|max|avg|sum_over_time`,
//!   `quantile_over_time`, `histogram_over_time`, `compare`, each with `by (…)`, then
//!   `| topk(n)`, `| bottomk(n)` and comparisons; hints `with(key=value, …)` at the end.
//!   All but `compare` are evaluated by [`metrics`] over the spans the pipeline selects.
//!
//! Not supported: metrics math between parenthesised metrics queries, scalar pipelines
//! compared with each other (`({a} | count()) > ({b} | count())`), the `parent` scope and
//! intrinsic (Tempo rejects them too), array literals.
//!
//! # Typing rule
//! Span and resource attributes are stored as text and take the type of what they are
//! compared with: with a string they compare as strings (ordering is byte-wise); with an
//! int or float literal the text is read as a decimal number; with a duration it must be a
//! Go duration (`"1.5s"`); with `true`/`false` it must be exactly that word; a status or kind
//! never matches. Text that does not read as the needed type is a type mismatch, and a
//! mismatched comparison is false under every operator, `!=` included, as in Tempo. A
//! missing attribute is nil: every comparison with it is false except `= nil`; `!~` on nil
//! is false. An attribute standing alone as a condition holds when its text is `true`.
//! Aggregates read attribute text as decimal numbers and skip spans whose text is not one.
//! `instrumentation.name` and `instrumentation.version` are the scope's name and version,
//! as `instrumentation:name`/`:version`; the model keeps no other scope attributes.
//! Event and link attributes keep their JSON types; a filter that reads events (or links)
//! holds on a span when it holds for some one of its events (links). Unscoped `.x` reads the
//! span attribute, or the resource attribute when the span has none. Regexes are anchored
//! at both ends. Arithmetic that overflows or divides by zero yields nil (no match).

pub mod ast;
pub mod eval;
mod lexer;
pub mod metrics;
pub mod parser;
pub mod prefilter;
pub mod value;

pub use ast::{
    Aggregate, AggregateOp, Attribute, AttributeScope, BinaryOp, Field, FieldExpr, Hint, Intrinsic, Literal, Metrics,
    MetricsFunction, Pattern, Pipeline, Query, Relation, RelationMode, ScalarExpr, ScalarFilter, SecondStage,
    SpansetExpr, SpansetOp, Stage, UnaryOp, attribute_names,
};
pub use eval::{SpanSet, evaluate, evaluate_pipeline, is_metrics, spanset_part};
pub use metrics::{
    MAX_POINTS, MetricsError, MetricsEvaluator, MetricsSeries, RangeRequest, query_instant_json, query_range_json,
};
pub use parser::{ParseError, parse};
pub use prefilter::sql_prefilter;
pub use value::{Value, format_duration};
