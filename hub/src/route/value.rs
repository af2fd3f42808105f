//! Run-time values and the operator semantics of IoT Edge's condition language.
//!
//! Values are undefined, null, bool, number or string. IoT Edge represents an undefined number
//! as NaN (`Undefined.cs`), so any arithmetic that yields NaN (`0/0`, `sqrt(-1)`) is undefined;
//! infinities are ordinary numbers. Apart from the few operators below that look at the left
//! operand alone, an undefined operand makes the result undefined, and a route matches only
//! when its condition is exactly `true`.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::types::BinaryOp;

/// A run-time value. Strings borrow from the message, the body or the route when they can.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Undefined,
    Null,
    Bool(bool),
    /// Never NaN: see [`Value::number`].
    Number(f64),
    String(Cow<'a, str>),
}

impl<'a> Value<'a> {
    /// A number, or undefined for NaN.
    pub fn number(n: f64) -> Value<'a> {
        if n.is_nan() {
            Value::Undefined
        } else {
            Value::Number(n)
        }
    }

    /// The same value, borrowing its string from `self` instead of copying it.
    pub fn borrowed(&self) -> Value<'_> {
        match self {
            Value::Undefined => Value::Undefined,
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(*b),
            Value::Number(n) => Value::Number(*n),
            Value::String(s) => Value::String(Cow::Borrowed(s)),
        }
    }

    /// A JSON leaf from a `$body` query. Objects and arrays are undefined (`BodyQuery.cs`).
    pub fn from_json(json: &'a serde_json::Value) -> Value<'a> {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => n.as_f64().map_or(Value::Undefined, Value::number),
            serde_json::Value::String(s) => Value::String(Cow::Borrowed(s)),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::Undefined,
        }
    }

    pub fn is_defined(&self) -> bool {
        !matches!(self, Value::Undefined)
    }
}

/// `* / % + -` on two numbers; anything else is undefined. `%` truncates like C#'s.
pub(crate) fn arithmetic<'a>(op: BinaryOp, left: &Value<'_>, right: &Value<'_>) -> Value<'a> {
    let (Value::Number(a), Value::Number(b)) = (left, right) else {
        return Value::Undefined;
    };
    Value::number(match op {
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Mod => a % b,
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        _ => f64::NAN,
    })
}

/// `||` on two strings; anything else is undefined.
pub(crate) fn concat<'a>(left: Value<'a>, right: &Value<'_>) -> Value<'a> {
    match (left, right) {
        (Value::String(a), Value::String(b)) => Value::String(Cow::Owned(a.into_owned() + b)),
        _ => Value::Undefined,
    }
}

/// `< <= > >= = !=`. Undefined on either side gives undefined. Same-typed values compare
/// naturally (strings by code point, `false < true`, `null = null`). Different run-time types
/// (only possible with `$body` values, the static check refuses the rest) are unequal; IoT
/// Edge also orders them by an internal type rank, so that a missing body field (null) is
/// "greater" than every number — we call such orderings undefined instead.
pub(crate) fn compare<'a>(op: BinaryOp, left: &Value<'_>, right: &Value<'_>) -> Value<'a> {
    let ordering = match (left, right) {
        (Value::Undefined, _) | (_, Value::Undefined) => return Value::Undefined,
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    let result = match (op, ordering) {
        (BinaryOp::Eq, ordering) => ordering == Some(Ordering::Equal),
        (BinaryOp::Ne, ordering) => ordering != Some(Ordering::Equal),
        (_, None) => return Value::Undefined,
        (BinaryOp::Lt, Some(o)) => o.is_lt(),
        (BinaryOp::Le, Some(o)) => o.is_le(),
        (BinaryOp::Gt, Some(o)) => o.is_gt(),
        (BinaryOp::Ge, Some(o)) => o.is_ge(),
        _ => return Value::Undefined,
    };
    Value::Bool(result)
}

/// Kleene's three-valued logic: `None` is unknown.
fn truth(value: &Value<'_>) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from_truth<'a>(truth: Option<bool>) -> Value<'a> {
    truth.map_or(Value::Undefined, Value::Bool)
}

/// `AND`. With a `$body` operand (`dynamic`) only two booleans give a result (`QueryValue &`);
/// otherwise `Bool &` is Kleene logic (`false AND undefined` is false) and any null operand
/// makes the result null (`Null.cs`).
pub(crate) fn and<'a>(left: &Value<'_>, right: &Value<'_>, dynamic: bool) -> Value<'a> {
    if dynamic {
        return match (left, right) {
            (Value::Bool(a), Value::Bool(b)) => Value::Bool(*a && *b),
            _ => Value::Undefined,
        };
    }
    if matches!(left, Value::Null) || matches!(right, Value::Null) {
        return Value::Null;
    }
    from_truth(match (truth(left), truth(right)) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    })
}

/// `OR`, the dual of [`and`]: `true OR undefined` is true, and null is neutral (`null OR x`
/// is `x`).
pub(crate) fn or<'a>(left: &Value<'_>, right: &Value<'_>, dynamic: bool) -> Value<'a> {
    if dynamic {
        return match (left, right) {
            (Value::Bool(a), Value::Bool(b)) => Value::Bool(*a || *b),
            _ => Value::Undefined,
        };
    }
    match (left, right) {
        (Value::Null, other) | (other, Value::Null) => return copy_scalar(other),
        _ => {}
    }
    from_truth(match (truth(left), truth(right)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    })
}

/// Logical operands are never strings, so they copy without borrowing.
fn copy_scalar<'a>(value: &Value<'_>) -> Value<'a> {
    match value {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::Bool(*b),
        _ => Value::Undefined,
    }
}

/// `NOT`: `NOT null` is true (`Null.cs`), except on a `$body` value, where only a boolean
/// negates.
pub(crate) fn not<'a>(operand: &Value<'_>, dynamic: bool) -> Value<'a> {
    match operand {
        Value::Bool(b) => Value::Bool(!b),
        Value::Null if !dynamic => Value::Bool(true),
        _ => Value::Undefined,
    }
}

/// Unary `-` on a number; anything else is undefined.
pub(crate) fn negate<'a>(operand: &Value<'_>) -> Value<'a> {
    match operand {
        Value::Number(n) => Value::Number(-n),
        _ => Value::Undefined,
    }
}
