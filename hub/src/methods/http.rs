//! edgeHub's method HTTP API as pure code: a request (head and body, from
//! [`tinyedge_platform::http`]) becomes a [`MethodCall`] or a refusal, and a call's outcome
//! becomes the answer. The HTTPS listener ([`super::listener`]) only moves bytes around this.
//!
//! - `POST /twins/{device}/modules/{module}/methods` calls a module,
//!   `POST /twins/{device}/methods` a (leaf) device; `?api-version=` is accepted and ignored.
//! - The caller is `x-ms-edge-moduleId: {device}/{module}` (missing or malformed: 400); it must
//!   be a module of this device (else 401 "Only modules on the same device can invoke
//!   DirectMethods") and `Authorization: SharedAccessSignature …` must be a valid token of that
//!   module (else 401).
//! - The body (also what `tinyedge invoke` sends over the management socket, see
//!   [`parse_body`]): `{"methodName", "payload", "responseTimeoutInSeconds",
//!   "connectTimeoutInSeconds"}`, checked as edgeHub's `MethodRequestValidator` does (400).
//! - Answers ([`answer`]): 200 `{"status", "payload"}` from the callee, 404 not connected or not
//!   subscribed within the connect timeout, 504 no answer within the response timeout, each
//!   refusal `{"message": …}`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tinyedge_platform::http::{Head, Response};
use tinyedge_platform::urlenc;

use super::{
    MethodCall, MethodError, MethodResponse, CONNECT_TIMEOUT_MAX, NAME_CHARS_MAX, PAYLOAD_BYTES_MAX,
    RESPONSE_TIMEOUT_MAX,
};
use crate::auth::{Authenticator, Identity};

/// Shortest response timeout a caller may ask for (edgeHub's `MethodRequestValidator`).
pub const RESPONSE_TIMEOUT_MIN: Duration = Duration::from_secs(5);
/// The response timeout of a body that names none (edgeHub's default).
pub const RESPONSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The connect timeout of a body that names none: the target must be there now.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::ZERO;
/// What a body holds besides its payload: the method name (≤ 100 characters, 6 bytes each
/// when escaped), two timeouts, key names and whitespace fit in 4 KiB.
const ENVELOPE_BYTES_MAX: usize = 4 * 1024;
/// Largest request body: the largest payload in its envelope.
pub const BODY_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + ENVELOPE_BYTES_MAX;
const _: () = assert!(NAME_CHARS_MAX * 6 + 200 < ENVELOPE_BYTES_MAX);
const _: () = assert!(RESPONSE_TIMEOUT_MIN.as_secs() <= RESPONSE_TIMEOUT_DEFAULT.as_secs());
const _: () = assert!(RESPONSE_TIMEOUT_DEFAULT.as_secs() <= RESPONSE_TIMEOUT_MAX.as_secs());

/// The answer edgeHub gives a caller of another device's modules.
pub const OTHER_DEVICE_MESSAGE: &str = "Only modules on the same device can invoke DirectMethods";

/// A request refused before any call: the status and why, answered as `{"message": …}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

impl Rejection {
    fn new(status: u16, message: impl Into<String>) -> Rejection {
        Rejection { status, message: message.into() }
    }

    /// The answer: `status` with `{"message": …}`.
    pub fn response(&self) -> Response {
        message(self.status, &self.message)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

fn message(status: u16, text: &str) -> Response {
    Response::json(status, &serde_json::json!({ "message": text }))
}

/// A validated body: what to call and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodBody {
    pub name: String,
    /// JSON text, as the caller wrote it (`null` when absent).
    pub payload: Bytes,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
}

impl MethodBody {
    /// The call from `caller` (`""` for the CLI) to `target`.
    pub fn into_call(self, caller: String, target: String) -> MethodCall {
        MethodCall {
            caller,
            target,
            name: self.name,
            payload: self.payload,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
        }
    }
}

/// A field of the body by name: exact, else ignoring ASCII case (edgeHub's JSON reader matches
/// property names that way).
fn field<'a>(fields: &BTreeMap<&str, &'a RawValue>, name: &str) -> Option<&'a RawValue> {
    fields.get(name).or_else(|| fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v)).copied()
}

/// A timeout field in whole seconds within `min..=max`; `default` when absent or `null`.
fn seconds(
    fields: &BTreeMap<&str, &RawValue>,
    name: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let Some(raw) = field(fields, name).map(RawValue::get).filter(|raw| *raw != "null") else {
        return Ok(default);
    };
    let range = format!("{name} must be a whole number of seconds from {} to {}", min.as_secs(), max.as_secs());
    let value: serde_json::Value = serde_json::from_str(raw).map_err(|_| range.clone())?;
    // 30 and 30.0 are the same number to JSON.
    let whole = value.as_u64().or_else(|| value.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
    match whole {
        Some(secs) if (min.as_secs()..=max.as_secs()).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{range}, got {}", cut(raw))),
    }
}

/// Peer input quoted in a message, cut to a readable length.
fn cut(text: &str) -> String {
    const QUOTED_CHARS_MAX: usize = 40;
    let mut out: String = text.chars().take(QUOTED_CHARS_MAX).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Parses and checks a method call body (edgeHub's `MethodRequestValidator`): `methodName` 1 to
/// [`NAME_CHARS_MAX`] characters, `payload` any JSON of at most [`PAYLOAD_BYTES_MAX`] bytes,
/// `responseTimeoutInSeconds` 5–300 (default 30), `connectTimeoutInSeconds` 0–300 (default 0).
/// Other fields are ignored.
///
/// # Errors
/// The 400 message naming the field.
pub fn parse_body(body: &[u8]) -> Result<MethodBody, String> {
    let fields: BTreeMap<&str, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be a JSON object {{\"methodName\": …, \"payload\": …}}: {e}"))?;
    let name = match field(&fields, "methodName").map(|raw| serde_json::from_str::<serde_json::Value>(raw.get())) {
        Some(Ok(serde_json::Value::String(name))) => name,
        None | Some(Ok(serde_json::Value::Null)) => return Err("methodName is required".to_owned()),
        Some(_) => return Err("methodName must be a string".to_owned()),
    };
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_CHARS_MAX {
        return Err(format!("methodName must be 1 to {NAME_CHARS_MAX} characters, got {chars}"));
    }
    let payload = field(&fields, "payload").map_or("null", RawValue::get);
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(format!("payload of {} bytes, at most {PAYLOAD_BYTES_MAX}", payload.len()));
    }
    let response_timeout = seconds(
        &fields,
        "responseTimeoutInSeconds",
        RESPONSE_TIMEOUT_DEFAULT,
        RESPONSE_TIMEOUT_MIN,
        RESPONSE_TIMEOUT_MAX,
    )?;
    let connect_timeout =
        seconds(&fields, "connectTimeoutInSeconds", CONNECT_TIMEOUT_DEFAULT, Duration::ZERO, CONNECT_TIMEOUT_MAX)?;
    Ok(MethodBody { name, payload: Bytes::copy_from_slice(payload.as_bytes()), response_timeout, connect_timeout })
}

/// One path segment, percent-decoded and non-empty.
fn decoded(segment: &str) -> Option<String> {
    urlenc::decode(segment).ok().filter(|s| !s.is_empty() && !s.contains('/')).map(|s| s.into_owned())
}

/// The target of a request path: `"{device}/{module}"` or `"{device}"`.
///
/// # Errors
/// 404 for a path the API does not serve, 405 for a method other than POST.
pub fn parse_target(head: &Head) -> Result<String, Rejection> {
    let target = match head.segments().as_slice() {
        ["twins", device, "modules", module, "methods"] => {
            decoded(device).zip(decoded(module)).map(|(device, module)| format!("{device}/{module}"))
        }
        ["twins", device, "methods"] => decoded(device),
        _ => None,
    };
    let Some(target) = target else {
        return Err(Rejection::new(
            404,
            format!(
                "no such endpoint {}: POST /twins/{{device}}/modules/{{module}}/methods or /twins/{{device}}/methods",
                cut(&head.path)
            ),
        ));
    };
    if head.method != "POST" {
        return Err(Rejection::new(405, format!("{} is not allowed on {}: use POST", head.method, cut(&head.path))));
    }
    Ok(target)
}

/// The caller named by `x-ms-edge-moduleId`: `{device}/{module}`.
///
/// # Errors
/// 400 when the header is missing or not in that form.
pub fn parse_caller(header: Option<&str>) -> Result<Identity, Rejection> {
    let header = header.ok_or_else(|| {
        Rejection::new(400, "the x-ms-edge-moduleId header ({device}/{module} of the caller) is required")
    })?;
    match header.split('/').collect::<Vec<_>>().as_slice() {
        [device, module] if !device.is_empty() && !module.is_empty() => Ok(Identity::module(device, module)),
        _ => Err(Rejection::new(400, format!("x-ms-edge-moduleId {:?} is not {{device}}/{{module}}", cut(header)))),
    }
}

/// Who calls: the module of `x-ms-edge-moduleId`, a module of `device_id`, whose SAS token in
/// `Authorization` is valid at `now_unix`.
///
/// # Errors
/// 400 for a missing or malformed `x-ms-edge-moduleId`; 401 for a caller of another device, a
/// missing `Authorization`, or a token that is not that module's (the reason never quotes the
/// token).
pub fn authorize(head: &Head, auth: &Authenticator, device_id: &str, now_unix: u64) -> Result<Identity, Rejection> {
    let caller = parse_caller(head.module_id.as_deref())?;
    if caller.device_id != device_id {
        return Err(Rejection::new(401, OTHER_DEVICE_MESSAGE));
    }
    let token = head.authorization.as_deref().ok_or_else(|| {
        Rejection::new(401, "the Authorization header (SharedAccessSignature of the calling module) is required")
    })?;
    auth.authenticate_token(&caller, token, now_unix)
        .map_err(|e| Rejection::new(401, format!("Unable to authenticate {caller}: {e}")))?;
    Ok(caller)
}

/// A whole request to the method HTTP API → the call to make: path (404, 405), caller and
/// token (400, 401), body (400), in that order.
///
/// # Errors
/// The refusal to answer instead of calling.
pub fn parse_request(
    head: &Head,
    body: &[u8],
    auth: &Authenticator,
    device_id: &str,
    now_unix: u64,
) -> Result<MethodCall, Rejection> {
    let target = parse_target(head)?;
    let caller = authorize(head, auth, device_id, now_unix)?;
    let body = parse_body(body).map_err(|e| Rejection::new(400, e))?;
    Ok(body.into_call(caller.client_id(), target))
}

/// The answer to a call's outcome: 200 `{"status", "payload"}` with the callee's payload as it
/// sent it (`null` if it sent nothing, a JSON string if it sent something that is not JSON);
/// 404, 504 or 400 `{"message": …}`.
pub fn answer(outcome: Result<MethodResponse, MethodError>) -> Response {
    match outcome {
        Ok(response) => {
            let payload = if response.payload.iter().all(u8::is_ascii_whitespace) {
                "null".to_owned()
            } else if serde_json::from_slice::<&RawValue>(&response.payload).is_ok() {
                String::from_utf8_lossy(&response.payload).into_owned()
            } else {
                serde_json::Value::String(String::from_utf8_lossy(&response.payload).into_owned()).to_string()
            };
            Response::new(200, format!("{{\"status\":{},\"payload\":{payload}}}", response.status).into_bytes())
        }
        Err(error @ MethodError::NotConnected(_)) => message(404, &error.to_string()),
        Err(error @ MethodError::Timeout(_)) => message(504, &error.to_string()),
        Err(error @ MethodError::Invalid(_)) => message(400, &error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyedge_platform::sas;

    const HUB: &str = "hub.example.net";
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn authenticator() -> Authenticator {
        let mut auth = Authenticator::new(HUB, "gateway.local");
        auth.insert(Identity::module("gw", "caller"), KEY.to_vec());
        auth.insert(Identity::module("other", "caller"), KEY.to_vec());
        auth
    }

    fn token(resource: &str, expiry: u64) -> String {
        sas::generate(resource, KEY, expiry)
    }

    fn head(method: &str, target: &str, caller: Option<&str>, authorization: Option<String>) -> Head {
        Head { module_id: caller.map(str::to_owned), authorization, ..Head::new(method, target) }
    }

    fn good_head(target: &str) -> Head {
        head("POST", target, Some("gw/caller"), Some(token("hub.example.net/devices/gw/modules/caller", NOW + 60)))
    }

    #[test]
    fn a_module_call_becomes_a_method_call() {
        let body = br#"{"methodName":"reboot","payload":{"b":1, "a":[2]},"responseTimeoutInSeconds":60,"connectTimeoutInSeconds":5}"#;
        let call = parse_request(
            &good_head("/twins/gw/modules/target%2Dm/methods?api-version=2020-09-30"),
            body,
            &authenticator(),
            "gw",
            NOW,
        )
        .unwrap();
        assert_eq!(
            (call.caller.as_str(), call.target.as_str(), call.name.as_str()),
            ("gw/caller", "gw/target-m", "reboot")
        );
        assert_eq!(call.payload, Bytes::from_static(br#"{"b":1, "a":[2]}"#), "the payload as the caller wrote it");
        assert_eq!((call.response_timeout, call.connect_timeout), (Duration::from_secs(60), Duration::from_secs(5)));
    }

    #[test]
    fn a_device_call_targets_the_device() {
        let call =
            parse_request(&good_head("/twins/sensor-7/methods"), br#"{"methodName":"m"}"#, &authenticator(), "gw", NOW)
                .unwrap();
        assert_eq!(call.target, "sensor-7");
        assert_eq!(call.payload, Bytes::from_static(b"null"));
        assert_eq!((call.response_timeout, call.connect_timeout), (RESPONSE_TIMEOUT_DEFAULT, CONNECT_TIMEOUT_DEFAULT));
    }

    #[test]
    fn requests_are_refused_with_edgehubs_statuses() {
        let valid = token("hub.example.net/devices/gw/modules/caller", NOW + 60);
        let body = br#"{"methodName":"m"}"#;
        let cases: Vec<(Head, u16, &str)> = vec![
            (good_head("/twins/gw/modules/m"), 404, "no such endpoint"),
            (good_head("/twins/gw/modules//methods"), 404, "no such endpoint"),
            (good_head("/twins/gw/modules/a%2Fb/methods"), 404, "no such endpoint"),
            (good_head("/twins/gw/modules/%zz/methods"), 404, "no such endpoint"),
            (good_head("/methods"), 404, "no such endpoint"),
            (head("GET", "/twins/gw/methods", Some("gw/caller"), Some(valid.clone())), 405, "use POST"),
            (head("POST", "/twins/gw/methods", None, Some(valid.clone())), 400, "x-ms-edge-moduleId header"),
            (head("POST", "/twins/gw/methods", Some("gw"), Some(valid.clone())), 400, "is not {device}/{module}"),
            (head("POST", "/twins/gw/methods", Some("gw/a/b"), Some(valid.clone())), 400, "is not {device}/{module}"),
            (head("POST", "/twins/gw/methods", Some("/caller"), Some(valid.clone())), 400, "is not {device}/{module}"),
            (head("POST", "/twins/gw/methods", Some("other/caller"), Some(valid.clone())), 401, OTHER_DEVICE_MESSAGE),
            (head("POST", "/twins/gw/methods", Some("gw/caller"), None), 401, "Authorization header"),
            (
                head("POST", "/twins/gw/methods", Some("gw/caller"), Some("Bearer x".into())),
                401,
                "Unable to authenticate gw/caller",
            ),
            (
                head(
                    "POST",
                    "/twins/gw/methods",
                    Some("gw/caller"),
                    Some(token("hub.example.net/devices/gw/modules/caller", NOW - 1)),
                ),
                401,
                "expired",
            ),
            (
                head(
                    "POST",
                    "/twins/gw/methods",
                    Some("gw/caller"),
                    Some(token("hub.example.net/devices/gw/modules/someone-else", NOW + 60)),
                ),
                401,
                "audience",
            ),
            (head("POST", "/twins/gw/methods", Some("gw/unknown"), Some(valid.clone())), 401, "unknown identity"),
        ];
        for (head, status, needle) in cases {
            let rejection = parse_request(&head, body, &authenticator(), "gw", NOW).unwrap_err();
            assert_eq!(rejection.status, status, "{head:?}: {rejection}");
            assert!(rejection.message.contains(needle), "{head:?}: {rejection}");
            assert!(!rejection.message.contains("sig="), "{rejection}");
        }
    }

    #[test]
    fn bodies_are_checked_as_edgehub_checks_them() {
        let big = format!(r#"{{"methodName":"m","payload":"{}"}}"#, "x".repeat(PAYLOAD_BYTES_MAX));
        let long_name = format!(r#"{{"methodName":"{}"}}"#, "n".repeat(NAME_CHARS_MAX + 1));
        let cases: Vec<(&str, &str)> = vec![
            ("", "must be a JSON object"),
            ("[]", "must be a JSON object"),
            ("{\"methodName\":\"m\"", "must be a JSON object"),
            ("{}", "methodName is required"),
            (r#"{"methodName":null}"#, "methodName is required"),
            (r#"{"methodName":7}"#, "methodName must be a string"),
            (r#"{"methodName":""}"#, "1 to 100 characters, got 0"),
            (&long_name, "1 to 100 characters, got 101"),
            (&big, "payload of 131074 bytes, at most 131072"),
            (r#"{"methodName":"m","responseTimeoutInSeconds":4}"#, "from 5 to 300, got 4"),
            (r#"{"methodName":"m","responseTimeoutInSeconds":301}"#, "from 5 to 300, got 301"),
            (r#"{"methodName":"m","responseTimeoutInSeconds":-5}"#, "got -5"),
            (r#"{"methodName":"m","responseTimeoutInSeconds":5.5}"#, "got 5.5"),
            (r#"{"methodName":"m","responseTimeoutInSeconds":"30"}"#, "responseTimeoutInSeconds must be a whole"),
            (
                r#"{"methodName":"m","connectTimeoutInSeconds":301}"#,
                "connectTimeoutInSeconds must be a whole number of seconds from 0 to 300",
            ),
            (r#"{"methodName":"m","connectTimeoutInSeconds":1e400}"#, "connectTimeoutInSeconds must be a whole number"),
        ];
        for (body, needle) in cases {
            let error = parse_body(body.as_bytes()).unwrap_err();
            assert!(error.contains(needle), "{body:.80}: {error}");
        }
    }

    #[test]
    fn body_fields_take_defaults_edge_values_and_any_case() {
        let body = parse_body(
            br#"{"METHODNAME":"m","payload":null,"responseTimeoutInSeconds":5.0,"connectTimeoutInSeconds":300,"x":1}"#,
        )
        .unwrap();
        assert_eq!(body.name, "m");
        assert_eq!(body.payload, Bytes::from_static(b"null"));
        assert_eq!((body.response_timeout, body.connect_timeout), (Duration::from_secs(5), Duration::from_secs(300)));
        let body =
            parse_body(br#"{"methodName":"m","responseTimeoutInSeconds":null,"connectTimeoutInSeconds":0}"#).unwrap();
        assert_eq!((body.response_timeout, body.connect_timeout), (RESPONSE_TIMEOUT_DEFAULT, Duration::ZERO));
        let exact =
            format!(r#"{{"methodName":"{}","payload":"{}"}}"#, "n".repeat(100), "x".repeat(PAYLOAD_BYTES_MAX - 2));
        assert!(parse_body(exact.as_bytes()).is_ok(), "the limits themselves are allowed");
    }

    #[test]
    fn outcomes_become_edgehubs_answers() {
        let ok =
            |payload: &'static [u8]| answer(Ok(MethodResponse { status: 201, payload: Bytes::from_static(payload) }));
        assert_eq!(ok(br#"{"b":1,"a":2}"#), Response::new(200, br#"{"status":201,"payload":{"b":1,"a":2}}"#.to_vec()));
        assert_eq!(ok(b""), Response::new(200, br#"{"status":201,"payload":null}"#.to_vec()));
        assert_eq!(ok(b"not json"), Response::new(200, br#"{"status":201,"payload":"not json"}"#.to_vec()));
        let json = |r: Response| (r.status, serde_json::from_slice::<serde_json::Value>(&r.body).unwrap());
        assert_eq!(
            json(answer(Err(MethodError::NotConnected("Client gw/x not found".into())))),
            (404, serde_json::json!({"message": "Client gw/x not found"}))
        );
        assert_eq!(
            json(answer(Err(MethodError::Timeout("late".into())))),
            (504, serde_json::json!({"message": "late"}))
        );
        assert_eq!(json(answer(Err(MethodError::Invalid("bad".into())))), (400, serde_json::json!({"message": "bad"})));
    }
}
