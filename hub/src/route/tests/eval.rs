//! Evaluation: precedence, operators, three-valued logic and property lookup.

use super::{check_values, route_with, s, TestMessage, F, T, V};

fn message() -> TestMessage {
    TestMessage::new("/messages/modules/m1/outputs/o1")
        .app("alert", "high")
        .app("n", "42")
        .app("$connectionDeviceId", "app-wins")
        .app("$body.x", "app-body")
        .sys("connectionDeviceId", "dev1")
        .sys("connectionModuleId", "m1")
        .sys("messageId", "mid-7")
}

#[test]
fn literals_evaluate_to_themselves() {
    check_values(
        &message(),
        &[
            ("true", T),
            ("false", F),
            ("null", V::N),
            ("undefined", V::U),
            ("'text'", s("text")),
            ("\"te\\\"xt\"", s("te\"xt")),
            ("42", V::Num(42.0)),
            ("-42", V::Num(-42.0)),
            ("0x1F", V::Num(31.0)),
            ("0xFFFFFFFFFFFFFFFF", V::Num(-1.0)),
            ("0x1FFFFFFFFFFFFFFFF", V::U),
            ("2.5e2", V::Num(250.0)),
            ("e5", V::U),
        ],
    );
}

#[test]
fn precedence_follows_the_grammar() {
    check_values(
        &message(),
        &[
            ("1 + 2 * 3", V::Num(7.0)),
            ("(1 + 2) * 3", V::Num(9.0)),
            ("10 - 4 - 3", V::Num(3.0)),
            ("2 * 3 % 4", V::Num(2.0)),
            ("- 2 * 3", V::Num(-6.0)),
            ("1 + 1 = 2", T),
            ("1 < 2 = true", T),
            ("true OR false AND false", T),
            ("(true OR false) AND false", F),
            ("NOT false AND false", F),
            ("NOT (false AND false)", T),
            ("'a' || 'b' || 'c'", s("abc")),
            ("missing ?? 'x' || 'y'", s("xy")),
            ("(missing ?? 'x') = 'x'", T),
            ("1 <> 2", T),
            ("1 != 1", F),
        ],
    );
}

#[test]
fn arithmetic_follows_doubles_and_nan_is_undefined() {
    check_values(
        &message(),
        &[
            ("7 / 2", V::Num(3.5)),
            ("-7 % 3", V::Num(-1.0)),
            ("1 / 0", V::Num(f64::INFINITY)),
            ("0 / 0", V::U),
            ("5 % 0", V::U),
            ("1 / 0 > 1e308", T),
        ],
    );
}

#[test]
fn comparisons_of_like_values() {
    check_values(
        &message(),
        &[
            ("'abc' < 'abd'", T),
            ("'B' < 'a'", T),
            ("'a' = 'A'", F),
            ("false < true", T),
            ("true >= true", T),
            ("null = null", T),
            ("null <= null", T),
            ("null <> null", F),
            ("null < null", F),
            ("3 >= 3", T),
            ("3 > 3", F),
        ],
    );
}

#[test]
fn undefined_operands_make_results_undefined() {
    check_values(
        &message(),
        &[
            ("missing = 'x'", V::U),
            ("missing <> 'x'", V::U),
            ("undefined = undefined", V::U),
            ("missing || 'x'", V::U),
            ("as_number(missing) + 1", V::U),
            ("- as_number(missing)", V::U),
            ("NOT (missing = 'x')", V::U),
        ],
    );
}

#[test]
fn and_or_use_three_valued_logic() {
    check_values(
        &message(),
        &[
            ("true AND undefined", V::U),
            ("false AND undefined", F),
            ("undefined AND false", F),
            ("true OR undefined", T),
            ("undefined OR true", T),
            ("false OR undefined", V::U),
            ("undefined OR undefined", V::U),
            ("(missing = 'x') OR alert = 'high'", T),
            ("(missing = 'x') AND alert = 'high'", V::U),
            ("(missing = 'x') AND alert = 'low'", F),
        ],
    );
}

#[test]
fn null_is_absorbing_in_and_neutral_in_or_and_not_null_is_true() {
    check_values(
        &message(),
        &[
            ("true AND null", V::N),
            ("false AND null", V::N),
            ("null AND null", V::N),
            ("null OR false", F),
            ("true OR null", T),
            ("null OR null", V::N),
            ("NOT null", T),
            ("NOT (true AND null)", T),
        ],
    );
}

#[test]
fn coalesce_takes_the_left_value_when_defined() {
    check_values(
        &message(),
        &[
            ("missing ?? 'fallback'", s("fallback")),
            ("alert ?? 'fallback'", s("high")),
            ("undefined ?? undefined", V::U),
            ("null ?? null", V::N),
        ],
    );
}

#[test]
fn identifiers_are_application_properties_by_exact_name() {
    check_values(&message(), &[("alert", s("high")), ("Alert", V::U), ("n", s("42")), ("as_number(n) = 42", T)]);
}

#[test]
fn dollar_names_prefer_an_application_property_then_the_system_property() {
    check_values(
        &message(),
        &[
            // The application property literally named "$connectionDeviceId" wins…
            ("$connectionDeviceId", s("app-wins")),
            // …unless braces ask for the system property.
            ("{$connectionDeviceId}", s("dev1")),
            ("$connectionModuleId", s("m1")),
            ("$messageId = 'mid-7'", T),
            ("$MessageId", s("mid-7")),
            ("$missing", V::U),
            ("{$missing}", V::U),
            // Names with brackets that are not body queries are undefined.
            ("$messageId[0]", V::U),
        ],
    );
}

#[test]
fn body_named_application_property_wins_unless_escaped() {
    let message = message().json(r#"{"x": "from-body"}"#);
    check_values(&message, &[("$body.x", s("app-body")), ("{$body.x}", s("from-body")), ("$body.x[0]", V::N)]);
}

#[test]
fn route_matches_only_when_the_condition_is_exactly_true() {
    let msg = message();
    let table = [
        ("true", true),
        ("alert = 'high'", true),
        ("alert = 'low'", false),
        ("missing = 'x'", false),
        ("null", false),
        ("'true'", false),
        ("1", false),
        ("NOT (missing = 'x')", false),
    ];
    for (condition, expected) in table {
        assert_eq!(route_with(condition).matches(&msg), expected, "{condition:?}");
    }
}
