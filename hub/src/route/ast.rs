//! The checked syntax tree of a route condition.
//!
//! The parser builds it and the type checker has already run: every node here is known to be
//! valid, and carries what evaluation needs to know about its operands' static types.

use super::builtins::Builtin;
use super::jsonpath::JsonPath;
use super::types::{BinaryOp, OpMode, StaticType};
use super::value::Value;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A literal; also `$name[…]` (a property name with brackets), which IoT Edge resolves to
    /// `undefined` at compile time.
    Literal(Value<'static>),
    /// A bare identifier: the application property of that exact name.
    AppProperty(Box<str>),
    /// `$name`: the application property literally named `$name` if the message has one
    /// (`app_property`), else the system property `name`. `{$name}` has no `app_property`.
    SystemProperty {
        name: Box<str>,
        app_property: Option<Box<str>>,
    },
    /// `$body.path`: an application property named `$body.path` if present (unless escaped
    /// with braces or holding brackets), else the JSON body query.
    Body {
        path: JsonPath,
        app_property: Option<Box<str>>,
    },
    Negate(Box<Expr>),
    Not {
        operand: Box<Expr>,
        mode: OpMode,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
        mode: OpMode,
    },
    Call {
        function: Builtin,
        args: Vec<Expr>,
        first_type: StaticType,
    },
}

/// An expression with its static type and the height of its tree (bounded by the parser, so
/// that evaluating and dropping the tree cannot exhaust the stack).
#[derive(Debug, Clone)]
pub(crate) struct Typed {
    pub expr: Expr,
    pub ty: StaticType,
    pub height: usize,
}

impl Typed {
    pub fn leaf(expr: Expr, ty: StaticType) -> Typed {
        Typed { expr, ty, height: 1 }
    }
}
