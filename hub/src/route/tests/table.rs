//! Route tables: endpoint sets, priorities, TTLs, `needs_body`.

use super::TestMessage;
use crate::route::{Endpoint, Route, RouteTable, DEFAULT_PRIORITY};

fn route(name: &str, text: &str, priority: Option<u8>, ttl: u32) -> Route {
    match Route::parse(name, text, priority, ttl) {
        Ok(route) => route,
        Err(e) => panic!("{e}"),
    }
}

fn module(module: &str, input: &str) -> Endpoint {
    Endpoint::Module { module: module.to_string(), input: input.to_string() }
}

fn table() -> RouteTable {
    RouteTable::new(vec![
        route("all-up", "FROM /messages/* INTO $upstream", None, 0),
        route("alerts-up", "FROM /messages/* WHERE alert = 'yes' INTO $upstream", Some(1), 30),
        route("alerts-up-again", "FROM /messages/* WHERE alert = 'yes' INTO $upstream", Some(1), 99),
        route(
            "m1-to-filter",
            "FROM /messages/modules/m1/outputs/* INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")",
            Some(5),
            60,
        ),
        route(
            "hot-to-filter",
            "FROM /messages/* WHERE $body.t > 30 INTO BrokeredEndpoint('/modules/filter/inputs/in')",
            Some(2),
            10,
        ),
        route("m1-to-log", "FROM /messages/modules/m1/* INTO BrokeredEndpoint(\"/modules/log/inputs/all\")", None, 0),
    ])
}

fn endpoints(table: &RouteTable, message: &TestMessage) -> Vec<(Endpoint, u8, u32)> {
    let mut out = vec![(Endpoint::Upstream, 0, 0)];
    table.endpoints_for(message, &mut out);
    out
}

#[test]
fn each_endpoint_appears_once_with_its_best_priority_in_priority_order() {
    let table = table();
    let device = TestMessage::new("/messages");
    assert_eq!(endpoints(&table, &device), vec![(Endpoint::Upstream, DEFAULT_PRIORITY, 0)]);

    let alert = TestMessage::new("/messages").app("alert", "yes");
    // Two routes give priority 1: the first one's TTL is kept.
    assert_eq!(endpoints(&table, &alert), vec![(Endpoint::Upstream, 1, 30)]);

    let m1 = TestMessage::new("/messages/modules/m1/outputs/o");
    assert_eq!(
        endpoints(&table, &m1),
        vec![
            (module("filter", "in"), 5, 60),
            (Endpoint::Upstream, DEFAULT_PRIORITY, 0),
            (module("log", "all"), DEFAULT_PRIORITY, 0)
        ]
    );

    let hot_m1 = TestMessage::new("/messages/modules/m1/outputs/o").json(r#"{"t": 35}"#).app("alert", "yes");
    assert_eq!(
        endpoints(&table, &hot_m1),
        vec![(Endpoint::Upstream, 1, 30), (module("filter", "in"), 2, 10), (module("log", "all"), DEFAULT_PRIORITY, 0)]
    );
}

#[test]
fn no_match_gives_no_endpoints_and_clears_the_output() {
    let table = RouteTable::new(vec![route("r", "FROM /messages/modules/x/* INTO $upstream", None, 0)]);
    assert!(endpoints(&table, &TestMessage::new("/messages")).is_empty());
    assert!(endpoints(&RouteTable::default(), &TestMessage::new("/messages")).is_empty());
}

#[test]
fn needs_body_is_true_when_any_condition_queries_the_body() {
    assert!(table().needs_body());
    let without = RouteTable::new(vec![route("r", "FROM /* WHERE $contentType = 'x' INTO $upstream", None, 0)]);
    assert!(!without.needs_body());
    assert!(!RouteTable::new(Vec::new()).needs_body());
    assert_eq!(table().routes().len(), 6);
}

#[test]
fn endpoints_are_numbered_by_the_first_route_that_names_them() {
    let table = table();
    let mut out = vec![(99, 0, 0)];
    let alert = TestMessage::new("/messages/modules/m1/outputs/o").app("alert", "yes");
    table.endpoint_indices_for(&alert, &mut out);
    // $upstream is route 0's endpoint whichever of routes 0-2 matched; the filter input is
    // route 3's (route 4 names it too); the log input route 5's.
    assert_eq!(out, vec![(0, 1, 30), (3, 5, 60), (5, DEFAULT_PRIORITY, 0)]);
    let named: Vec<Endpoint> = out.iter().map(|(index, _, _)| table.routes()[*index].endpoint.clone()).collect();
    assert_eq!(named, endpoints(&table, &alert).into_iter().map(|(e, _, _)| e).collect::<Vec<_>>());
}

/// With more than eight routes the table finds the routes of a message's source through an
/// index of source prefixes; this compares it, source by source, with each route's own match.
#[test]
fn the_source_index_finds_exactly_the_routes_that_match_one_by_one() {
    let sources = [
        "/*",
        "/messages/*",
        "/messages/modules/*",
        "/messages/modules/m1/*",
        "/messages/modules/M1/outputs/*",
        "/messages/modules/m1/outputs/o1",
        "/messages/modules/m10/*",
        "/messages/modules/m1/outputs/o1/deeper",
        "/twinChangeNotifications",
        "/messages/modules/ünï/*",
        "/messages/modules/m2/outputs/*",
        "/messages/events",
    ];
    let mut routes: Vec<Route> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let text = format!("FROM {source} INTO BrokeredEndpoint(\"/modules/e{}/inputs/in\")", i % 5);
        routes.push(route(&format!("r{i}"), &text, Some((i % 3) as u8), i as u32));
        let conditional = format!("FROM {source} WHERE alert = 'yes' INTO $upstream");
        routes.push(route(&format!("c{i}"), &conditional, Some(1), 7));
    }
    assert!(routes.len() > 8, "enough routes for the index");
    let table = RouteTable::new(routes.clone());
    let messages = [
        "/messages/modules/m1/outputs/o1",
        "/MESSAGES/Modules/M1/Outputs/O1",
        "/messages/modules/m1",
        "/messages/modules/m1/",
        "  /messages/modules/m10/outputs/x  ",
        "/messages/modules/m100/outputs/x",
        "/messages/modules/m1/outputs/o1/deeper/still",
        "/messages/modules/ünï/outputs/x",
        "/messages/modules/ÜNÏ/outputs/x",
        "/twinChangeNotifications",
        "/messages/events",
        "/messages",
        "/",
        "",
        "messages/modules/m1",
        "//messages",
    ];
    for source in messages {
        for alert in ["yes", "no"] {
            let message = TestMessage::new(source).app("alert", alert);
            let mut indexed = Vec::new();
            table.endpoint_indices_for(&message, &mut indexed);
            // What comparing with every route in table order gives (the same folding rule).
            let mut expected: Vec<(usize, u8, u32)> = Vec::new();
            for (index, route) in routes.iter().enumerate() {
                if !route.matches(&message) {
                    continue;
                }
                let endpoint = routes.iter().position(|r| r.endpoint == route.endpoint).unwrap_or(index);
                match expected.iter_mut().find(|(e, _, _)| *e == endpoint) {
                    Some(entry) if route.priority < entry.1 => {
                        entry.1 = route.priority;
                        entry.2 = route.time_to_live_secs;
                    }
                    Some(_) => {}
                    None => expected.push((endpoint, route.priority, route.time_to_live_secs)),
                }
            }
            expected.sort_by_key(|(_, priority, _)| *priority);
            assert_eq!(indexed, expected, "source {source:?}, alert {alert}");
        }
    }
}
