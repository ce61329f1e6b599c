//! Recursive-descent parser for TraceQL, following the grammar and precedence of Tempo's
//! `expr.y`, with the checks Tempo's `validate()` makes done while parsing.
//!
//! Precedence, loosest first, as in `expr.y`: `|`; `&&` `||` (one level, left to right, in
//! filters and between spansets alike); comparisons and structural operators; `+` `-`; the
//! prefix operators `!` and `-`; `*` `/` `%`; `^` (right associative). So `a || b && c` is
//! `(a || b) && c`, and `-a * b` is `-(a * b)`, as in Tempo.
//!
//! Every recursion (parentheses, braces, prefix operators, `^`) counts one level, and every
//! operator node adds one to the height of the tree it builds; either going past `max_depth`
//! is an error, so neither the parser nor the code walking the tree can exhaust the stack.
//! Operations on literals are folded (`10 * 1024` becomes `10240`, `{ 1 = 1 }` becomes
//! `{ true }`), as Tempo folds them.

use super::ast::*;
use super::eval::{fold_binary, fold_unary};
use super::lexer::{Tok, Token, lex};
use crate::traces::model::{SpanKind, SpanStatus};

/// A query that does not parse: what is wrong and where (byte offset, and line and column
/// counted from 1 in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at line {line}, col {column}: {message}")]
pub struct ParseError {
    pub message: String,
    pub position: usize,
    pub line: usize,
    pub column: usize,
}

impl ParseError {
    pub(crate) fn new(text: &str, position: usize, message: impl Into<String>) -> ParseError {
        let mut position = position.min(text.len());
        while !text.is_char_boundary(position) {
            position -= 1;
        }
        let before = &text[..position];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ParseError { message: message.into(), position, line, column }
    }
}

/// Parses `text`; nesting deeper than `max_depth` levels is an error.
///
/// The recursion is bounded by `max_depth`: each level costs at most about 4 KiB of stack
/// in an unoptimised build and a fraction of that optimised, so 128 levels fit a 2 MiB
/// thread stack with room to spare; real queries rarely nest more than a few levels.
pub fn parse(text: &str, max_depth: usize) -> Result<Query, ParseError> {
    let tokens = lex(text)?;
    Parser { text, tokens, i: 0, depth: 0, max_depth }.query()
}

const METRICS_FUNCTIONS: [&str; 9] = [
    "rate",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "quantile_over_time",
    "histogram_over_time",
    "compare",
];

/// The static type of an expression, as Tempo's `impliedType`: `Dynamic` for attributes,
/// whose type is known only per span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Dynamic,
    Int,
    Float,
    Str,
    Bool,
    Duration,
    Status,
    Kind,
}

impl Ty {
    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Duration)
    }

    fn of_literal(l: &Literal) -> Ty {
        match l {
            Literal::Str(_) => Ty::Str,
            Literal::Int(_) => Ty::Int,
            Literal::Float(_) => Ty::Float,
            Literal::Bool(_) => Ty::Bool,
            Literal::Duration(_) => Ty::Duration,
            Literal::Status(_) => Ty::Status,
            Literal::Kind(_) => Ty::Kind,
        }
    }

    fn of_intrinsic(i: Intrinsic) -> Ty {
        use Intrinsic as I;
        match i {
            I::Status => Ty::Status,
            I::Kind => Ty::Kind,
            I::Duration | I::TraceDuration | I::EventTimeSinceStart => Ty::Duration,
            I::ChildCount | I::NestedSetLeft | I::NestedSetRight | I::NestedSetParent => Ty::Int,
            _ => Ty::Str,
        }
    }

    /// Whether `op` applies to a value of this type (Tempo's `binaryTypeValid`).
    fn allows(self, op: BinaryOp) -> bool {
        match self {
            Ty::Dynamic => true,
            Ty::Bool => matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Eq | BinaryOp::Neq),
            Ty::Int | Ty::Float | Ty::Duration => !op.is_logical(),
            Ty::Str => op.is_comparison(),
            Ty::Status | Ty::Kind => matches!(op, BinaryOp::Eq | BinaryOp::Neq),
        }
    }

    /// Whether two types may meet in one operation (Tempo's `isMatchingOperand`).
    fn matches(self, other: Ty) -> bool {
        self == Ty::Dynamic || other == Ty::Dynamic || self == other || (self.numeric() && other.numeric())
    }
}

struct Typed {
    expr: FieldExpr,
    ty: Ty,
    height: usize,
}

impl Typed {
    fn literal(l: Literal) -> Typed {
        Typed { ty: Ty::of_literal(&l), expr: FieldExpr::Literal(l), height: 0 }
    }
}

enum InfixOp {
    Binary(BinaryOp),
    Regex { negated: bool },
}

/// A filter operator and its precedence level (higher binds tighter).
fn infix_op(tok: &Tok) -> Option<(InfixOp, u8)> {
    use BinaryOp as B;
    let b = |op, level| Some((InfixOp::Binary(op), level));
    match tok {
        Tok::And => b(B::And, 1),
        Tok::Or => b(B::Or, 1),
        Tok::Eq => b(B::Eq, 2),
        Tok::Neq => b(B::Neq, 2),
        Tok::Lt => b(B::Lt, 2),
        Tok::Lte => b(B::Lte, 2),
        Tok::Gt => b(B::Gt, 2),
        Tok::Gte => b(B::Gte, 2),
        Tok::Re => Some((InfixOp::Regex { negated: false }, 2)),
        Tok::Nre => Some((InfixOp::Regex { negated: true }, 2)),
        Tok::Add => b(B::Add, 3),
        Tok::Sub => b(B::Sub, 3),
        Tok::Mul => b(B::Mul, 5),
        Tok::Div => b(B::Div, 5),
        Tok::Mod => b(B::Mod, 5),
        Tok::Pow => b(B::Pow, 6),
        _ => None,
    }
}
const LEVEL_COMPARISON: u8 = 2;
const LEVEL_PREFIX_OPERAND: u8 = 5;
const LEVEL_POW: u8 = 6;

/// A spanset operator and its precedence level.
fn spanset_op(tok: &Tok) -> Option<(SpansetOp, u8)> {
    let op = match tok {
        Tok::And => SpansetOp::And,
        Tok::Or => SpansetOp::Or,
        Tok::Gt => SpansetOp::Child,
        Tok::Lt => SpansetOp::Parent,
        Tok::Desc => SpansetOp::Descendant,
        Tok::Ance => SpansetOp::Ancestor,
        Tok::Tilde => SpansetOp::Sibling,
        Tok::NotChild => SpansetOp::NotChild,
        Tok::NotParent => SpansetOp::NotParent,
        Tok::NotDesc => SpansetOp::NotDescendant,
        Tok::NotAnce => SpansetOp::NotAncestor,
        Tok::Nre => SpansetOp::NotSibling,
        Tok::UnionChild => SpansetOp::UnionChild,
        Tok::UnionParent => SpansetOp::UnionParent,
        Tok::UnionDesc => SpansetOp::UnionDescendant,
        Tok::UnionAnce => SpansetOp::UnionAncestor,
        Tok::UnionSibl => SpansetOp::UnionSibling,
        _ => return None,
    };
    Some((op, if op.relation().is_some() { 2 } else { 1 }))
}

fn comparison_op(tok: &Tok) -> Option<BinaryOp> {
    Some(match tok {
        Tok::Eq => BinaryOp::Eq,
        Tok::Neq => BinaryOp::Neq,
        Tok::Lt => BinaryOp::Lt,
        Tok::Lte => BinaryOp::Lte,
        Tok::Gt => BinaryOp::Gt,
        Tok::Gte => BinaryOp::Gte,
        _ => return None,
    })
}

fn unscoped_intrinsic(word: &str) -> Option<Intrinsic> {
    Some(match word {
        "duration" => Intrinsic::Duration,
        "name" => Intrinsic::Name,
        "status" => Intrinsic::Status,
        "statusMessage" => Intrinsic::StatusMessage,
        "kind" => Intrinsic::Kind,
        "rootName" => Intrinsic::RootName,
        "rootServiceName" => Intrinsic::RootServiceName,
        "traceDuration" => Intrinsic::TraceDuration,
        "nestedSetLeft" => Intrinsic::NestedSetLeft,
        "nestedSetRight" => Intrinsic::NestedSetRight,
        "nestedSetParent" => Intrinsic::NestedSetParent,
        // Tempo knows only span:childCount; the bare form is accepted too.
        "childCount" => Intrinsic::ChildCount,
        _ => return None,
    })
}

fn scoped_intrinsic(scope: &str, word: &str) -> Option<Intrinsic> {
    use Intrinsic as I;
    Some(match (scope, word) {
        ("span", "duration") => I::Duration,
        ("span", "name") => I::Name,
        ("span", "kind") => I::Kind,
        ("span", "status") => I::Status,
        ("span", "statusMessage") => I::StatusMessage,
        ("span", "id") => I::SpanId,
        ("span", "parentID") => I::ParentId,
        ("span", "childCount") => I::ChildCount,
        ("trace", "duration") => I::TraceDuration,
        ("trace", "rootName") => I::RootName,
        ("trace", "rootService") => I::RootServiceName,
        ("trace", "id") => I::TraceId,
        ("event", "name") => I::EventName,
        ("event", "timeSinceStart") => I::EventTimeSinceStart,
        ("link", "traceID") => I::LinkTraceId,
        ("link", "spanID") => I::LinkSpanId,
        ("instrumentation", "name") => I::InstrumentationName,
        ("instrumentation", "version") => I::InstrumentationVersion,
        _ => return None,
    })
}

/// The literal a keyword stands for, where a value is expected.
fn keyword_literal(word: &str) -> Option<Literal> {
    Some(match word {
        "true" => Literal::Bool(true),
        "false" => Literal::Bool(false),
        "ok" => Literal::Status(SpanStatus::Ok),
        "error" => Literal::Status(SpanStatus::Error),
        "unset" => Literal::Status(SpanStatus::Unset),
        "unspecified" => Literal::Kind(SpanKind::Unspecified),
        "internal" => Literal::Kind(SpanKind::Internal),
        "server" => Literal::Kind(SpanKind::Server),
        "client" => Literal::Kind(SpanKind::Client),
        "producer" => Literal::Kind(SpanKind::Producer),
        "consumer" => Literal::Kind(SpanKind::Consumer),
        "minInt" => Literal::Int(i64::MIN),
        "maxInt" => Literal::Int(i64::MAX),
        _ => return None,
    })
}

pub(crate) fn references_span(e: &FieldExpr) -> bool {
    match e {
        FieldExpr::Literal(_) => false,
        FieldExpr::Intrinsic(_) | FieldExpr::Attribute(_) => true,
        FieldExpr::Unary { expr, .. } => references_span(expr),
        FieldExpr::Binary { lhs, rhs, .. } => references_span(lhs) || references_span(rhs),
        FieldExpr::Match { lhs, .. } => references_span(lhs),
    }
}

fn has_aggregate(e: &ScalarExpr) -> bool {
    match e {
        ScalarExpr::Aggregate(_) => true,
        ScalarExpr::Literal(_) => false,
        ScalarExpr::Binary { lhs, rhs, .. } => has_aggregate(lhs) || has_aggregate(rhs),
    }
}

struct Parser<'t> {
    text: &'t str,
    /// Never empty: the lexer ends every token list with `Eof`.
    tokens: Vec<Token>,
    i: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser<'_> {
    // ----- token access -------------------------------------------------------------

    fn peek(&self) -> &Tok {
        self.peek_at(0)
    }

    fn peek_at(&self, k: usize) -> &Tok {
        let last = self.tokens.len().saturating_sub(1);
        self.tokens.get((self.i + k).min(last)).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Word(w) if w == word)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.i).map_or(self.text.len(), |t| t.pos)
    }

    /// The current token; the position stays on `Eof` once there.
    fn bump(&mut self) -> Token {
        let token = self.tokens.get(self.i).cloned().unwrap_or(Token { tok: Tok::Eof, pos: self.text.len() });
        if self.i + 1 < self.tokens.len() {
            self.i += 1;
        }
        token
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let found = self.peek() == tok;
        if found {
            self.bump();
        }
        found
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ParseError> {
        if self.eat(&tok) { Ok(()) } else { Err(self.unexpected(what)) }
    }

    fn err(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.text, pos, message)
    }

    fn unexpected(&self, expecting: &str) -> ParseError {
        self.err(self.pos(), format!("syntax error: unexpected {}, expecting {expecting}", self.peek().describe()))
    }

    fn unexpected_token(&self, token: &Token, expecting: &str) -> ParseError {
        self.err(token.pos, format!("syntax error: unexpected {}, expecting {expecting}", token.tok.describe()))
    }

    /// One more level of recursion; `unnest` gives it back.
    fn nest(&mut self, pos: usize) -> Result<(), ParseError> {
        if self.depth >= self.max_depth {
            return Err(self.too_deep(pos));
        }
        self.depth += 1;
        Ok(())
    }

    fn unnest(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn too_deep(&self, pos: usize) -> ParseError {
        self.err(pos, format!("the query nests deeper than {} levels", self.max_depth))
    }

    fn check_height(&self, height: usize, pos: usize) -> Result<(), ParseError> {
        if height > self.max_depth { Err(self.too_deep(pos)) } else { Ok(()) }
    }

    // ----- query and pipeline --------------------------------------------------------

    fn query(&mut self) -> Result<Query, ParseError> {
        let (pipeline, _) = self.pipeline()?;
        let metrics = if self.peek() == &Tok::Pipe && self.metrics_next() {
            self.bump();
            Some(self.metrics()?)
        } else {
            None
        };
        let mut hints = Vec::new();
        while self.peek_word("with") {
            hints.extend(self.hints()?);
        }
        if self.peek() != &Tok::Eof {
            return Err(self.unexpected("\"|\", \"with\" or end of query"));
        }
        Ok(Query { pipeline, metrics, hints })
    }

    fn metrics_next(&self) -> bool {
        matches!(self.peek_at(1), Tok::Word(w) if METRICS_FUNCTIONS.contains(&w.as_str()))
    }

    fn pipeline(&mut self) -> Result<(Pipeline, usize), ParseError> {
        let mut stages = Vec::new();
        let mut height = 0;
        loop {
            let pos = self.pos();
            let (stage, h) = self.stage()?;
            if stages.is_empty() && stage == Stage::Coalesce {
                return Err(self.err(pos, "a pipeline cannot start with coalesce()"));
            }
            stages.push(stage);
            height = height.max(h);
            if self.peek() == &Tok::Pipe && !self.metrics_next() {
                self.bump();
            } else {
                return Ok((Pipeline { stages }, height));
            }
        }
    }

    // The functions on the path of nested parentheses (pipeline, stage, spanset_expr,
    // spanset_primary; binary, unary, primary) keep few locals and hand the rest to helpers,
    // since every level of nesting costs one frame of each.

    fn stage(&mut self) -> Result<(Stage, usize), ParseError> {
        match self.peek() {
            Tok::Word(_) => self.word_stage(),
            Tok::Int(_) | Tok::Float(_) | Tok::Duration(_) | Tok::Sub => self.scalar_filter(),
            Tok::LParen if !self.parenthesis_opens_spansets() => self.scalar_filter(),
            Tok::LParen | Tok::LBrace => {
                let (e, h) = self.spanset_expr(1)?;
                Ok((Stage::Spanset(e), h))
            }
            _ => Err(self.unexpected("a spanset filter \"{\"")),
        }
    }

    /// `by(…)`, `select(…)`, `coalesce()`, or a scalar filter starting with an aggregate.
    fn word_stage(&mut self) -> Result<(Stage, usize), ParseError> {
        let pos = self.pos();
        let Tok::Word(w) = self.peek() else { return Err(self.unexpected("a spanset filter \"{\"")) };
        match w.as_str() {
            "by" => {
                self.bump();
                self.expect(Tok::LParen, "\"(\"")?;
                let e = self.field_expr()?;
                self.expect(Tok::RParen, "\")\"")?;
                if !references_span(&e.expr) {
                    return Err(
                        self.err(pos, format!("grouping field expressions must reference the span: by({})", e.expr))
                    );
                }
                Ok((Stage::By(e.expr), e.height))
            }
            "select" => {
                self.bump();
                self.expect(Tok::LParen, "\"(\"")?;
                let fields = self.field_list()?;
                self.expect(Tok::RParen, "\")\"")?;
                Ok((Stage::Select(fields), 0))
            }
            "coalesce" => {
                self.bump();
                self.expect(Tok::LParen, "\"(\"")?;
                self.expect(Tok::RParen, "\")\"")?;
                Ok((Stage::Coalesce, 0))
            }
            "count" | "avg" | "min" | "max" | "sum" => self.scalar_filter(),
            _ => Err(self.unexpected("a spanset filter \"{\"")),
        }
    }

    /// Whether the `(` here opens spanset operands (`({a} && {b})`, `(by(x))`) rather than
    /// arithmetic over aggregates (`(count() + 1) > 2`): decided by the first token after the
    /// run of `(`.
    fn parenthesis_opens_spansets(&self) -> bool {
        let mut k = 0;
        while self.peek_at(k) == &Tok::LParen {
            k += 1;
        }
        match self.peek_at(k) {
            Tok::LBrace => true,
            Tok::Word(w) => matches!(w.as_str(), "by" | "select" | "coalesce"),
            _ => false,
        }
    }

    // ----- spanset expressions -------------------------------------------------------

    /// Precedence climbing: `&&` `||` (level 1) below the structural operators (level 2).
    fn spanset_expr(&mut self, min: u8) -> Result<(SpansetExpr, usize), ParseError> {
        let (mut lhs, mut height) = self.spanset_primary()?;
        while let Some((op, level)) = spanset_op(self.peek()).filter(|(_, level)| *level >= min) {
            let pos = self.pos();
            self.bump();
            let (rhs, h) = self.spanset_expr(level + 1)?;
            height = height.max(h) + 1;
            self.check_height(height, pos)?;
            lhs = SpansetExpr::Op { op, lhs: Box::new(lhs), rhs: Box::new(rhs) };
        }
        Ok((lhs, height))
    }

    fn spanset_primary(&mut self) -> Result<(SpansetExpr, usize), ParseError> {
        let pos = self.pos();
        match self.peek() {
            Tok::LBrace => self.filter(),
            Tok::LParen => {
                self.bump();
                self.nest(pos)?;
                let inner = self.pipeline();
                self.unnest();
                self.close_parenthesised(inner?, pos)
            }
            _ => Err(self.unexpected("\"{\" or \"(\"")),
        }
    }

    /// `{ expr }` or `{}`.
    fn filter(&mut self) -> Result<(SpansetExpr, usize), ParseError> {
        let pos = self.pos();
        self.bump();
        if self.eat(&Tok::RBrace) {
            return Ok((SpansetExpr::Filter(FieldExpr::Literal(Literal::Bool(true))), 0));
        }
        self.nest(pos)?;
        let e = self.field_expr();
        self.unnest();
        let e = e?;
        self.expect(Tok::RBrace, "\"}\"")?;
        self.check_filter(&e, pos)?;
        Ok((SpansetExpr::Filter(e.expr), e.height))
    }

    /// The `)` after a parenthesised pipeline, which is grouping only when it holds one
    /// spanset expression; real pipelines stay pipeline nodes.
    fn close_parenthesised(
        &mut self,
        inner: (Pipeline, usize),
        pos: usize,
    ) -> Result<(SpansetExpr, usize), ParseError> {
        let (mut pipeline, height) = inner;
        if self.peek() == &Tok::Pipe {
            return Err(self.err(self.pos(), "metrics queries in parentheses (metrics math) are not supported"));
        }
        self.expect(Tok::RParen, "\")\"")?;
        if pipeline.stages.len() == 1
            && matches!(pipeline.stages[0], Stage::Spanset(_))
            && let Some(Stage::Spanset(e)) = pipeline.stages.pop()
        {
            return Ok((e, height));
        }
        self.check_height(height + 1, pos)?;
        Ok((SpansetExpr::Pipeline(pipeline), height + 1))
    }

    fn check_filter(&self, e: &Typed, pos: usize) -> Result<(), ParseError> {
        if matches!(e.ty, Ty::Bool | Ty::Dynamic) {
            Ok(())
        } else {
            Err(self.err(pos, format!("span filter field expressions must resolve to a boolean: {{ {} }}", e.expr)))
        }
    }

    // ----- field expressions ---------------------------------------------------------

    fn field_expr(&mut self) -> Result<Typed, ParseError> {
        self.binary(1)
    }

    /// Precedence climbing over the operators of level `min` and tighter.
    fn binary(&mut self, min: u8) -> Result<Typed, ParseError> {
        let mut lhs = self.unary()?;
        while let Some((op, level)) = infix_op(self.peek()).filter(|(_, level)| *level >= min) {
            let pos = self.pos();
            self.bump();
            let rhs = if matches!(op, InfixOp::Binary(BinaryOp::Eq | BinaryOp::Neq)) && self.peek_word("nil") {
                self.bump();
                None
            } else if level == LEVEL_POW {
                // Right associative: the right side recurses, so it counts as nesting.
                self.nest(pos)?;
                let rhs = self.binary(level);
                self.unnest();
                Some(rhs?)
            } else {
                Some(self.binary(level + 1)?)
            };
            lhs = self.combine(op, lhs, rhs, pos)?;
        }
        Ok(lhs)
    }

    /// The node for `lhs op rhs`; no `rhs` is `lhs = nil` / `lhs != nil`.
    fn combine(&self, op: InfixOp, lhs: Typed, rhs: Option<Typed>, pos: usize) -> Result<Typed, ParseError> {
        match (op, rhs) {
            (InfixOp::Binary(BinaryOp::Eq), None) => self.make_unary(UnaryOp::NotExists, lhs, pos),
            (_, None) => self.make_unary(UnaryOp::Exists, lhs, pos),
            (InfixOp::Regex { negated }, Some(rhs)) => self.make_match(lhs, negated, rhs, pos),
            (InfixOp::Binary(b), Some(rhs)) => self.make_binary(b, lhs, rhs, pos),
        }
    }

    fn unary(&mut self) -> Result<Typed, ParseError> {
        let pos = self.pos();
        let op = match self.peek() {
            Tok::Not => UnaryOp::Not,
            Tok::Sub => UnaryOp::Neg,
            _ => return self.primary(),
        };
        self.bump();
        self.nest(pos)?;
        let operand = self.binary(LEVEL_PREFIX_OPERAND);
        self.unnest();
        self.make_unary(op, operand?, pos)
    }

    fn primary(&mut self) -> Result<Typed, ParseError> {
        if self.peek() != &Tok::LParen {
            return self.atom();
        }
        let pos = self.pos();
        self.bump();
        self.nest(pos)?;
        let e = self.binary(1);
        self.unnest();
        let e = e?;
        self.expect(Tok::RParen, "\")\"")?;
        Ok(e)
    }

    /// A literal, attribute, intrinsic or `nil = …`.
    fn atom(&mut self) -> Result<Typed, ParseError> {
        let token = self.bump();
        let pos = token.pos;
        match token.tok {
            Tok::Str(s) => Ok(Typed::literal(Literal::Str(s))),
            Tok::Int(n) => Ok(Typed::literal(Literal::Int(n))),
            Tok::Float(x) => Ok(Typed::literal(Literal::Float(x))),
            Tok::Duration(ns) => Ok(Typed::literal(Literal::Duration(ns))),
            Tok::Attr(scope, name) => {
                Ok(Typed { expr: FieldExpr::Attribute(Attribute { scope, name }), ty: Ty::Dynamic, height: 0 })
            }
            Tok::ScopeColon(scope) => {
                let i = self.scoped_intrinsic_after(scope, pos)?;
                Ok(Typed { expr: FieldExpr::Intrinsic(i), ty: Ty::of_intrinsic(i), height: 0 })
            }
            Tok::Word(w) => {
                if let Some(l) = keyword_literal(&w) {
                    return Ok(Typed::literal(l));
                }
                if let Some(i) = unscoped_intrinsic(&w) {
                    return Ok(Typed { expr: FieldExpr::Intrinsic(i), ty: Ty::of_intrinsic(i), height: 0 });
                }
                match w.as_str() {
                    "nil" => self.nil_first(pos),
                    "parent" => Err(self.err(pos, "the parent intrinsic is not supported")),
                    _ => Err(self.err(pos, format!("syntax error: unknown identifier: {w}"))),
                }
            }
            other => Err(self.unexpected_token(&Token { tok: other, pos }, "an expression")),
        }
    }

    /// `nil = x`, `nil != x`, `nil = nil` (Tempo: false).
    fn nil_first(&mut self, pos: usize) -> Result<Typed, ParseError> {
        let op = match self.peek() {
            Tok::Eq => UnaryOp::NotExists,
            Tok::Neq => UnaryOp::Exists,
            _ => return Err(self.err(pos, "syntax error: nil can only be compared with = or !=")),
        };
        let op_pos = self.pos();
        self.bump();
        if self.peek_word("nil") {
            self.bump();
            return Ok(Typed::literal(Literal::Bool(false)));
        }
        let operand = self.binary(LEVEL_COMPARISON + 1)?;
        self.make_unary(op, operand, op_pos)
    }

    fn scoped_intrinsic_after(&mut self, scope: &str, pos: usize) -> Result<Intrinsic, ParseError> {
        let token = self.bump();
        match &token.tok {
            Tok::Word(w) => {
                scoped_intrinsic(scope, w).ok_or_else(|| self.err(pos, format!("unknown intrinsic {scope}:{w}")))
            }
            _ => Err(self.unexpected_token(&token, &format!("an intrinsic name after \"{scope}:\""))),
        }
    }

    fn make_unary(&self, op: UnaryOp, operand: Typed, pos: usize) -> Result<Typed, ParseError> {
        let ty = match op {
            UnaryOp::Not if !matches!(operand.ty, Ty::Bool | Ty::Dynamic) => None,
            UnaryOp::Neg if !(operand.ty.numeric() || operand.ty == Ty::Dynamic) => None,
            UnaryOp::Neg => Some(operand.ty),
            _ => Some(Ty::Bool),
        };
        if op == UnaryOp::NotExists {
            match &operand.expr {
                FieldExpr::Intrinsic(i) => {
                    return Err(
                        self.err(pos, format!("{}=nil is not valid because intrinsics cannot be nil", i.as_str()))
                    );
                }
                FieldExpr::Attribute(a) if a.scope == AttributeScope::Resource && a.name == "service.name" => {
                    return Err(self.err(pos, "resource.service.name=nil is not valid because it cannot be nil"));
                }
                _ => {}
            }
        }
        let height = operand.height + 1;
        let node = FieldExpr::Unary { op, expr: Box::new(operand.expr) };
        let Some(ty) = ty else {
            return Err(self.err(pos, format!("illegal operation for the given type: {node}")));
        };
        if let FieldExpr::Unary { expr, .. } = &node
            && let FieldExpr::Literal(l) = expr.as_ref()
            && let Some(folded) = fold_unary(op, l)
        {
            return Ok(Typed::literal(folded));
        }
        self.check_height(height, pos)?;
        Ok(Typed { expr: node, ty, height })
    }

    fn make_binary(&self, op: BinaryOp, lhs: Typed, rhs: Typed, pos: usize) -> Result<Typed, ParseError> {
        let ty = if !op.is_arithmetic() {
            Ty::Bool
        } else if lhs.ty != Ty::Dynamic {
            lhs.ty
        } else {
            rhs.ty
        };
        let matching = lhs.ty.matches(rhs.ty);
        let allowed = lhs.ty.allows(op) && rhs.ty.allows(op);
        let height = lhs.height.max(rhs.height) + 1;
        let node = FieldExpr::Binary { op, lhs: Box::new(lhs.expr), rhs: Box::new(rhs.expr) };
        if !matching {
            return Err(self.err(pos, format!("binary operations must operate on the same type: {node}")));
        }
        if !allowed {
            return Err(self.err(pos, format!("illegal operation for the given types: {node}")));
        }
        if let FieldExpr::Binary { lhs, rhs, .. } = &node
            && let (FieldExpr::Literal(a), FieldExpr::Literal(b)) = (lhs.as_ref(), rhs.as_ref())
            && let Some(folded) = fold_binary(op, a, b)
        {
            return Ok(Typed::literal(folded));
        }
        self.check_height(height, pos)?;
        Ok(Typed { expr: node, ty, height })
    }

    fn make_match(&self, lhs: Typed, negated: bool, rhs: Typed, pos: usize) -> Result<Typed, ParseError> {
        let op = if negated { "!~" } else { "=~" };
        let FieldExpr::Literal(Literal::Str(source)) = &rhs.expr else {
            return Err(self.err(pos, format!("invalid type for {op}: {} is not a string literal", rhs.expr)));
        };
        if !matches!(lhs.ty, Ty::Str | Ty::Dynamic) {
            return Err(self.err(pos, format!("illegal operation for the given types: {} {op} {}", lhs.expr, rhs.expr)));
        }
        let pattern = Pattern::new(source).map_err(|e| {
            let reason = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            self.err(pos, format!("invalid regex: {:?}: {reason}", source))
        })?;
        if let FieldExpr::Literal(Literal::Str(text)) = &lhs.expr {
            return Ok(Typed::literal(Literal::Bool(pattern.is_match(text) != negated)));
        }
        let height = lhs.height + 1;
        self.check_height(height, pos)?;
        Ok(Typed { expr: FieldExpr::Match { lhs: Box::new(lhs.expr), negated, pattern }, ty: Ty::Bool, height })
    }

    fn field_list(&mut self) -> Result<Vec<Field>, ParseError> {
        let mut fields = vec![self.field_ref()?];
        while self.eat(&Tok::Comma) {
            fields.push(self.field_ref()?);
        }
        Ok(fields)
    }

    /// An attribute or intrinsic, as `select()` and the metrics functions take them.
    fn field_ref(&mut self) -> Result<Field, ParseError> {
        let token = self.bump();
        match token.tok {
            Tok::Attr(scope, name) => Ok(Field::Attribute(Attribute { scope, name })),
            Tok::ScopeColon(scope) => Ok(Field::Intrinsic(self.scoped_intrinsic_after(scope, token.pos)?)),
            Tok::Word(ref w) => match unscoped_intrinsic(w) {
                Some(i) => Ok(Field::Intrinsic(i)),
                None => Err(self.unexpected_token(&token, "an attribute or intrinsic")),
            },
            _ => Err(self.unexpected_token(&token, "an attribute or intrinsic")),
        }
    }
}

mod stages;
#[cfg(test)]
mod tests;
