//! Printing the syntax tree back to TraceQL text that parses to the same tree: operands
//! that are operations get parentheses, so the tree rather than precedence decides the
//! grouping when the text is read again.

use std::fmt::{self, Write as _};

use super::super::lexer::is_attribute_rune;
use super::super::value::format_duration;
use super::*;

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pipeline)?;
        if let Some(metrics) = &self.metrics {
            write!(f, " | {metrics}")?;
        }
        if !self.hints.is_empty() {
            f.write_str(" with(")?;
            for (i, hint) in self.hints.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}={}", hint.name, hint.value)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{stage}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Spanset(e) => write!(f, "{e}"),
            Stage::ScalarFilter(s) => write!(f, "{s}"),
            Stage::By(e) => write!(f, "by({e})"),
            Stage::Select(fields) => write!(f, "select({})", join(fields)),
            Stage::Coalesce => f.write_str("coalesce()"),
        }
    }
}

impl fmt::Display for SpansetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpansetExpr::Filter(FieldExpr::Literal(Literal::Bool(true))) => f.write_str("{ }"),
            SpansetExpr::Filter(e) => write!(f, "{{ {e} }}"),
            SpansetExpr::Op { op, lhs, rhs } => {
                let side = |e: &SpansetExpr| match e {
                    SpansetExpr::Op { .. } => format!("({e})"),
                    _ => e.to_string(),
                };
                write!(f, "{} {} {}", side(lhs), op.symbol(), side(rhs))
            }
            // A pipeline prints its own parentheses: without them its stages would join the
            // enclosing pipeline.
            SpansetExpr::Pipeline(p) => write!(f, "({p})"),
        }
    }
}

/// A field expression as an operand: atoms bare, everything else in parentheses.
fn operand(e: &FieldExpr) -> String {
    match e {
        FieldExpr::Literal(_) | FieldExpr::Intrinsic(_) | FieldExpr::Attribute(_) => e.to_string(),
        _ => format!("({e})"),
    }
}

impl fmt::Display for FieldExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::Literal(l) => write!(f, "{l}"),
            FieldExpr::Intrinsic(i) => f.write_str(i.as_str()),
            FieldExpr::Attribute(a) => write!(f, "{a}"),
            FieldExpr::Unary { op: UnaryOp::Not, expr } => write!(f, "!{}", operand(expr)),
            FieldExpr::Unary { op: UnaryOp::Neg, expr } => write!(f, "-{}", operand(expr)),
            FieldExpr::Unary { op: UnaryOp::Exists, expr } => write!(f, "{} != nil", operand(expr)),
            FieldExpr::Unary { op: UnaryOp::NotExists, expr } => write!(f, "{} = nil", operand(expr)),
            FieldExpr::Binary { op, lhs, rhs } => write!(f, "{} {} {}", operand(lhs), op.symbol(), operand(rhs)),
            FieldExpr::Match { lhs, negated, pattern } => {
                let op = if *negated { "!~" } else { "=~" };
                write!(f, "{} {op} ", operand(lhs))?;
                write_quoted(f, pattern.source())
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write_quoted(f, s),
            // The lexer reads no negative numbers: a minus is an operator, so negative
            // literals are parenthesised; i64::MIN has no positive counterpart and goes by
            // Tempo's name for it.
            Literal::Int(i64::MIN) => f.write_str("minInt"),
            Literal::Int(n) if *n < 0 => write!(f, "({n})"),
            Literal::Int(n) => write!(f, "{n}"),
            // Debug keeps a '.' or an exponent, so the text reads back as a float.
            Literal::Float(x) if x.is_sign_negative() => write!(f, "({x:?})"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Duration(ns) if *ns < 0 => write!(f, "({})", format_duration(*ns)),
            Literal::Duration(ns) => f.write_str(&format_duration(*ns)),
            Literal::Status(s) => f.write_str(s.as_str()),
            Literal::Kind(k) => f.write_str(k.as_str()),
        }
    }
}

/// A double-quoted string with the escapes the lexer reads back.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scope.prefix())?;
        // Names the lexer would end early (spaces, operators) or read as a number (".5")
        // are written quoted, with the two escapes quoted names know.
        let needs_quotes = self.name.is_empty()
            || self.name.chars().any(|c| c == '"' || !is_attribute_rune(c))
            || (self.scope == AttributeScope::Unscoped && self.name.starts_with(|c: char| c.is_ascii_digit()));
        if needs_quotes {
            f.write_char('"')?;
            for c in self.name.chars() {
                if c == '"' || c == '\\' {
                    f.write_char('\\')?;
                }
                f.write_char(c)?;
            }
            f.write_char('"')
        } else {
            f.write_str(&self.name)
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Intrinsic(i) => f.write_str(i.as_str()),
            Field::Attribute(a) => write!(f, "{a}"),
        }
    }
}

impl fmt::Display for ScalarFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", scalar_operand(&self.lhs), self.op.symbol(), scalar_operand(&self.rhs))
    }
}

fn scalar_operand(e: &ScalarExpr) -> String {
    match e {
        ScalarExpr::Binary { .. } => format!("({e})"),
        _ => e.to_string(),
    }
}

impl fmt::Display for ScalarExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalarExpr::Aggregate(a) => write!(f, "{a}"),
            ScalarExpr::Literal(l) => write!(f, "{l}"),
            ScalarExpr::Binary { op, lhs, rhs } => {
                write!(f, "{} {} {}", scalar_operand(lhs), op.symbol(), scalar_operand(rhs))
            }
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.op {
            AggregateOp::Count => "count",
            AggregateOp::Avg => "avg",
            AggregateOp::Min => "min",
            AggregateOp::Max => "max",
            AggregateOp::Sum => "sum",
        };
        match &self.field {
            Some(e) => write!(f, "{name}({e})"),
            None => write!(f, "{name}()"),
        }
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.function {
            MetricsFunction::Rate => f.write_str("rate()")?,
            MetricsFunction::CountOverTime => f.write_str("count_over_time()")?,
            MetricsFunction::MinOverTime(a) => write!(f, "min_over_time({a})")?,
            MetricsFunction::MaxOverTime(a) => write!(f, "max_over_time({a})")?,
            MetricsFunction::AvgOverTime(a) => write!(f, "avg_over_time({a})")?,
            MetricsFunction::SumOverTime(a) => write!(f, "sum_over_time({a})")?,
            MetricsFunction::HistogramOverTime(a) => write!(f, "histogram_over_time({a})")?,
            MetricsFunction::QuantileOverTime(a, qs) => {
                write!(f, "quantile_over_time({a}")?;
                for q in qs {
                    write!(f, ", {q:?}")?;
                }
                f.write_str(")")?;
            }
            MetricsFunction::Compare { filter, top_n, start, end } => {
                write!(f, "compare({}, {top_n}, {start}, {end})", SpansetExpr::Filter(filter.clone()))?
            }
        }
        if !self.by.is_empty() {
            write!(f, " by ({})", join(&self.by))?;
        }
        for stage in &self.second_stages {
            match stage {
                SecondStage::TopK(n) => write!(f, " | topk({n})")?,
                SecondStage::BottomK(n) => write!(f, " | bottomk({n})")?,
                SecondStage::Filter(op, v) => write!(f, " {} {v:?}", op.symbol())?,
            }
        }
        Ok(())
    }
}

fn join(fields: &[Field]) -> String {
    fields.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
