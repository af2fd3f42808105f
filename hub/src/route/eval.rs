//! Evaluating a condition against one message.
//!
//! An [`EvalContext`] wraps the message for the evaluation of every route of a table, so the
//! body is parsed at most once per message, and only when a `$body` query is reached.

use std::borrow::Cow;
use std::cell::OnceCell;

use super::ast::Expr;
use super::body::parse_json_body;
use super::types::BinaryOp;
use super::value::{self, Value};
use super::RoutableMessage;

/// One message under evaluation, with its lazily parsed JSON body.
pub(crate) struct EvalContext<'m> {
    message: &'m dyn RoutableMessage,
    /// `None` inside once parsed means "not queryable": wrong content type or encoding, or
    /// not a JSON object.
    body: OnceCell<Option<serde_json::Value>>,
}

impl<'m> EvalContext<'m> {
    pub fn new(message: &'m dyn RoutableMessage) -> EvalContext<'m> {
        EvalContext { message, body: OnceCell::new() }
    }

    pub fn message(&self) -> &'m dyn RoutableMessage {
        self.message
    }

    fn body(&self) -> Option<&serde_json::Value> {
        self.body.get_or_init(|| parse_json_body(self.message)).as_ref()
    }

    /// Whether the body has been parsed (for tests of laziness).
    #[cfg(test)]
    pub fn body_parsed(&self) -> bool {
        self.body.get().is_some()
    }
}

/// A compiled `WHERE` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    expr: Expr,
    text: Box<str>,
    references_body: bool,
}

impl Condition {
    pub(crate) fn new(expr: Expr, text: &str, references_body: bool) -> Condition {
        Condition { expr, text: text.into(), references_body }
    }

    /// The condition as written in the route.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the condition contains a `$body` query.
    pub fn references_body(&self) -> bool {
        self.references_body
    }

    /// Whether the condition is exactly `true` for `message` (undefined, null and false are
    /// all "no").
    pub fn evaluate(&self, message: &dyn RoutableMessage) -> bool {
        self.is_true(&EvalContext::new(message))
    }

    pub(crate) fn is_true(&self, context: &EvalContext<'_>) -> bool {
        matches!(eval(&self.expr, context), Value::Bool(true))
    }

    /// The raw value, for tests of the evaluator.
    #[cfg(test)]
    pub(crate) fn value<'a>(&'a self, context: &'a EvalContext<'_>) -> Value<'a> {
        eval(&self.expr, context)
    }
}

fn property(value: Option<&str>) -> Value<'_> {
    value.map_or(Value::Undefined, |s| Value::String(Cow::Borrowed(s)))
}

/// Evaluates `expr`. Recursion depth is the tree height, which the parser bounds.
fn eval<'a>(expr: &'a Expr, context: &'a EvalContext<'_>) -> Value<'a> {
    let message = context.message();
    match expr {
        Expr::Literal(value) => value.borrowed(),
        Expr::AppProperty(name) => property(message.application_property(name)),
        Expr::SystemProperty { name, app_property } => {
            match app_property.as_deref().and_then(|app| message.application_property(app)) {
                Some(value) => property(Some(value)),
                None => property(message.system_property(name)),
            }
        }
        Expr::Body { path, app_property } => {
            if let Some(value) = app_property.as_deref().and_then(|app| message.application_property(app)) {
                return property(Some(value));
            }
            match context.body() {
                None => Value::Undefined,
                // A path that selects nothing is null, not undefined (`JsonMessageQueryValueProvider`).
                Some(root) => path.lookup(root).map_or(Value::Null, Value::from_json),
            }
        }
        Expr::Negate(operand) => value::negate(&eval(operand, context)),
        Expr::Not { operand, mode } => value::not(&eval(operand, context), mode.dynamic),
        Expr::Binary { op, left, right, mode } => {
            let left = eval(left, context);
            match op {
                BinaryOp::And if mode.short_circuit && left == Value::Bool(false) => left,
                BinaryOp::Or if mode.short_circuit && left == Value::Bool(true) => left,
                BinaryOp::And => value::and(&left, &eval(right, context), mode.dynamic),
                BinaryOp::Or => value::or(&left, &eval(right, context), mode.dynamic),
                BinaryOp::Coalesce if left.is_defined() => left,
                BinaryOp::Coalesce => eval(right, context),
                BinaryOp::Concat => value::concat(left, &eval(right, context)),
                BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne => {
                    value::compare(*op, &left, &eval(right, context))
                }
                BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod | BinaryOp::Add | BinaryOp::Sub => {
                    value::arithmetic(*op, &left, &eval(right, context))
                }
            }
        }
        Expr::Call { function, args, first_type } => {
            // Most functions take at most three arguments: evaluate those without allocating.
            if args.len() <= 3 {
                let mut values = [Value::Undefined, Value::Undefined, Value::Undefined];
                for (slot, arg) in values.iter_mut().zip(args) {
                    *slot = eval(arg, context);
                }
                function.apply(&values[..args.len()], *first_type)
            } else {
                let values: Vec<Value<'a>> = args.iter().map(|arg| eval(arg, context)).collect();
                function.apply(&values, *first_type)
            }
        }
    }
}
