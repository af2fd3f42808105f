//! Secrets out of what the support bundle copies (pure).
//!
//! - **JSON** (the config read as TOML, deployments, the status file): the value of every key
//!   that names a secret — `device_key`, `key`, `primaryKey`, anything ending in `key`, or
//!   containing `password`, `secret`, `token`, `signature` or `connectionstring` — becomes
//!   `"<redacted>"`, and so does every string that looks like a SAS token, a connection string
//!   or a base64 key; an `env`-style `NAME=value` string whose NAME names a secret keeps only
//!   its NAME.
//! - **Log text**: the value after `SharedAccessKey=`, `SharedAccessSignature ` (the whole
//!   token), `AccountKey=` and `password=` is masked up to the next delimiter, and a `sig=…`
//!   becomes `<redacted signature>`: a bundle never has `sig=` in it, so a grep for it checks it.

use serde_json::Value;

pub const REDACTED: &str = "<redacted>";

/// Markers after which log text carries a secret, and the value they announce ends at the
/// first of ` &;,"'` or the end of the line.
const LOG_MARKERS: [&str; 5] = ["sig=", "SharedAccessKey=", "SharedAccessSignature ", "AccountKey=", "password="];
const LOG_VALUE_END: [char; 7] = [' ', '&', ';', ',', '"', '\'', '\n'];
/// A SAS token, and where it ends.
const TOKEN_MARKER: &str = "SharedAccessSignature ";
const TOKEN_END: [char; 4] = [' ', '"', '\'', '\n'];
/// A SAS token's signature field, replaced with its value by [`REDACTED_SIGNATURE`].
const SIGNATURE_MARKER: &str = "sig=";
const REDACTED_SIGNATURE: &str = "<redacted signature>";

/// Whether an object key names a secret. Case, `_` and `-` are ignored.
pub fn is_secret_key(key: &str) -> bool {
    let key: String = key.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    // `tls_key` is the path of a key file, not a key; the path helps support.
    if key == "tlskey" {
        return false;
    }
    key.ends_with("key")
        || ["password", "secret", "token", "signature", "connectionstring"].iter().any(|word| key.contains(word))
}

/// Whether a string value is a credential by its look: a SAS token, a connection string with a
/// key, or a standard-base64 key of 16 to 64 bytes (IoT Hub's keys are 32 or 64; their base64
/// always ends in `=`).
pub fn looks_secret(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if ["sharedaccesssignature", "sharedaccesskey=", "sig=", "accountkey=", "password="]
        .iter()
        .any(|m| lower.contains(m))
    {
        return true;
    }
    let base64_key = (24..=88).contains(&value.len())
        && value.len().is_multiple_of(4)
        && value.ends_with('=')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    base64_key
}

/// Redacts `value` in place; returns how many values were replaced.
pub fn json(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let mut count = 0;
            for (key, child) in map.iter_mut() {
                if is_secret_key(key) && !child.is_null() && *child != Value::String(REDACTED.into()) {
                    *child = Value::String(REDACTED.into());
                    count += 1;
                } else {
                    count += json(child);
                }
            }
            count
        }
        Value::Array(items) => items.iter_mut().map(json).sum(),
        Value::String(text) => match string(text) {
            Some(redacted) => {
                *text = redacted;
                1
            }
            None => 0,
        },
        _ => 0,
    }
}

/// The redacted form of a string value, or `None` when it is not a secret.
fn string(text: &str) -> Option<String> {
    if let Some((name, rest)) = text.split_once('=') {
        let is_env_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if rest == REDACTED {
            return None;
        }
        if is_env_name && (is_secret_key(name) || looks_secret(rest)) {
            return Some(format!("{name}={REDACTED}"));
        }
    }
    looks_secret(text).then(|| REDACTED.to_owned())
}

/// Masks the secret values of log text (see the module doc).
pub fn log_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = LOG_MARKERS.iter().filter_map(|marker| rest.find(marker).map(|at| (at, marker.len()))).min();
        let Some((at, len)) = next else {
            out.push_str(rest);
            return out;
        };
        let marker = &rest[at..at + len];
        out.push_str(&rest[..at]);
        rest = &rest[at + len..];
        // A whole SAS token runs to the next space or quote; other values end at `&` or `;` too.
        let end = if marker == TOKEN_MARKER { rest.find(TOKEN_END) } else { rest.find(LOG_VALUE_END) };
        let end = end.unwrap_or(rest.len());
        if marker == SIGNATURE_MARKER {
            out.push_str(REDACTED_SIGNATURE);
        } else {
            out.push_str(marker);
            if end > 0 {
                out.push_str(REDACTED);
            }
        }
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn secret_keys_are_recognised_by_name() {
        for key in [
            "device_key",
            "key",
            "primaryKey",
            "SharedAccessKey",
            "password",
            "registryPassword",
            "client_secret",
            "sas_token",
            "Signature",
            "EdgeHubConnectionString",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["tls_key", "id", "hostname", "keep_alive", "username", "address", "url", "keyUsage"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn config_and_deployment_secrets_are_replaced() {
        let mut doc = json!({
            "device_key": KEY,
            "hostname": "gw.local",
            "hub": {"tls_key": "/etc/tinyedge/server.key.pem"},
            "devices": [{"id": "sensor-7", "key": "c2Vuc29yLTcta2V5LXNlY3JldC0xMjM0NTY3ODkwYWI="}],
            "registryCredentials": {"r": {"address": "reg.io", "username": "u", "password": "hunter2"}},
            "env": {"API": {"value": "HostName=h;DeviceId=d;SharedAccessKey=abc"}},
            "createOptions": {"Env": ["PLAIN=1", "DB_PASSWORD=hunter2", "TOKEN_URL=https://x", "CONN=HostName=h;SharedAccessKey=abc"]},
            "log": "password=x sig=abc",
            "digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nothing": null,
        });
        let count = json(&mut doc);
        let text = doc.to_string();
        assert!(
            !text.contains(KEY)
                && !text.contains("hunter2")
                && !text.contains("SharedAccessKey=abc")
                && !text.contains("c2Vuc29y"),
            "{text}"
        );
        assert_eq!(doc["hostname"], "gw.local");
        assert_eq!(doc["hub"]["tls_key"], "/etc/tinyedge/server.key.pem");
        assert_eq!(doc["devices"][0]["id"], "sensor-7");
        assert_eq!(doc["registryCredentials"]["r"]["username"], "u");
        assert_eq!(
            doc["createOptions"]["Env"],
            json!(["PLAIN=1", "DB_PASSWORD=<redacted>", "TOKEN_URL=<redacted>", "CONN=<redacted>"])
        );
        assert_eq!(doc["digest"], "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(doc["nothing"], Value::Null);
        assert_eq!(count, 8, "{text}");
        assert_eq!(json(&mut doc), 0, "redacting twice changes nothing");
    }

    #[test]
    fn sas_like_strings_are_recognised_by_look() {
        assert!(looks_secret("SharedAccessSignature sr=hub%2Fdevices%2Fgw&sig=abc&se=1"));
        assert!(looks_secret(KEY));
        assert!(looks_secret("c2Vuc29yLTcta2V5LXNlY3JldC0xMjM0NTY3ODkwYWI="));
        assert!(!looks_secret("gw/$edgeHub"));
        assert!(!looks_secret("aGVsbG8="), "too short for a key");
        assert!(!looks_secret("mqtts://hub.azure-devices.net:8883"));
    }

    #[test]
    fn log_lines_keep_their_text_but_not_their_secrets() {
        let line = "2026-12-01T00:00:00Z WARN refused gw/m: SharedAccessSignature sr=h%2Fdevices%2Fgw&sig=AbC%2B&se=9 (expired)\n";
        assert_eq!(
            log_text(line),
            "2026-12-01T00:00:00Z WARN refused gw/m: SharedAccessSignature <redacted> (expired)\n"
        );
        assert_eq!(log_text("GET /x?sr=a&sig=AbC&se=1 HTTP/1.1"), "GET /x?sr=a&<redacted signature>&se=1 HTTP/1.1");
        assert_eq!(
            log_text("HostName=h;SharedAccessKey=abc=;GatewayHostName=g"),
            "HostName=h;SharedAccessKey=<redacted>;GatewayHostName=g"
        );
        assert_eq!(log_text("no secrets here"), "no secrets here");
        assert_eq!(log_text("sig="), "<redacted signature>");
        assert!(!log_text("a sig=x b sig= c").contains("sig="));
    }
}
