//! The parser's pipeline stages other than spanset expressions: scalar filters over
//! aggregates, metrics functions with their second stages, and the `with(...)` hints.

use super::*;

impl Parser<'_> {
    pub(super) fn scalar_filter(&mut self) -> Result<(Stage, usize), ParseError> {
        let pos = self.pos();
        let (lhs, lh) = self.scalar(1)?;
        let Some(op) = comparison_op(self.peek()) else {
            return Err(self.unexpected("a comparison (=, !=, <, <=, >, >=)"));
        };
        let op_pos = self.pos();
        self.bump();
        let (rhs, rh) = self.scalar(1)?;
        if !has_aggregate(&lhs) && !has_aggregate(&rhs) {
            return Err(self.err(pos, "a scalar filter needs an aggregate such as count()"));
        }
        let height = lh.max(rh) + 1;
        self.check_height(height, op_pos)?;
        Ok((Stage::ScalarFilter(ScalarFilter { op, lhs, rhs }), height))
    }

    /// Arithmetic over aggregates and numbers: `+ -` (1) < `* / %` (2) < `^` (3, right).
    fn scalar(&mut self, min: u8) -> Result<(ScalarExpr, usize), ParseError> {
        let (mut lhs, mut height) = self.scalar_unary()?;
        loop {
            let (op, level) = match self.peek() {
                Tok::Add => (BinaryOp::Add, 1),
                Tok::Sub => (BinaryOp::Sub, 1),
                Tok::Mul => (BinaryOp::Mul, 2),
                Tok::Div => (BinaryOp::Div, 2),
                Tok::Mod => (BinaryOp::Mod, 2),
                Tok::Pow => (BinaryOp::Pow, 3),
                _ => break,
            };
            if level < min {
                break;
            }
            let pos = self.pos();
            self.bump();
            let (rhs, h) = if level == 3 {
                self.nest(pos)?;
                let rhs = self.scalar(3);
                self.unnest();
                rhs?
            } else {
                self.scalar(level + 1)?
            };
            if let (ScalarExpr::Literal(a), ScalarExpr::Literal(b)) = (&lhs, &rhs)
                && let Some(folded) = fold_binary(op, a, b)
            {
                lhs = ScalarExpr::Literal(folded);
                continue;
            }
            height = height.max(h) + 1;
            self.check_height(height, pos)?;
            lhs = ScalarExpr::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) };
        }
        Ok((lhs, height))
    }

    fn scalar_unary(&mut self) -> Result<(ScalarExpr, usize), ParseError> {
        let pos = self.pos();
        if !self.eat(&Tok::Sub) {
            return self.scalar_primary();
        }
        self.nest(pos)?;
        let operand = self.scalar_unary();
        self.unnest();
        match operand? {
            (ScalarExpr::Literal(l), _) => match fold_unary(UnaryOp::Neg, &l) {
                Some(folded) => Ok((ScalarExpr::Literal(folded), 0)),
                None => Err(self.err(pos, "number out of range")),
            },
            _ => Err(self.err(pos, "a minus sign applies to numbers only here")),
        }
    }

    fn scalar_primary(&mut self) -> Result<(ScalarExpr, usize), ParseError> {
        let token = self.bump();
        let pos = token.pos;
        match &token.tok {
            Tok::Int(n) => Ok((ScalarExpr::Literal(Literal::Int(*n)), 0)),
            Tok::Float(x) => Ok((ScalarExpr::Literal(Literal::Float(*x)), 0)),
            Tok::Duration(ns) => Ok((ScalarExpr::Literal(Literal::Duration(*ns)), 0)),
            Tok::LParen => {
                self.nest(pos)?;
                let inner = self.scalar(1);
                self.unnest();
                let inner = inner?;
                self.expect(Tok::RParen, "\")\"")?;
                Ok(inner)
            }
            Tok::Word(w) if w == "count" => {
                self.expect(Tok::LParen, "\"(\"")?;
                self.expect(Tok::RParen, "\")\"")?;
                Ok((ScalarExpr::Aggregate(Aggregate { op: AggregateOp::Count, field: None }), 0))
            }
            Tok::Word(w) if matches!(w.as_str(), "avg" | "min" | "max" | "sum") => {
                let op = match w.as_str() {
                    "avg" => AggregateOp::Avg,
                    "min" => AggregateOp::Min,
                    "max" => AggregateOp::Max,
                    _ => AggregateOp::Sum,
                };
                self.expect(Tok::LParen, "\"(\"")?;
                let e = self.field_expr()?;
                self.expect(Tok::RParen, "\")\"")?;
                let aggregate = Aggregate { op, field: Some(e.expr) };
                if !(e.ty.numeric() || e.ty == Ty::Dynamic) {
                    return Err(self
                        .err(pos, format!("aggregate field expressions must resolve to a number type: {aggregate}")));
                }
                if aggregate.field.as_ref().is_some_and(|f| !references_span(f)) {
                    return Err(
                        self.err(pos, format!("aggregate field expressions must reference the span: {aggregate}"))
                    );
                }
                Ok((ScalarExpr::Aggregate(aggregate), e.height))
            }
            _ => Err(self.unexpected_token(&token, "an aggregate or a number")),
        }
    }

    // ----- metrics and hints ---------------------------------------------------------

    pub(super) fn metrics(&mut self) -> Result<Metrics, ParseError> {
        let token = self.bump();
        let Tok::Word(name) = &token.tok else { return Err(self.unexpected_token(&token, "a metrics function")) };
        self.expect(Tok::LParen, "\"(\"")?;
        let function = match name.as_str() {
            "rate" => MetricsFunction::Rate,
            "count_over_time" => MetricsFunction::CountOverTime,
            "min_over_time" => MetricsFunction::MinOverTime(self.field_ref()?),
            "max_over_time" => MetricsFunction::MaxOverTime(self.field_ref()?),
            "avg_over_time" => MetricsFunction::AvgOverTime(self.field_ref()?),
            "sum_over_time" => MetricsFunction::SumOverTime(self.field_ref()?),
            "histogram_over_time" => MetricsFunction::HistogramOverTime(self.field_ref()?),
            "quantile_over_time" => {
                let field = self.field_ref()?;
                let mut quantiles = Vec::new();
                while self.eat(&Tok::Comma) {
                    let q = self.bump();
                    quantiles.push(match q.tok {
                        Tok::Int(n) => n as f64,
                        Tok::Float(x) => x,
                        _ => return Err(self.unexpected_token(&q, "a quantile")),
                    });
                }
                if quantiles.is_empty() {
                    return Err(self.unexpected("\",\" and a quantile"));
                }
                MetricsFunction::QuantileOverTime(field, quantiles)
            }
            "compare" => self.compare_arguments()?,
            _ => return Err(self.unexpected_token(&token, "a metrics function")),
        };
        self.expect(Tok::RParen, "\")\"")?;
        let mut by = Vec::new();
        if self.peek_word("by") && !matches!(function, MetricsFunction::Compare { .. }) {
            self.bump();
            self.expect(Tok::LParen, "\"(\"")?;
            by = self.field_list()?;
            self.expect(Tok::RParen, "\")\"")?;
        }
        let mut second_stages = Vec::new();
        loop {
            if let Some(op) = comparison_op(self.peek()) {
                self.bump();
                second_stages.push(SecondStage::Filter(op, self.constant()?));
            } else if self.peek() == &Tok::Pipe {
                self.bump();
                let token = self.bump();
                let top = match &token.tok {
                    Tok::Word(w) if w == "topk" => true,
                    Tok::Word(w) if w == "bottomk" => false,
                    _ => return Err(self.unexpected_token(&token, "topk or bottomk")),
                };
                self.expect(Tok::LParen, "\"(\"")?;
                let n = self.bump();
                let Tok::Int(n) = n.tok else { return Err(self.unexpected_token(&n, "an integer")) };
                if n <= 0 {
                    return Err(self.err(token.pos, "topk and bottomk need a positive number of series"));
                }
                self.expect(Tok::RParen, "\")\"")?;
                second_stages.push(if top { SecondStage::TopK(n) } else { SecondStage::BottomK(n) });
            } else {
                if matches!(function, MetricsFunction::Compare { .. }) && !second_stages.is_empty() {
                    return Err(self.err(token.pos, "`compare()` cannot be used with second stage functions"));
                }
                return Ok(Metrics { function, by, second_stages });
            }
        }
    }

    fn compare_arguments(&mut self) -> Result<MetricsFunction, ParseError> {
        let pos = self.pos();
        let (filter, _) = match self.spanset_primary()? {
            (SpansetExpr::Filter(e), h) => (e, h),
            _ => return Err(self.err(pos, "compare() takes a spanset filter {...} first")),
        };
        let mut numbers = Vec::new();
        while self.eat(&Tok::Comma) {
            let token = self.bump();
            match token.tok {
                Tok::Int(n) => numbers.push(n),
                _ => return Err(self.unexpected_token(&token, "an integer")),
            }
        }
        let (top_n, start, end) = match numbers[..] {
            [] => (10, 0, 0),
            [n] => (n, 0, 0),
            [n, s, e] => (n, s, e),
            _ => return Err(self.err(pos, "compare() takes a filter and 1 or 3 integers")),
        };
        Ok(MetricsFunction::Compare { filter, top_n, start, end })
    }

    /// A number for a metrics filter, arithmetic on literals folded. A duration is read in
    /// seconds, the unit of duration metrics, as Tempo's `newMetricsFilterFromStatic` does.
    fn constant(&mut self) -> Result<f64, ParseError> {
        let pos = self.pos();
        match self.scalar(1)?.0 {
            ScalarExpr::Literal(Literal::Int(n)) => Ok(n as f64),
            ScalarExpr::Literal(Literal::Float(x)) => Ok(x),
            ScalarExpr::Literal(Literal::Duration(ns)) => Ok(ns as f64 / 1e9),
            _ => Err(self.err(pos, "expected a number")),
        }
    }

    pub(super) fn hints(&mut self) -> Result<Vec<Hint>, ParseError> {
        self.bump();
        self.expect(Tok::LParen, "\"(\"")?;
        let mut hints = Vec::new();
        loop {
            let token = self.bump();
            let Tok::Word(name) = token.tok else { return Err(self.unexpected_token(&token, "a hint name")) };
            self.expect(Tok::Eq, "\"=\"")?;
            let token = self.bump();
            let value = match &token.tok {
                Tok::Str(s) => Literal::Str(s.clone()),
                Tok::Int(n) => Literal::Int(*n),
                Tok::Float(x) => Literal::Float(*x),
                Tok::Duration(ns) => Literal::Duration(*ns),
                Tok::Word(w) => keyword_literal(w).ok_or_else(|| self.unexpected_token(&token, "a literal"))?,
                _ => return Err(self.unexpected_token(&token, "a literal")),
            };
            hints.push(Hint { name, value });
            if !self.eat(&Tok::Comma) {
                self.expect(Tok::RParen, "\",\" or \")\"")?;
                return Ok(hints);
            }
        }
    }
}
