//! Percent-encoding as IoT Hub uses it in MQTT property bags and SAS tokens.
//!
//! The Azure IoT SDKs encode with Python's `urllib.parse.quote(s, safe='')`: the RFC 3986
//! unreserved set `A-Z a-z 0-9 - . _ ~` passes through, every other UTF-8 byte becomes `%XX`
//! with upper-case hex. Decoding is the inverse and deliberately *not* form-decoding: `+` stays
//! `+`, because base64 signatures inside SAS tokens contain literal `+` when a client did not
//! encode them.

use std::borrow::Cow;
use std::fmt;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Why a percent-encoded string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlDecodeError {
    /// A `%` not followed by two hex digits; `offset` is the byte index of the `%`.
    BadEscape { offset: usize },
    /// The decoded bytes are not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for UrlDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlDecodeError::BadEscape { offset } => {
                write!(f, "percent-encoding: '%' at byte {offset} is not followed by two hex digits")
            }
            UrlDecodeError::InvalidUtf8 => {
                write!(f, "percent-encoding: decoded bytes are not valid UTF-8")
            }
        }
    }
}

impl std::error::Error for UrlDecodeError {}

/// True for the RFC 3986 unreserved characters, the only ones `quote(s, safe='')` keeps.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes `s` (unreserved characters kept, everything else `%XX` upper-case).
///
/// ```
/// assert_eq!(tinyedge_platform::urlenc::encode("hub/devices/d 1"), "hub%2Fdevices%2Fd%201");
/// ```
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_into(s, &mut out);
    out
}

/// Appends the percent-encoding of `s` to `out`; lets callers build topics without temporaries.
pub fn encode_into(s: &str, out: &mut String) {
    for &byte in s.as_bytes() {
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (either hex case). Borrows `s` when it contains no `%`.
///
/// ```
/// use tinyedge_platform::urlenc::decode;
/// assert_eq!(decode("a%2Fb+c").unwrap(), "a/b+c");
/// assert!(decode("100%").is_err());
/// ```
pub fn decode(s: &str) -> Result<Cow<'_, str>, UrlDecodeError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(s));
    };
    // Decoding only shrinks, so the input length bounds the allocation.
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut index = first;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte != b'%' {
            out.push(byte);
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).copied().and_then(hex_value);
        let low = bytes.get(index + 2).copied().and_then(hex_value);
        match (high, low) {
            (Some(high), Some(low)) => out.push(high << 4 | low),
            _ => return Err(UrlDecodeError::BadEscape { offset: index }),
        }
        index += 3;
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| UrlDecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_python_quote_with_empty_safe() {
        // Expected values from: python3 -c "import urllib.parse; print(urllib.parse.quote(s, safe=''))"
        let table = [
            ("", ""),
            ("AZaz09-._~", "AZaz09-._~"),
            ("a b+c/d?e=f&g~h_i.j-k%é€😀", "a%20b%2Bc%2Fd%3Fe%3Df%26g~h_i.j-k%25%C3%A9%E2%82%AC%F0%9F%98%80"),
            (
                "myhub.azure-devices.net/devices/gateway-1/modules/filter",
                "myhub.azure-devices.net%2Fdevices%2Fgateway-1%2Fmodules%2Ffilter",
            ),
            ("$.ct=application/json", "%24.ct%3Dapplication%2Fjson"),
        ];
        for (input, expected) in table {
            assert_eq!(encode(input), expected, "encode({input:?})");
        }
    }

    #[test]
    fn encode_into_appends() {
        let mut out = String::from("devices/d/messages/events/");
        encode_into("k=v", &mut out);
        assert_eq!(out, "devices/d/messages/events/k%3Dv");
    }

    #[test]
    fn decode_inverts_encode() {
        for input in ["", "plain", "a b+c/d?é€😀%", "%%%", "~!*'()"] {
            assert_eq!(decode(&encode(input)).unwrap(), input);
        }
    }

    #[test]
    fn decode_accepts_lower_case_hex_and_keeps_plus() {
        assert_eq!(decode("a%2fb%2Fc+d").unwrap(), "a/b/c+d");
    }

    #[test]
    fn decode_borrows_when_nothing_to_decode() {
        assert!(matches!(decode("no-escapes+here").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn decode_rejects_bad_escapes() {
        let table = [("%", 0), ("abc%", 3), ("%2", 0), ("x%g0", 1), ("%0g", 0), ("ok%41%", 5)];
        for (input, offset) in table {
            assert_eq!(decode(input), Err(UrlDecodeError::BadEscape { offset }), "{input:?}");
        }
    }

    #[test]
    fn decode_rejects_invalid_utf8() {
        assert_eq!(decode("%C3"), Err(UrlDecodeError::InvalidUtf8));
        assert_eq!(decode("%FF%FE"), Err(UrlDecodeError::InvalidUtf8));
    }
}
