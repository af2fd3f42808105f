//! Route structure: SELECT/FROM/WHERE/INTO, sinks, priorities, and errors with columns.

use super::{error_of, route_with};
use crate::route::{Endpoint, Route, RouteError, DEFAULT_PRIORITY, EXPRESSION_HEIGHT_MAX, ROUTE_TEXT_BYTES_MAX};

fn parse(text: &str) -> Route {
    match Route::parse("r", text, None, 0) {
        Ok(route) => route,
        Err(e) => panic!("{e}"),
    }
}

fn module(module: &str, input: &str) -> Endpoint {
    Endpoint::Module { module: module.to_string(), input: input.to_string() }
}

#[test]
fn route_shapes_parse() {
    let table = [
        ("FROM /messages/* INTO $upstream", "/messages/*", None),
        ("SELECT * FROM /messages/* INTO $upstream", "/messages/*", None),
        (
            "select * from /messages/modules/m1/outputs/out1 where true into $upstream",
            "/messages/modules/m1/outputs/out1",
            Some("true"),
        ),
        ("FROM /* WHERE a = 'b' AND c <> 'd' INTO $UPSTREAM", "/*", Some("a = 'b' AND c <> 'd'")),
        ("FROM /messages /modules/ m1 INTO $upstream", "/messages/modules/m1", None),
        ("FROM /twinChangeNotifications INTO $upstream", "/twinChangeNotifications", None),
        ("FROM /messages/modules/1/outputs/$x INTO $upstream", "/messages/modules/1/outputs/$x", None),
        ("\n\tFROM /messages\r\n INTO $upstream ", "/messages", None),
        ("FROM /* note */ /messages WHERE /* note */ a = 'b' INTO /* note */ $upstream", "/messages", Some("a = 'b'")),
    ];
    for (text, source, condition) in table {
        let route = parse(text);
        assert_eq!(route.source.as_str(), source, "{text:?}");
        assert_eq!(route.condition.as_ref().map(|c| c.text()), condition, "{text:?}");
        assert_eq!(route.endpoint, Endpoint::Upstream, "{text:?}");
    }
}

#[test]
fn missing_where_means_every_message_from_the_source() {
    let route = parse("FROM /messages/* INTO $upstream");
    assert!(route.condition.is_none());
}

#[test]
fn sinks_name_upstream_or_a_module_input() {
    let table = [
        ("$upstream", Endpoint::Upstream),
        ("$Upstream", Endpoint::Upstream),
        ("BrokeredEndpoint(\"/modules/filter/inputs/input1\")", module("filter", "input1")),
        ("brokeredendpoint('/modules/m-2/inputs/in')", module("m-2", "in")),
        ("BrokeredEndpoint(\"modules/m/inputs/i/\")", module("m", "i")),
        ("BrokeredEndpoint ( \" /modules/m/inputs/i \" )", module("m", "i")),
        // IoT Edge never checks the words "modules" and "inputs".
        ("BrokeredEndpoint(\"/x/m/y/i\")", module("m", "i")),
    ];
    for (sink, expected) in table {
        let route = parse(&format!("FROM /messages/* INTO {sink}"));
        assert_eq!(route.endpoint, expected, "{sink:?}");
    }
}

#[test]
fn bad_sinks_are_errors_at_the_sink() {
    let table = [
        ("$elsewhere", "unsupported system endpoint '$elsewhere'"),
        ("Other(\"/modules/m/inputs/i\")", "unsupported endpoint function 'Other'"),
        ("BrokeredEndpoint(\"/modules/m/inputs\")", "is not of the form"),
        ("BrokeredEndpoint(\"/modules/m/inputs/i/extra\")", "is not of the form"),
        ("BrokeredEndpoint(\"//modules/m/inputs/i\")", "is not of the form"),
        ("BrokeredEndpoint(\"/modules//inputs/i\")", "empty module or input"),
        ("BrokeredEndpoint(/modules/m/inputs/i)", "expected a quoted endpoint address"),
        ("BrokeredEndpoint(\"/modules/m/inputs/i\"", "expected ')' after the endpoint address"),
        ("'text'", "expected an endpoint"),
        ("", "expected an endpoint"),
    ];
    for (sink, message) in table {
        let (column, error) = error_of(&format!("FROM /messages/* INTO {sink}"));
        assert!(error.contains(message), "{sink:?}: {error}");
        assert!(column >= 23, "{sink:?}: column {column}");
    }
}

#[test]
fn each_error_names_its_column() {
    let table = [
        ("", 1, "expected FROM, found the end of the route"),
        ("FROM", 5, "expected a source path such as /messages/*, found the end of the route"),
        ("SELECT FROM /* INTO $upstream", 8, "expected '*' after SELECT, found 'FROM'"),
        ("FROM messages INTO $upstream", 6, "expected a source path"),
        ("FROM /messages/ INTO $upstream", 17, "expected a path segment after '/'"),
        ("FROM /messages/* WHER true INTO $upstream", 18, "expected WHERE or INTO, found 'WHER'"),
        ("FROM /messages/* WHERE INTO $upstream", 24, "expected an expression, found 'INTO'"),
        ("FROM /messages/* WHERE a = 'b' c INTO $upstream", 32, "expected an operator or INTO, found 'c'"),
        ("FROM /messages/* WHERE (a = 'b' INTO $upstream", 33, "expected ')', found 'INTO'"),
        ("FROM /messages/* WHERE (a = 'b')) INTO $upstream", 33, "expected an operator or INTO, found ')'"),
        ("FROM /messages/* WHERE a = 'b INTO $upstream", 28, "unterminated string"),
        ("FROM /messages/* WHERE a = @ INTO $upstream", 28, "invalid symbol '@'"),
        ("FROM /messages/* WHERE a[0] = 'x' INTO $upstream", 24, "expected an expression, found 'a[0]'"),
        ("FROM /messages/* WHERE { a } INTO $upstream", 26, "expected a $property after '{'"),
        ("FROM /messages/* WHERE {$a INTO $upstream", 28, "expected '}'"),
        ("FROM /messages/* INTO $upstream WHERE a = 'b'", 33, "unexpected 'WHERE' after the endpoint"),
        ("FROM /messages/* WHERE foo(1) INTO $upstream", 24, "unknown built-in function 'foo'"),
        (
            "FROM /messages/* WHERE abs(1 2) INTO $upstream",
            30,
            "expected ',' or ')' in the arguments of 'abs', found '2'",
        ),
        ("FROM /messages/* WHERE $body. = 1 INTO $upstream", 24, "invalid $body query: $body query cannot be empty"),
        ("FROM /messages/* WHERE $body.a..b = 1 INTO $upstream", 24, "invalid $body query"),
        ("FROM /messages/* WHERE $body.a[x] = 1 INTO $upstream", 24, "invalid $body query"),
        ("FROM /é/* WHERE ü = @ INTO $upstream", 21, "invalid symbol '@'"),
        ("FROM /messages/* WHERE a = 'b' /* note */ INTO $upstream", 15, "'/*' here opens a comment"),
        ("FROM /* WHERE a = 'b' /* note */ INTO $upstream", 6, "'/*' here opens a comment"),
        // Any later `*/` makes the `/*` of a wildcard path a comment.
        ("FROM /messages/* WHERE a = '*/' INTO $upstream", 15, "'/*' here opens a comment"),
    ];
    for (text, column, message) in table {
        let (actual_column, actual_message) = error_of(text);
        assert!(actual_message.contains(message), "{text:?}: {actual_message}");
        assert_eq!(actual_column, column, "{text:?}: {actual_message}");
    }
}

#[test]
fn error_display_is_one_line_with_name_column_and_text() {
    let error = match Route::parse("r1", "FROM /messages/* WHER true\nINTO $upstream", None, 0) {
        Err(e) => e,
        Ok(route) => panic!("parsed {route:?}"),
    };
    assert_eq!(
        error.to_string(),
        "route \"r1\": expected WHERE or INTO, found 'WHER' at column 18 in \"FROM /messages/* WHER true\\nINTO $upstream\""
    );
    let _: &dyn std::error::Error = &error;
}

#[test]
fn priority_defaults_below_every_explicit_one() {
    assert_eq!(parse("FROM /* INTO $upstream").priority, DEFAULT_PRIORITY);
    for p in 0..=9 {
        let route = Route::parse("r", "FROM /* INTO $upstream", Some(p), 60).map_err(|e| e.to_string());
        assert_eq!(route.map(|r| (r.priority, r.time_to_live_secs)), Ok((p, 60)));
        assert!(p < DEFAULT_PRIORITY);
    }
    let error = Route::parse("r", "FROM /* INTO $upstream", Some(10), 0).err();
    assert!(matches!(error, Some(RouteError { column: 0, .. })), "{error:?}");
}

#[test]
fn overlong_route_text_is_refused_before_parsing() {
    let text = format!("FROM /* WHERE a = '{}' INTO $upstream", "x".repeat(ROUTE_TEXT_BYTES_MAX));
    let error = Route::parse("big", &text, None, 0).err();
    let Some(error) = error else { panic!("accepted") };
    assert_eq!(error.column, 0);
    assert!(error.message.contains("bytes long"), "{}", error.message);
    // The display quotes only the start of the text.
    assert!(error.to_string().len() < 400);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let table = [
        ("(", "1", ")", "nests more than"),
        ("abs(", "1", ")", "nests more than"),
        ("NOT ", "true", "", "operators deep"),
        ("- ", "1", "", "operators deep"),
    ];
    for (open, operand, close, limit) in table {
        let condition = format!("{}{operand}{} = 1", open.repeat(2000), close.repeat(2000));
        let (_, message) = error_of(&format!("FROM /* WHERE {condition} INTO $upstream"));
        assert!(message.contains(limit), "{open:?}: {message}");
    }
    // Just inside the limit is fine.
    let _ = route_with(&format!("{}true{}", "(".repeat(60), ")".repeat(60)));
}

#[test]
fn long_operator_chains_are_bounded_by_tree_height() {
    let chain = vec!["true"; EXPRESSION_HEIGHT_MAX + 10].join(" OR ");
    let (_, message) = error_of(&format!("FROM /* WHERE {chain} INTO $upstream"));
    assert!(message.contains("operators deep"), "{message}");
    let chain = vec!["true"; 100].join(" OR ");
    assert!(route_with(&chain).condition.is_some());
}

/// Runs `f` on a thread with a small stack (a quarter of Rust's default), so that a recursion
/// bound that is too loose fails here rather than in production.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    const STACK_BYTES: usize = 512 * 1024;
    let thread = std::thread::Builder::new().stack_size(STACK_BYTES).spawn(f);
    assert!(thread.map(|t| t.join().is_ok()).unwrap_or(false), "thread failed");
}

#[test]
fn worst_case_parser_recursion_fits_a_small_stack() {
    on_small_stack(|| {
        // Every precedence level climbed before each parenthesis, as deep as the limit allows.
        let depth = crate::route::NESTING_DEPTH_MAX - 1;
        let condition = format!("{}x{}", "x ?? x OR x AND x = x < x + x * (".repeat(depth), ")".repeat(depth));
        let (_, message) = error_of(&format!("FROM /* WHERE {condition} INTO $upstream"));
        assert!(message.contains("invalid operands"), "{message}");
        let condition = format!("{}true{}", "NOT (".repeat(depth / 2), ")".repeat(depth / 2));
        assert!(route_with(&condition).condition.is_some());
    });
}

#[test]
fn tallest_tree_evaluates_and_drops_on_a_small_stack() {
    on_small_stack(|| {
        let chain = vec!["alert = 'x'"; EXPRESSION_HEIGHT_MAX / 2].join(" AND ");
        let route = route_with(&format!("is_defined({chain} OR false)"));
        assert!(route.matches(&super::TestMessage::new("/messages").app("alert", "x")));
    });
}

#[test]
fn unclosed_comment_openers_lex_quickly() {
    let text = "/*".repeat(ROUTE_TEXT_BYTES_MAX / 2);
    let started = std::time::Instant::now();
    let _ = Route::parse("r", &text, None, 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
