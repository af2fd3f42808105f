//! Built-in functions, one table each.

use super::{check_values, s, TestMessage, F, T, V};

fn message() -> TestMessage {
    TestMessage::new("/messages")
        .app("word", "Hello")
        .app("num", " 1,234.5 ")
        .app("bad", "12abc")
        .json(r#"{"n": -2.5, "s": "Hi", "b": true, "z": null, "o": {"k": 1}, "big": 1e308}"#)
}

#[test]
fn math_functions() {
    check_values(
        &message(),
        &[
            ("abs(-3)", V::Num(3.0)),
            ("abs($body.n)", V::Num(2.5)),
            ("abs($body.s)", V::U),
            ("exp(0)", V::Num(1.0)),
            ("power(2, 10)", V::Num(1024.0)),
            ("power(-8, 0.5)", V::U),
            ("square(-3)", V::Num(9.0)),
            ("ceiling(1.2)", V::Num(2.0)),
            ("ceiling(-1.2)", V::Num(-1.0)),
            ("floor(-1.2)", V::Num(-2.0)),
            ("floor($body.n)", V::Num(-3.0)),
            ("sign(-5)", V::Num(-1.0)),
            ("sign(0)", V::Num(0.0)),
            ("sign(7)", V::Num(1.0)),
            ("sqrt(16)", V::Num(4.0)),
            ("sqrt(-1)", V::U),
            ("abs(as_number(missing))", V::U),
            ("square($body.big)", V::Num(f64::INFINITY)),
        ],
    );
}

#[test]
fn as_number_parses_like_dotnet() {
    check_values(
        &message(),
        &[
            ("as_number('42')", V::Num(42.0)),
            ("as_number(' -1.5e3 ')", V::Num(-1500.0)),
            ("as_number(num)", V::Num(1234.5)),
            ("as_number('(7)')", V::Num(-7.0)),
            ("as_number('Infinity')", V::Num(f64::INFINITY)),
            ("as_number('inf')", V::U),
            ("as_number('NaN')", V::U),
            ("as_number(bad)", V::U),
            ("as_number('')", V::U),
            ("as_number(3)", V::Num(3.0)),
            ("as_number($body.n)", V::Num(-2.5)),
            ("as_number($body.b)", V::U),
            ("as_number(missing)", V::U),
        ],
    );
}

#[test]
fn type_tests() {
    check_values(
        &message(),
        &[
            ("is_bool(true)", T),
            ("is_bool($body.b)", T),
            ("is_bool($body.s)", F),
            ("is_bool($body.missing)", F),
            ("is_bool($body.o)", V::U),
            ("is_bool(missing = 'x')", V::U),
            ("is_bool(word)", F),
            ("is_bool(missing)", F),
            ("is_bool(undefined)", F),
            ("is_defined(word)", T),
            ("is_defined(missing)", F),
            ("is_defined(undefined)", F),
            ("is_defined(null)", T),
            ("is_defined(0 / 0)", F),
            ("is_defined($body.s)", T),
            ("is_defined($body.o)", F),
            // A path that selects nothing is null in IoT Edge, hence defined.
            ("is_defined($body.missing)", T),
            ("is_null(null)", T),
            ("is_null(word)", F),
            ("is_null(missing)", F),
            ("is_null($body.z)", T),
            ("is_null($body.s)", F),
            ("is_null($body.o)", V::U),
            ("is_null(1)", F),
            ("is_number(1)", T),
            ("is_number(1 / 0)", F),
            ("is_number($body.n)", T),
            ("is_number($body.s)", F),
            ("is_number(word)", F),
            ("is_number(as_number(missing))", F),
            ("is_string(word)", T),
            ("is_string(missing)", F),
            ("is_string($body.s)", T),
            ("is_string($body.n)", F),
            ("is_string(1)", F),
        ],
    );
}

#[test]
fn string_functions() {
    check_values(
        &message(),
        &[
            ("concat('a', 'b')", s("ab")),
            ("concat(word, ' ', $body.s, '!')", s("Hello Hi!")),
            ("concat('a', missing)", V::U),
            ("concat('a', $body.n)", V::U),
            ("length(word)", V::Num(5.0)),
            ("length('')", V::Num(0.0)),
            ("length('é😀')", V::Num(3.0)),
            ("length(missing)", V::U),
            ("length($body.n)", V::U),
            ("lower(word)", s("hello")),
            ("upper(word)", s("HELLO")),
            ("upper($body.s)", s("HI")),
            ("lower(missing)", V::U),
            ("index_of(word, 'l')", V::Num(2.0)),
            ("index_of(word, 'z')", V::Num(-1.0)),
            ("index_of(word, '')", V::Num(0.0)),
            ("index_of('😀x', 'x')", V::Num(2.0)),
            ("index_of(missing, 'a')", V::U),
            ("starts_with(word, 'He')", T),
            ("starts_with(word, 'he')", F),
            ("ends_with(word, 'lo')", T),
            ("ends_with(word, 'x')", F),
            ("contains(word, 'ell')", T),
            ("contains(word, 'ELL')", F),
            ("contains(missing, 'a')", V::U),
            ("contains(word, $body.s)", F),
            ("contains($body.s, 'H')", T),
        ],
    );
}

#[test]
fn substring_bounds_follow_iot_edge() {
    check_values(
        &message(),
        &[
            ("substring(word, 0)", s("Hello")),
            ("substring(word, 1)", s("ello")),
            ("substring(word, 5)", s("")),
            ("substring(word, 6)", V::U),
            ("substring(word, -1)", V::U),
            ("substring(word, 1.9)", s("ello")),
            ("substring(word, 1, 3)", s("ell")),
            ("substring(word, 0, 5)", s("Hello")),
            ("substring(word, 0, 6)", V::U),
            ("substring(word, 4, 1)", s("o")),
            // Unlike the two-argument form, the start must be inside the string.
            ("substring(word, 5, 0)", V::U),
            ("substring(word, 1, -1)", V::U),
            ("substring(word, 1 / 0, 1)", V::U),
            ("substring(missing, 0)", V::U),
            ("substring($body.s, 1)", s("i")),
            ("substring($body.n, 1)", V::U),
        ],
    );
}

#[test]
fn function_names_ignore_case() {
    check_values(&message(), &[("ABS(-1)", V::Num(1.0)), ("Is_Defined(word)", T), ("CONCAT('a', 'b')", s("ab"))]);
}
