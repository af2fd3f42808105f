//! Source matching: case-insensitive prefixes on segment boundaries, only a trailing `*`.

use crate::route::Route;

fn matches(source: &str, message_source: &str) -> bool {
    match Route::parse("r", &format!("FROM {source} INTO $upstream"), None, 0) {
        Ok(route) => route.source.matches(message_source),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn source_matching_table() {
    let table = [
        ("/*", "/messages", true),
        ("/*", "/messages/modules/m1/outputs/o1", true),
        ("/*", "/twinChangeNotifications", true),
        ("/messages/*", "/messages", true),
        ("/messages/*", "/messages/modules/m1", true),
        ("/messages/*", "/twinChangeNotifications", false),
        ("/messages", "/messages/modules/m1", true),
        ("/messages/modules/*", "/messages", false),
        ("/messages/modules/*", "/messages/modules/m1/outputs/o1", true),
        ("/messages/modules/m1/*", "/messages/modules/m1", true),
        ("/messages/modules/m1/*", "/messages/modules/m1/outputs/o1", true),
        // Prefixes stop at segment boundaries.
        ("/messages/modules/m1/*", "/messages/modules/m10", false),
        ("/messages/modules/m1", "/messages/modules/m10/outputs/o", false),
        ("/messages/modules/m1/outputs/*", "/messages/modules/m1", false),
        ("/messages/modules/m1/outputs/o1", "/messages/modules/m1/outputs/o1", true),
        ("/messages/modules/m1/outputs/o1", "/messages/modules/m1/outputs/o10", false),
        ("/messages/modules/m1/outputs/o1", "/messages/modules/m1/outputs/o1/", true),
        // Case-insensitive on both sides.
        ("/Messages/Modules/M1/*", "/messages/modules/m1/outputs/x", true),
        ("/messages/*", "/MESSAGES/modules/m1", true),
        // A `*` inside the path is literal; a trailing one glued to a name is stripped.
        ("/messages/modules/*/outputs/o1", "/messages/modules/m1/outputs/o1", false),
        ("/messages/modules/*/outputs/o1", "/messages/modules/*/outputs/o1", true),
        ("/messages/modules/m*", "/messages/modules/m", true),
        ("/messages/modules/m*", "/messages/modules/m1", false),
        ("/twinChangeNotifications", "/twinChangeNotifications", true),
        ("/twinChangeNotifications", "/messages", false),
    ];
    for (source, message_source, expected) in table {
        assert_eq!(matches(source, message_source), expected, "FROM {source} vs {message_source}");
    }
}

#[test]
fn route_matches_checks_source_before_condition() {
    let route = Route::parse("r", "FROM /messages/modules/m1/* WHERE true INTO $upstream", None, 0);
    let Ok(route) = route else { panic!("{route:?}") };
    assert!(route.matches(&super::TestMessage::new("/messages/modules/m1/outputs/o")));
    assert!(!route.matches(&super::TestMessage::new("/messages/modules/m2/outputs/o")));
}
