//! `$body` queries: paths, content type and encoding conditions, laziness.

use super::{check_values, route_with, s, TestMessage, F, T, V};
use crate::route::eval::EvalContext;
use crate::route::{RoutableMessage, Route};

const BODY: &str = r#"{
    "temperature": 31.5,
    "name": "sensor",
    "ok": true,
    "nothing": null,
    "tags": ["a", "b", {"c": 1}],
    "nested": {"level": {"deep": "yes"}, "with.dot": 1, "with space": 2},
    "Case": 1
}"#;

fn json() -> TestMessage {
    TestMessage::new("/messages").json(BODY)
}

#[test]
fn paths_select_leaves() {
    check_values(
        &json(),
        &[
            ("$body.temperature", V::Num(31.5)),
            ("$body.name", s("sensor")),
            ("$body.ok", T),
            ("$body.nothing", V::N),
            ("$body.tags[0]", s("a")),
            ("$body.tags[1]", s("b")),
            ("$body.nested.level.deep", s("yes")),
            ("$body.nested['with.dot']", V::Num(1.0)),
            ("$body.nested['with space']", V::Num(2.0)),
            ("$body.nested[\"with space\"]", V::Num(2.0)),
            ("$body.tags[2].c", V::Num(1.0)),
            ("$BODY.name", s("sensor")),
            ("{$body.name}", s("sensor")),
        ],
    );
}

#[test]
fn objects_and_arrays_are_undefined_and_missing_paths_are_null() {
    check_values(
        &json(),
        &[
            ("$body.nested", V::U),
            ("$body.tags", V::U),
            ("$body.tags[2]", V::U),
            ("$body.missing", V::N),
            ("$body.tags[9]", V::N),
            ("$body.name.x", V::N),
            ("$body.nested[0]", V::N),
            ("$body.case", V::N),
        ],
    );
}

#[test]
fn body_values_compare_by_runtime_type() {
    check_values(
        &json(),
        &[
            ("$body.temperature > 30", T),
            ("$body.temperature = 31.5", T),
            ("$body.name = 'sensor'", T),
            ("$body.ok = true", T),
            ("$body.nothing = null", T),
            ("$body.temperature = 'x'", F),
            ("$body.temperature <> 'x'", T),
            ("$body.missing = 5", F),
            // IoT Edge would order these by type rank (null above numbers); we say undefined.
            ("$body.missing > 5", V::U),
            ("$body.name < 5", V::U),
            ("$body.nested = 5", V::U),
            ("$body.temperature + 1", V::Num(32.5)),
            ("$body.name + 1", V::U),
            ("$body.temperature % 2", V::Num(1.5)),
            ("- $body.temperature", V::Num(-31.5)),
            ("$body.name || '!'", s("sensor!")),
            ("$body.missing ?? 'x'", V::N),
            ("$body.nested ?? 'x'", s("x")),
        ],
    );
}

#[test]
fn logic_on_body_values_needs_two_booleans() {
    check_values(
        &json(),
        &[
            ("$body.ok AND true", T),
            ("true AND $body.ok", T),
            ("$body.ok AND undefined", V::U),
            ("$body.nothing AND false", V::U),
            ("$body.ok OR $body.name", V::U),
            ("NOT $body.ok", F),
            ("NOT $body.nothing", V::U),
            ("NOT $body.name", V::U),
        ],
    );
}

#[test]
fn body_is_queried_only_for_json_content_with_a_known_encoding() {
    let table: [(&[(&str, &str)], &[u8], V); 10] = [
        (&[("contentType", "application/json"), ("contentEncoding", "utf-8")], br#"{"t":1}"#, V::Num(1.0)),
        (&[("contentType", "Application/JSON"), ("contentEncoding", "UTF-8")], br#"{"t":1}"#, V::Num(1.0)),
        (&[("contentType", "text/plain"), ("contentEncoding", "utf-8")], br#"{"t":1}"#, V::U),
        (&[("contentType", "application/json; charset=utf-8"), ("contentEncoding", "utf-8")], br#"{"t":1}"#, V::U),
        (&[("contentEncoding", "utf-8")], br#"{"t":1}"#, V::U),
        (&[("contentType", "application/json")], br#"{"t":1}"#, V::U),
        (&[("contentType", "application/json"), ("contentEncoding", "latin1")], br#"{"t":1}"#, V::U),
        (&[("contentType", "application/json"), ("contentEncoding", "utf-8")], b"{not json", V::U),
        (&[("contentType", "application/json"), ("contentEncoding", "utf-8")], b"[1, 2]", V::U),
        (&[("contentType", "application/json"), ("contentEncoding", "utf-8")], b"\xEF\xBB\xBF{\"t\":1}", V::Num(1.0)),
    ];
    for (system, body, expected) in table {
        let mut message = TestMessage::new("/messages").raw_body(body);
        for (name, value) in system {
            message = message.sys(name, value);
        }
        check_values(&message, &[("$body.t", expected)]);
    }
}

#[test]
fn utf16_and_utf32_bodies_are_decoded_little_endian() {
    let text = r#"{"t":"é"}"#;
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf32: Vec<u8> = text.chars().flat_map(|c| u32::from(c).to_le_bytes()).collect();
    for (encoding, body) in [("utf-16", utf16), ("UTF-32", utf32)] {
        let message = TestMessage::new("/messages")
            .sys("contentType", "application/json")
            .sys("contentEncoding", encoding)
            .raw_body(&body);
        check_values(&message, &[("$body.t", s("é"))]);
    }
}

#[test]
fn needs_body_is_reported_per_condition() {
    assert!(route_with("$body.t = 1").condition.is_some_and(|c| c.references_body()));
    assert!(route_with("{$body.t} = 1").condition.is_some_and(|c| c.references_body()));
    assert!(!route_with("$bodyish = 'x' AND $body = 'y'").condition.is_some_and(|c| c.references_body()));
}

/// Counts body reads, to prove laziness.
struct CountingMessage {
    inner: TestMessage,
    reads: std::cell::Cell<usize>,
}

impl RoutableMessage for CountingMessage {
    fn source(&self) -> &str {
        self.inner.source()
    }
    fn application_property(&self, name: &str) -> Option<&str> {
        self.inner.application_property(name)
    }
    fn system_property(&self, name: &str) -> Option<&str> {
        self.inner.system_property(name)
    }
    fn body(&self) -> &[u8] {
        self.reads.set(self.reads.get() + 1);
        self.inner.body()
    }
}

#[test]
fn body_is_parsed_lazily_and_at_most_once_per_message() {
    let message = CountingMessage { inner: json().app("kind", "x"), reads: std::cell::Cell::new(0) };
    let context = EvalContext::new(&message);
    let skip = route_with("kind = 'y' AND $body.temperature > 30");
    let no_body = route_with("kind = 'x'");
    assert!(!skip.condition.as_ref().is_some_and(|c| c.is_true(&context)));
    assert!(no_body.condition.as_ref().is_some_and(|c| c.is_true(&context)));
    assert!(!context.body_parsed(), "short-circuit must spare the body");
    let first = route_with("$body.temperature > 30");
    let second = route_with("$body.name = 'sensor' AND $body.ok");
    assert!(first.condition.as_ref().is_some_and(|c| c.is_true(&context)));
    assert!(second.condition.as_ref().is_some_and(|c| c.is_true(&context)));
    assert_eq!(message.reads.get(), 1);
}

#[test]
fn a_route_without_body_queries_never_reads_the_body() {
    let message = CountingMessage { inner: json().app("kind", "x"), reads: std::cell::Cell::new(0) };
    let route =
        Route::parse("r", "FROM /messages WHERE kind = 'x' OR $connectionDeviceId = 'd' INTO $upstream", None, 0);
    assert!(route.is_ok_and(|r| r.matches(&message)));
    assert_eq!(message.reads.get(), 0);
}
