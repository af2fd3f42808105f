//! Static type checks: what IoT Edge refuses at deploy time, we refuse at parse time.

use super::{condition_error, route_with};

#[test]
fn well_typed_conditions_are_accepted() {
    let table = [
        "a = 'x'",
        "as_number(temperature) > 30",
        "$connectionDeviceId = 'dev1' AND $connectionModuleId <> 'm'",
        "$body.t > 30",
        "$body.t = 'hot'",
        "$body.t = null",
        "$body.a = $body.b",
        "'a' || 'b' = 'ab'",
        "a || $body.b = 'x'",
        "- $body.x < 0",
        "$body.x % 2 = 1",
        "NOT null",
        "NOT $body.flag",
        "NOT (a = 'b')",
        "true AND null",
        "undefined OR true",
        "null OR null",
        "$body.flag AND 'anything'",
        "true AND $body.flag",
        "(a ?? 'default') = 'x'",
        "($body.x ?? 5) > 1",
        "undefined = undefined",
        "null = null",
        "false < true",
        "is_defined(undefined)",
        "is_null(null) AND is_bool(1) AND is_number('a') AND is_string(a)",
        "concat(a, 'b', $body.c) = 'x'",
        "substring(a, 1) = substring('abc', 0, 1)",
        "abs($body.x) = 1",
        "as_number(1) = 1",
        "$weird[0] = undefined",
        "e5 = undefined",
    ];
    for condition in table {
        assert!(route_with(condition).condition.is_some(), "{condition:?}");
    }
}

#[test]
fn mismatched_operands_are_refused_at_the_operator() {
    let table = [
        ("temperature > 30", 13, "invalid operands to binary operator '>': have 'string' and 'number'"),
        ("a = 1", 3, "have 'string' and 'number'"),
        ("a = true", 3, "have 'string' and 'bool'"),
        ("a = null", 3, "have 'string' and 'null'"),
        ("a = undefined", 3, "have 'string' and 'undefined'"),
        ("$body.x = undefined", 9, "have '$body value' and 'undefined'"),
        ("null = 1", 6, "have 'null' and 'number'"),
        ("1 + 'a' = 1", 3, "operator '+': have 'number' and 'string'"),
        ("a * 2 = 1", 3, "operator '*'"),
        ("1 || 2 = '12'", 3, "operator '||': have 'number' and 'number'"),
        ("a and b", 3, "operator 'and': have 'string' and 'string'"),
        ("1 OR true", 3, "operator 'OR': have 'number' and 'bool'"),
        ("true AND 'x'", 6, "have 'bool' and 'string'"),
        ("a ?? 5", 3, "operator '??': have 'string' and 'number'"),
        ("undefined ?? 'a'", 11, "have 'undefined' and 'string'"),
    ];
    for (condition, column, message) in table {
        let (actual_column, actual_message) = condition_error(condition);
        assert!(actual_message.contains(message), "{condition:?}: {actual_message}");
        assert_eq!(actual_column, column, "{condition:?}: {actual_message}");
    }
}

#[test]
fn prefix_operators_check_their_operand() {
    let table = [
        ("- 'a' = 1", 1, "unary operator '-': have 'string'"),
        ("- a = 1", 1, "unary operator '-': have 'string'"),
        ("- undefined = 1", 1, "unary operator '-': have 'undefined'"),
        ("NOT 'a'", 1, "unary operator 'NOT': have 'string'"),
        ("NOT undefined", 1, "have 'undefined'"),
        ("NOT 1", 1, "have 'number'"),
        // NOT binds tighter than '=', as in IoT Edge: this is (NOT a) = 'b'.
        ("NOT a = 'b'", 1, "unary operator 'NOT': have 'string'"),
    ];
    for (condition, column, message) in table {
        let (actual_column, actual_message) = condition_error(condition);
        assert!(actual_message.contains(message), "{condition:?}: {actual_message}");
        assert_eq!(actual_column, column, "{condition:?}: {actual_message}");
    }
}

#[test]
fn function_calls_check_count_and_types_at_the_name() {
    let table = [
        ("abs('a') = 1", "invalid arguments to built-in function 'abs': abs(string), expected abs(number)"),
        ("abs() = 1", "abs(), expected abs(number)"),
        ("abs(1, 2) = 1", "abs(number, number)"),
        ("abs(null) = 1", "abs(null)"),
        ("power(2) = 4", "expected power(number, number)"),
        ("as_number(true) = 1", "expected as_number(string) or as_number(number)"),
        ("is_defined()", "expected is_defined(any value)"),
        ("is_null(1, 2)", "is_null(number, number)"),
        ("concat('a') = 'a'", "expected concat(string, string, ...)"),
        ("concat('a', 1) = 'a'", "concat(string, number)"),
        ("length(1) = 1", "length(number)"),
        ("lower(true) = 'x'", "lower(bool)"),
        ("substring('abc') = 'a'", "expected substring(string, number) or substring(string, number, number)"),
        ("substring('abc', '1') = 'a'", "substring(string, string)"),
        ("index_of('a', 1) = 0", "index_of(string, number)"),
        ("starts_with('a')", "starts_with(string)"),
        ("CONTAINS(1, 'a')", "invalid arguments to built-in function 'CONTAINS'"),
        ("twin_change_includes('a')", "unknown built-in function 'twin_change_includes'"),
    ];
    for (condition, message) in table {
        let (column, actual) = condition_error(condition);
        assert!(actual.contains(message), "{condition:?}: {actual}");
        assert_eq!(column, 1, "{condition:?}");
    }
}
