//! Templates: the subset of Go's `text/template` that `line_format` and `label_format` queries use.

use super::convert::go_quote;
use super::{Labels, PipelineError, is_hex};

/// A `printf` width beyond this is refused: one line must not be able to allocate without bound.
const MAX_PRINTF_WIDTH: usize = 4096;

#[derive(Debug)]
pub(super) struct Template {
    nodes: Vec<TemplateNode>,
}

#[derive(Debug)]
enum TemplateNode {
    Text(String),
    Action(TemplatePipeline),
}

#[derive(Debug)]
struct TemplatePipeline(Vec<Command>);

#[derive(Debug)]
enum Command {
    /// A lone value (`.x`, `"text"`, `5`); only valid as a pipeline's first command.
    Value(Arg),
    /// A function call; in a pipeline the previous command's value is appended as the last argument.
    Call(Function, Vec<Arg>),
}

#[derive(Debug)]
enum Arg {
    Field(String),
    Text(String),
    Int(i64),
    Float(f64),
    /// A function named as an argument is called without arguments, as in Go.
    Call(Function),
    Pipeline(Box<TemplatePipeline>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Function {
    Line,
    ToLower,
    ToUpper,
    Title,
    TrimSpace,
    /// Go's `strings` argument order: the subject first.
    TrimPrefix,
    TrimSuffix,
    Trim,
    TrimLeft,
    TrimRight,
    Replace,
    /// Sprig's argument order: the subject last, so they read well in pipelines.
    SprigTrimPrefix,
    SprigTrimSuffix,
    SprigTrimAll,
    SprigReplace,
    Trunc,
    Substr,
    Default,
    Printf,
}

enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Function {
    fn lookup(name: &str) -> Result<(Function, Arity), String> {
        use Arity::{AtLeast, Exactly};
        Ok(match name {
            "__line__" => (Function::Line, Exactly(0)),
            "ToLower" | "lower" => (Function::ToLower, Exactly(1)),
            "ToUpper" | "upper" => (Function::ToUpper, Exactly(1)),
            "title" => (Function::Title, Exactly(1)),
            "TrimSpace" | "trim" => (Function::TrimSpace, Exactly(1)),
            "TrimPrefix" => (Function::TrimPrefix, Exactly(2)),
            "TrimSuffix" => (Function::TrimSuffix, Exactly(2)),
            "Trim" => (Function::Trim, Exactly(2)),
            "TrimLeft" => (Function::TrimLeft, Exactly(2)),
            "TrimRight" => (Function::TrimRight, Exactly(2)),
            "Replace" => (Function::Replace, Exactly(4)),
            "trimPrefix" => (Function::SprigTrimPrefix, Exactly(2)),
            "trimSuffix" => (Function::SprigTrimSuffix, Exactly(2)),
            "trimAll" => (Function::SprigTrimAll, Exactly(2)),
            "replace" => (Function::SprigReplace, Exactly(3)),
            "trunc" => (Function::Trunc, Exactly(2)),
            "substr" => (Function::Substr, Exactly(3)),
            "default" => (Function::Default, AtLeast(1)),
            "printf" => (Function::Printf, AtLeast(1)),
            "__timestamp__" => return Err("__timestamp__ is not supported".to_string()),
            other => return Err(format!("function {other:?} not defined or not supported")),
        })
    }

    fn check_arity(name: &str, arity: Arity, given: usize) -> Result<(), String> {
        let ok = match arity {
            Arity::Exactly(n) => given == n,
            Arity::AtLeast(n) => given >= n,
        };
        if ok { Ok(()) } else { Err(format!("wrong number of args for {name}: got {given}")) }
    }

    fn call(self, mut args: Vec<Value>, line: &str) -> Result<Value, String> {
        // Arity was checked when the template compiled; a short list is still an error, not a panic.
        let text = |args: &mut Vec<Value>, index: usize| -> Result<String, String> {
            let slot = args.get_mut(index).ok_or("missing argument")?;
            std::mem::replace(slot, Value::Int(0)).into_text()
        };
        let int = |args: &[Value], index: usize| -> Result<i64, String> {
            args.get(index).ok_or("missing argument")?.as_int()
        };
        Ok(Value::Text(match self {
            Function::Line => line.to_string(),
            Function::ToLower => text(&mut args, 0)?.to_lowercase(),
            Function::ToUpper => text(&mut args, 0)?.to_uppercase(),
            Function::Title => title(&text(&mut args, 0)?),
            Function::TrimSpace => text(&mut args, 0)?.trim().to_string(),
            Function::TrimPrefix => {
                let (subject, prefix) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_prefix(prefix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::TrimSuffix => {
                let (subject, suffix) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_suffix(suffix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::Trim => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_matches(|c| cutset.contains(c)).to_string()
            }
            Function::TrimLeft => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_start_matches(|c| cutset.contains(c)).to_string()
            }
            Function::TrimRight => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_end_matches(|c| cutset.contains(c)).to_string()
            }
            Function::Replace => {
                let (subject, old, new) = (text(&mut args, 0)?, text(&mut args, 1)?, text(&mut args, 2)?);
                match usize::try_from(int(&args, 3)?) {
                    Ok(count) => subject.replacen(old.as_str(), &new, count),
                    Err(_) => subject.replace(old.as_str(), &new),
                }
            }
            Function::SprigTrimPrefix => {
                let (prefix, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_prefix(prefix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::SprigTrimSuffix => {
                let (suffix, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_suffix(suffix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::SprigTrimAll => {
                let (cutset, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_matches(|c| cutset.contains(c)).to_string()
            }
            Function::SprigReplace => {
                let (old, new, subject) = (text(&mut args, 0)?, text(&mut args, 1)?, text(&mut args, 2)?);
                subject.replace(old.as_str(), &new)
            }
            Function::Trunc => {
                let count = int(&args, 0)?;
                let subject = text(&mut args, 1)?;
                truncate(&subject, count)
            }
            Function::Substr => {
                let (start, end) = (int(&args, 0)?, int(&args, 1)?);
                substring(&text(&mut args, 2)?, start, end)
            }
            Function::Default => {
                let given = args.drain(1..).next();
                let fallback = args.pop();
                return Ok(match (given, fallback) {
                    (Some(given), _) if !given.is_empty() => given,
                    (_, Some(fallback)) => fallback,
                    (Some(given), None) => given,
                    (None, None) => Value::Text(String::new()),
                });
            }
            Function::Printf => {
                let format = text(&mut args, 0)?;
                go_printf(&format, args.get(1..).unwrap_or_default())?
            }
        }))
    }
}

/// A template value. Go's templates are typed: a number where a string is expected is an error.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Text(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
        }
    }

    fn render(&self) -> String {
        match self {
            Value::Text(text) => text.clone(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => go_float(*f),
        }
    }

    fn into_text(self) -> Result<String, String> {
        match self {
            Value::Text(text) => Ok(text),
            other => Err(format!("wrong type for value; expected string; got {}", other.type_name())),
        }
    }

    fn as_int(&self) -> Result<i64, String> {
        match self {
            Value::Int(n) => Ok(*n),
            other => Err(format!("wrong type for value; expected int; got {}", other.type_name())),
        }
    }

    /// Sprig's notion of empty, for `default`.
    fn is_empty(&self) -> bool {
        match self {
            Value::Text(text) => text.is_empty(),
            Value::Int(n) => *n == 0,
            Value::Float(f) => *f == 0.0,
        }
    }
}

/// Go's `%v` for a float64: shortest representation, exponent form outside [1e-4, 1e21).
fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".to_string() } else { "-Inf".to_string() };
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e21).contains(&magnitude) {
        return value.to_string();
    }
    let formatted = format!("{value:e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => formatted,
    }
}

fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        if !in_word && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        in_word = c.is_alphanumeric() || c == '\'';
    }
    out
}

/// Loki's `trunc`: the first `count` characters, or the last `-count` when negative.
fn truncate(text: &str, count: i64) -> String {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len() as i64;
    if count < 0 && len + count > 0 {
        return chars[(len + count) as usize..].iter().collect();
    }
    if count >= 0 && len > count {
        return chars[..count as usize].iter().collect();
    }
    text.to_string()
}

/// Loki's `substr`: characters `[start, end)`, with Loki's handling of out-of-range bounds.
fn substring(text: &str, start: i64, end: i64) -> String {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len() as i64;
    let end = end.min(len);
    let start = start.min(len);
    if start < 0 {
        return if end < 0 { String::new() } else { chars[..end as usize].iter().collect() };
    }
    if end < 0 {
        return chars[start as usize..].iter().collect();
    }
    if start > end {
        return String::new();
    }
    chars[start as usize..end as usize].iter().collect()
}

/// Go's `fmt.Sprintf` for the verbs templates use (`%s %v %d %q %f %x %%`), with flags, width and
/// precision; a verb that does not fit its argument renders Go's `%!v(type=value)` marker.
fn go_printf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next_arg = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let width = read_count(&mut chars).unwrap_or(0);
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(read_count(&mut chars).unwrap_or(0))
        } else {
            None
        };
        if width > MAX_PRINTF_WIDTH || precision.is_some_and(|p| p > MAX_PRINTF_WIDTH) {
            return Err(format!("printf width or precision above {MAX_PRINTF_WIDTH}"));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next_arg += 1;
        let numeric = matches!(arg, Value::Int(_) | Value::Float(_));
        let signed = |text: String, negative: bool| if plus && !negative { format!("+{text}") } else { text };
        let body = match (verb, arg) {
            ('s' | 'v', Value::Text(text)) => match precision {
                Some(precision) => text.chars().take(precision).collect(),
                None => text.clone(),
            },
            ('q', Value::Text(text)) => go_quote(text),
            ('x', Value::Text(text)) => text.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Value::Text(text)) => text.bytes().map(|b| format!("{b:02X}")).collect(),
            ('v' | 'd', Value::Int(n)) => signed(n.to_string(), *n < 0),
            ('x', Value::Int(n)) => signed(format!("{n:x}"), *n < 0),
            ('X', Value::Int(n)) => signed(format!("{n:X}"), *n < 0),
            ('v', Value::Float(f)) => signed(go_float(*f), *f < 0.0),
            ('f' | 'F', Value::Float(f)) => signed(format!("{:.*}", precision.unwrap_or(6), f), *f < 0.0),
            ('e', Value::Float(f)) => signed(go_float_exp(*f, precision.unwrap_or(6)), *f < 0.0),
            (verb, arg) => format!("%!{verb}({}={})", arg.type_name(), arg.render()),
        };
        let pad = width.saturating_sub(body.chars().count());
        if pad == 0 {
            out.push_str(&body);
        } else if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            let (sign, digits) = match body.chars().next() {
                Some(sign @ ('-' | '+')) => (Some(sign), &body[1..]),
                _ => (None, body.as_str()),
            };
            out.extend(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    if next_arg < args.len() {
        let extra: Vec<String> =
            args[next_arg..].iter().map(|arg| format!("{}={}", arg.type_name(), arg.render())).collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

/// A printf width or precision; saturating, so a huge one is refused rather than overflowing.
fn read_count(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut number: Option<usize> = None;
    while let Some(digit) = chars.peek().and_then(|c| c.to_digit(10)) {
        number = Some(number.unwrap_or(0).saturating_mul(10).saturating_add(digit as usize));
        chars.next();
    }
    number
}

fn go_float_exp(value: f64, precision: usize) -> String {
    let formatted = format!("{value:.precision$e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => formatted,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(String),
    Ident(String),
    Text(String),
    Int(i64),
    Float(f64),
    Pipe,
    Open,
    Close,
}

fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

impl Template {
    pub(super) fn compile(source: &str) -> Result<Template, PipelineError> {
        Self::parse(source).map_err(|message| PipelineError::InvalidTemplate { template: source.to_string(), message })
    }

    fn parse(source: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut pos = 0;
        let mut trim_next_text = false;
        while pos < source.len() {
            let Some(offset) = source[pos..].find("{{") else {
                let mut text = &source[pos..];
                if trim_next_text {
                    text = text.trim_start_matches(is_go_space);
                }
                if !text.is_empty() {
                    nodes.push(TemplateNode::Text(text.to_string()));
                }
                break;
            };
            let mut text = &source[pos..pos + offset];
            if trim_next_text {
                text = text.trim_start_matches(is_go_space);
            }
            let mut action = pos + offset + 2;
            // `{{- ` trims the whitespace before the action.
            if source[action..].starts_with('-') && source[action + 1..].starts_with(is_go_space) {
                text = text.trim_end_matches(is_go_space);
                action += 1;
            }
            if !text.is_empty() {
                nodes.push(TemplateNode::Text(text.to_string()));
            }
            let (tokens, end, trim) = lex_action(source, action)?;
            if let Some(tokens) = tokens {
                let mut index = 0;
                let pipeline = parse_pipeline(&tokens, &mut index, false)?;
                nodes.push(TemplateNode::Action(pipeline));
            }
            pos = end;
            trim_next_text = trim;
        }
        Ok(Template { nodes })
    }

    pub(super) fn render(&self, labels: &Labels, line: &str) -> Result<String, String> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                TemplateNode::Text(text) => out.push_str(text),
                TemplateNode::Action(pipeline) => out.push_str(&pipeline.eval(labels, line)?.render()),
            }
        }
        Ok(out)
    }
}

/// The tokens of the action starting at byte `start` (just after `{{` or `{{-`), where it ends
/// (after `}}`), and whether it trims the whitespace after it (`-}}`). `None` for a comment.
fn lex_action(source: &str, start: usize) -> Result<(Option<Vec<Token>>, usize, bool), String> {
    let mut tokens = Vec::new();
    let mut pos = start;
    let comment_at = pos + source[pos..].len() - source[pos..].trim_start_matches(is_go_space).len();
    if source[comment_at..].starts_with("/*") {
        let close = source[comment_at..].find("*/").ok_or("unclosed comment")?;
        pos = comment_at + close + 2;
        let rest = &source[pos..];
        let after_space = rest.trim_start_matches(is_go_space);
        let skipped = rest.len() - after_space.len();
        if skipped > 0 && after_space.starts_with("-}}") {
            return Ok((None, pos + skipped + 3, true));
        }
        if after_space.starts_with("}}") {
            return Ok((None, pos + skipped + 2, false));
        }
        return Err("comment ends before closing delimiter".to_string());
    }
    loop {
        let rest = &source[pos..];
        let after_space = rest.trim_start_matches(is_go_space);
        let skipped = rest.len() - after_space.len();
        pos += skipped;
        if skipped > 0 && after_space.starts_with("-}}") {
            return Ok((Some(tokens), pos + 3, true));
        }
        if after_space.starts_with("}}") {
            return Ok((Some(tokens), pos + 2, false));
        }
        let Some(c) = after_space.chars().next() else { return Err("unclosed action".to_string()) };
        match c {
            '|' => {
                tokens.push(Token::Pipe);
                pos += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                pos += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                pos += 1;
            }
            '"' => {
                let (text, len) = lex_go_string(after_space)?;
                tokens.push(Token::Text(text));
                pos += len;
            }
            '`' => {
                let close = after_space[1..].find('`').ok_or("unterminated raw string")?;
                tokens.push(Token::Text(after_space[1..=close].to_string()));
                pos += close + 2;
            }
            '.' => {
                let name: String = after_space[1..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name.is_empty() {
                    return Err("`.` (the whole label map) is not supported; use .label".to_string());
                }
                pos += 1 + name.len();
                if source[pos..].starts_with('.') {
                    return Err(format!("nested field access on .{name} is not supported"));
                }
                tokens.push(Token::Field(name));
            }
            '$' => return Err("template variables are not supported".to_string()),
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+') && after_space[1..].starts_with(|d: char| d.is_ascii_digit())) =>
            {
                let len = 1 + after_space[1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                    .unwrap_or(after_space.len() - 1);
                let literal = &after_space[..len];
                let token = if let Ok(n) = literal.parse::<i64>() {
                    Token::Int(n)
                } else if let Ok(f) = literal.parse::<f64>() {
                    Token::Float(f)
                } else {
                    return Err(format!("bad number syntax: {literal:?}"));
                };
                tokens.push(token);
                pos += len;
            }
            c if c.is_alphabetic() || c == '_' => {
                let name: String = after_space.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                pos += name.len();
                if matches!(
                    name.as_str(),
                    "if" | "else"
                        | "end"
                        | "range"
                        | "with"
                        | "define"
                        | "template"
                        | "block"
                        | "break"
                        | "continue"
                        | "nil"
                        | "true"
                        | "false"
                ) {
                    return Err(format!("`{name}` is not supported in templates"));
                }
                tokens.push(Token::Ident(name));
            }
            other => return Err(format!("unexpected {other:?} in action")),
        }
    }
}

/// A Go interpreted string literal at the start of `text`: its value and its length in bytes.
fn lex_go_string(text: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((out, at + 1)),
            '\n' => return Err("newline in string".to_string()),
            '\\' => {
                let Some((_, escape)) = chars.next() else { break };
                match escape {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let digits = match escape {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| is_hex(&hex, digits))
                            .ok_or_else(|| format!("invalid \\{escape} escape in string"))?;
                        out.push(char::from_u32(code).ok_or_else(|| format!("invalid code point {code:#x}"))?);
                    }
                    other => return Err(format!("unknown escape sequence \\{other}")),
                }
            }
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".to_string())
}

/// One operand while a command is parsed: identifiers become calls once their position is known.
enum Operand {
    Ident(String),
    Arg(Arg),
}

fn parse_pipeline(tokens: &[Token], index: &mut usize, nested: bool) -> Result<TemplatePipeline, String> {
    let mut commands = Vec::new();
    loop {
        commands.push(parse_command(tokens, index, !commands.is_empty())?);
        match tokens.get(*index) {
            Some(Token::Pipe) => *index += 1,
            Some(Token::Close) if nested => break,
            None if !nested => break,
            None => return Err("unclosed left paren".to_string()),
            Some(token) => return Err(format!("unexpected {token:?} in action")),
        }
    }
    Ok(TemplatePipeline(commands))
}

fn parse_command(tokens: &[Token], index: &mut usize, piped: bool) -> Result<Command, String> {
    let mut operands = Vec::new();
    while let Some(token) = tokens.get(*index) {
        *index += 1;
        operands.push(match token {
            Token::Pipe | Token::Close => {
                *index -= 1;
                break;
            }
            Token::Open => {
                let inner = parse_pipeline(tokens, index, true)?;
                *index += 1;
                Operand::Arg(Arg::Pipeline(Box::new(inner)))
            }
            Token::Field(name) => Operand::Arg(Arg::Field(name.clone())),
            Token::Ident(name) => Operand::Ident(name.clone()),
            Token::Text(text) => Operand::Arg(Arg::Text(text.clone())),
            Token::Int(n) => Operand::Arg(Arg::Int(*n)),
            Token::Float(f) => Operand::Arg(Arg::Float(*f)),
        });
    }
    let mut operands = operands.into_iter();
    let Some(first) = operands.next() else { return Err("missing value for command".to_string()) };
    match first {
        Operand::Ident(name) => {
            let (function, arity) = Function::lookup(&name)?;
            let args: Vec<Arg> = operands
                .map(|operand| match operand {
                    Operand::Arg(arg) => Ok(arg),
                    Operand::Ident(name) => {
                        let (function, arity) = Function::lookup(&name)?;
                        Function::check_arity(&name, arity, 0)?;
                        Ok(Arg::Call(function))
                    }
                })
                .collect::<Result<_, String>>()?;
            Function::check_arity(&name, arity, args.len() + usize::from(piped))?;
            Ok(Command::Call(function, args))
        }
        Operand::Arg(arg) => {
            if operands.next().is_some() {
                return Err("can't give argument to non-function".to_string());
            }
            if piped {
                return Err("non executable command in pipeline stage".to_string());
            }
            Ok(Command::Value(arg))
        }
    }
}

impl TemplatePipeline {
    fn eval(&self, labels: &Labels, line: &str) -> Result<Value, String> {
        let mut previous: Option<Value> = None;
        for command in &self.0 {
            previous = Some(match command {
                Command::Value(arg) => arg.eval(labels, line)?,
                Command::Call(function, args) => {
                    let mut values = args.iter().map(|arg| arg.eval(labels, line)).collect::<Result<Vec<_>, _>>()?;
                    values.extend(previous.take());
                    function.call(values, line)?
                }
            });
        }
        previous.ok_or_else(|| "empty pipeline".to_string())
    }
}

impl Arg {
    fn eval(&self, labels: &Labels, line: &str) -> Result<Value, String> {
        Ok(match self {
            // Loki runs templates with missingkey=zero: a missing label renders as "".
            Arg::Field(name) => Value::Text(labels.get(name).cloned().unwrap_or_default()),
            Arg::Text(text) => Value::Text(text.clone()),
            Arg::Int(n) => Value::Int(*n),
            Arg::Float(f) => Value::Float(*f),
            Arg::Call(function) => function.call(Vec::new(), line)?,
            Arg::Pipeline(pipeline) => pipeline.eval(labels, line)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printf_follows_go_fmt() {
        let text = |s: &str| Value::Text(s.to_string());
        assert_eq!(go_printf("%s=%v", &[text("a"), Value::Int(1)]), Ok("a=1".to_string()));
        assert_eq!(
            go_printf("%6.2f|%+d|%x", &[Value::Float(1.23456), Value::Int(5), text("hi")]),
            Ok("  1.23|+5|6869".into())
        );
        assert_eq!(go_printf("%d", &[text("x")]), Ok("%!d(string=x)".to_string()));
        assert_eq!(go_printf("%s %s", &[text("x")]), Ok("x %!s(MISSING)".to_string()));
        assert_eq!(go_printf("%s", &[text("x"), Value::Int(2)]), Ok("x%!(EXTRA int=2)".to_string()));
        assert_eq!(go_printf("100%%", &[]), Ok("100%".to_string()));
        assert!(go_printf("%99999999s", &[text("x")]).is_err());
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.5), "0.5");
    }
}
