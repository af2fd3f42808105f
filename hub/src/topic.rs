//! IoT Hub's MQTT topics: what a client may publish and subscribe to, and the topics the hub
//! delivers on.
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
    // `messages/events/` or `messages/events/{bag}`; a bag never contains '/'.
    let bag = bag.strip_prefix('/').ok_or(TopicError::Unknown)?;
    if bag.contains('/') {
        return Err(TopicError::Unknown);
    }
    Ok(Inbound::Telemetry { bag })
}

/// What a granted subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// `devices/{d}/modules/{m}/inputs/#`: routed module inputs.
    ModuleInputs,
    /// `devices/{d}/messages/devicebound/#`: cloud-to-device messages.
    DeviceBound,
    /// `$iothub/…`: twin responses, desired-property patches, direct methods.
    IotHub,
}

/// Checks a SUBSCRIBE filter of `identity`.
pub fn classify_subscription(filter: &str, identity: &Identity) -> Result<SubscriptionKind, TopicError> {
    if filter.starts_with("$iothub/") {
        return Ok(SubscriptionKind::IotHub);
    }
    let rest = identity_prefix(filter, identity)?;
    match (&identity.module_id, rest) {
        (Some(_), "inputs/#") => Ok(SubscriptionKind::ModuleInputs),
        (None, "messages/devicebound/#") => Ok(SubscriptionKind::DeviceBound),
        _ => Err(TopicError::Unknown),
    }
}

/// Builds `devices/{d}/modules/{m}/inputs/{input}/` into `out`; the caller appends the bag.
pub fn input_topic_into(device_id: &str, module_id: &str, input: &str, out: &mut String) {
    out.push_str("devices/");
    out.push_str(device_id);
    out.push_str("/modules/");
    out.push_str(module_id);
    out.push_str("/inputs/");
    out.push_str(input);
    out.push('/');
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
        assert_eq!(classify_subscription("$iothub/twin/res/#", &me), Ok(SubscriptionKind::IotHub));
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
        let mut out = String::new();
        input_topic_into("gw", "filter", "input1", &mut out);
        assert_eq!(out, "devices/gw/modules/filter/inputs/input1/");
    }
}
