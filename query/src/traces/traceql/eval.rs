//! Evaluates a parsed TraceQL query over one trace in memory, with Tempo's semantics.
//!
//! Each pipeline stage maps the trace's spansets to new ones; the first stage sees one
//! spanset holding every span. Attribute values are text in the model and take the type of
//! what they are compared with (see the module documentation in `mod.rs`). Nothing here
//! panics on any query or trace: division by zero, overflow and type mismatches yield nil,
//! and a comparison with nil is false.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use super::ast::*;
use super::value::Value;
use crate::traces::model::{Event, Link, Trace};

mod values;

use values::{Val, arith, as_f64, compare, json_val, literal_val, parse_number, regex_match, to_bool, to_value, unary};
pub(crate) use values::{fold_binary, fold_unary};

/// One result of a query: a set of spans of the trace and what the pipeline recorded on it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSet {
    /// Indices into `trace.spans`, ascending.
    pub spans: Vec<usize>,
    /// Spanset-level values: `("by(resource.service.name)", Str)`, `("count()", Int)`, …
    pub attributes: Vec<(String, Value)>,
    /// Per span (by index, ascending) the `select()`ed fields it has.
    pub selected: Vec<(usize, Vec<(String, Value)>)>,
}

/// Whether the query ends in a metrics stage (`| rate()` …), which `evaluate` does not run.
pub fn is_metrics(query: &Query) -> bool {
    query.metrics.is_some()
}

/// The spanset pipeline of a query; for a metrics query, the part that selects its spans.
pub fn spanset_part(query: &Query) -> &Pipeline {
    &query.pipeline
}

/// The spansets `query` yields for `trace`; empty for metrics queries (evaluate their
/// `spanset_part` with [`evaluate_pipeline`] instead).
pub fn evaluate(query: &Query, trace: &Trace) -> Vec<SpanSet> {
    if is_metrics(query) {
        return Vec::new();
    }
    evaluate_pipeline(&query.pipeline, trace)
}

/// The spansets a pipeline yields for `trace`.
pub fn evaluate_pipeline(pipeline: &Pipeline, trace: &Trace) -> Vec<SpanSet> {
    if trace.spans.is_empty() {
        return Vec::new();
    }
    let cx = Ctx { trace, nested: OnceCell::new() };
    let all = Set { spans: (0..trace.spans.len()).collect(), ..Set::default() };
    run_pipeline(&cx, pipeline, vec![all])
        .into_iter()
        .filter(|s| !s.spans.is_empty())
        .map(|s| SpanSet { spans: s.spans, attributes: s.attributes, selected: s.selected.into_iter().collect() })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Field expressions on one span
// ---------------------------------------------------------------------------------------

struct Ctx<'a> {
    trace: &'a Trace,
    nested: OnceCell<NestedSets>,
}

/// The span an expression is evaluated on, and the event and link that `event.`/`link.`
/// fields read.
#[derive(Clone, Copy)]
struct At<'a> {
    span: usize,
    event: Option<&'a Event>,
    link: Option<&'a Link>,
}

/// Nested-set numbers as Tempo stores them: a DFS from each parentless span (by start time)
/// numbers entering and leaving each span; `parent` is the parent's `left`, -1 for a root
/// (no parent id), 0 for a span whose parent has not arrived.
struct NestedSets {
    left: Vec<i64>,
    right: Vec<i64>,
    parent: Vec<i64>,
}

fn nested_sets(trace: &Trace) -> NestedSets {
    let n = trace.spans.len();
    let (mut left, mut right) = (vec![0i64; n], vec![0i64; n]);
    let mut counter = 1;
    for start in 0..n {
        if trace.parent(start).is_some() {
            continue;
        }
        // Iterative, so that a deep trace cannot overflow the stack.
        let mut stack = vec![(start, 0usize)];
        left[start] = counter;
        counter += 1;
        while let Some((node, next_child)) = stack.last_mut() {
            let node = *node;
            if let Some(&child) = trace.children(node).get(*next_child) {
                *next_child += 1;
                left[child] = counter;
                counter += 1;
                stack.push((child, 0));
            } else {
                right[node] = counter;
                counter += 1;
                stack.pop();
            }
        }
    }
    let parent = (0..n)
        .map(|i| match trace.parent(i) {
            Some(p) => left[p],
            None if trace.spans[i].parent_span_id.is_none() => -1,
            None => 0,
        })
        .collect();
    NestedSets { left, right, parent }
}

fn intrinsic<'a>(cx: &Ctx<'a>, at: At<'a>, i: Intrinsic) -> Val<'a> {
    let trace = cx.trace;
    let span = &trace.spans[at.span];
    let text = |s: &'a str| Val::Str(Cow::Borrowed(s));
    let nested = || cx.nested.get_or_init(|| nested_sets(trace));
    match i {
        Intrinsic::Name => text(&span.name),
        Intrinsic::Status => Val::Status(span.status),
        Intrinsic::Kind => Val::Kind(span.kind),
        Intrinsic::Duration => Val::Duration(span.duration_ns()),
        Intrinsic::StatusMessage => text(span.status_message.as_deref().unwrap_or("")),
        Intrinsic::ChildCount => Val::Int(trace.children(at.span).len() as i64),
        Intrinsic::SpanId => text(&span.span_id),
        Intrinsic::ParentId => text(span.parent_span_id.as_deref().unwrap_or("")),
        Intrinsic::RootName => trace.root_name().map_or(Val::Nil, text),
        Intrinsic::RootServiceName => trace.root_service_name().map_or(Val::Nil, text),
        Intrinsic::TraceDuration => Val::Duration(trace.duration_ns()),
        Intrinsic::TraceId => text(&trace.trace_id),
        Intrinsic::NestedSetLeft => Val::Int(nested().left[at.span]),
        Intrinsic::NestedSetRight => Val::Int(nested().right[at.span]),
        Intrinsic::NestedSetParent => Val::Int(nested().parent[at.span]),
        Intrinsic::EventName => at.event.map_or(Val::Nil, |e| text(&e.name)),
        Intrinsic::EventTimeSinceStart => {
            at.event.map_or(Val::Nil, |e| Val::Duration(e.time_ns.saturating_sub(span.start_ns)))
        }
        Intrinsic::LinkSpanId => at.link.map_or(Val::Nil, |l| text(&l.span_id)),
        Intrinsic::LinkTraceId => at.link.map_or(Val::Nil, |l| text(&l.trace_id)),
        Intrinsic::InstrumentationName => span.scope_name.as_deref().map_or(Val::Nil, text),
        Intrinsic::InstrumentationVersion => span.scope_version.as_deref().map_or(Val::Nil, text),
    }
}

fn attribute<'a>(cx: &Ctx<'a>, at: At<'a>, a: &Attribute) -> Val<'a> {
    let span = &cx.trace.spans[at.span];
    let name = a.name.as_str();
    let text = |v: Option<&'a String>| v.map_or(Val::Nil, |s| Val::Text(s));
    match a.scope {
        AttributeScope::Span => text(span.attributes.get(name)),
        AttributeScope::Resource => text(span.resource.get(name)),
        AttributeScope::Unscoped => text(span.attributes.get(name).or_else(|| span.resource.get(name))),
        AttributeScope::Event => at.event.and_then(|e| e.attributes.get(name)).map_or(Val::Nil, json_val),
        AttributeScope::Link => at.link.and_then(|l| l.attributes.get(name)).map_or(Val::Nil, json_val),
        // The model keeps the scope's name and version, and no other scope attributes.
        AttributeScope::Instrumentation => match name {
            "name" => span.scope_name.as_deref().map_or(Val::Nil, Val::Text),
            "version" => span.scope_version.as_deref().map_or(Val::Nil, Val::Text),
            _ => Val::Nil,
        },
    }
}

fn is_trace_id(e: &FieldExpr) -> bool {
    matches!(e, FieldExpr::Intrinsic(Intrinsic::TraceId))
}

fn eval<'a>(cx: &Ctx<'a>, at: At<'a>, e: &'a FieldExpr) -> Val<'a> {
    match e {
        FieldExpr::Literal(l) => literal_val(l),
        FieldExpr::Intrinsic(i) => intrinsic(cx, at, *i),
        FieldExpr::Attribute(a) => attribute(cx, at, a),
        FieldExpr::Unary { op, expr } => unary(*op, eval(cx, at, expr)),
        FieldExpr::Binary { op: BinaryOp::And, lhs, rhs } => {
            Val::Bool(to_bool(&eval(cx, at, lhs)) == Some(true) && to_bool(&eval(cx, at, rhs)) == Some(true))
        }
        FieldExpr::Binary { op: BinaryOp::Or, lhs, rhs } => {
            Val::Bool(to_bool(&eval(cx, at, lhs)) == Some(true) || to_bool(&eval(cx, at, rhs)) == Some(true))
        }
        FieldExpr::Binary { op, lhs, rhs } if op.is_comparison() => {
            let (l, r) = (eval(cx, at, lhs), eval(cx, at, rhs));
            // Tempo compares trace ids without their leading zeros.
            if matches!(op, BinaryOp::Eq | BinaryOp::Neq)
                && (is_trace_id(lhs) || is_trace_id(rhs))
                && let (Val::Str(a), Val::Str(b)) = (&l, &r)
            {
                return Val::Bool((a.trim_start_matches('0') == b.trim_start_matches('0')) == (*op == BinaryOp::Eq));
            }
            Val::Bool(compare(*op, &l, &r))
        }
        FieldExpr::Binary { op, lhs, rhs } => arith(*op, eval(cx, at, lhs), eval(cx, at, rhs)),
        FieldExpr::Match { lhs, negated, pattern } => Val::Bool(regex_match(&eval(cx, at, lhs), pattern, *negated)),
    }
}

/// Whether `e` reads events and links, which makes it range over them.
fn reads_events_links(e: &FieldExpr) -> (bool, bool) {
    match e {
        FieldExpr::Literal(_) => (false, false),
        FieldExpr::Intrinsic(Intrinsic::EventName | Intrinsic::EventTimeSinceStart) => (true, false),
        FieldExpr::Intrinsic(Intrinsic::LinkSpanId | Intrinsic::LinkTraceId) => (false, true),
        FieldExpr::Intrinsic(_) => (false, false),
        FieldExpr::Attribute(a) => (a.scope == AttributeScope::Event, a.scope == AttributeScope::Link),
        FieldExpr::Unary { expr, .. } => reads_events_links(expr),
        FieldExpr::Match { lhs, .. } => reads_events_links(lhs),
        FieldExpr::Binary { lhs, rhs, .. } => {
            let (a, b) = (reads_events_links(lhs), reads_events_links(rhs));
            (a.0 || b.0, a.1 || b.1)
        }
    }
}

/// Whether the filter `e` holds on span `span`: for some one of its events (and links) if
/// it reads them, so `{ event:name = "x" && event.a = 1 }` needs both on one event.
fn holds<'a>(cx: &Ctx<'a>, e: &'a FieldExpr, span: usize, reads: (bool, bool)) -> bool {
    let s = &cx.trace.spans[span];
    let truthy = |event, link| to_bool(&eval(cx, At { span, event, link }, e)) == Some(true);
    // Without events (links) to range over, the expression is evaluated once with none.
    let over_links = |event: Option<&'a Event>| {
        if reads.1 && !s.links.is_empty() {
            s.links.iter().any(|link| truthy(event, Some(link)))
        } else {
            truthy(event, None)
        }
    };
    if reads.0 && !s.events.is_empty() {
        s.events.iter().any(|event| over_links(Some(event)))
    } else {
        over_links(None)
    }
}

/// The value of `e` on a span, reading its first event and link: for by(), select() and
/// aggregates, which need one value per span.
fn value_of<'a>(cx: &Ctx<'a>, e: &'a FieldExpr, span: usize) -> Val<'a> {
    let s = &cx.trace.spans[span];
    eval(cx, At { span, event: s.events.first(), link: s.links.first() }, e)
}

/// Reads fields off the spans of one trace as `by()` and `select()` do (first event and
/// link; attribute text as strings), for the metrics evaluator. One reader per trace shares
/// the nested-set numbers between spans.
pub(crate) struct FieldReader<'a> {
    cx: Ctx<'a>,
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(trace: &'a Trace) -> FieldReader<'a> {
        FieldReader { cx: Ctx { trace, nested: OnceCell::new() } }
    }

    /// The value of `e` on span `span` (an index into `trace.spans`), as `by()` records it.
    pub(crate) fn value(&self, span: usize, e: &FieldExpr) -> Value {
        to_value(value_of(&self.cx, e, span))
    }

    /// The value of `e` on span `span` as a number, as aggregates read it: an int, float or
    /// duration, with attribute text read as a decimal number; `None` for anything else.
    pub(crate) fn number(&self, span: usize, e: &FieldExpr) -> Option<Value> {
        match value_of(&self.cx, e, span) {
            Val::Text(t) => parse_number(t).map(to_value),
            v @ (Val::Int(_) | Val::Float(_) | Val::Duration(_)) => Some(to_value(v)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Spansets and pipelines
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Set {
    /// Ascending, no duplicates.
    spans: Vec<usize>,
    attributes: Vec<(String, Value)>,
    selected: BTreeMap<usize, Vec<(String, Value)>>,
}

impl Set {
    /// This spanset's attributes and selections over `spans` (ascending, a subset).
    fn with_spans(&self, spans: Vec<usize>) -> Set {
        let selected = self
            .selected
            .iter()
            .filter(|(k, _)| spans.binary_search(k).is_ok())
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        Set { spans, attributes: self.attributes.clone(), selected }
    }

    fn set_attribute(&mut self, name: String, value: Value) {
        set_named(&mut self.attributes, name, value);
    }
}

fn set_named(list: &mut Vec<(String, Value)>, name: String, value: Value) {
    match list.iter_mut().find(|(n, _)| *n == name) {
        Some(entry) => entry.1 = value,
        None => list.push((name, value)),
    }
}

/// Adds `from`'s selections of the spans in `keep` to `into`.
fn merge_selected(into: &mut BTreeMap<usize, Vec<(String, Value)>>, from: &Set, keep: &[usize]) {
    for (span, fields) in &from.selected {
        if keep.binary_search(span).is_ok() {
            let entry = into.entry(*span).or_default();
            for (name, value) in fields {
                set_named(entry, name.clone(), value.clone());
            }
        }
    }
}

fn union_of(sets: &[Set]) -> Vec<usize> {
    let mut spans: Vec<usize> = sets.iter().flat_map(|s| s.spans.iter().copied()).collect();
    spans.sort_unstable();
    spans.dedup();
    spans
}

fn run_pipeline<'a>(cx: &Ctx<'a>, pipeline: &'a Pipeline, mut sets: Vec<Set>) -> Vec<Set> {
    for stage in &pipeline.stages {
        if sets.is_empty() {
            break;
        }
        sets = match stage {
            Stage::Spanset(e) => sets.iter().flat_map(|s| run_spanset(cx, e, s)).collect(),
            Stage::By(e) => sets.iter().flat_map(|s| group(cx, e, s)).collect(),
            Stage::Select(fields) => {
                let exprs: Vec<(String, FieldExpr)> = fields.iter().map(|f| (f.to_string(), f.to_expr())).collect();
                for set in &mut sets {
                    select(cx, &exprs, set);
                }
                sets
            }
            Stage::Coalesce => {
                let spans = union_of(&sets);
                let mut merged = Set { spans, ..Set::default() };
                for set in &sets {
                    merge_selected(&mut merged.selected, set, &merged.spans);
                }
                vec![merged]
            }
            Stage::ScalarFilter(f) => sets.into_iter().filter_map(|s| scalar_filter(cx, f, s)).collect(),
        };
    }
    sets
}

fn run_spanset<'a>(cx: &Ctx<'a>, e: &'a SpansetExpr, input: &Set) -> Vec<Set> {
    match e {
        SpansetExpr::Filter(f) => {
            let reads = reads_events_links(f);
            let spans: Vec<usize> = input.spans.iter().copied().filter(|&i| holds(cx, f, i, reads)).collect();
            if spans.is_empty() { Vec::new() } else { vec![input.with_spans(spans)] }
        }
        SpansetExpr::Op { op, lhs, rhs } => {
            let (l, r) = (run_spanset(cx, lhs, input), run_spanset(cx, rhs, input));
            let spans = match op.relation() {
                None => {
                    let wanted = if *op == SpansetOp::And { !l.is_empty() && !r.is_empty() } else { true };
                    if !wanted {
                        return Vec::new();
                    }
                    union_of(&[l.as_slice(), r.as_slice()].concat())
                }
                // Tempo refuses several spansets on one side; they are taken together here.
                Some((relation, mode)) => structural(cx.trace, relation, mode, &union_of(&l), &union_of(&r)),
            };
            if spans.is_empty() {
                return Vec::new();
            }
            let mut out = input.with_spans(spans);
            for set in l.iter().chain(&r) {
                merge_selected(&mut out.selected, set, &out.spans);
            }
            vec![out]
        }
        SpansetExpr::Pipeline(p) => run_pipeline(cx, p, vec![input.clone()]),
    }
}

/// The spans a structural operator yields from left spans `a` and right spans `b`.
fn structural(trace: &Trace, relation: Relation, mode: RelationMode, a: &[usize], b: &[usize]) -> Vec<usize> {
    match mode {
        RelationMode::Plain => related(trace, relation, a, b),
        RelationMode::Not => {
            let matching = related(trace, relation, a, b);
            b.iter().copied().filter(|x| matching.binary_search(x).is_err()).collect()
        }
        RelationMode::Union => {
            let mut spans = related(trace, relation, a, b);
            spans.extend(related(trace, relation.converse(), b, a));
            spans.sort_unstable();
            spans.dedup();
            spans
        }
    }
}

/// The spans of `right` (ascending) that stand in `relation` to some span of `left`. Each
/// relation takes time linear in the trace, however deep it is.
fn related(trace: &Trace, relation: Relation, left: &[usize], right: &[usize]) -> Vec<usize> {
    let n = trace.spans.len();
    let mut in_left = vec![false; n];
    for &i in left {
        in_left[i] = true;
    }
    let keep = |f: &mut dyn FnMut(usize) -> bool| right.iter().copied().filter(|&r| f(r)).collect::<Vec<_>>();
    match relation {
        Relation::Child => keep(&mut |r| trace.parent(r).is_some_and(|p| in_left[p])),
        Relation::Parent => keep(&mut |r| trace.children(r).iter().any(|&c| in_left[c])),
        Relation::Sibling => {
            let mut children_in_left = vec![0usize; n];
            for &l in left {
                if let Some(p) = trace.parent(l) {
                    children_in_left[p] += 1;
                }
            }
            keep(&mut |r| trace.parent(r).is_some_and(|p| children_in_left[p] > usize::from(in_left[r])))
        }
        Relation::Ancestor => {
            // Mark everything above a left span; a walk stops where an earlier one passed.
            let mut above = vec![false; n];
            for &l in left {
                let mut current = trace.parent(l);
                while let Some(p) = current {
                    if above[p] {
                        break;
                    }
                    above[p] = true;
                    current = trace.parent(p);
                }
            }
            keep(&mut |r| above[r])
        }
        Relation::Descendant => {
            // below[i]: 0 unknown, 1 some ancestor of i is a left span, 2 none is.
            let mut below = vec![0u8; n];
            keep(&mut |r| {
                let mut path = Vec::new();
                let mut current = r;
                let mut answer = 2;
                // At most n steps: a cycle of parent ids ends the walk with "none".
                for _ in 0..=n {
                    match trace.parent(current) {
                        None => break,
                        Some(p) if in_left[p] => {
                            answer = 1;
                            break;
                        }
                        Some(p) if below[p] != 0 => {
                            answer = below[p];
                            break;
                        }
                        Some(p) => {
                            path.push(p);
                            current = p;
                        }
                    }
                }
                for p in path {
                    below[p] = answer;
                }
                below[r] = answer;
                answer == 1
            })
        }
    }
}

fn group<'a>(cx: &Ctx<'a>, e: &'a FieldExpr, set: &Set) -> Vec<Set> {
    let name = format!("by({e})");
    let mut groups: Vec<(Value, Vec<usize>)> = Vec::new();
    let mut index: HashMap<(u8, String), usize> = HashMap::new();
    for &span in &set.spans {
        let value = to_value(value_of(cx, e, span));
        let slot = *index.entry(value.key()).or_insert_with(|| {
            groups.push((value, Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(span);
    }
    groups
        .into_iter()
        .map(|(value, spans)| {
            let mut g = set.with_spans(spans);
            g.set_attribute(name.clone(), value);
            g
        })
        .collect()
}

fn select(cx: &Ctx<'_>, exprs: &[(String, FieldExpr)], set: &mut Set) {
    for &span in &set.spans {
        for (name, e) in exprs {
            let value = to_value(value_of(cx, e, span));
            if value != Value::Nil {
                set_named(set.selected.entry(span).or_default(), name.clone(), value);
            }
        }
    }
}

fn scalar_filter<'a>(cx: &Ctx<'a>, f: &'a ScalarFilter, mut set: Set) -> Option<Set> {
    let mut recorded = Vec::new();
    let l = scalar_value(cx, &f.lhs, &set, &mut recorded)?;
    let r = scalar_value(cx, &f.rhs, &set, &mut recorded)?;
    if !compare(f.op, &l, &r) {
        return None;
    }
    for (name, value) in recorded {
        set.set_attribute(name, value);
    }
    Some(set)
}

fn scalar_value<'a>(
    cx: &Ctx<'a>,
    e: &'a ScalarExpr,
    set: &Set,
    recorded: &mut Vec<(String, Value)>,
) -> Option<Val<'a>> {
    match e {
        ScalarExpr::Literal(l) => Some(literal_val(l)),
        ScalarExpr::Aggregate(a) => {
            let v = aggregate(cx, a, set)?;
            recorded.push((a.to_string(), to_value(v.clone())));
            Some(v)
        }
        ScalarExpr::Binary { op, lhs, rhs } => {
            let l = scalar_value(cx, lhs, set, recorded)?;
            let r = scalar_value(cx, rhs, set, recorded)?;
            Some(arith(*op, l, r)).filter(|v| *v != Val::Nil)
        }
    }
}

/// An aggregate over a spanset; `None` (the spanset is dropped, as in Tempo) when no span
/// has a numeric value for it.
fn aggregate<'a>(cx: &Ctx<'a>, a: &'a Aggregate, set: &Set) -> Option<Val<'a>> {
    let Some(field) = &a.field else { return Some(Val::Int(set.spans.len() as i64)) };
    let values: Vec<Val<'static>> = set
        .spans
        .iter()
        .filter_map(|&i| match value_of(cx, field, i) {
            Val::Int(n) => Some(Val::Int(n)),
            Val::Float(x) => Some(Val::Float(x)),
            Val::Duration(ns) => Some(Val::Duration(ns)),
            Val::Text(t) => parse_number(t),
            _ => None,
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    let all_ints = values.iter().all(|v| matches!(v, Val::Int(_)));
    let all_durations = values.iter().all(|v| matches!(v, Val::Duration(_)));
    let float_sum = || values.iter().filter_map(as_f64).sum::<f64>();
    let int_sum = || {
        values
            .iter()
            .try_fold(0i64, |acc, v| if let Val::Int(n) | Val::Duration(n) = v { acc.checked_add(*n) } else { None })
    };
    let count = values.len() as f64;
    Some(match a.op {
        AggregateOp::Count => Val::Int(set.spans.len() as i64),
        AggregateOp::Sum if all_ints => int_sum().map_or_else(|| Val::Float(float_sum()), Val::Int),
        AggregateOp::Sum if all_durations => int_sum().map_or_else(|| Val::Float(float_sum()), Val::Duration),
        AggregateOp::Sum => Val::Float(float_sum()),
        AggregateOp::Avg if all_durations => {
            let total: i128 =
                values.iter().filter_map(|v| if let Val::Duration(n) = v { Some(i128::from(*n)) } else { None }).sum();
            Val::Duration(i64::try_from(total / values.len() as i128).unwrap_or(i64::MAX))
        }
        AggregateOp::Avg => Val::Float(float_sum() / count),
        AggregateOp::Min | AggregateOp::Max => {
            let better = if a.op == AggregateOp::Min { BinaryOp::Lt } else { BinaryOp::Gt };
            let mut best = values[0].clone();
            for v in &values[1..] {
                if compare(better, v, &best) {
                    best = v.clone();
                }
            }
            best
        }
    })
}

#[cfg(test)]
mod tests;
