//! IoT Hub's MQTT topics, all parsed and built here: what a client may publish and subscribe
//! to, the `$iothub/…` requests it makes (twins, method responses), and the topics the hub
//! delivers on (module inputs, twin responses, desired patches, method requests, C2D).
//!
//! A client lives under its own identity's topics only: a module under
//! `devices/{d}/modules/{m}/…`, a device under `devices/{d}/…`, both under `$iothub/…` (twin and
//! direct-method traffic, which is always about the connected identity). Device and module ids
//! are not URL-encoded in topics (IoT Hub does not encode them either).

use crate::auth::Identity;

/// What a PUBLISH topic means for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'t> {
    /// Telemetry: a module's output (`output` from `$.on`, decided by the caller after parsing
    /// the bag) or a device's event. `bag` is the raw property bag (may be empty).
    Telemetry { bag: &'t str },
    /// `$iothub/…`: twin and method traffic of the connected identity.
    IotHub { rest: &'t str },
}

/// Why a topic was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The topic names another identity than the connected one.
    NotOwnTopic,
    /// Not a topic IoT Hub knows.
    Unknown,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicError::NotOwnTopic => f.write_str("topic belongs to another identity"),
            TopicError::Unknown => f.write_str("not an IoT Hub topic"),
        }
    }
}

/// The topic prefix of an identity: `devices/{d}/modules/{m}/` or `devices/{d}/`.
fn identity_prefix<'t>(topic: &'t str, identity: &Identity) -> Result<&'t str, TopicError> {
    let rest = topic.strip_prefix("devices/").ok_or(TopicError::Unknown)?;
    let rest = rest.strip_prefix(identity.device_id.as_str()).ok_or(TopicError::NotOwnTopic)?;
    let rest = rest.strip_prefix('/').ok_or(TopicError::NotOwnTopic)?;
    match &identity.module_id {
        Some(module) => {
            let rest = rest.strip_prefix("modules/").ok_or(TopicError::NotOwnTopic)?;
            let rest = rest.strip_prefix(module.as_str()).ok_or(TopicError::NotOwnTopic)?;
            rest.strip_prefix('/').ok_or(TopicError::NotOwnTopic)
        }
        None if rest.starts_with("modules/") => Err(TopicError::NotOwnTopic),
        None => Ok(rest),
    }
}

/// Classifies a PUBLISH topic of `identity`; refuses anything outside its own topics.
pub fn classify_publish<'t>(topic: &'t str, identity: &Identity) -> Result<Inbound<'t>, TopicError> {
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        return Ok(Inbound::IotHub { rest });
    }
    let rest = identity_prefix(topic, identity)?;
    let bag = rest.strip_prefix("messages/events").ok_or(TopicError::Unknown)?;
    if bag.is_empty() {
        return Ok(Inbound::Telemetry { bag });
    }
    // `messages/events/` or `messages/events/{bag}`, and IoT Hub ignores one '/' after the bag
    // (some SDKs send it); a bag never contains '/' otherwise.
    let bag = bag.strip_prefix('/').ok_or(TopicError::Unknown)?;
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    if bag.contains('/') {
        return Err(TopicError::Unknown);
    }
    Ok(Inbound::Telemetry { bag })
}

/// What a granted subscription is for: the filters edgeHub recognises
/// (`Hub.Mqtt/SessionStateParser.cs`), for the client's own identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// `devices/{d}/modules/{m}/inputs/#` or `devices/{d}/modules/{m}/#`: routed module inputs.
    ModuleInputs,
    /// `devices/{d}/messages/devicebound/#`: cloud-to-device messages.
    DeviceBound,
    /// `$iothub/twin/res/#`: answers to the client's twin requests.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#` (or any filter under that prefix).
    DesiredPatches,
    /// `$iothub/methods/POST/#` (or any filter under that prefix): direct method calls.
    Methods,
}

/// Checks a SUBSCRIBE filter of `identity`.
pub fn classify_subscription(filter: &str, identity: &Identity) -> Result<SubscriptionKind, TopicError> {
    if let Some(rest) = filter.strip_prefix("$iothub/") {
        return if rest == "twin/res/#" {
            Ok(SubscriptionKind::TwinResponses)
        } else if rest.starts_with("twin/PATCH/properties/desired/") {
            Ok(SubscriptionKind::DesiredPatches)
        } else if rest.starts_with("methods/POST/") {
            Ok(SubscriptionKind::Methods)
        } else {
            Err(TopicError::Unknown)
        };
    }
    let rest = identity_prefix(filter, identity)?;
    match (&identity.module_id, rest) {
        (Some(_), "inputs/#" | "#") => Ok(SubscriptionKind::ModuleInputs),
        (_, "messages/devicebound/#") => Ok(SubscriptionKind::DeviceBound),
        _ => Err(TopicError::Unknown),
    }
}

/// Longest request id accepted: the SDKs send a counter or a GUID (36 bytes).
pub const RID_BYTES_MAX: usize = 128;

/// A `$iothub/…` request of a client (the topic after `$iothub/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IotHubRequest<'t> {
    /// `twin/GET/?$rid={rid}`.
    TwinGet { rid: &'t str },
    /// `twin/PATCH/properties/reported/?$rid={rid}`; without a `$rid` the patch is applied and
    /// not answered (as edgeHub does).
    TwinPatchReported { rid: Option<&'t str> },
    /// `methods/res/{status}/?$rid={rid}`; a missing or non-numeric status is edgeHub's 400000.
    MethodResponse { status: i32, rid: &'t str },
}

/// Why a `$iothub/…` request cannot be served, and the request id to answer on, if it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError<'t> {
    pub rid: Option<&'t str>,
    pub status: u16,
    pub reason: String,
}

/// edgeHub's status for a method response without a usable status (`GenericBadRequest`).
pub const METHOD_STATUS_BAD_REQUEST: i32 = 400_000;

/// The `$rid` of a property bag `k=v&…` (also `%24rid`); an empty or overlong one is refused.
fn request_id(bag: &str) -> Result<Option<&str>, String> {
    let Some(rid) = bag.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == "$rid" || key.eq_ignore_ascii_case("%24rid")).then_some(value)
    }) else {
        return Ok(None);
    };
    if rid.is_empty() || rid.len() > RID_BYTES_MAX || !rid.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(format!("bad $rid (1 to {RID_BYTES_MAX} printable characters, no '/')"));
    }
    Ok(Some(rid))
}

/// Parses the topic of a `$iothub/…` PUBLISH (`rest`: after `$iothub/`).
pub fn parse_iothub_request(rest: &str) -> Result<IotHubRequest<'_>, RequestError<'_>> {
    let (path, bag) = rest.split_once('?').unwrap_or((rest, ""));
    let refuse = |status: u16, reason: &str| RequestError {
        rid: request_id(bag).ok().flatten(),
        status,
        reason: reason.to_string(),
    };
    let rid = request_id(bag).map_err(|reason| RequestError { rid: None, status: 400, reason })?;
    match path {
        "twin/GET/" | "twin/GET" => match rid {
            Some(rid) => Ok(IotHubRequest::TwinGet { rid }),
            None => Err(refuse(400, "twin GET without a $rid")),
        },
        "twin/PATCH/properties/reported/" | "twin/PATCH/properties/reported" => {
            Ok(IotHubRequest::TwinPatchReported { rid })
        }
        _ if path.starts_with("twin/GET/") || path.starts_with("twin/PATCH/properties/reported/") => {
            Err(refuse(400, "further resource specialization is not supported"))
        }
        _ => match path.strip_prefix("methods/res/") {
            Some(status) => {
                let status = status.strip_suffix('/').unwrap_or(status);
                let status = status.parse().unwrap_or(METHOD_STATUS_BAD_REQUEST);
                match rid {
                    Some(rid) => Ok(IotHubRequest::MethodResponse { status, rid }),
                    None => Err(refuse(400, "method response without a $rid")),
                }
            }
            None => Err(refuse(404, "not a $iothub request this hub serves")),
        },
    }
}

/// `devices/{d}/modules/{m}/messages/events/{bag}` (or `devices/{d}/messages/events/{bag}`
/// without a module) into `out`: the upstream topic of a sender's telemetry.
pub fn telemetry_topic_into(device_id: &str, module_id: Option<&str>, bag: &str, out: &mut String) {
    out.push_str("devices/");
    out.push_str(device_id);
    out.push('/');
    if let Some(module) = module_id {
        out.push_str("modules/");
        out.push_str(module);
        out.push('/');
    }
    out.push_str("messages/events/");
    out.push_str(bag);
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]` into `out`.
pub fn twin_response_topic_into(status: u16, rid: &str, version: Option<u64>, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "$iothub/twin/res/{status}/?$rid={rid}");
    if let Some(version) = version {
        let _ = write!(out, "&$version={version}");
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}` into `out`.
pub fn desired_patch_topic_into(version: u64, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "$iothub/twin/PATCH/properties/desired/?$version={version}");
}

/// `$iothub/methods/POST/{name}/?$rid={rid}` into `out`.
pub fn method_request_topic_into(name: &str, rid: &str, out: &mut String) {
    out.push_str("$iothub/methods/POST/");
    out.push_str(name);
    out.push_str("/?$rid=");
    out.push_str(rid);
}

/// The pieces of `devices/{d}/modules/{m}/inputs/{input}/{bag}`, in order, for a writer that
/// puts them into its buffer one after the other, and whether the bag had to be left out: an
/// MQTT topic is at most `topic_bytes_max` (65,535) bytes, and a bag that fits the publisher's
/// topic may not fit beside a longer module and input name. The message is then delivered
/// without its properties rather than as a PUBLISH whose length prefix is wrong.
pub fn input_topic_parts<'a>(
    device_id: &'a str,
    module_id: &'a str,
    input: &'a str,
    bag: &'a str,
    topic_bytes_max: usize,
) -> ([&'a str; 8], bool) {
    let mut parts = ["devices/", device_id, "/modules/", module_id, "/inputs/", input, "/", bag];
    let too_long = parts.iter().map(|part| part.len()).sum::<usize>() > topic_bytes_max;
    if too_long {
        parts[7] = "";
    }
    (parts, too_long)
}

// ---- The cloud's side of the same topics: what the hub sends and receives as a client of
// IoT Hub (one connection per identity, see `crate::cloud`). ----

/// Answers to the identity's twin requests.
pub const TWIN_RESPONSE_FILTER: &str = "$iothub/twin/res/#";
/// Desired-property patches.
pub const DESIRED_PATCH_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct-method calls.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";

/// `devices/{d}/messages/devicebound/#`: cloud-to-device messages of device `d`.
pub fn device_bound_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub fn twin_get_topic(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub fn reported_patch_topic(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// `$iothub/methods/res/{status}/?$rid={rid}`.
pub fn method_response_topic(status: i32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// `devices/{d}/messages/devicebound/{bag}` into `out`: a C2D message as the device gets it.
pub fn device_bound_topic_into(device_id: &str, bag: &str, out: &mut String) {
    out.push_str("devices/");
    out.push_str(device_id);
    out.push_str("/messages/devicebound/");
    out.push_str(bag);
}

/// What a PUBLISH from the cloud is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromCloud<'t> {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
    TwinResponse { status: u16, rid: &'t str, version: Option<u64> },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
    DesiredPatch { version: Option<u64> },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`.
    MethodRequest { name: &'t str, rid: &'t str },
    /// `devices/{d}/messages/devicebound/{bag}`.
    DeviceBound { device: &'t str, bag: &'t str },
}

/// The value of `key` in a property bag `k=v&…` (also with `$` written `%24`).
fn bag_value<'t>(bag: &'t str, key: &str) -> Option<&'t str> {
    bag.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bare = k.strip_prefix('$').or_else(|| k.strip_prefix("%24"))?;
        (bare == key).then_some(v)
    })
}

/// Parses a PUBLISH topic the cloud sent; `None` for a topic IoT Hub never sends (logged and
/// dropped by the caller).
pub fn parse_from_cloud(topic: &str) -> Option<FromCloud<'_>> {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let (status, bag) = rest.split_once("/?").or_else(|| rest.split_once('?'))?;
        let status = status.parse().ok()?;
        let rid = request_id(bag).ok()??;
        let version = bag_value(bag, "version").and_then(|v| v.parse().ok());
        return Some(FromCloud::TwinResponse { status, rid, version });
    }
    if let Some(rest) = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/") {
        let bag = rest.strip_prefix('?').unwrap_or(rest);
        return Some(FromCloud::DesiredPatch { version: bag_value(bag, "version").and_then(|v| v.parse().ok()) });
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
        let (name, bag) = rest.split_once("/?")?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let rid = request_id(bag).ok()??;
        return Some(FromCloud::MethodRequest { name, rid });
    }
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let bag = rest.strip_prefix("messages/devicebound")?;
    let bag = bag.strip_prefix('/').unwrap_or(bag);
    (!device.is_empty() && !bag.contains('/')).then_some(FromCloud::DeviceBound { device, bag })
}

/// The identity (`d` or `d/m`) whose telemetry topic this is, as `(device, module)`.
pub fn telemetry_sender(topic: &str) -> Option<(&str, Option<&str>)> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    if rest.starts_with("messages/events") {
        return Some((device, None));
    }
    let rest = rest.strip_prefix("modules/")?;
    let (module, rest) = rest.split_once('/')?;
    rest.starts_with("messages/events").then_some((device, Some(module)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(d: &str, m: &str) -> Identity {
        Identity::module(d, m)
    }

    #[test]
    fn module_telemetry_topics_are_accepted_with_and_without_bag() {
        let me = module("gw", "m1");
        for (topic, bag) in [
            ("devices/gw/modules/m1/messages/events", ""),
            ("devices/gw/modules/m1/messages/events/", ""),
            ("devices/gw/modules/m1/messages/events/%24.on=out1&a=b", "%24.on=out1&a=b"),
        ] {
            assert_eq!(classify_publish(topic, &me), Ok(Inbound::Telemetry { bag }), "{topic}");
        }
    }

    #[test]
    fn publishing_as_another_identity_is_refused() {
        let me = module("gw", "m1");
        for topic in [
            "devices/gw/modules/m2/messages/events/",
            "devices/gw/modules/m10/messages/events/",
            "devices/gw/modules/m/messages/events/",
            "devices/other/modules/m1/messages/events/",
            "devices/gw/messages/events/",
        ] {
            assert_eq!(classify_publish(topic, &me), Err(TopicError::NotOwnTopic), "{topic}");
        }
        let device = Identity::device("sensor");
        assert_eq!(
            classify_publish("devices/sensor/modules/x/messages/events/", &device),
            Err(TopicError::NotOwnTopic)
        );
        assert_eq!(classify_publish("devices/sensor2/messages/events/", &device), Err(TopicError::NotOwnTopic));
    }

    #[test]
    fn non_iot_hub_topics_are_refused() {
        let me = module("gw", "m1");
        for topic in [
            "a/b",
            "devices/gw/modules/m1/inputs/x/",
            "devices/gw/modules/m1/messages/events/a/b",
            "devices/gw/modules/m1/messages/eventsX",
        ] {
            assert!(classify_publish(topic, &me).is_err(), "{topic}");
        }
    }

    #[test]
    fn iothub_topics_are_the_clients_own() {
        let me = module("gw", "m1");
        assert_eq!(classify_publish("$iothub/twin/GET/?$rid=1", &me), Ok(Inbound::IotHub { rest: "twin/GET/?$rid=1" }));
    }

    #[test]
    fn subscriptions_are_limited_to_own_inputs() {
        let me = module("gw", "m1");
        assert_eq!(classify_subscription("devices/gw/modules/m1/inputs/#", &me), Ok(SubscriptionKind::ModuleInputs));
        assert_eq!(classify_subscription("$iothub/twin/res/#", &me), Ok(SubscriptionKind::TwinResponses));
        assert_eq!(classify_subscription("devices/gw/modules/m2/inputs/#", &me), Err(TopicError::NotOwnTopic));
        assert_eq!(classify_subscription("#", &me), Err(TopicError::Unknown));
        assert_eq!(classify_subscription("devices/+/modules/+/inputs/#", &me), Err(TopicError::NotOwnTopic));
        let device = Identity::device("sensor");
        assert_eq!(
            classify_subscription("devices/sensor/messages/devicebound/#", &device),
            Ok(SubscriptionKind::DeviceBound)
        );
    }

    #[test]
    fn input_topic_is_built_without_encoding_ids() {
        let (parts, cut) = input_topic_parts("gw", "filter", "input1", "a=b", 65_535);
        assert_eq!((parts.concat().as_str(), cut), ("devices/gw/modules/filter/inputs/input1/a=b", false));
        let (parts, cut) = input_topic_parts("gw", "filter", "input1", "", 65_535);
        assert_eq!((parts.concat().as_str(), cut), ("devices/gw/modules/filter/inputs/input1/", false));
    }

    #[test]
    fn a_bag_that_would_make_the_topic_too_long_is_left_out() {
        let fixed = "devices/gw/modules/filter/inputs/input1/".len();
        let bag = "a=".to_string() + &"x".repeat(100);
        let (parts, cut) = input_topic_parts("gw", "filter", "input1", &bag, fixed + bag.len());
        assert_eq!((parts.concat().len(), cut), (fixed + bag.len(), false), "exactly at the limit: kept");
        let (parts, cut) = input_topic_parts("gw", "filter", "input1", &bag, fixed + bag.len() - 1);
        assert_eq!((parts.concat().as_str(), cut), ("devices/gw/modules/filter/inputs/input1/", true));
    }

    #[test]
    fn a_trailing_slash_after_the_bag_is_ignored_as_iot_hub_does() {
        let me = module("gw", "m1");
        assert_eq!(
            classify_publish("devices/gw/modules/m1/messages/events/%24.on=o1&a=b/", &me),
            Ok(Inbound::Telemetry { bag: "%24.on=o1&a=b" })
        );
        assert!(classify_publish("devices/gw/modules/m1/messages/events/a=b//", &me).is_err());
    }

    #[test]
    fn edgehub_subscription_forms_are_granted_for_the_own_identity() {
        let me = module("gw", "m1");
        for (filter, kind) in [
            ("devices/gw/modules/m1/inputs/#", SubscriptionKind::ModuleInputs),
            ("devices/gw/modules/m1/#", SubscriptionKind::ModuleInputs),
            ("$iothub/twin/res/#", SubscriptionKind::TwinResponses),
            ("$iothub/twin/PATCH/properties/desired/#", SubscriptionKind::DesiredPatches),
            ("$iothub/methods/POST/#", SubscriptionKind::Methods),
            ("devices/gw/modules/m1/messages/devicebound/#", SubscriptionKind::DeviceBound),
        ] {
            assert_eq!(classify_subscription(filter, &me), Ok(kind), "{filter}");
        }
        for filter in ["$iothub/#", "$iothub/twin/#", "devices/gw/modules/m2/#", "devices/gw/#"] {
            assert!(classify_subscription(filter, &me).is_err(), "{filter}");
        }
    }

    #[test]
    fn iothub_requests_parse_with_their_request_ids() {
        assert_eq!(parse_iothub_request("twin/GET/?$rid=7"), Ok(IotHubRequest::TwinGet { rid: "7" }));
        assert_eq!(
            parse_iothub_request("twin/PATCH/properties/reported/?$rid=abc&x=y"),
            Ok(IotHubRequest::TwinPatchReported { rid: Some("abc") })
        );
        assert_eq!(
            parse_iothub_request("twin/PATCH/properties/reported/"),
            Ok(IotHubRequest::TwinPatchReported { rid: None })
        );
        assert_eq!(
            parse_iothub_request("methods/res/200/?$rid=9f"),
            Ok(IotHubRequest::MethodResponse { status: 200, rid: "9f" })
        );
        assert_eq!(
            parse_iothub_request("methods/res/x/?$rid=9f"),
            Ok(IotHubRequest::MethodResponse { status: METHOD_STATUS_BAD_REQUEST, rid: "9f" })
        );
    }

    #[test]
    fn unserved_or_malformed_requests_get_an_error_with_the_rid_when_known() {
        for (topic, status, rid) in [
            ("twin/GET/", 400, None),
            ("twin/GET/?$rid=", 400, None),
            ("twin/GET/extra/?$rid=3", 400, Some("3")),
            ("twin/PATCH/properties/desired/?$rid=4", 404, Some("4")),
            ("nonsense/?$rid=5", 404, Some("5")),
            ("methods/res/200/", 400, None),
        ] {
            let error = parse_iothub_request(topic).expect_err(topic);
            assert_eq!((error.status, error.rid), (status, rid), "{topic}");
        }
        let long = format!("twin/GET/?$rid={}", "r".repeat(RID_BYTES_MAX + 1));
        assert_eq!(parse_iothub_request(&long).expect_err("long").status, 400);
    }

    #[test]
    fn response_topics_are_built_as_iot_hub_sends_them() {
        let mut out = String::new();
        twin_response_topic_into(204, "1", Some(6), &mut out);
        assert_eq!(out, "$iothub/twin/res/204/?$rid=1&$version=6");
        out.clear();
        desired_patch_topic_into(12, &mut out);
        assert_eq!(out, "$iothub/twin/PATCH/properties/desired/?$version=12");
        out.clear();
        method_request_topic_into("reboot", "c0ffee", &mut out);
        assert_eq!(out, "$iothub/methods/POST/reboot/?$rid=c0ffee");
    }

    #[test]
    fn cloud_topics_parse() {
        assert_eq!(
            parse_from_cloud("$iothub/twin/res/204/?$rid=7&$version=12"),
            Some(FromCloud::TwinResponse { status: 204, rid: "7", version: Some(12) })
        );
        assert_eq!(
            parse_from_cloud("$iothub/twin/res/200/?$rid=a1"),
            Some(FromCloud::TwinResponse { status: 200, rid: "a1", version: None })
        );
        assert_eq!(
            parse_from_cloud("$iothub/twin/PATCH/properties/desired/?$version=5"),
            Some(FromCloud::DesiredPatch { version: Some(5) })
        );
        assert_eq!(
            parse_from_cloud("$iothub/methods/POST/reboot/?$rid=9f"),
            Some(FromCloud::MethodRequest { name: "reboot", rid: "9f" })
        );
        assert_eq!(
            parse_from_cloud("devices/leaf/messages/devicebound/%24.mid=1&a=b"),
            Some(FromCloud::DeviceBound { device: "leaf", bag: "%24.mid=1&a=b" })
        );
        for bad in ["$iothub/twin/res/abc/?$rid=1", "$iothub/methods/POST/x/?a=1", "weather/today", "devices/d/other"] {
            assert_eq!(parse_from_cloud(bad), None, "{bad}");
        }
        assert_eq!(telemetry_sender("devices/gw/modules/m/messages/events/a=1"), Some(("gw", Some("m"))));
        assert_eq!(telemetry_sender("devices/leaf/messages/events/"), Some(("leaf", None)));
        assert_eq!(telemetry_sender("devices/leaf/twin"), None);
    }
}
