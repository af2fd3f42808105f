//! Turning a message body into JSON for `$body` queries, under IoT Edge's conditions.
//!
//! IoT Edge (`Message.GetMessageQueryProvider`, `MessageQueryValueProviderFactory`) queries a
//! body only when the system property `contentType` is exactly `application/json` and
//! `contentEncoding` is `utf-8`, `utf-16` or `utf-32` (both compared case-insensitively; the
//! .NET encodings are little-endian for 16 and 32 bits), and only when the text parses as a
//! JSON *object*. In every other case each `$body` query is undefined.

use super::RoutableMessage;

/// The encodings IoT Edge accepts in `contentEncoding` (`Constants.ContentEncodings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Utf16,
    Utf32,
}

impl Encoding {
    fn from_name(name: &str) -> Option<Encoding> {
        [("utf-8", Encoding::Utf8), ("utf-16", Encoding::Utf16), ("utf-32", Encoding::Utf32)]
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, e)| e)
    }
}

/// The body as a JSON object, or `None` when IoT Edge would not query it.
pub(crate) fn parse_json_body(message: &dyn RoutableMessage) -> Option<serde_json::Value> {
    let content_type = message.system_property("contentType")?;
    if !content_type.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let encoding = Encoding::from_name(message.system_property("contentEncoding")?)?;
    let text = decode(message.body(), encoding);
    // A byte-order mark is not JSON; skip it rather than fail the whole query.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value @ serde_json::Value::Object(_)) => Some(value),
        _ => None,
    }
}

/// Decodes like .NET's `Encoding.GetString`: invalid sequences become U+FFFD.
fn decode(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Utf16 => {
            let units = bytes.chunks(2).map(|pair| match pair {
                [lo, hi] => u16::from_le_bytes([*lo, *hi]),
                _ => 0xFFFD,
            });
            char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
        }
        Encoding::Utf32 => bytes
            .chunks(4)
            .map(|quad| match quad {
                [a, b, c, d] => {
                    char::from_u32(u32::from_le_bytes([*a, *b, *c, *d])).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
                _ => char::REPLACEMENT_CHARACTER,
            })
            .collect(),
    }
}
