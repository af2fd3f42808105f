//! Link addresses as the IoT SDKs attach them (cloud-reference.md §F1): relative
//! (`/devices/…`, Node) or absolute (`amqps://host/devices/…`, C#), parsed into the identity
//! they name and what the link is for. Pure code.

use crate::auth::Identity;

/// What a link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `$cbs`: the claims-based security node.
    Cbs,
    /// `/devices/{d}[/modules/{m}]/messages/events`: telemetry and outputs (client sends) or,
    /// for a module, its inputs (client receives).
    Events(Identity),
    /// `/devices/{d}[/modules/{m}]/messages/deviceBound`: C2D.
    DeviceBound(Identity),
    /// `/devices/{d}[/modules/{m}]/twin`.
    Twin(Identity),
    /// `/devices/{d}[/modules/{m}]/methods/deviceBound`.
    Methods(Identity),
}

/// Parses a link address; `None`: nothing the hub serves.
pub fn parse(address: &str) -> Option<Address> {
    if address == "$cbs" {
        return Some(Address::Cbs);
    }
    let path = match address.strip_prefix("amqps://").or_else(|| address.strip_prefix("amqp://")) {
        Some(rest) => &rest[rest.find('/')?..],
        None => address,
    };
    let rest = path.strip_prefix("/devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let (module, rest) = match rest.strip_prefix("modules/") {
        Some(after) => {
            let (module, rest) = after.split_once('/')?;
            (Some(module), rest)
        }
        None => (None, rest),
    };
    if device.is_empty() || module.is_some_and(str::is_empty) {
        return None;
    }
    let identity = match module {
        Some(m) => Identity::module(device, m),
        None => Identity::device(device),
    };
    Some(match rest.trim_end_matches('/') {
        "messages/events" => Address::Events(identity),
        "messages/deviceBound" | "messages/devicebound" => Address::DeviceBound(identity),
        "twin" => Address::Twin(identity),
        "methods/deviceBound" | "methods/devicebound" => Address::Methods(identity),
        _ => return None,
    })
}

/// The identity a CBS audience names: `{host}/devices/{d}[/modules/{m}]` (a scheme in front
/// is allowed); `None` when it names no identity. The host is checked with the token's `sr`.
pub fn audience_identity(audience: &str) -> Option<Identity> {
    // The SDKs put the token's `sr` there, URL-encoded.
    let decoded = tinyedge_platform::urlenc::decode(audience).ok()?;
    let audience: &str = &decoded;
    let rest = audience.split_once("://").map_or(audience, |(_, rest)| rest);
    let path = &rest[rest.find("/devices/")?..];
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "devices", d] if !d.is_empty() => Some(Identity::device(d)),
        ["", "devices", d, "modules", m] if !d.is_empty() && !m.is_empty() => Some(Identity::module(d, m)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_the_sdks() {
        let module = Identity::module("gw", "filter");
        let device = Identity::device("sensor");
        let table = [
            ("$cbs", Some(Address::Cbs)),
            ("/devices/gw/modules/filter/messages/events", Some(Address::Events(module.clone()))),
            ("amqps://gw.local/devices/gw/modules/filter/messages/events", Some(Address::Events(module.clone()))),
            ("/devices/sensor/messages/events", Some(Address::Events(device.clone()))),
            ("/devices/sensor/messages/deviceBound", Some(Address::DeviceBound(device.clone()))),
            ("/devices/gw/modules/filter/twin", Some(Address::Twin(module.clone()))),
            ("/devices/sensor/methods/deviceBound", Some(Address::Methods(device))),
            ("/devices/gw/modules/filter/methods/deviceBound/", Some(Address::Methods(module))),
            ("/devices//messages/events", None),
            ("/devices/gw/modules//twin", None),
            ("/devices/gw/other", None),
            ("/queues/x", None),
            ("", None),
        ];
        for (address, want) in table {
            assert_eq!(parse(address), want, "{address}");
        }
    }

    #[test]
    fn audiences() {
        assert_eq!(audience_identity("hub.example/devices/d1"), Some(Identity::device("d1")));
        assert_eq!(audience_identity("amqps://hub.example/devices/d1/modules/m"), Some(Identity::module("d1", "m")));
        assert_eq!(audience_identity("hub.example/devices/d1/modules/"), None);
        assert_eq!(audience_identity("hub.example/other"), None);
        assert_eq!(audience_identity("hub.example%2Fdevices%2Fd1%2Fmodules%2Fm"), Some(Identity::module("d1", "m")));
    }
}
