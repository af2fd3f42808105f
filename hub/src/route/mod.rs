//! IoT Hub's route language, as Azure IoT Edge's hub implements it: parsing, checking and
//! evaluating routes such as
//! `FROM /messages/modules/sensor/outputs/* WHERE $body.temperature > 30 INTO $upstream`.
//!
//! Pure code: no IO, no clock. The broker parses the deployment's routes once into a
//! [`RouteTable`] and asks it, per message, which endpoints the message goes to.
//!
//! # Layout
//! - `lexer`: text to tokens, with IoT Edge's (ANTLR's) longest-match rules;
//! - `parser`: tokens to a route — source, typed condition tree, endpoint;
//! - `types`: the static types and operator checks that make IoT Edge refuse a route;
//! - `ast`: the checked condition tree;
//! - `value`: run-time values and three-valued logic;
//! - `builtins`: the built-in functions;
//! - `eval`: evaluation of a condition against a message, with a lazily parsed body;
//! - `jsonpath`, `body`: `$body.` paths, and when and how a body is parsed as JSON;
//! - `source`, `sink`: `FROM` paths and their matching, `INTO` endpoints.
//!
//! # Semantics in brief
//! A bare identifier is an application property (a string); `$name` is the application
//! property literally named `$name` if present, else the system property `name` (or, for
//! `$body.path`, a query of the JSON body); `{$name}` skips the application property. Operands
//! of mismatched static types are refused at parse time (`temperature > 30` compares a string
//! with a number: write `as_number(temperature) > 30`). At run time an undefined operand makes
//! most results undefined, `AND`/`OR` follow three-valued logic, and a route matches only when
//! its condition is exactly `true`. As in IoT Edge, identifiers may contain `+ - * % ! |`, so
//! operators need spaces around them: `a-1` is one property name, `a - 1` a subtraction.

mod ast;
mod body;
mod builtins;
mod eval;
mod jsonpath;
mod lexer;
mod parser;
mod sink;
mod source;
mod types;
mod value;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

pub use eval::Condition;
pub use source::Source;

use eval::EvalContext;

/// Longest route text accepted, in bytes. Routes live in the `$edgeHub` module twin, whose
/// desired properties IoT Hub caps at 32 KiB in total, and real routes are well under 1 KiB;
/// the cap bounds the token list (at most one token per byte) before anything is allocated.
pub const ROUTE_TEXT_BYTES_MAX: usize = 16 * 1024;

/// Deepest nesting of parentheses and function-call arguments. Each level costs four parser
/// stack frames (operators use explicit stacks, not recursion); at this limit the parser needs
/// under 256 KiB of stack in a debug build (tested on a 512 KiB thread), an eighth of Rust's
/// default thread stack. Deeper input is an error, never a stack overflow.
pub const NESTING_DEPTH_MAX: usize = 64;

/// Tallest condition tree, which bounds the recursion of evaluating and dropping it. Operator
/// chains (`a OR b OR c …`) and prefix runs (`NOT NOT …`) add one level per operator without
/// nesting; 256 leaves room for any hand-written route.
pub const EXPRESSION_HEIGHT_MAX: usize = 256;

/// Highest explicit route priority (IoT Edge accepts 0 to 9; 0 is the most urgent).
pub const PRIORITY_MAX: u8 = 9;

/// Priority of a route that gives none: below every explicit priority, as IoT Edge's
/// default (2,000,000,000) is.
pub const DEFAULT_PRIORITY: u8 = PRIORITY_MAX + 1;

const _: () = assert!(DEFAULT_PRIORITY > PRIORITY_MAX);
// A call adds a node per nesting level, so for the nesting limit to be the one deep nesting
// meets first, the height limit must be the larger.
const _: () = assert!(NESTING_DEPTH_MAX < EXPRESSION_HEIGHT_MAX);

/// Longest route text quoted in an error message, in characters.
const ERROR_TEXT_CHARS_MAX: usize = 200;

/// What the evaluator needs from a message; implemented by the broker's message type.
///
/// IoT Edge keeps both property dictionaries case-insensitive (`Message.cs` builds them with
/// `OrdinalIgnoreCase`); routes pass names exactly as written.
pub trait RoutableMessage {
    /// Source path, e.g. "/messages/modules/m1/outputs/out1", "/messages/modules/m1",
    /// "/messages" (device telemetry).
    fn source(&self) -> &str;
    /// Application property value by exact name (case-sensitive, as IoT Hub).
    fn application_property(&self, name: &str) -> Option<&str>;
    /// System property by its IoT Edge name ("messageId", "connectionDeviceId",
    /// "contentType", ...); case-insensitive match is fine.
    fn system_property(&self, name: &str) -> Option<&str>;
    fn body(&self) -> &[u8];
}

/// Where a route sends messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `$upstream`: IoT Hub.
    Upstream,
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`.
    Module { module: String, input: String },
}

/// One parsed route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub text: String,
    pub source: Source,
    /// `None` when the route has no `WHERE` (it matches every message from its source).
    pub condition: Option<Condition>,
    pub endpoint: Endpoint,
    /// 0 (most urgent) to [`PRIORITY_MAX`], or [`DEFAULT_PRIORITY`] when none was given.
    pub priority: u8,
    /// Time to live of the messages it routes; 0 means the hub's global setting.
    pub time_to_live_secs: u32,
}

impl Route {
    /// Parses one route. `priority` must be 0..=9 when Some.
    ///
    /// ```
    /// use tinyedge_hub::route::{Endpoint, Route};
    /// let route = Route::parse("r1", "FROM /messages/* WHERE $body.t > 30 INTO $upstream", None, 0).unwrap();
    /// assert_eq!(route.endpoint, Endpoint::Upstream);
    /// let error = Route::parse("r2", "FROM /messages/* INTO $elsewhere", None, 0).unwrap_err();
    /// assert_eq!(error.column, 23);
    /// ```
    pub fn parse(name: &str, text: &str, priority: Option<u8>, time_to_live_secs: u32) -> Result<Route, RouteError> {
        let fail = |column: usize, message: String| RouteError {
            name: name.to_string(),
            text: text.to_string(),
            column,
            message,
        };
        if text.len() > ROUTE_TEXT_BYTES_MAX {
            return Err(fail(
                0,
                format!("route is {} bytes long, more than the {ROUTE_TEXT_BYTES_MAX} allowed", text.len()),
            ));
        }
        let priority = match priority {
            None => DEFAULT_PRIORITY,
            Some(p) if p <= PRIORITY_MAX => p,
            Some(p) => return Err(fail(0, format!("priority {p} is outside 0..={PRIORITY_MAX}"))),
        };
        let parsed = parser::parse_route(text).map_err(|e| fail(column_of(text, e.offset), e.message))?;
        Ok(Route {
            name: name.to_string(),
            text: text.to_string(),
            source: parsed.source,
            condition: parsed.condition,
            endpoint: parsed.endpoint,
            priority,
            time_to_live_secs,
        })
    }

    /// Whether `message` comes from this route's source and its condition is `true`.
    pub fn matches(&self, message: &dyn RoutableMessage) -> bool {
        self.matches_in(&EvalContext::new(message))
    }

    fn matches_in(&self, context: &EvalContext<'_>) -> bool {
        self.source.matches(context.message().source())
            && self.condition.as_ref().map_or(true, |condition| condition.is_true(context))
    }
}

/// 1-based character position of byte `offset` in `text`.
fn column_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |before| before.chars().count()) + 1
}

/// Why a route was refused. Displays on one line, quoting the route name, the route text and
/// the 1-based column of the problem, e.g.
/// `route "r1": expected WHERE or INTO, found 'WHER' at column 18 in "FROM /messages/* WHER true INTO $upstream"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub name: String,
    pub text: String,
    /// 1-based character position in `text`; 0 when the error is not at one place (text too
    /// long, priority out of range).
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {:?}: {}", self.name, escape_controls(&self.message))?;
        if self.column > 0 {
            write!(f, " at column {}", self.column)?;
        }
        let mut shown: String = self.text.chars().take(ERROR_TEXT_CHARS_MAX).collect();
        if shown.len() < self.text.len() {
            shown.push('…');
        }
        // Debug quoting escapes newlines and quotes, so the message stays on one line.
        write!(f, " in {shown:?}")
    }
}

impl std::error::Error for RouteError {}

/// `text` with control characters (newlines above all) escaped, for one-line messages.
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// The routes of a deployment, ready to route messages.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    needs_body: bool,
    /// Per route, the index of the first route naming the same endpoint: endpoints are told
    /// apart by this number when messages are routed, not by comparing names.
    endpoint_index: Vec<usize>,
    /// With more than [`LINEAR_ROUTES_MAX`] routes: route indices (ascending) by their source's
    /// folded prefix, so a message's source is looked up at each of its `/` boundaries (a
    /// handful of lookups) instead of being compared with every route.
    by_prefix: Option<HashMap<Box<[u8]>, Vec<usize>>>,
}

/// Up to this many routes a message's source is compared with each route's in turn.
const LINEAR_ROUTES_MAX: usize = 8;
/// A message source longer than this (bytes) is compared with every route, not looked up.
const INDEXED_SOURCE_BYTES_MAX: usize = 256;
/// Routes one lookup may find (their sources all prefixes of the message's); more, and the
/// message is compared with every route.
const INDEXED_CANDIDATES_MAX: usize = 64;

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let needs_body = routes.iter().any(|r| r.condition.as_ref().is_some_and(Condition::references_body));
        let endpoint_index = routes
            .iter()
            .enumerate()
            .map(|(index, route)| routes[..index].iter().position(|r| r.endpoint == route.endpoint).unwrap_or(index))
            .collect();
        let by_prefix = (routes.len() > LINEAR_ROUTES_MAX).then(|| {
            let mut by_prefix: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
            for (index, route) in routes.iter().enumerate() {
                by_prefix.entry(route.source.folded_prefix()).or_default().push(index);
            }
            by_prefix
        });
        RouteTable { routes, needs_body, endpoint_index, by_prefix }
    }

    /// Writes into `out` the indices (ascending) of the routes whose source matches `source`,
    /// found through [`RouteTable::by_prefix`]; false when there is no index or the message
    /// does not fit its bounds (the caller then compares every route).
    fn source_candidates(&self, source: &str, out: &mut [usize; INDEXED_CANDIDATES_MAX], count: &mut usize) -> bool {
        let Some(by_prefix) = &self.by_prefix else { return false };
        // As `Source::matches` sees it.
        let source = source.trim().trim_end_matches('/').as_bytes();
        if source.len() > INDEXED_SOURCE_BYTES_MAX {
            return false;
        }
        let mut folded = [0u8; INDEXED_SOURCE_BYTES_MAX];
        let folded = &mut folded[..source.len()];
        folded.copy_from_slice(source);
        folded.make_ascii_lowercase();
        *count = 0;
        // A route matches when its prefix is the source up to a `/` or the whole source.
        for end in (0..=folded.len()).filter(|&end| end == folded.len() || folded[end] == b'/') {
            for &index in by_prefix.get(&folded[..end]).map_or(&[][..], Vec::as_slice) {
                if *count == INDEXED_CANDIDATES_MAX {
                    return false;
                }
                out[*count] = index;
                *count += 1;
            }
        }
        out[..*count].sort_unstable();
        true
    }

    /// [`RouteTable::endpoints_for`] without naming the endpoints: each as the index of the
    /// first route that names it (its endpoint is `routes()[index].endpoint`), with the same
    /// priority, TTL and order. What the router uses: nothing is cloned or compared by name.
    pub fn endpoint_indices_for(&self, message: &dyn RoutableMessage, out: &mut Vec<(usize, u8, u32)>) {
        out.clear();
        let context = EvalContext::new(message);
        let mut add = |route: &Route, endpoint: usize| match out.iter_mut().find(|(index, _, _)| *index == endpoint) {
            Some(entry) if route.priority < entry.1 => {
                entry.1 = route.priority;
                entry.2 = route.time_to_live_secs;
            }
            Some(_) => {}
            None => out.push((endpoint, route.priority, route.time_to_live_secs)),
        };
        let (mut candidates, mut count) = ([0usize; INDEXED_CANDIDATES_MAX], 0);
        if self.source_candidates(message.source(), &mut candidates, &mut count) {
            // In table order, as below: only the conditions are left to test.
            for &index in &candidates[..count] {
                let route = &self.routes[index];
                if route.condition.as_ref().map_or(true, |condition| condition.is_true(&context)) {
                    add(route, self.endpoint_index[index]);
                }
            }
        } else {
            for (route, &endpoint) in self.routes.iter().zip(&self.endpoint_index) {
                if route.matches_in(&context) {
                    add(route, endpoint);
                }
            }
        }
        // Stable: equal priorities keep the order of their first matching route.
        out.sort_by_key(|(_, priority, _)| *priority);
    }

    /// Endpoints the message goes to, each at most once even when several routes match, with
    /// the best (lowest number) priority and the TTL of the first matching route for that
    /// endpoint. Order: by priority.
    ///
    /// `out` is cleared first. For an endpoint named by several matching routes, the TTL is
    /// that of the route giving the best priority, the earliest in the table among equals
    /// (IoT Edge's `Evaluator` keeps the highest-priority route per endpoint). Endpoints of
    /// equal priority keep the order of their first matching route. The body is parsed at most
    /// once for all routes together.
    pub fn endpoints_for(&self, message: &dyn RoutableMessage, out: &mut Vec<(Endpoint, u8, u32)>) {
        out.clear();
        let mut indices = Vec::new();
        self.endpoint_indices_for(message, &mut indices);
        out.extend(
            indices.into_iter().map(|(index, priority, ttl)| (self.routes[index].endpoint.clone(), priority, ttl)),
        );
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// True if any condition references $body (so the broker knows whether to keep body
    /// parsing lazily).
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }
}
