//! `ConfigError`: every way a config file can be wrong, each naming the key, value or file to fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A config problem. `Display` is one line starting with `config:`; errors found while loading
/// a file are wrapped in [`ConfigError::InFile`], which appends ` in {file}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    Read { file: PathBuf, error: io::Error },
    /// The config text is larger than [`super::CONFIG_MAX_BYTES`].
    TooLarge { bytes: usize, max_bytes: usize },
    /// Not valid TOML; `line` and `column` are 1-based, or 0 when toml gave no position.
    Syntax { line: usize, column: usize, message: String },
    /// A key tinyedge does not know, usually a typo (`hub.mqttt`).
    UnknownKey { key: String },
    /// A required key is absent (only `id` and `key` of a `[[devices]]` entry are required).
    MissingKey { key: String },
    /// A value of the wrong TOML type.
    WrongType { key: String, expected: &'static str, found: &'static str },
    /// A string that must not be empty is.
    Empty { key: String },
    /// A listener that is not an `ip:port` socket address.
    BadAddress { key: String, value: String },
    /// Two listeners (`hub.mqtt`, `hub.mqtts`, `hub.https`) name the same address, so the
    /// second bind would fail.
    SameAddress { first: &'static str, second: &'static str, value: String },
    /// A symmetric key that is not standard base64 or has the wrong length.
    BadKey { key: String, reason: String },
    /// An integer outside its allowed range.
    OutOfRange { key: String, value: i64, min: u64, max: u64 },
    /// A device id outside IoT Hub's id rules.
    BadId { key: String, value: String, reason: &'static str },
    /// A hostname that cannot be a DNS name or IP address.
    BadHostname { key: String, value: String, reason: &'static str },
    /// `log_level` is not a level name.
    BadLogLevel { value: String },
    /// A string that must be one of a few words (`store.fsync`, `store.when_full`, ...).
    BadChoice { key: String, value: String, expected: &'static str },
    /// `upstream.url` is not `mqtt://host:port` or `mqtts://host:port`.
    BadUrl { key: String, value: String, reason: &'static str },
    /// Two `[[devices]]` entries share an id.
    DuplicateDevice { id: String },
    /// A `[[devices]]` entry reuses the edge device's own id.
    DeviceIsEdge { id: String },
    /// Only one of `hub.tls_cert` and `hub.tls_key` is set.
    TlsPairIncomplete { present: &'static str, missing: &'static str },
    /// A file named by the config does not exist or cannot be read ([`super::Config::check_files`]).
    MissingFile { key: &'static str, file: PathBuf, error: io::Error },
    /// A file named by the config is a directory or other non-file.
    NotAFile { key: &'static str, file: PathBuf },
    /// Any of the above, found in `file`.
    InFile { file: PathBuf, error: Box<ConfigError> },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, error } => {
                write!(f, "config: cannot read {}: {error}", file.display())
            }
            ConfigError::TooLarge { bytes, max_bytes } => {
                write!(f, "config: file is {bytes} bytes, larger than the {max_bytes}-byte limit")
            }
            ConfigError::Syntax { line, column, message } => {
                // toml messages are one line today; keep it so if that ever changes.
                let message = message.replace('\n', " ");
                if *line == 0 {
                    write!(f, "config: TOML syntax error: {message}")
                } else {
                    write!(f, "config: TOML syntax error at line {line}, column {column}: {message}")
                }
            }
            ConfigError::UnknownKey { key } => write!(f, "config: unknown key \"{}\"", key.escape_debug()),
            ConfigError::MissingKey { key } => write!(f, "config: missing required key \"{key}\""),
            ConfigError::WrongType { key, expected, found } => {
                write!(f, "config: \"{key}\" must be {expected}, found {found}")
            }
            ConfigError::Empty { key } => write!(f, "config: \"{key}\" must not be empty"),
            ConfigError::BadAddress { key, value } => write!(
                f,
                "config: \"{key}\" = \"{}\" is not an ip:port address like \"0.0.0.0:8883\" \
                 (use \"\" to turn the listener off)",
                value.escape_debug()
            ),
            ConfigError::SameAddress { first, second, value } => {
                write!(f, "config: \"{first}\" and \"{second}\" are both \"{value}\"; give them different ports")
            }
            ConfigError::BadKey { key, reason } => {
                write!(f, "config: \"{key}\" is not a valid symmetric key: {reason}")
            }
            ConfigError::OutOfRange { key, value, min, max } => {
                write!(f, "config: \"{key}\" = {value} is out of range; allowed {min} to {max}")
            }
            ConfigError::BadId { key, value, reason } => {
                write!(f, "config: \"{key}\" = \"{}\" is not a valid IoT Hub id: {reason}", value.escape_debug())
            }
            ConfigError::BadHostname { key, value, reason } => {
                write!(f, "config: \"{key}\" = \"{}\" is not a valid hostname: {reason}", value.escape_debug())
            }
            ConfigError::BadChoice { key, value, expected } => {
                write!(f, "config: \"{key}\" = \"{}\" is not one of {expected}", value.escape_debug())
            }
            ConfigError::BadUrl { key, value, reason } => {
                write!(f, "config: \"{key}\" = \"{}\" is not a valid URL: {reason}", value.escape_debug())
            }
            ConfigError::BadLogLevel { value } => write!(
                f,
                "config: \"log_level\" = \"{}\" is not one of error, warn, info, debug, trace, off",
                value.escape_debug()
            ),
            ConfigError::DuplicateDevice { id } => {
                write!(f, "config: device id \"{id}\" appears in more than one [[devices]] entry")
            }
            ConfigError::DeviceIsEdge { id } => {
                write!(f, "config: [[devices]] id \"{id}\" is the edge device's own device_id; pick another")
            }
            ConfigError::TlsPairIncomplete { present, missing } => write!(
                f,
                "config: \"{present}\" is set but \"{missing}\" is not; set both, or neither to \
                 use a generated certificate"
            ),
            ConfigError::MissingFile { key, file, error } => {
                write!(f, "config: \"{key}\" names {}, which cannot be read: {error}", file.display())
            }
            ConfigError::NotAFile { key, file } => {
                write!(f, "config: \"{key}\" names {}, which is not a regular file", file.display())
            }
            ConfigError::InFile { file, error } => write!(f, "{error} in {}", file.display()),
        }
    }
}

/// The io error, where there is one, is already part of the one-line message, so `source` is
/// left empty to keep error chains from printing it twice.
impl std::error::Error for ConfigError {}

impl ConfigError {
    /// The error without its [`ConfigError::InFile`] wrapper, for matching on the cause.
    pub fn without_file(&self) -> &ConfigError {
        match self {
            ConfigError::InFile { error, .. } => error.without_file(),
            other => other,
        }
    }
}
