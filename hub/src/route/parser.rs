//! Parser: tokens to a checked route — source path, typed condition tree and endpoint.
//!
//! The route shape follows `Route.g4` (`[SELECT *] FROM path [WHERE condition] INTO sink`),
//! except that text after the sink is an error: IoT Edge silently ignores it, which turned
//! `… INTO $upstream WHERE x` into an unconditional route (iotedge issue #4353). Conditions
//! are parsed by precedence climbing over the operator levels of `Condition.g4`; prefix `-`
//! and `NOT` bind tighter than every binary operator, as ANTLR orders them, so `NOT a = b`
//! is `(NOT a) = b`. Each node is type-checked as it is built (see `types.rs`).
//!
//! Recursion is bounded twice: [`NESTING_DEPTH_MAX`] limits how deeply parentheses and call
//! arguments nest while parsing (binary and prefix operators are handled with explicit stacks,
//! not recursion), and [`EXPRESSION_HEIGHT_MAX`] limits the height of the finished tree (long
//! `a OR b OR …` chains and `NOT NOT …` grow it without nesting), which bounds evaluation.
//!
//! One more departure from IoT Edge: a `/*` right after the source path, which both lexers
//! read as a comment up to the next `*/` (silently dropping the condition between), is refused.

use std::borrow::Cow;

use super::ast::{Expr, Typed};
use super::builtins::Builtin;
use super::eval::Condition;
use super::jsonpath::JsonPath;
use super::lexer::{self, Token, TokenKind as K};
use super::sink;
use super::source::Source;
use super::types::{self, BinaryOp, StaticType};
use super::value::Value;
use super::{Endpoint, EXPRESSION_HEIGHT_MAX, NESTING_DEPTH_MAX};

/// The parts of a parsed route.
pub(crate) struct ParsedRoute {
    pub source: Source,
    pub condition: Option<Condition>,
    pub endpoint: Endpoint,
}

/// A parse or type error at a byte offset of the route text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub offset: usize,
    pub message: String,
}

/// Parses and checks a whole route.
pub(crate) fn parse_route(text: &str) -> Result<ParsedRoute, ParseError> {
    let mut parser = Parser { text, tokens: lexer::tokenize(text), position: 0, nesting: 0, references_body: false };
    parser.route()
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token<'a>>,
    position: usize,
    /// Parentheses, calls and prefix operators currently open.
    nesting: usize,
    references_body: bool,
}

/// A token for messages: quoted, shortened if long.
fn describe(token: Token<'_>) -> String {
    const SHOWN_CHARS_MAX: usize = 32;
    if token.kind == K::Eof {
        return "the end of the route".to_string();
    }
    let shown: String = token.text.chars().take(SHOWN_CHARS_MAX).collect();
    let ellipsis = if shown.len() < token.text.len() { "…" } else { "" };
    format!("'{}{ellipsis}'", super::escape_controls(&shown))
}

fn binary_op(kind: K) -> Option<BinaryOp> {
    Some(match kind {
        K::Star => BinaryOp::Mul,
        K::Slash => BinaryOp::Div,
        K::Percent => BinaryOp::Mod,
        K::Plus => BinaryOp::Add,
        K::Minus => BinaryOp::Sub,
        K::Concat => BinaryOp::Concat,
        K::Lt => BinaryOp::Lt,
        K::Le => BinaryOp::Le,
        K::Gt => BinaryOp::Gt,
        K::Ge => BinaryOp::Ge,
        K::Eq => BinaryOp::Eq,
        K::Ne => BinaryOp::Ne,
        K::And => BinaryOp::And,
        K::Or => BinaryOp::Or,
        K::Coalesce => BinaryOp::Coalesce,
        _ => return None,
    })
}

/// Tokens that may form a path segment. IoT Edge takes only identifiers and `*`; we also
/// take other words it lexes differently (`/messages/modules/1/*`, `/messages/modules/$x`),
/// but not keywords, so that `FROM /messages/ INTO …` reports the missing segment.
fn is_path_item(kind: K) -> bool {
    matches!(
        kind,
        K::Star
            | K::Ident
            | K::SysProp
            | K::QueryPath
            | K::Integer
            | K::Hex
            | K::Real
            | K::True
            | K::False
            | K::Null
            | K::Undefined
    )
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        let end = Token { kind: K::Eof, text: "", offset: self.text.len() };
        self.tokens.get(self.position).copied().unwrap_or(end)
    }

    fn advance(&mut self) -> Token<'a> {
        let token = self.peek();
        if token.kind != K::Eof {
            self.position += 1;
        }
        token
    }

    fn previous_end(&self) -> usize {
        self.position.checked_sub(1).and_then(|i| self.tokens.get(i)).map_or(0, Token::end)
    }

    fn error_at(token: Token<'_>, message: impl Into<String>) -> ParseError {
        ParseError { offset: token.offset, message: message.into() }
    }

    fn expected<T>(&self, what: &str) -> Result<T, ParseError> {
        let found = self.peek();
        Err(Self::error_at(found, format!("expected {what}, found {}", describe(found))))
    }

    fn expect(&mut self, kind: K, what: &str) -> Result<Token<'a>, ParseError> {
        if self.peek().kind == kind {
            Ok(self.advance())
        } else {
            self.expected(what)
        }
    }

    fn route(&mut self) -> Result<ParsedRoute, ParseError> {
        if self.peek().kind == K::Select {
            self.advance();
            self.expect(K::Star, "'*' after SELECT")?;
        }
        self.expect(K::From, "FROM")?;
        let source = self.source()?;
        let mut condition = None;
        if self.peek().kind == K::Where {
            self.advance();
            let start = self.peek().offset;
            let typed = self.expression()?;
            let text = self.text.get(start..self.previous_end()).unwrap_or_default();
            condition = Some(Condition::new(typed.expr, text, self.references_body));
        }
        if self.peek().kind != K::Into {
            return self.expected(if condition.is_some() { "an operator or INTO" } else { "WHERE or INTO" });
        }
        self.advance();
        let endpoint = self.sink()?;
        if self.peek().kind != K::Eof {
            let extra = self.peek();
            return Err(Self::error_at(extra, format!("unexpected {} after the endpoint", describe(extra))));
        }
        Ok(ParsedRoute { source, condition, endpoint })
    }

    /// `'/' item ('/' item)*`, kept as written without whitespace.
    fn source(&mut self) -> Result<Source, ParseError> {
        let after_from = self.previous_end();
        if self.peek().kind != K::Slash {
            let gap = self.text.get(after_from..).unwrap_or_default();
            self.refuse_comment(after_from + gap.len() - gap.trim_start_matches([' ', '\t', '\r', '\n']).len())?;
            return self.expected("a source path such as /messages/*");
        }
        let mut path = String::new();
        while self.peek().kind == K::Slash {
            self.advance();
            if !is_path_item(self.peek().kind) {
                return self.expected("a path segment after '/'");
            }
            path.push('/');
            path.push_str(self.advance().text);
        }
        self.refuse_comment(self.previous_end())?;
        Ok(Source::new(&path))
    }

    /// A `/*` where a source path goes on (`FROM /messages/* WHERE … /* note */`) is, for
    /// the lexer and for IoT Edge, a comment running to the next `*/`: it silently cuts the
    /// path and swallows whatever follows, often the whole condition. Refuse it instead.
    fn refuse_comment(&self, offset: usize) -> Result<(), ParseError> {
        if self.text.get(offset..).is_some_and(|rest| rest.starts_with("/*")) {
            let message = "'/*' here opens a comment up to the next '*/' (as IoT Edge reads it), cutting the source \
                           path short; put a space before the comment or remove it";
            return Err(ParseError { offset, message: message.to_string() });
        }
        Ok(())
    }

    /// `$upstream` or `BrokeredEndpoint("/modules/m/inputs/i")`.
    fn sink(&mut self) -> Result<Endpoint, ParseError> {
        let token = self.peek();
        match token.kind {
            K::SysProp => {
                self.advance();
                sink::system_endpoint(token.text).map_err(|message| Self::error_at(token, message))
            }
            K::Ident => {
                self.advance();
                self.expect(K::LParen, "'(' after the endpoint function")?;
                let address = self.expect(K::Str, "a quoted endpoint address")?;
                self.expect(K::RParen, "')' after the endpoint address")?;
                // IoT Edge takes the address as written between the quotes, escapes and all.
                let raw = address.text.get(1..address.text.len().saturating_sub(1)).unwrap_or_default();
                sink::function_endpoint(token.text, raw).map_err(|message| Self::error_at(token, message))
            }
            _ => self.expected("an endpoint ($upstream or BrokeredEndpoint(\"/modules/{module}/inputs/{input}\"))"),
        }
    }

    /// Enters one more level of parentheses or call arguments, refusing to pass
    /// [`NESTING_DEPTH_MAX`]. The caller leaves with `self.nesting -= 1`.
    fn enter(&mut self, at: Token<'_>) -> Result<(), ParseError> {
        if self.nesting >= NESTING_DEPTH_MAX {
            return Err(Self::error_at(at, format!("expression nests more than {NESTING_DEPTH_MAX} levels deep")));
        }
        self.nesting += 1;
        Ok(())
    }

    /// A new node over children of height `child_height`, refusing to pass
    /// [`EXPRESSION_HEIGHT_MAX`].
    fn node(at: Token<'_>, expr: Expr, ty: StaticType, child_height: usize) -> Result<Typed, ParseError> {
        let height = child_height + 1;
        if height > EXPRESSION_HEIGHT_MAX {
            return Err(Self::error_at(at, format!("expression is more than {EXPRESSION_HEIGHT_MAX} operators deep")));
        }
        Ok(Typed { expr, ty, height })
    }

    /// Operands and binary operators, reduced by precedence with explicit stacks
    /// (shunting-yard) instead of one recursive call per precedence level: a nesting level
    /// then costs four small stack frames, not a dozen.
    fn expression(&mut self) -> Result<Typed, ParseError> {
        let mut operands = vec![self.unary()?];
        let mut operators: Vec<(BinaryOp, Token<'a>)> = Vec::new();
        while let Some(op) = binary_op(self.peek().kind) {
            let token = self.advance();
            // Left-associative: first reduce what binds at least as tightly.
            while operators.last().is_some_and(|(top, _)| top.precedence() >= op.precedence()) {
                Self::reduce(&mut operators, &mut operands)?;
            }
            operators.push((op, token));
            operands.push(self.unary()?);
        }
        while !operators.is_empty() {
            Self::reduce(&mut operators, &mut operands)?;
        }
        operands.pop().ok_or_else(|| Self::error_at(self.peek(), "expected an expression"))
    }

    /// Replaces the top operator and its two operands with one checked node.
    fn reduce(operators: &mut Vec<(BinaryOp, Token<'_>)>, operands: &mut Vec<Typed>) -> Result<(), ParseError> {
        // The stacks always hold one more operand than operators.
        let (Some((op, token)), Some(right)) = (operators.pop(), operands.pop()) else {
            return Ok(());
        };
        let Some(left) = operands.pop() else {
            return Err(Self::error_at(token, "expected an expression before the operator"));
        };
        let (ty, mode) = types::binary(op, token.text, left.ty, right.ty).map_err(|m| Self::error_at(token, m))?;
        let height = left.height.max(right.height);
        let expr = Expr::Binary { op, left: Box::new(left.expr), right: Box::new(right.expr), mode };
        operands.push(Self::node(token, expr, ty, height)?);
        Ok(())
    }

    /// Prefix `-` and `NOT` (collected, not recursed into), then a primary expression.
    fn unary(&mut self) -> Result<Typed, ParseError> {
        let mut prefixes = Vec::new();
        while matches!(self.peek().kind, K::Minus | K::Not) {
            prefixes.push(self.advance());
        }
        let mut operand = self.primary()?;
        for token in prefixes.into_iter().rev() {
            operand = Self::prefix(token, operand)?;
        }
        Ok(operand)
    }

    fn prefix(token: Token<'_>, operand: Typed) -> Result<Typed, ParseError> {
        if token.kind == K::Minus {
            let ty = types::negate(operand.ty).map_err(|m| Self::error_at(token, m))?;
            Self::node(token, Expr::Negate(Box::new(operand.expr)), ty, operand.height)
        } else {
            let (ty, mode) = types::not(operand.ty).map_err(|m| Self::error_at(token, m))?;
            Self::node(token, Expr::Not { operand: Box::new(operand.expr), mode }, ty, operand.height)
        }
    }

    /// Kept small: it is on the recursive path, so every local here costs stack per level.
    fn primary(&mut self) -> Result<Typed, ParseError> {
        let token = self.peek();
        match token.kind {
            K::LParen => self.parenthesized(),
            K::Ident if self.tokens.get(self.position + 1).is_some_and(|next| next.kind == K::LParen) => self.call(),
            _ => self.leaf(),
        }
    }

    fn parenthesized(&mut self) -> Result<Typed, ParseError> {
        let open = self.advance();
        self.enter(open)?;
        let inner = self.expression();
        self.nesting -= 1;
        let inner = inner?;
        self.expect(K::RParen, "')'")?;
        Ok(inner)
    }

    /// A literal or a property.
    fn leaf(&mut self) -> Result<Typed, ParseError> {
        let token = self.peek();
        let literal = |value: Value<'static>, ty: StaticType| Typed::leaf(Expr::Literal(value), ty);
        let typed = match token.kind {
            K::Ident => Typed::leaf(Expr::AppProperty(token.text.into()), StaticType::String),
            K::Str => literal(Value::String(Cow::Owned(lexer::unescape(token.text))), StaticType::String),
            K::Integer | K::Real => number_literal(token.text.parse::<f64>().ok()),
            // .NET parses hex into a signed 64-bit integer: 16 digits may be negative.
            K::Hex => number_literal(u64::from_str_radix(&token.text[2..], 16).ok().map(|v| v as i64 as f64)),
            K::True => literal(Value::Bool(true), StaticType::Bool),
            K::False => literal(Value::Bool(false), StaticType::Bool),
            K::Null => literal(Value::Null, StaticType::Null),
            K::Undefined => literal(Value::Undefined, StaticType::Undefined),
            K::SysProp => {
                self.advance();
                return self.property(token, false);
            }
            K::LBrace => {
                self.advance();
                let property = self.expect(K::SysProp, "a $property after '{'")?;
                self.expect(K::RBrace, "'}'")?;
                return self.property(property, true);
            }
            K::Unknown => return Err(Self::error_at(token, format!("invalid symbol {}", describe(token)))),
            K::UnterminatedStr => return Err(Self::error_at(token, "unterminated string (or invalid escape in it)")),
            _ => return self.expected("an expression"),
        };
        self.advance();
        Ok(typed)
    }

    /// `name(arguments)`: a built-in function call, checked against its signatures.
    fn call(&mut self) -> Result<Typed, ParseError> {
        let name = self.advance();
        let open = self.advance();
        self.enter(open)?;
        let args = self.arguments(name);
        self.nesting -= 1;
        Self::checked_call(name, args?)
    }

    fn checked_call(name: Token<'_>, args: Vec<Typed>) -> Result<Typed, ParseError> {
        let function = Builtin::lookup(name.text)
            .ok_or_else(|| Self::error_at(name, format!("unknown built-in function '{}'", name.text)))?;
        let arg_types: Vec<StaticType> = args.iter().map(|arg| arg.ty).collect();
        let ty = function.check(name.text, &arg_types).map_err(|m| Self::error_at(name, m))?;
        let first_type = arg_types.first().copied().unwrap_or(StaticType::Undefined);
        let height = args.iter().map(|arg| arg.height).max().unwrap_or(0);
        let args = args.into_iter().map(|arg| arg.expr).collect();
        Self::node(name, Expr::Call { function, args, first_type }, ty, height)
    }

    /// `expr (',' expr)* ')'` or just `')'`.
    fn arguments(&mut self, name: Token<'_>) -> Result<Vec<Typed>, ParseError> {
        let mut args = Vec::new();
        if self.peek().kind == K::RParen {
            self.advance();
            return Ok(args);
        }
        loop {
            args.push(self.expression()?);
            match self.peek().kind {
                K::Comma => {
                    self.advance();
                }
                K::RParen => {
                    self.advance();
                    return Ok(args);
                }
                _ => return self.expected(&format!("',' or ')' in the arguments of '{}'", name.text)),
            }
        }
    }

    /// `$name` (or `{$name}` when `escaped`): system property, `$body.` query, or — for names
    /// with brackets that are not body queries — undefined, as IoT Edge resolves them.
    fn property(&mut self, token: Token<'_>, escaped: bool) -> Result<Typed, ParseError> {
        const BODY_PREFIX: &str = "$body.";
        let name = token.text;
        let has_brackets = name.contains(['[', ']']);
        if name.get(..BODY_PREFIX.len()).is_some_and(|head| head.eq_ignore_ascii_case(BODY_PREFIX)) {
            let path = JsonPath::parse(&name[BODY_PREFIX.len()..])
                .map_err(|m| Self::error_at(token, format!("invalid $body query: {m}")))?;
            self.references_body = true;
            let app_property = (!escaped && !has_brackets).then(|| name.into());
            return Ok(Typed::leaf(Expr::Body { path, app_property }, StaticType::Dynamic));
        }
        if has_brackets {
            return Ok(Typed::leaf(Expr::Literal(Value::Undefined), StaticType::Undefined));
        }
        let app_property = (!escaped).then(|| name.into());
        Ok(Typed::leaf(Expr::SystemProperty { name: name[1..].into(), app_property }, StaticType::String))
    }
}

/// A number literal IoT Edge could not parse (`e5`, a hex overflow) is `undefined`, typed so.
fn number_literal(parsed: Option<f64>) -> Typed {
    match parsed {
        Some(n) => Typed::leaf(Expr::Literal(Value::number(n)), StaticType::Number),
        None => Typed::leaf(Expr::Literal(Value::Undefined), StaticType::Undefined),
    }
}
