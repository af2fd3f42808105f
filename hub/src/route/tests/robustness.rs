//! Property-style tests: random and garbled route texts never panic, errors stay on one line
//! and point inside the text, and whatever parses also evaluates without panicking.

use super::TestMessage;
use crate::route::{Route, RouteTable};

/// Marsaglia's xorshift64: deterministic, so a failure reproduces from the printed input.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces of route syntax, so random texts often get deep into the parser.
const FRAGMENTS: &[&str] = &[
    "FROM ",
    "SELECT * ",
    "WHERE ",
    "INTO ",
    "$upstream",
    "BrokeredEndpoint(\"/modules/m/inputs/i\")",
    "/messages",
    "/modules",
    "/*",
    "*/",
    "/",
    "*",
    " AND ",
    " OR ",
    "NOT ",
    " = ",
    " <> ",
    " != ",
    " < ",
    " >= ",
    " + ",
    " - ",
    " % ",
    " || ",
    " ?? ",
    "(",
    ")",
    ",",
    "{",
    "}",
    "'str'",
    "\"s\\\"t\"",
    "'",
    "\"",
    "\\u00e9",
    "\\",
    "42",
    "-1.5e3",
    "0xFF",
    "e5",
    "true",
    "false",
    "null",
    "undefined",
    "alert",
    "$connectionDeviceId",
    "$body.t",
    "$body.a[0]",
    "$body.a['x y']",
    "{$body.t}",
    "$body.",
    "[",
    "]",
    "abs(",
    "concat(",
    "substring(",
    "is_defined(",
    "as_number(",
    "length(",
    "é",
    "😀",
    "\u{0}",
    " ",
    "\n",
    "@",
    "?",
];

fn random_text(rng: &mut XorShift) -> String {
    let mut text = String::new();
    for _ in 0..rng.below(24) {
        if rng.below(8) == 0 {
            // A raw character, sometimes outside ASCII.
            let c = char::from_u32(rng.below(0x3000) as u32).unwrap_or('?');
            text.push(c);
        } else {
            text.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
    }
    text
}

fn messages() -> Vec<TestMessage> {
    vec![
        TestMessage::new("/messages").app("alert", "x").json(r#"{"t": 5, "a": ["q", {"x y": true}]}"#),
        TestMessage::new("/messages/modules/m/outputs/o").sys("contentType", "application/json").raw_body(b"\xff\xfe"),
        TestMessage::new("").app("$body.t", "1"),
    ]
}

#[test]
fn random_route_texts_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let messages = messages();
    let mut parsed = Vec::new();
    for _ in 0..20_000 {
        let text = random_text(&mut rng);
        match Route::parse("fuzz", &text, None, 0) {
            Ok(route) => parsed.push(route),
            Err(error) => {
                let shown = error.to_string();
                assert!(!shown.contains('\n'), "multi-line error for {text:?}: {shown}");
                assert!(error.column <= text.chars().count() + 1, "column {} past {text:?}", error.column);
            }
        }
    }
    let table = RouteTable::new(parsed);
    let mut out = Vec::new();
    for message in &messages {
        table.endpoints_for(message, &mut out);
    }
}

#[test]
fn garbled_valid_routes_never_panic() {
    let seeds = [
        "FROM /messages/modules/m1/outputs/* WHERE $body.t > 30 AND is_defined(alert) INTO BrokeredEndpoint(\"/modules/f/inputs/i\")",
        "SELECT * FROM /* WHERE NOT ({$body.a[0]} = 'q' OR substring(alert, 1, 2) <> 'x') ?? false INTO $upstream",
        "FROM /messages/* WHERE concat(lower($connectionModuleId), '-', upper(alert)) = 'm-X' INTO $upstream",
    ];
    let mut rng = XorShift(42);
    let messages = messages();
    for _ in 0..10_000 {
        let seed = seeds[rng.below(seeds.len())];
        let mut bytes = seed.as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, seed.as_bytes()[rng.below(seed.len())]),
                _ => {
                    let other = rng.below(bytes.len());
                    bytes.swap(at, other);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(route) = Route::parse("garbled", &text, Some(3), 0) {
            for message in &messages {
                let _ = route.matches(message);
            }
        }
    }
}

#[test]
fn arbitrary_bytes_as_text_never_panic() {
    let mut rng = XorShift(7);
    for _ in 0..5_000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Route::parse("bytes", &String::from_utf8_lossy(&bytes), None, 0);
    }
}
