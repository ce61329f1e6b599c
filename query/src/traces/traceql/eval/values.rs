//! Values during evaluation and the operations on them: comparison with Tempo's rules
//! (nil and mismatched types are never equal, nor unequal), arithmetic that yields nil
//! rather than overflowing or dividing by zero, and the reading of attribute text as the
//! type it is compared with.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value as Json;

use super::super::ast::{BinaryOp, Literal, Pattern, UnaryOp};
use super::super::value::{Value, parse_go_duration};
use crate::traces::model::{SpanKind, SpanStatus};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val<'a> {
    Nil,
    /// A span or resource attribute: text whose type is that of what it meets.
    Text(&'a str),
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Duration(i64),
    Status(SpanStatus),
    Kind(SpanKind),
    /// A JSON array attribute of an event or link.
    List(Vec<Val<'a>>),
}

pub(super) fn literal_val(l: &Literal) -> Val<'_> {
    match l {
        Literal::Str(s) => Val::Str(Cow::Borrowed(s)),
        Literal::Int(n) => Val::Int(*n),
        Literal::Float(x) => Val::Float(*x),
        Literal::Bool(b) => Val::Bool(*b),
        Literal::Duration(ns) => Val::Duration(*ns),
        Literal::Status(s) => Val::Status(*s),
        Literal::Kind(k) => Val::Kind(*k),
    }
}

pub(super) fn val_literal(v: Val<'_>) -> Option<Literal> {
    Some(match v {
        Val::Str(s) => Literal::Str(s.into_owned()),
        Val::Text(s) => Literal::Str(s.to_string()),
        Val::Int(n) => Literal::Int(n),
        Val::Float(x) if x.is_finite() => Literal::Float(x),
        Val::Bool(b) => Literal::Bool(b),
        // i64::MIN nanoseconds has no literal text (its positive half overflows).
        Val::Duration(ns) if ns != i64::MIN => Literal::Duration(ns),
        Val::Status(s) => Literal::Status(s),
        Val::Kind(k) => Literal::Kind(k),
        _ => return None,
    })
}

/// `a op b` on literals, for the parser's constant folding; `None` when it yields nothing.
pub(crate) fn fold_binary(op: BinaryOp, a: &Literal, b: &Literal) -> Option<Literal> {
    let (a, b) = (literal_val(a), literal_val(b));
    val_literal(match op {
        BinaryOp::And => Val::Bool(to_bool(&a) == Some(true) && to_bool(&b) == Some(true)),
        BinaryOp::Or => Val::Bool(to_bool(&a) == Some(true) || to_bool(&b) == Some(true)),
        op if op.is_comparison() => Val::Bool(compare(op, &a, &b)),
        op => arith(op, a, b),
    })
}

pub(crate) fn fold_unary(op: UnaryOp, l: &Literal) -> Option<Literal> {
    val_literal(unary(op, literal_val(l)))
}

pub(super) fn to_value(v: Val<'_>) -> Value {
    match v {
        Val::Nil => Value::Nil,
        Val::Text(s) => Value::Str(s.to_string()),
        Val::Str(s) => Value::Str(s.into_owned()),
        Val::Int(n) => Value::Int(n),
        Val::Float(x) => Value::Float(x),
        Val::Bool(b) => Value::Bool(b),
        Val::Duration(ns) => Value::Duration(ns),
        Val::Status(s) => Value::Status(s),
        Val::Kind(k) => Value::Kind(k),
        Val::List(items) => Value::Str(format!(
            "[{}]",
            items.into_iter().map(|v| to_value(v).to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

pub(super) fn json_val(j: &Json) -> Val<'_> {
    match j {
        Json::String(s) => Val::Str(Cow::Borrowed(s)),
        Json::Bool(b) => Val::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => n.as_f64().map_or(Val::Nil, Val::Float),
        },
        Json::Array(items) => Val::List(items.iter().map(json_val).collect()),
        Json::Null | Json::Object(_) => Val::Nil,
    }
}

pub(super) fn to_bool(v: &Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(*b),
        Val::Text("true") => Some(true),
        Val::Text("false") => Some(false),
        _ => None,
    }
}

/// A decimal number in plain notation (`12`, `-1.5`, `2e3`); no "inf", "NaN" or hex, which
/// Rust's parsers would take but which are not numbers an exporter writes.
pub(super) fn parse_number(text: &str) -> Option<Val<'static>> {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let mantissa_end = body.find(['e', 'E']).unwrap_or(body.len());
    let (mantissa, exponent) = body.split_at(mantissa_end);
    let mantissa_ok = mantissa.chars().any(|c| c.is_ascii_digit())
        && mantissa.chars().all(|c| c.is_ascii_digit() || c == '.')
        && mantissa.matches('.').count() <= 1;
    let exponent_ok = exponent.is_empty() || {
        let digits = exponent[1..].strip_prefix(['+', '-']).unwrap_or(&exponent[1..]);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    if let Ok(n) = text.parse::<i64>() {
        return Some(Val::Int(n));
    }
    text.parse::<f64>().ok().filter(|x| x.is_finite()).map(Val::Float)
}

/// Attribute text read as the type of `like`; `None` is a type mismatch.
pub(super) fn coerce<'a>(text: &'a str, like: &Val<'_>) -> Option<Val<'a>> {
    match like {
        Val::Int(_) | Val::Float(_) => parse_number(text),
        Val::Duration(_) => parse_go_duration(text).map(Val::Duration),
        Val::Bool(_) => match text {
            "true" => Some(Val::Bool(true)),
            "false" => Some(Val::Bool(false)),
            _ => None,
        },
        Val::Str(_) | Val::Text(_) => Some(Val::Text(text)),
        _ => None,
    }
}

pub(super) fn as_f64(v: &Val<'_>) -> Option<f64> {
    match v {
        Val::Int(n) => Some(*n as f64),
        Val::Float(x) => Some(*x),
        Val::Duration(ns) => Some(*ns as f64),
        _ => None,
    }
}

pub(super) fn ordering_holds(op: BinaryOp, ord: Option<Ordering>) -> bool {
    match ord {
        Some(o) => match op {
            BinaryOp::Eq => o == Ordering::Equal,
            BinaryOp::Neq => o != Ordering::Equal,
            BinaryOp::Lt => o == Ordering::Less,
            BinaryOp::Lte => o != Ordering::Greater,
            BinaryOp::Gt => o == Ordering::Greater,
            BinaryOp::Gte => o != Ordering::Less,
            _ => false,
        },
        None => false,
    }
}

/// `l op r` for a comparison operator. Nil and mismatched types compare false under every
/// operator, `!=` included; lists match when any element does (`!=`: when none is equal).
pub(super) fn compare(op: BinaryOp, l: &Val<'_>, r: &Val<'_>) -> bool {
    use Val::*;
    match (l, r) {
        (Nil, _) | (_, Nil) => false,
        (List(items), other) => {
            if op == BinaryOp::Neq {
                items.iter().all(|x| compare(op, x, other))
            } else {
                items.iter().any(|x| compare(op, x, other))
            }
        }
        (other, List(items)) => {
            if op == BinaryOp::Neq {
                items.iter().all(|x| compare(op, other, x))
            } else {
                items.iter().any(|x| compare(op, other, x))
            }
        }
        (Text(a), Text(b)) => ordering_holds(op, Some(a.cmp(b))),
        (Text(a), Str(b)) => ordering_holds(op, Some((*a).cmp(b.as_ref()))),
        (Str(a), Text(b)) => ordering_holds(op, Some(a.as_ref().cmp(*b))),
        (Text(a), other) => coerce(a, other).is_some_and(|v| compare(op, &v, other)),
        (other, Text(b)) => coerce(b, other).is_some_and(|v| compare(op, other, &v)),
        (Str(a), Str(b)) => ordering_holds(op, Some(a.cmp(b))),
        (Int(a) | Duration(a), Int(b) | Duration(b)) => ordering_holds(op, Some(a.cmp(b))),
        (Int(_) | Float(_) | Duration(_), Int(_) | Float(_) | Duration(_)) => {
            ordering_holds(op, as_f64(l).zip(as_f64(r)).and_then(|(a, b)| a.partial_cmp(&b)))
        }
        (Bool(a), Bool(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Neq) => ordering_holds(op, Some(a.cmp(b))),
        (Status(a), Status(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Neq) => ordering_holds(op, Some(a.cmp(b))),
        (Kind(a), Kind(b)) if matches!(op, BinaryOp::Eq | BinaryOp::Neq) => ordering_holds(op, Some(a.cmp(b))),
        _ => false,
    }
}

/// `l op r` for an arithmetic operator; nil when it has no value (mismatch, overflow, /0).
pub(super) fn arith<'a>(op: BinaryOp, l: Val<'a>, r: Val<'a>) -> Val<'a> {
    use Val::*;
    let numeric_like = |text: &'a str, other: &Val<'_>| match other {
        Duration(_) => parse_go_duration(text).map(Duration),
        _ => parse_number(text),
    };
    let (l, r) = match (l, r) {
        (Text(a), Text(b)) => (parse_number(a), parse_number(b)),
        (Text(a), r) => (numeric_like(a, &r), Some(r)),
        (l, Text(b)) => {
            let r = numeric_like(b, &l);
            (Some(l), r)
        }
        (l, r) => (Some(l), Some(r)),
    };
    let (Some(l), Some(r)) = (l, r) else { return Nil };
    let result = match (&l, &r) {
        (Int(a), Int(b)) => int_arith(op, *a, *b),
        (Duration(a), Duration(b)) => match op {
            BinaryOp::Add => a.checked_add(*b).map(Duration),
            BinaryOp::Sub => a.checked_sub(*b).map(Duration),
            BinaryOp::Mod => a.checked_rem(*b).map(Duration),
            _ => None,
        },
        (Duration(a), Int(b)) => match op {
            BinaryOp::Add => a.checked_add(*b).map(Duration),
            BinaryOp::Sub => a.checked_sub(*b).map(Duration),
            BinaryOp::Mul => a.checked_mul(*b).map(Duration),
            BinaryOp::Div => a.checked_div(*b).map(Duration),
            BinaryOp::Mod => a.checked_rem(*b).map(Duration),
            _ => None,
        },
        (Int(a), Duration(b)) => match op {
            BinaryOp::Add => a.checked_add(*b).map(Duration),
            BinaryOp::Mul => a.checked_mul(*b).map(Duration),
            _ => None,
        },
        _ => None,
    };
    if let Some(v) = result {
        return v;
    }
    // Everything else numeric is done in floating point, as Tempo's catch-all does.
    let (Some(a), Some(b)) = (as_f64(&l), as_f64(&r)) else { return Nil };
    if matches!((&l, &r), (Int(_), Int(_))) && !matches!(op, BinaryOp::Pow) {
        // Integer arithmetic that failed above overflowed or divided by zero.
        return Nil;
    }
    let x = match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div if b == 0.0 => return Nil,
        BinaryOp::Div => a / b,
        BinaryOp::Mod if b == 0.0 => return Nil,
        BinaryOp::Mod => a % b,
        BinaryOp::Pow => a.powf(b),
        _ => return Nil,
    };
    if x.is_finite() { Float(x) } else { Nil }
}

pub(super) fn int_arith(op: BinaryOp, a: i64, b: i64) -> Option<Val<'static>> {
    let n = match op {
        BinaryOp::Add => a.checked_add(b),
        BinaryOp::Sub => a.checked_sub(b),
        BinaryOp::Mul => a.checked_mul(b),
        BinaryOp::Div => a.checked_div(b),
        BinaryOp::Mod => a.checked_rem(b),
        // A negative exponent leaves the integers; the float path computes it.
        BinaryOp::Pow => u32::try_from(b).ok().and_then(|e| a.checked_pow(e)),
        _ => None,
    };
    n.map(Val::Int)
}

pub(super) fn unary<'a>(op: UnaryOp, v: Val<'a>) -> Val<'a> {
    match op {
        UnaryOp::Not => to_bool(&v).map_or(Val::Nil, |b| Val::Bool(!b)),
        UnaryOp::Neg => match v {
            Val::Int(n) => n.checked_neg().map_or(Val::Nil, Val::Int),
            Val::Float(x) => Val::Float(-x),
            Val::Duration(ns) => ns.checked_neg().map_or(Val::Nil, Val::Duration),
            Val::Text(t) => parse_number(t).map_or(Val::Nil, |n| unary(UnaryOp::Neg, n)),
            _ => Val::Nil,
        },
        UnaryOp::Exists => Val::Bool(v != Val::Nil),
        UnaryOp::NotExists => Val::Bool(v == Val::Nil),
    }
}

pub(super) fn regex_match(v: &Val<'_>, pattern: &Pattern, negated: bool) -> bool {
    match v {
        Val::Text(s) => pattern.is_match(s) != negated,
        Val::Str(s) => pattern.is_match(s) != negated,
        Val::List(items) if negated => items.iter().all(|x| regex_match(x, pattern, true)),
        Val::List(items) => items.iter().any(|x| regex_match(x, pattern, false)),
        _ => false,
    }
}
