//! A minimal `log::Log` that writes one line per record to stderr:
//! `2026-11-27T17:03:47.123Z INFO  hub::broker: message`.
//!
//! stderr rather than a file because the runtime runs under systemd or a container engine,
//! which already timestamps, rotates and ships stderr; one `write_all` per line keeps lines from
//! different threads whole.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::sync::Once;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::utc::UtcDateTime;

/// Environment variable whose value (a level name) overrides the configured level, so an
/// operator can turn on `debug` for one run without editing the config.
pub const LOG_ENV_VAR: &str = "TINYEDGE_LOG";

/// Our crates are all named `tinyedge_*`; dropping the prefix keeps targets short (`hub::broker`).
const TARGET_PREFIX: &str = "tinyedge_";

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;
static INIT: Once = Once::new();

/// Installs the stderr logger at `level`, or at the level named by `TINYEDGE_LOG` if set.
///
/// Only the first call has any effect, so tests and embedders may call it freely; if another
/// logger was installed first, that one is left in place.
pub fn init(level: LevelFilter) {
    INIT.call_once(|| {
        let env_value = std::env::var(LOG_ENV_VAR).ok();
        let chosen = effective_level(level, env_value.as_deref());
        if log::set_logger(&LOGGER).is_err() {
            return;
        }
        log::set_max_level(chosen.unwrap_or(level));
        if chosen.is_err() {
            log::warn!(
                "{LOG_ENV_VAR}={:?} is not one of error, warn, info, debug, trace, off; using {level}",
                env_value.unwrap_or_default()
            );
        }
    });
}

/// The level to use: the environment's if it is set and valid, else the configured one.
/// `Err` carries the configured level back when the environment value is not a level name.
pub fn effective_level(configured: LevelFilter, env_value: Option<&str>) -> Result<LevelFilter, LevelFilter> {
    match env_value.map(str::trim) {
        None | Some("") => Ok(configured),
        Some(value) => value.parse().map_err(|_| configured),
    }
}

/// Formats one log line, newline included. Line breaks inside the message are escaped so that
/// text from the network cannot forge extra log lines.
pub fn format_line(time: &UtcDateTime, level: Level, target: &str, message: &std::fmt::Arguments<'_>) -> String {
    let target = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    let mut line = String::with_capacity(128);
    // Writing into a String cannot fail.
    let _ = write!(line, "{time} {level:<5} {target}: ");
    let message_start = line.len();
    let _ = write!(line, "{message}");
    if line[message_start..].contains(['\n', '\r']) {
        let escaped = line[message_start..].replace('\n', "\\n").replace('\r', "\\r");
        line.truncate(message_start);
        line.push_str(&escaped);
    }
    line.push('\n');
    line
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(&UtcDateTime::now(), record.level(), record.target(), record.args());
        // Nowhere left to report a failing stderr, so the error is dropped.
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time() -> UtcDateTime {
        UtcDateTime::from_unix_millis(1_795_799_027_123)
    }

    #[test]
    fn line_has_time_padded_level_short_target_and_message() {
        let line =
            format_line(&time(), Level::Info, "tinyedge_hub::broker", &format_args!("client {} connected", "d1"));
        assert_eq!(line, "2026-11-27T17:03:47.123Z INFO  hub::broker: client d1 connected\n");
        let line = format_line(&time(), Level::Error, "rustls::conn", &format_args!("x"));
        assert_eq!(line, "2026-11-27T17:03:47.123Z ERROR rustls::conn: x\n");
    }

    #[test]
    fn line_breaks_in_messages_are_escaped() {
        let line = format_line(&time(), Level::Warn, "t", &format_args!("a\nINFO forged\r\n"));
        assert_eq!(line, "2026-11-27T17:03:47.123Z WARN  t: a\\nINFO forged\\r\\n\n");
    }

    #[test]
    fn environment_overrides_configured_level() {
        let table = [
            (None, Ok(LevelFilter::Info)),
            (Some(""), Ok(LevelFilter::Info)),
            (Some("debug"), Ok(LevelFilter::Debug)),
            (Some(" TRACE "), Ok(LevelFilter::Trace)),
            (Some("off"), Ok(LevelFilter::Off)),
            (Some("loud"), Err(LevelFilter::Info)),
        ];
        for (env_value, expected) in table {
            assert_eq!(effective_level(LevelFilter::Info, env_value), expected, "{env_value:?}");
        }
    }

    #[test]
    fn init_twice_is_a_no_op() {
        init(LevelFilter::Warn);
        let level = log::max_level();
        init(LevelFilter::Trace);
        assert_eq!(log::max_level(), level);
        log::warn!("logger test line");
    }
}
