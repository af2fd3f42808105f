//! Tests of the route language, one file per construct, and the helpers they share.

mod body;
mod eval;
mod functions;
mod lexer;
mod parse;
mod robustness;
mod source;
mod table;
mod types;

use super::eval::EvalContext;
use super::value::Value;
use super::{RoutableMessage, Route};

/// A message with whatever properties a test needs.
#[derive(Debug, Clone, Default)]
pub(super) struct TestMessage {
    pub source: String,
    pub application: Vec<(String, String)>,
    pub system: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TestMessage {
    pub fn new(source: &str) -> TestMessage {
        TestMessage { source: source.to_string(), ..TestMessage::default() }
    }

    pub fn app(mut self, name: &str, value: &str) -> TestMessage {
        self.application.push((name.to_string(), value.to_string()));
        self
    }

    pub fn sys(mut self, name: &str, value: &str) -> TestMessage {
        self.system.push((name.to_string(), value.to_string()));
        self
    }

    /// A UTF-8 JSON body with the content type and encoding IoT Edge requires for queries.
    pub fn json(self, body: &str) -> TestMessage {
        self.sys("contentType", "application/json").sys("contentEncoding", "utf-8").raw_body(body.as_bytes())
    }

    pub fn raw_body(mut self, body: &[u8]) -> TestMessage {
        self.body = body.to_vec();
        self
    }
}

impl RoutableMessage for TestMessage {
    fn source(&self) -> &str {
        &self.source
    }

    fn application_property(&self, name: &str) -> Option<&str> {
        self.application.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn system_property(&self, name: &str) -> Option<&str> {
        self.system.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn body(&self) -> &[u8] {
        &self.body
    }
}

/// An evaluation result that owns its string, for comparing in tables.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum V {
    U,
    N,
    B(bool),
    Num(f64),
    S(String),
}

pub(super) const T: V = V::B(true);
pub(super) const F: V = V::B(false);

pub(super) fn s(text: &str) -> V {
    V::S(text.to_string())
}

/// A route `FROM /* WHERE {condition} INTO $upstream`, which must parse.
pub(super) fn route_with(condition: &str) -> Route {
    let text = format!("FROM /* WHERE {condition} INTO $upstream");
    match Route::parse("test", &text, None, 0) {
        Ok(route) => route,
        Err(e) => panic!("{e}"),
    }
}

/// The value of `condition` for `message`.
pub(super) fn value_of(condition: &str, message: &TestMessage) -> V {
    let route = route_with(condition);
    let context = EvalContext::new(message);
    let Some(condition) = route.condition.as_ref() else { panic!("no condition in {condition:?}") };
    match condition.value(&context) {
        Value::Undefined => V::U,
        Value::Null => V::N,
        Value::Bool(b) => V::B(b),
        Value::Number(n) => V::Num(n),
        Value::String(s) => V::S(s.into_owned()),
    }
}

/// Checks a table of `(condition, expected value)` against one message.
pub(super) fn check_values(message: &TestMessage, table: &[(&str, V)]) {
    for (condition, expected) in table {
        assert_eq!(&value_of(condition, message), expected, "condition {condition:?}");
    }
}

/// The error a route text gives: `(column, message)`.
pub(super) fn error_of(text: &str) -> (usize, String) {
    match Route::parse("test", text, None, 0) {
        Ok(route) => panic!("{text:?} parsed: {route:?}"),
        Err(e) => (e.column, e.message),
    }
}

/// The error of `FROM /* WHERE {condition} INTO $upstream`, with the column counted from the
/// start of the condition (1 = its first character).
pub(super) fn condition_error(condition: &str) -> (usize, String) {
    const PREFIX_CHARS: usize = "FROM /* WHERE ".len();
    let (column, message) = error_of(&format!("FROM /* WHERE {condition} INTO $upstream"));
    (column.saturating_sub(PREFIX_CHARS), message)
}
