//! Fuzz the method HTTP API's request path (what any client that reaches `[hub] https` can
//! send): a request head and body (split at the first NUL) give a call within the limits or a
//! refusal with one of the API's statuses, never a panic; any callee payload gives a JSON answer.
#![no_main]

use bytes::Bytes;
use tinyedge_hub::auth::{Authenticator, Identity};
use tinyedge_hub::methods::{http, MethodResponse, NAME_CHARS_MAX, PAYLOAD_BYTES_MAX};

const NOW: u64 = 1_800_000_000;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    if let Ok(parsed) = http::parse_body(body) {
        assert!(!parsed.name.is_empty() && parsed.name.chars().count() <= NAME_CHARS_MAX);
        assert!(parsed.payload.len() <= PAYLOAD_BYTES_MAX);
        assert!(parsed.response_timeout >= http::RESPONSE_TIMEOUT_MIN);
    }
    let answer = http::answer(Ok(MethodResponse { status: 200, payload: Bytes::copy_from_slice(body) }));
    assert!(serde_json::from_slice::<serde_json::Value>(&answer.body).is_ok());
    let Ok(head) = tinyedge_platform::http::parse_head(head, http::BODY_BYTES_MAX) else { return };
    let mut auth = Authenticator::new("hub.example.net", "gateway.local");
    auth.insert(Identity::module("gw", "caller"), vec![7; 32]);
    match http::parse_request(&head, body, &auth, "gw", NOW) {
        Ok(call) => assert_eq!(call.caller, "gw/caller"),
        Err(rejection) => assert!([400, 401, 404, 405].contains(&rejection.status), "{rejection}"),
    }
});
