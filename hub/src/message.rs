//! Messages as the hub sees them, and IoT Hub's URL-encoded property bags.
//!
//! A device or module puts its message properties into the last segment of the topic it
//! publishes to (`devices/d/modules/m/messages/events/$.ct=application%2Fjson&alert=1`). Keys
//! starting with `$.` are system properties (`$.mid` message id, `$.on` output name, …); all
//! others are application properties. The payload is kept as the `Bytes` slice of the read
//! buffer it arrived in: routing to any number of endpoints shares it, never copies it.

use bytes::Bytes;
use tinyedge_platform::urlenc;

use crate::route::RoutableMessage;

/// Most properties one message may carry. IoT Hub allows 81 application properties; the
/// system properties add about 15. Bounding the count bounds the work of parsing a bag.
pub const PROPERTIES_MAX: usize = 128;

/// Wire names of IoT Hub system properties and the names routes use for them
/// (`SystemProperties.cs` in IoT Edge; the wire aliases of the MQTT topic property bag).
const SYSTEM_PROPERTIES: &[(&str, &str)] = &[
    ("$.mid", "messageId"),
    ("$.cid", "correlationId"),
    ("$.uid", "userId"),
    ("$.to", "to"),
    ("$.ct", "contentType"),
    ("$.ce", "contentEncoding"),
    ("$.on", "outputName"),
    ("$.cdid", "connectionDeviceId"),
    ("$.cmid", "connectionModuleId"),
    ("$.exp", "absoluteExpiryTime"),
    ("$.ctime", "creationTime"),
    ("$.schema", "messageSchema"),
    ("$.ifid", "interfaceId"),
    ("$.sub", "componentName"),
];

/// Why a property bag was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyError {
    /// A key or value is not valid percent-encoding or not UTF-8.
    BadEncoding(String),
    /// More than [`PROPERTIES_MAX`] properties.
    TooMany,
    /// The same key twice (the Python SDK refuses these too).
    DuplicateKey(String),
}

impl std::fmt::Display for PropertyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyError::BadEncoding(part) => write!(f, "property bag: bad percent-encoding in {part:?}"),
            PropertyError::TooMany => write!(f, "property bag: more than {PROPERTIES_MAX} properties"),
            PropertyError::DuplicateKey(key) => write!(f, "property bag: duplicate key {key:?}"),
        }
    }
}

/// Decoded properties of one message, in the order they arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// System properties by wire name (`$.mid`, `$.ct`, …).
    pub system: Vec<(String, String)>,
    /// Application properties. A key without `=` has an empty value (IoT Hub: null).
    pub application: Vec<(String, String)>,
}

impl Properties {
    /// Parses a property bag (`k=v&k2=v2`, URL-encoded). An empty bag is no properties.
    pub fn parse(bag: &str) -> Result<Properties, PropertyError> {
        let mut properties = Properties::default();
        if bag.is_empty() {
            return Ok(properties);
        }
        for (count, pair) in bag.split('&').enumerate() {
            if count >= PROPERTIES_MAX {
                return Err(PropertyError::TooMany);
            }
            if pair.is_empty() {
                continue;
            }
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = urlenc::decode(raw_key).map_err(|_| PropertyError::BadEncoding(raw_key.to_string()))?;
            let value = urlenc::decode(raw_value).map_err(|_| PropertyError::BadEncoding(raw_value.to_string()))?;
            if properties.get_any(&key).is_some() {
                return Err(PropertyError::DuplicateKey(key.into_owned()));
            }
            let list = if key.starts_with("$.") { &mut properties.system } else { &mut properties.application };
            list.push((key.into_owned(), value.into_owned()));
        }
        Ok(properties)
    }

    fn get_any(&self, key: &str) -> Option<&str> {
        self.system.iter().chain(self.application.iter()).find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A system property by wire name (`$.ct`).
    pub fn system(&self, wire_name: &str) -> Option<&str> {
        self.system.iter().find(|(k, _)| k == wire_name).map(|(_, v)| v.as_str())
    }

    /// Sets (replacing) a system property by wire name.
    pub fn set_system(&mut self, wire_name: &str, value: &str) {
        if let Some(slot) = self.system.iter_mut().find(|(k, _)| k == wire_name) {
            slot.1.clear();
            slot.1.push_str(value);
        } else {
            self.system.push((wire_name.to_string(), value.to_string()));
        }
    }

    /// Removes a system property by wire name.
    pub fn remove_system(&mut self, wire_name: &str) {
        self.system.retain(|(k, _)| k != wire_name);
    }

    /// Appends the URL-encoded bag (system properties first, as IoT Edge sends them).
    pub fn encode_into(&self, out: &mut String) {
        let mut first = true;
        for (key, value) in self.system.iter().chain(self.application.iter()) {
            if !first {
                out.push('&');
            }
            first = false;
            urlenc::encode_into(key, out);
            out.push('=');
            urlenc::encode_into(value, out);
        }
    }
}

/// Maps a route's system-property name (`contentType`) to its wire name (`$.ct`).
fn wire_name(route_name: &str) -> Option<&'static str> {
    SYSTEM_PROPERTIES.iter().find(|(_, name)| name.eq_ignore_ascii_case(route_name)).map(|(wire, _)| *wire)
}

/// A message accepted from a device or module, ready to be routed.
#[derive(Debug, Clone)]
pub struct Message {
    /// Route source path: `/messages` (device), `/messages/modules/{m}` or
    /// `/messages/modules/{m}/outputs/{o}`.
    pub source: String,
    /// Properties, with `$.cdid`/`$.cmid` set to the authenticated sender.
    pub properties: Properties,
    /// Enqueue time, RFC 3339 UTC, as `$enqueuedTime` reads it in routes.
    pub enqueued_time: String,
    /// The same instant in unix milliseconds (the store's record time): one clock read.
    pub enqueued_unix_ms: u64,
    /// The body: a slice of the buffer it was read into.
    pub payload: Bytes,
}

impl RoutableMessage for Message {
    fn source(&self) -> &str {
        &self.source
    }

    fn application_property(&self, name: &str) -> Option<&str> {
        // IoT Edge looks properties up ignoring case (`Message.cs`).
        self.properties.application.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn system_property(&self, name: &str) -> Option<&str> {
        if name.eq_ignore_ascii_case("enqueuedTime") {
            return Some(&self.enqueued_time);
        }
        wire_name(name).and_then(|wire| self.properties.system(wire))
    }

    fn body(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_splits_system_and_application_properties() {
        let p = Properties::parse("$.ct=application%2Fjson&$.ce=utf-8&alert=high%20temp&flag").expect("valid");
        assert_eq!(p.system("$.ct"), Some("application/json"));
        assert_eq!(p.system("$.ce"), Some("utf-8"));
        assert_eq!(p.application, vec![("alert".into(), "high temp".into()), ("flag".into(), String::new())]);
    }

    #[test]
    fn empty_bag_has_no_properties() {
        assert_eq!(Properties::parse("").expect("valid"), Properties::default());
    }

    #[test]
    fn bad_escape_is_refused() {
        assert!(matches!(Properties::parse("a=%zz"), Err(PropertyError::BadEncoding(_))));
    }

    #[test]
    fn duplicate_key_is_refused() {
        assert_eq!(Properties::parse("a=1&a=2"), Err(PropertyError::DuplicateKey("a".into())));
    }

    #[test]
    fn too_many_properties_are_refused() {
        let bag: Vec<String> = (0..=PROPERTIES_MAX).map(|i| format!("k{i}=v")).collect();
        assert_eq!(Properties::parse(&bag.join("&")), Err(PropertyError::TooMany));
    }

    #[test]
    fn encode_round_trips_through_parse() {
        let mut p = Properties::parse("$.mid=42&temp%20c=21.5&note=a%26b%3Dc").expect("valid");
        p.set_system("$.cdid", "gw");
        let mut out = String::new();
        p.encode_into(&mut out);
        assert_eq!(out, "%24.mid=42&%24.cdid=gw&temp%20c=21.5&note=a%26b%3Dc");
        assert_eq!(Properties::parse(&out).expect("valid"), p);
    }

    #[test]
    fn routes_read_system_properties_by_name() {
        let mut properties = Properties::parse("$.ct=application%2Fjson&$.on=out1").expect("valid");
        properties.set_system("$.cmid", "m1");
        let msg = Message {
            source: "/messages/modules/m1/outputs/out1".into(),
            properties,
            enqueued_time: "2026-11-27T00:00:00Z".into(),
            enqueued_unix_ms: 1_795_737_600_000,
            payload: Bytes::from_static(b"{}"),
        };
        assert_eq!(msg.system_property("contentType"), Some("application/json"));
        assert_eq!(msg.system_property("outputName"), Some("out1"));
        assert_eq!(msg.system_property("connectionModuleId"), Some("m1"));
        assert_eq!(msg.system_property("enqueuedTime"), Some("2026-11-27T00:00:00Z"));
        assert_eq!(msg.system_property("messageId"), None);
    }
}
