//! Static types of condition expressions and the operator typing rules.
//!
//! IoT Edge compiles a condition to a typed LINQ expression (`ConditionVisitor.cs`): an
//! application or system property is a `string`, a literal number a `double`, a `$body` query
//! a dynamically typed `QueryValue`. An operator whose operand types do not fit is a compile
//! error, so `WHERE temperature > 30` (a string property against a number) is refused when the
//! route is deployed, not silently false at run time. We apply the same checks, so a route is
//! accepted here exactly when IoT Edge accepts it — except where IoT Edge would crash on an
//! operator it forgot to define (`-` or `%` on a `$body` value), which we evaluate instead.

use std::fmt;

/// The compile-time type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaticType {
    String,
    Number,
    Bool,
    Null,
    Undefined,
    /// A `$body` query: its run-time type depends on the message.
    Dynamic,
}

impl fmt::Display for StaticType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StaticType::String => "string",
            StaticType::Number => "number",
            StaticType::Bool => "bool",
            StaticType::Null => "null",
            StaticType::Undefined => "undefined",
            StaticType::Dynamic => "$body value",
        })
    }
}

/// Types a `$body` value may be compared with or converted to (`QueryValue.IsSupportedType`).
fn converts_to_dynamic(t: StaticType) -> bool {
    matches!(t, StaticType::Null | StaticType::Number | StaticType::String | StaticType::Bool)
}

/// Whether an operand of type `given` fits a slot of type `expected` (`Args.Match` with
/// query values allowed): the same type, or a `$body` value on either side of a convertible
/// type.
pub(crate) fn fits(expected: StaticType, given: StaticType) -> bool {
    expected == given
        || (given == StaticType::Dynamic && converts_to_dynamic(expected))
        || (expected == StaticType::Dynamic && converts_to_dynamic(given))
}

/// Binary operators, tightest first in the order of `Condition.g4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Concat,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
    Coalesce,
}

impl BinaryOp {
    /// Binding strength: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 7,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Concat => 6,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 5,
            BinaryOp::Eq | BinaryOp::Ne => 4,
            BinaryOp::And => 3,
            BinaryOp::Or => 2,
            BinaryOp::Coalesce => 1,
        }
    }
}

/// How a binary operator evaluates, decided from its operand types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpMode {
    /// An operand is a `$body` value: `AND`, `OR` and `NOT` then follow `QueryValue`'s rules
    /// (anything but two booleans is undefined) instead of `Bool`'s and `Null`'s.
    pub dynamic: bool,
    /// The left operand alone can decide the result (`false AND …`, `true OR …`), so the
    /// right one need not be evaluated — which may spare parsing the body.
    pub short_circuit: bool,
}

/// Checks the operand types of `op` and returns the result type and evaluation mode, or the
/// error message IoT Edge would give (`op_text` is the operator as written).
pub(crate) fn binary(
    op: BinaryOp,
    op_text: &str,
    left: StaticType,
    right: StaticType,
) -> Result<(StaticType, OpMode), String> {
    use StaticType as T;
    let dynamic = left == T::Dynamic || right == T::Dynamic;
    let plain = OpMode { dynamic, short_circuit: false };
    let result = match op {
        BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod | BinaryOp::Add | BinaryOp::Sub => {
            (fits(T::Number, left) && fits(T::Number, right)).then_some(if dynamic { T::Dynamic } else { T::Number })
        }
        BinaryOp::Concat => (fits(T::String, left) && fits(T::String, right)).then_some(T::String),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne => {
            fits(left, right).then_some(T::Bool)
        }
        BinaryOp::Coalesce => fits(left, right).then_some(match (left, right) {
            (T::Undefined, _) => right,
            _ if dynamic => T::Dynamic,
            _ => left,
        }),
        BinaryOp::And | BinaryOp::Or => {
            // IoT Edge checks the right operand against the left's type by mistake
            // (`CheckBooleanOperands`), which lets anything follow a `$body` value; we keep
            // that leniency and also accept a `$body` value on the right.
            let logical = |t: StaticType| matches!(t, T::Null | T::Bool | T::Undefined | T::Dynamic);
            if !(logical(left) && (logical(right) || left == T::Dynamic)) {
                None
            } else if op == BinaryOp::And {
                let null = !dynamic && (left == T::Null || right == T::Null);
                // `false AND null` is null, so only skip the right side when it cannot be null.
                let mode = OpMode { dynamic, short_circuit: !dynamic && right != T::Null };
                return Ok((if null { T::Null } else { T::Bool }, mode));
            } else {
                let null = !dynamic && left == T::Null && right == T::Null;
                let mode = OpMode { dynamic, short_circuit: !dynamic };
                return Ok((if null { T::Null } else { T::Bool }, mode));
            }
        }
    };
    result
        .map(|t| (t, plain))
        .ok_or_else(|| format!("invalid operands to binary operator '{op_text}': have '{left}' and '{right}'"))
}

/// `-x`: a number (or a `$body` value).
pub(crate) fn negate(operand: StaticType) -> Result<StaticType, String> {
    if fits(StaticType::Number, operand) {
        Ok(operand)
    } else {
        Err(format!("invalid operand to unary operator '-': have '{operand}', expected 'number'"))
    }
}

/// `NOT x`: a bool, null or `$body` value; the result is a bool (`NOT null` is true).
pub(crate) fn not(operand: StaticType) -> Result<(StaticType, OpMode), String> {
    let expected = if operand == StaticType::Null { StaticType::Null } else { StaticType::Bool };
    if fits(expected, operand) {
        Ok((StaticType::Bool, OpMode { dynamic: operand == StaticType::Dynamic, short_circuit: false }))
    } else {
        Err(format!("invalid operand to unary operator 'NOT': have '{operand}', expected 'bool'"))
    }
}
