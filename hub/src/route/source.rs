//! Route sources (`FROM /messages/modules/m1/*`) and matching them against message sources.
//!
//! IoT Edge (`CustomMessageSource.Create`, `BaseMessageSource.Match`) strips the trailing `*`s
//! and then the trailing `/`s of the route's path, appends one `/` to both sides and tests for
//! a case-insensitive prefix. So `/messages/modules/m1/*` matches `/messages/modules/m1` and
//! everything below it but not `/messages/modules/m10`; `/*` matches every source; a `*` in the
//! middle of a path is an ordinary character and matches only itself.

/// The source path of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path as written, e.g. `/messages/modules/m1/*`.
    text: Box<str>,
    /// The prefix messages must start with, without its final `/` (empty for `/*`).
    prefix: Box<str>,
}

impl Source {
    pub(crate) fn new(text: &str) -> Source {
        let prefix = text.trim().trim_end_matches('*').trim_end_matches('/');
        Source { text: text.into(), prefix: prefix.into() }
    }

    /// The prefix messages must start with (see [`Source::matches`]), ASCII letters folded to
    /// lower case: the key under which a route table indexes this source.
    pub(crate) fn folded_prefix(&self) -> Box<[u8]> {
        self.prefix.as_bytes().to_ascii_lowercase().into_boxed_slice()
    }

    /// The path as written in the route.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a message tagged with `message_source` (e.g. `/messages/modules/m1/outputs/o`)
    /// comes from this source. Letters compare ASCII-case-insensitively; IoT Hub identifiers
    /// are ASCII.
    pub fn matches(&self, message_source: &str) -> bool {
        let source = message_source.trim().trim_end_matches('/').as_bytes();
        let prefix = self.prefix.as_bytes();
        // `source + "/"` must start with `prefix + "/"`.
        source.len() >= prefix.len()
            && source[..prefix.len()].eq_ignore_ascii_case(prefix)
            && matches!(source.get(prefix.len()), None | Some(b'/'))
    }
}
