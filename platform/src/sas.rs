//! Shared access signature (SAS) tokens, the MQTT password of IoT Hub clients.
//!
//! Format: `SharedAccessSignature sr={urlenc(resource)}&sig={urlenc(base64 sig)}&se={expiry}`
//! with an optional `&skn={policy}`; fields may come in any order. The signed message is the
//! `sr` value *exactly as it appears in the token* (still percent-encoded), a newline and the
//! decimal expiry — the algorithm of the Azure IoT Python SDK (`common/auth/sastoken.py`) and of
//! edgeHub, which signs the encoded audience. Everything here is pure: the clock is a parameter.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::hmac;

use crate::urlenc;
use SasError::Malformed;

/// Longest token accepted by [`parse`]. Real tokens are ~150-300 bytes (hub hostname, device and
/// module ids of at most 128 characters each, a 44-byte signature); 4 KiB leaves ample room while
/// keeping a hostile MQTT password from costing more than a page of work.
pub const SAS_TOKEN_MAX_BYTES: usize = 4096;

/// Every token starts with this scheme name and one space.
pub const SAS_SCHEME_PREFIX: &str = "SharedAccessSignature ";

/// HMAC-SHA256 output length; any other decoded `sig` length cannot verify.
pub const SIGNATURE_BYTES: usize = 32;

/// `u64::MAX` has 20 decimal digits; longer `se` values cannot be a valid expiry.
const EXPIRY_MAX_DIGITS: usize = 20;

/// A parsed token. Borrowed parts point into the original password string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken<'a> {
    /// `sr` exactly as in the token (percent-encoded); this is what was signed.
    pub resource_raw: &'a str,
    /// `sr` percent-decoded, e.g. `myhub.azure-devices.net/devices/d/modules/m`.
    pub resource: String,
    /// The base64-decoded signature (always [`SIGNATURE_BYTES`] long).
    pub signature: Vec<u8>,
    /// `se`: expiry, unix seconds.
    pub expiry: u64,
    /// `skn`: shared access policy name, absent for device and module tokens.
    pub key_name: Option<&'a str>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasError {
    /// Longer than [`SAS_TOKEN_MAX_BYTES`].
    TooLong { len: usize, max: usize },
    /// Not in `SharedAccessSignature sr=..&sig=..&se=..` form; the reason names the part.
    Malformed(&'static str),
    /// Authentic, but `se` lies in the past.
    Expired { expiry: u64, now: u64 },
    /// The signature was not made with the identity's key over this `sr` and `se`.
    BadSignature,
}

impl fmt::Display for SasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SasError::TooLong { len, max } => {
                write!(f, "SAS token is {len} bytes, longer than the {max}-byte limit")
            }
            SasError::Malformed(reason) => write!(f, "SAS token is malformed: {reason}"),
            SasError::Expired { expiry, now } => {
                write!(f, "SAS token expired at unix time {expiry} (now {now}); the client must renew it")
            }
            SasError::BadSignature => {
                write!(f, "SAS token signature does not match the identity's key")
            }
        }
    }
}

impl std::error::Error for SasError {}

/// Parses a token without checking its signature or expiry (see [`verify`]).
///
/// Unknown fields are ignored, as IoT Hub tolerates them; known fields may appear only once.
pub fn parse(token: &str) -> Result<SasToken<'_>, SasError> {
    if token.len() > SAS_TOKEN_MAX_BYTES {
        return Err(SasError::TooLong { len: token.len(), max: SAS_TOKEN_MAX_BYTES });
    }
    let fields = token
        .strip_prefix(SAS_SCHEME_PREFIX)
        .ok_or(SasError::Malformed("does not start with \"SharedAccessSignature \""))?;

    let mut resource_raw = None;
    let mut signature_raw = None;
    let mut expiry_raw = None;
    let mut key_name = None;
    for field in fields.split('&') {
        let (name, value) =
            field.split_once('=').ok_or(Malformed("a field has no '=' (expected name=value pairs joined by '&')"))?;
        let slot = match name {
            "sr" => &mut resource_raw,
            "sig" => &mut signature_raw,
            "se" => &mut expiry_raw,
            "skn" => &mut key_name,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Malformed("a field appears twice"));
        }
    }

    let resource_raw = resource_raw.ok_or(Malformed("missing the sr (resource) field"))?;
    if resource_raw.is_empty() {
        return Err(Malformed("the sr (resource) field is empty"));
    }
    let resource = urlenc::decode(resource_raw)
        .map_err(|_| Malformed("the sr field is not valid percent-encoded UTF-8"))?
        .into_owned();
    let signature = decode_signature(signature_raw.ok_or(Malformed("missing the sig field"))?)?;
    let expiry = parse_expiry(expiry_raw.ok_or(Malformed("missing the se (expiry) field"))?)?;
    Ok(SasToken { resource_raw, resource, signature, expiry, key_name })
}

fn decode_signature(raw: &str) -> Result<Vec<u8>, SasError> {
    let text = urlenc::decode(raw).map_err(|_| Malformed("the sig field has a bad %-escape"))?;
    let signature = BASE64.decode(text.as_bytes()).map_err(|_| Malformed("the sig field is not base64"))?;
    if signature.len() != SIGNATURE_BYTES {
        return Err(Malformed("the sig field is not a 32-byte HMAC-SHA256"));
    }
    Ok(signature)
}

fn parse_expiry(raw: &str) -> Result<u64, SasError> {
    // `u64::from_str` would accept a leading '+'; clients only ever send plain digits.
    if raw.is_empty() || raw.len() > EXPIRY_MAX_DIGITS || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("the se field is not a unix time in decimal seconds"));
    }
    raw.parse().map_err(|_| Malformed("the se field is too large"))
}

/// The string-to-sign: encoded resource, newline, decimal expiry.
fn signed_message(resource_raw: &str, expiry: u64) -> String {
    format!("{resource_raw}\n{expiry}")
}

/// Signs `resource_raw` (already percent-encoded) and `expiry`; returns the base64 signature,
/// not yet percent-encoded.
pub fn sign(key: &[u8], resource_raw: &str, expiry: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, signed_message(resource_raw, expiry).as_bytes());
    BASE64.encode(tag.as_ref())
}

/// Builds a complete token for `resource` (not encoded, e.g. `myhub/devices/d/modules/m`).
///
/// Both `sr` and `sig` are fully percent-encoded (`quote(s, safe='')`); [`parse`] also accepts
/// the Python SDK's form, which leaves `/` in the signature unencoded.
pub fn generate(resource: &str, key: &[u8], expiry: u64) -> String {
    let resource_raw = urlenc::encode(resource);
    let signature = sign(key, &resource_raw, expiry);
    let mut token = String::with_capacity(SAS_SCHEME_PREFIX.len() + resource_raw.len() + 80);
    token.push_str(SAS_SCHEME_PREFIX);
    token.push_str("sr=");
    token.push_str(&resource_raw);
    token.push_str("&sig=");
    urlenc::encode_into(&signature, &mut token);
    token.push_str("&se=");
    token.push_str(&expiry.to_string());
    token
}

/// Checks the signature in constant time, then the expiry.
///
/// The signature is checked first so that [`SasError::Expired`] is only ever reported for
/// authentic tokens — it tells an operator "renew", never "wrong key". A token is valid up to
/// and including its `se` second.
pub fn verify(token: &SasToken<'_>, key: &[u8], now_unix: u64) -> Result<(), SasError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let message = signed_message(token.resource_raw, token.expiry);
    hmac::verify(&key, message.as_bytes(), &token.signature).map_err(|_| SasError::BadSignature)?;
    if now_unix > token.expiry {
        return Err(SasError::Expired { expiry: token.expiry, now: now_unix });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=".
    const KEY: &[u8] = b"abcdefghijklmnopqrstuvwxyz123456";

    // Produced independently with python3 (hmac, hashlib, base64, urllib.parse) following
    // azure-iot-device `common/auth/sastoken.py`:
    //   sr = quote(uri, safe=''); msg = (sr + "\n" + str(expiry)).encode()
    //   sig = quote(base64.b64encode(hmac.HMAC(b64decode(KEY_B64), msg, sha256).digest()))
    // The SDK quotes the signature with the default safe='/', so `/` stays literal there;
    // the "strict" variant uses quote(sig, safe=''), which is what `generate` produces.
    const URI_1: &str = "myhub.azure-devices.net/devices/gateway-1/modules/filter";
    const EXPIRY_1: u64 = 1_767_225_600;
    const TOKEN_1: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fgateway-1%2Fmodules%2Ffilter&sig=8X2hAk2tL7wjOLN5WDj9TlNqDQGz84%2B%2BOEq3DkNe9wQ%3D&se=1767225600";
    const URI_2: &str = "myhub.azure-devices.net/devices/dev 1/modules/m~od$(x)";
    const EXPIRY_2: u64 = 4_102_444_800;
    const TOKEN_2_SDK: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev%201%2Fmodules%2Fm~od%24%28x%29&sig=SfopH7/qH1dnQeZXWSTvsxfZXBRE1p4GwufDvLl/FJo%3D&se=4102444800";
    const TOKEN_2_STRICT: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev%201%2Fmodules%2Fm~od%24%28x%29&sig=SfopH7%2FqH1dnQeZXWSTvsxfZXBRE1p4GwufDvLl%2FFJo%3D&se=4102444800";

    #[test]
    fn generate_matches_python_sdk_tokens() {
        assert_eq!(generate(URI_1, KEY, EXPIRY_1), TOKEN_1);
        assert_eq!(generate(URI_2, KEY, EXPIRY_2), TOKEN_2_STRICT);
    }

    #[test]
    fn python_sdk_tokens_verify() {
        for (token, uri, expiry) in
            [(TOKEN_1, URI_1, EXPIRY_1), (TOKEN_2_SDK, URI_2, EXPIRY_2), (TOKEN_2_STRICT, URI_2, EXPIRY_2)]
        {
            let parsed = parse(token).unwrap();
            assert_eq!(parsed.resource, uri);
            assert_eq!(parsed.expiry, expiry);
            assert_eq!(parsed.key_name, None);
            assert_eq!(verify(&parsed, KEY, expiry - 1), Ok(()));
        }
    }

    #[test]
    fn sign_is_base64_hmac_of_encoded_resource_and_expiry() {
        let resource_raw = urlenc::encode(URI_1);
        assert_eq!(sign(KEY, &resource_raw, EXPIRY_1), "8X2hAk2tL7wjOLN5WDj9TlNqDQGz84++OEq3DkNe9wQ=");
    }

    #[test]
    fn fields_parse_in_any_order_with_policy_name() {
        let token = "SharedAccessSignature skn=iothubowner&se=1767225600&sig=8X2hAk2tL7wjOLN5WDj9TlNqDQGz84%2B%2BOEq3DkNe9wQ%3D&sr=myhub.azure-devices.net%2Fdevices%2Fgateway-1%2Fmodules%2Ffilter";
        let parsed = parse(token).unwrap();
        assert_eq!(parsed.key_name, Some("iothubowner"));
        assert_eq!(parsed.resource_raw, "myhub.azure-devices.net%2Fdevices%2Fgateway-1%2Fmodules%2Ffilter");
        assert_eq!(verify(&parsed, KEY, 0), Ok(()));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let token = format!("{TOKEN_1}&future=1");
        assert_eq!(verify(&parse(&token).unwrap(), KEY, EXPIRY_1), Ok(()));
    }

    #[test]
    fn token_is_valid_through_its_expiry_second() {
        let parsed = parse(TOKEN_1).unwrap();
        assert_eq!(verify(&parsed, KEY, EXPIRY_1), Ok(()));
    }

    #[test]
    fn expired_token_is_refused() {
        let parsed = parse(TOKEN_1).unwrap();
        assert_eq!(verify(&parsed, KEY, EXPIRY_1 + 1), Err(SasError::Expired { expiry: EXPIRY_1, now: EXPIRY_1 + 1 }));
    }

    #[test]
    fn wrong_key_is_refused_even_when_expired() {
        let parsed = parse(TOKEN_1).unwrap();
        let other_key = b"abcdefghijklmnopqrstuvwxyz123457";
        assert_eq!(verify(&parsed, other_key, 0), Err(SasError::BadSignature));
        assert_eq!(verify(&parsed, other_key, u64::MAX), Err(SasError::BadSignature));
    }

    #[test]
    fn tampered_resource_or_expiry_is_refused() {
        let other_resource = TOKEN_1.replace("gateway-1", "gateway-2");
        let later_expiry = TOKEN_1.replace("se=1767225600", "se=1767225601");
        // Same resource, encoded differently: the signature covers the encoding, as in edgeHub.
        let lower_hex = TOKEN_1.replace("%2F", "%2f");
        for token in [other_resource, later_expiry, lower_hex] {
            assert_eq!(verify(&parse(&token).unwrap(), KEY, 0), Err(SasError::BadSignature));
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let sig = "sig=8X2hAk2tL7wjOLN5WDj9TlNqDQGz84%2B%2BOEq3DkNe9wQ%3D";
        let table = [
            String::new(),
            "sr=a&sig=b&se=1".to_owned(),
            "sharedaccesssignature sr=a&se=1".to_owned(),
            "SharedAccessSignature ".to_owned(),
            format!("SharedAccessSignature sr=a&{sig}"),
            format!("SharedAccessSignature {sig}&se=1"),
            format!("SharedAccessSignature sr=&{sig}&se=1"),
            format!("SharedAccessSignature sr=a&{sig}&se=1&se=2"),
            format!("SharedAccessSignature sr=a&{sig}&se="),
            format!("SharedAccessSignature sr=a&{sig}&se=+1"),
            format!("SharedAccessSignature sr=a&{sig}&se=-1"),
            format!("SharedAccessSignature sr=a&{sig}&se=18446744073709551616"),
            format!("SharedAccessSignature sr=a&{sig}&se=1&"),
            format!("SharedAccessSignature sr=%zz&{sig}&se=1"),
            format!("SharedAccessSignature sr=%FF&{sig}&se=1"),
            "SharedAccessSignature sr=a&sig=!!!&se=1".to_owned(),
            "SharedAccessSignature sr=a&sig=YWJj&se=1".to_owned(),
            "SharedAccessSignature sr=a&sig=%Z&se=1".to_owned(),
        ];
        for token in &table {
            assert!(matches!(parse(token), Err(SasError::Malformed(_))), "{token:?}");
        }
    }

    #[test]
    fn overlong_token_is_refused_before_parsing() {
        let token = format!("{TOKEN_1}&pad={}", "x".repeat(SAS_TOKEN_MAX_BYTES));
        assert!(matches!(parse(&token), Err(SasError::TooLong { max: SAS_TOKEN_MAX_BYTES, .. })));
    }

    #[test]
    fn generated_tokens_round_trip() {
        for resource in ["h/devices/d", "h/devices/d/modules/$edgeHub", "h/devices/ü &=%/modules/x"] {
            let token = generate(resource, KEY, 42);
            let parsed = parse(&token).unwrap();
            assert_eq!(parsed.resource, resource);
            assert_eq!(verify(&parsed, KEY, 42), Ok(()));
        }
    }

    #[test]
    fn errors_display_on_one_line() {
        let errors = [
            SasError::TooLong { len: 5000, max: SAS_TOKEN_MAX_BYTES },
            SasError::Malformed("missing the sig field"),
            SasError::Expired { expiry: 1, now: 2 },
            SasError::BadSignature,
        ];
        for error in errors {
            assert!(!error.to_string().contains('\n'));
        }
    }
}
