//! Authentication as IoT Hub does it over MQTT: client id, username and a SAS token.
//!
//! - client id: `{deviceId}` or `{deviceId}/{moduleId}`, equal to the identity of the token;
//! - username: `{host}/{deviceId}[/{moduleId}]/?api-version=…` (host ignored, `api-version`
//!   required, as IoT Edge's `MqttUsernameParser`);
//! - password: `SharedAccessSignature sr={iothub}/devices/{d}[/modules/{m}]&sig=…&se=…`, signed
//!   with the identity's symmetric key, checked in constant time, expiry enforced.
//!
//! Pure code: the key table comes in, `now` comes in.

use std::collections::HashMap;

use tinyedge_platform::sas;

/// Longest client id, username or password accepted (IoT Hub ids are at most 128 characters;
/// a token is well under 1 KiB). Longer values are refused before any work.
pub const CREDENTIAL_BYTES_MAX: usize = 4096;

/// A device or module identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub device_id: String,
    pub module_id: Option<String>,
}

impl Identity {
    pub fn device(device_id: &str) -> Identity {
        Identity { device_id: device_id.to_string(), module_id: None }
    }

    pub fn module(device_id: &str, module_id: &str) -> Identity {
        Identity { device_id: device_id.to_string(), module_id: Some(module_id.to_string()) }
    }

    /// `d` or `d/m`: the MQTT client id of this identity.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{}", self.device_id, m),
            None => self.device_id.clone(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.module_id {
            Some(m) => write!(f, "{}/{}", self.device_id, m),
            None => f.write_str(&self.device_id),
        }
    }
}

/// Why a CONNECT was refused; logged, and answered with CONNACK "not authorized" or
/// "bad username or password".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingCredentials,
    TooLong,
    BadUsername(&'static str),
    ClientIdMismatch { client_id: String, username_identity: String },
    UnknownIdentity(String),
    Token(String),
    AudienceMismatch { expected: String, got: String },
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::MissingCredentials => f.write_str("no username/password (a SAS token is required)"),
            AuthError::TooLong => write!(f, "credentials longer than {CREDENTIAL_BYTES_MAX} bytes"),
            AuthError::BadUsername(why) => write!(f, "bad username: {why}"),
            AuthError::ClientIdMismatch { client_id, username_identity } => {
                write!(f, "client id {client_id:?} does not match the username's identity {username_identity:?}")
            }
            AuthError::UnknownIdentity(id) => write!(f, "unknown identity {id:?}"),
            AuthError::Token(why) => write!(f, "SAS token refused: {why}"),
            AuthError::AudienceMismatch { expected, got } => {
                write!(f, "SAS token audience {got:?} is not {expected:?}")
            }
        }
    }
}

/// Parses `{host}/{deviceId}[/{moduleId}]/?api-version=…` into the identity it names.
pub fn parse_username(username: &str) -> Result<Identity, AuthError> {
    let (path, query) = match username.split_once('?') {
        Some((path, query)) => (path, query),
        // IoT Edge accepts the query without `?` when the last segment carries api-version.
        None => match username.rsplit_once('/') {
            Some((path, last)) if last.contains("api-version=") => (path, last),
            _ => return Err(AuthError::BadUsername("missing api-version")),
        },
    };
    if !query.split('&').any(|kv| kv.starts_with("api-version=")) {
        return Err(AuthError::BadUsername("missing api-version"));
    }
    let mut segments = path.trim_end_matches('/').split('/');
    let _host = segments.next();
    let device = segments.next().filter(|s| !s.is_empty()).ok_or(AuthError::BadUsername("missing device id"))?;
    let module = segments.next().filter(|s| !s.is_empty());
    if segments.next().is_some() {
        return Err(AuthError::BadUsername("too many path segments"));
    }
    Ok(match module {
        Some(m) => Identity::module(device, m),
        None => Identity::device(device),
    })
}

/// The keys of every identity allowed to connect, and the token audience.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    iothub_hostname: String,
    gateway_hostname: String,
    keys: HashMap<Identity, Vec<u8>>,
}

/// A successful authentication: who, and until when the token is valid (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    pub token_expiry: u64,
}

impl Authenticator {
    pub fn new(iothub_hostname: &str, gateway_hostname: &str) -> Authenticator {
        Authenticator {
            iothub_hostname: iothub_hostname.to_string(),
            gateway_hostname: gateway_hostname.to_string(),
            keys: HashMap::new(),
        }
    }

    /// Allows `identity` to connect with tokens signed by `key`.
    pub fn insert(&mut self, identity: Identity, key: Vec<u8>) {
        self.keys.insert(identity, key);
    }

    /// No longer allows `identity` (a device that left the cloud's device scope).
    pub fn remove(&mut self, identity: &Identity) {
        self.keys.remove(identity);
    }

    /// The key `identity` signs its tokens with (the cloud side signs the identity's upstream
    /// connection with it).
    pub fn key_of(&self, identity: &Identity) -> Option<&[u8]> {
        self.keys.get(identity).map(Vec::as_slice)
    }

    pub fn knows(&self, identity: &Identity) -> bool {
        self.keys.contains_key(identity)
    }

    /// Checks one CONNECT's credentials at time `now_unix`.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
        now_unix: u64,
    ) -> Result<Authenticated, AuthError> {
        let (Some(username), Some(password)) = (username, password) else {
            return Err(AuthError::MissingCredentials);
        };
        if [client_id, username, password].iter().any(|s| s.len() > CREDENTIAL_BYTES_MAX) {
            return Err(AuthError::TooLong);
        }
        let identity = parse_username(username)?;
        if identity.client_id() != client_id {
            return Err(AuthError::ClientIdMismatch {
                client_id: client_id.to_string(),
                username_identity: identity.client_id(),
            });
        }
        self.authenticate_token(&identity, password, now_unix)
    }

    /// Checks a SAS token presented for `identity` at time `now_unix`: the last step of a
    /// CONNECT, and the whole check of the method HTTP API (`Authorization` header, identity
    /// from `x-ms-edge-moduleId`).
    pub fn authenticate_token(
        &self,
        identity: &Identity,
        token: &str,
        now_unix: u64,
    ) -> Result<Authenticated, AuthError> {
        if token.len() > CREDENTIAL_BYTES_MAX {
            return Err(AuthError::TooLong);
        }
        let key = self.keys.get(identity).ok_or_else(|| AuthError::UnknownIdentity(identity.client_id()))?;
        self.authenticate_with_keys(identity, token, std::slice::from_ref(key), now_unix)
    }

    /// As [`Authenticator::authenticate_token`], with the keys `identity` may sign with given
    /// (either one; the cloud's device scope gives a primary and a secondary key).
    pub fn authenticate_with_keys(
        &self,
        identity: &Identity,
        token: &str,
        keys: &[Vec<u8>],
        now_unix: u64,
    ) -> Result<Authenticated, AuthError> {
        if token.len() > CREDENTIAL_BYTES_MAX {
            return Err(AuthError::TooLong);
        }
        let token = sas::parse(token).map_err(|e| AuthError::Token(e.to_string()))?;
        self.check_audience(&token.resource, identity)?;
        let mut refusal = AuthError::UnknownIdentity(identity.client_id());
        for key in keys {
            match sas::verify(&token, key, now_unix) {
                Ok(()) => return Ok(Authenticated { identity: identity.clone(), token_expiry: token.expiry }),
                // Signed with this key, and expired: no other key makes it valid.
                Err(e @ sas::SasError::Expired { .. }) => return Err(AuthError::Token(e.to_string())),
                Err(e) => refusal = AuthError::Token(e.to_string()),
            }
        }
        Err(refusal)
    }

    /// `sr` must be `{host}/devices/{d}[/modules/{m}]` where host is the IoT Hub's or the
    /// gateway's name (IoT Edge accepts both; `DeviceScopeTokenAuthenticator`).
    fn check_audience(&self, resource: &str, identity: &Identity) -> Result<(), AuthError> {
        let mut path = format!("/devices/{}", identity.device_id);
        if let Some(m) = &identity.module_id {
            path.push_str("/modules/");
            path.push_str(m);
        }
        let resource = resource.trim_end_matches('/');
        let ok = [&self.iothub_hostname, &self.gateway_hostname].iter().any(|host| {
            resource.len() == host.len() + path.len()
                && resource.is_char_boundary(host.len())
                && resource[..host.len()].eq_ignore_ascii_case(host)
                && resource[host.len()..] == path
        });
        if ok {
            Ok(())
        } else {
            Err(AuthError::AudienceMismatch {
                expected: format!("{}{}", self.iothub_hostname, path),
                got: resource.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn authenticator() -> Authenticator {
        let mut a = Authenticator::new("hub.example.net", "gateway.local");
        a.insert(Identity::module("gw", "m1"), KEY.to_vec());
        a.insert(Identity::device("sensor"), KEY.to_vec());
        a
    }

    fn token(resource: &str, key: &[u8], expiry: u64) -> String {
        sas::generate(resource, key, expiry)
    }

    #[test]
    fn usernames_name_device_or_module() {
        assert_eq!(
            parse_username("h/gw/m1/?api-version=2019-10-01&DeviceClientType=x"),
            Ok(Identity::module("gw", "m1"))
        );
        assert_eq!(parse_username("h/sensor/?api-version=2019-10-01"), Ok(Identity::device("sensor")));
        assert_eq!(parse_username("h/gw/m1/api-version=2019-10-01"), Ok(Identity::module("gw", "m1")));
        assert!(parse_username("h/gw/m1/").is_err());
        assert!(parse_username("h/?api-version=1").is_err());
        assert!(parse_username("h/a/b/c/?api-version=1").is_err());
    }

    #[test]
    fn valid_module_token_is_accepted() {
        let t = token("hub.example.net/devices/gw/modules/m1", KEY, NOW + 60);
        let ok =
            authenticator().authenticate("gw/m1", Some("hub.example.net/gw/m1/?api-version=2019-10-01"), Some(&t), NOW);
        assert_eq!(ok, Ok(Authenticated { identity: Identity::module("gw", "m1"), token_expiry: NOW + 60 }));
    }

    #[test]
    fn gateway_hostname_is_an_accepted_audience() {
        let t = token("gateway.local/devices/sensor", KEY, NOW + 60);
        assert!(authenticator().authenticate("sensor", Some("x/sensor/?api-version=1"), Some(&t), NOW).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let t = token("hub.example.net/devices/gw/modules/m1", KEY, NOW - 1);
        let err = authenticator().authenticate("gw/m1", Some("h/gw/m1/?api-version=1"), Some(&t), NOW);
        assert!(matches!(err, Err(AuthError::Token(_))), "{err:?}");
    }

    #[test]
    fn wrong_key_is_refused() {
        let t = token("hub.example.net/devices/gw/modules/m1", b"another key", NOW + 60);
        assert!(matches!(
            authenticator().authenticate("gw/m1", Some("h/gw/m1/?api-version=1"), Some(&t), NOW),
            Err(AuthError::Token(_))
        ));
    }

    #[test]
    fn token_for_another_identity_is_refused() {
        let t = token("hub.example.net/devices/gw/modules/m2", KEY, NOW + 60);
        assert!(matches!(
            authenticator().authenticate("gw/m1", Some("h/gw/m1/?api-version=1"), Some(&t), NOW),
            Err(AuthError::AudienceMismatch { .. })
        ));
    }

    #[test]
    fn wrong_client_id_is_refused() {
        let t = token("hub.example.net/devices/gw/modules/m1", KEY, NOW + 60);
        assert!(matches!(
            authenticator().authenticate("gw/m2", Some("h/gw/m1/?api-version=1"), Some(&t), NOW),
            Err(AuthError::ClientIdMismatch { .. })
        ));
    }

    #[test]
    fn unknown_identity_and_missing_password_are_refused() {
        let t = token("hub.example.net/devices/gw/modules/m9", KEY, NOW + 60);
        assert!(matches!(
            authenticator().authenticate("gw/m9", Some("h/gw/m9/?api-version=1"), Some(&t), NOW),
            Err(AuthError::UnknownIdentity(_))
        ));
        assert_eq!(
            authenticator().authenticate("gw/m1", Some("h/gw/m1/?api-version=1"), None, NOW),
            Err(AuthError::MissingCredentials)
        );
    }
}
