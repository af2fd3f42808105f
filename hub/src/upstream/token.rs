//! The CONNECT credentials of the edge device towards IoT Hub, and when to renew them.
//!
//! IoT Hub closes an MQTT connection whose SAS token expires, so the link reconnects with a
//! fresh token before that happens. Pure: the clock is a parameter.

use std::time::Duration;

use tinyedge_platform::{identity, sas};

/// The `api-version` the username announces: the MQTT surface the link speaks (telemetry,
/// C2D, twin) is unchanged since this version, which IoT Hub still accepts.
pub const API_VERSION: &str = "2021-04-12";

/// Renew after this share of the token's lifetime (in percent). The Azure IoT C SDK renews at
/// 80 % (`SAS_REFRESH_MULTIPLIER .8`): the remaining fifth absorbs a slow reconnect and some
/// clock drift between the gateway and the hub.
const RENEW_AT_PERCENT: u64 = 80;

/// Shortest token lifetime accepted by the configuration: below it the link would spend most
/// of its time reconnecting, and a second of clock skew would already reject the token.
pub const TOKEN_TTL_MIN_SECS: u64 = 5;

/// What the link sends in CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub username: String,
    /// A SAS token: secret for as long as it is valid, so never logged (see `Debug`).
    pub password: String,
    /// Unix seconds at which the token stops being valid.
    pub expires_unix: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &"<SAS token>")
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// Credentials of device `device_id` (or its module `module_id`) on hub `iothub_hostname`,
/// with a token signed by that identity's key that is valid from `now_unix` for `ttl_secs`.
///
/// Client id `{device}[/{module}]`, username `{hub}/{device}[/{module}]/?api-version=…`,
/// token resource `{hub}/devices/{device}[/modules/{module}]` — IoT Hub's MQTT form.
pub fn credentials(
    iothub_hostname: &str,
    device_id: &str,
    module_id: Option<&str>,
    key: &[u8],
    now_unix: u64,
    ttl_secs: u64,
) -> Credentials {
    let expires_unix = now_unix.saturating_add(ttl_secs);
    let resource = identity::sas_resource(iothub_hostname, device_id, module_id);
    let client_id = match module_id {
        Some(module) => format!("{device_id}/{module}"),
        None => device_id.to_owned(),
    };
    Credentials {
        username: format!("{iothub_hostname}/{client_id}/?api-version={API_VERSION}"),
        client_id,
        password: sas::generate(&resource, key, expires_unix),
        expires_unix,
    }
}

/// How long after connecting with a fresh token of `ttl_secs` the link renews it: 80 % of the
/// lifetime, at millisecond resolution, so it always comes before expiry.
pub fn renewal_delay(ttl_secs: u64) -> Duration {
    let ttl_ms = ttl_secs.saturating_mul(1000);
    Duration::from_millis(ttl_ms / 100 * RENEW_AT_PERCENT + ttl_ms % 100 * RENEW_AT_PERCENT / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_four_fifths_of_the_lifetime() {
        assert_eq!(renewal_delay(3600), Duration::from_secs(2880));
        assert_eq!(renewal_delay(5), Duration::from_secs(4));
        assert_eq!(renewal_delay(7), Duration::from_millis(5600));
        assert_eq!(renewal_delay(0), Duration::ZERO);
    }

    #[test]
    fn renewal_always_precedes_expiry_and_never_overflows() {
        for ttl in [TOKEN_TTL_MIN_SECS, 59, 60, 3599, 86_400, u64::MAX / 1000, u64::MAX] {
            let renew = renewal_delay(ttl);
            assert!(renew < Duration::from_secs(ttl), "ttl {ttl}: renew at {renew:?}");
            assert!(ttl > u64::MAX / 1000 || renew >= Duration::from_secs(ttl) * 3 / 4, "ttl {ttl}");
        }
    }

    #[test]
    fn credentials_are_the_iot_hub_device_ones_and_the_token_verifies() {
        let key = [7u8; 32];
        let c = credentials("myhub.azure-devices.net", "gw-1", None, &key, 1_000, 3600);
        assert_eq!(c.client_id, "gw-1");
        assert_eq!(c.username, "myhub.azure-devices.net/gw-1/?api-version=2021-04-12");
        assert_eq!(c.expires_unix, 4_600);
        let token = sas::parse(&c.password).expect("a well-formed token");
        assert_eq!(token.resource, "myhub.azure-devices.net/devices/gw-1");
        assert_eq!(token.expiry, 4_600);
        sas::verify(&token, &key, 4_600).expect("valid until its expiry");
        assert!(sas::verify(&token, &key, 4_601).is_err());
        assert!(sas::verify(&token, &[8u8; 32], 1_000).is_err(), "signed with the device key only");
    }

    #[test]
    fn module_credentials_name_the_module_everywhere() {
        let c = credentials("h.net", "gw", Some("$edgeHub"), &[1u8; 32], 0, 60);
        assert_eq!(c.client_id, "gw/$edgeHub");
        assert_eq!(c.username, "h.net/gw/$edgeHub/?api-version=2021-04-12");
        assert_eq!(sas::parse(&c.password).expect("token").resource, "h.net/devices/gw/modules/$edgeHub");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = credentials("h", "d", None, b"k", 0, 60);
        let shown = format!("{c:?}");
        assert!(!shown.contains("SharedAccessSignature"), "{shown}");
    }
}
