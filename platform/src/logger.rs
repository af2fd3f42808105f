//! A minimal `log::Log` that writes one line per record to stderr:
//! `2026-11-27T17:03:47.123Z INFO  hub::broker: message`.
//!
//! stderr rather than a file because the runtime runs under systemd or a container engine,
//! which already timestamps, rotates and ships stderr; one `write_all` per line keeps lines from
//! different threads whole.
//!
//! Lines that outside input can repeat at will (refused connections, refused messages, accept
//! errors) go through a [`RateLimit`]: at most one line per interval, carrying the count of the
//! lines left out since the previous one, so a flood neither fills the disk nor goes unseen.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::utc::UtcDateTime;

/// Environment variable whose value (a level name) overrides the configured level, so an
/// operator can turn on `debug` for one run without editing the config.
pub const LOG_ENV_VAR: &str = "TINYEDGE_LOG";

/// The interval of the rate-limited lines: long enough that a flood costs a few lines a minute,
/// short enough that a problem still shows up within seconds of its start.
pub const RATE_LIMIT_INTERVAL: Duration = Duration::from_secs(10);

#[doc(hidden)]
pub use log as __log;

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

/// Lets one kind of log line through at most once per interval and counts the ones it holds
/// back. Lock-free and `const`-constructible, so it can be a `static` or a field:
///
/// ```
/// use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};
/// static REFUSED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
/// tinyedge_platform::log_limited!(REFUSED, log::Level::Warn, "{}: refused", "10.0.0.9:5000");
/// ```
#[derive(Debug)]
pub struct RateLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which no line may be written.
    next_ms: AtomicU64,
    /// Lines held back since the last one written.
    suppressed: AtomicU64,
}

/// The monotonic clock's origin for every [`RateLimit`]: the first use in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimit {
    pub const fn new(interval: Duration) -> RateLimit {
        // An interval beyond u64 milliseconds (584 million years) is "never again" anyway.
        let ms = interval.as_millis();
        let interval_ms = if ms > u64::MAX as u128 { u64::MAX } else { ms as u64 };
        RateLimit { interval_ms, next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since the
    /// previous one; `None` (and the line counted) otherwise.
    pub fn check(&self) -> Option<u64> {
        let now_ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.check_at(now_ms)
    }

    fn check_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms.saturating_add(self.interval_ms), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The tail [`log_limited!`] appends to a line: nothing, or how many like it were left out.
#[derive(Debug, Clone, Copy)]
pub struct Suppressed(pub u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more since the last such line)"),
        }
    }
}

/// `log!` through a [`RateLimit`]: `log_limited!(LIMIT, log::Level::Warn, "fmt", args…)`
/// writes the line if the limit lets it through now, with the count of lines it held back
/// since the previous one appended; otherwise only counts it.
#[macro_export]
macro_rules! log_limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        if let ::std::option::Option::Some(suppressed) = $crate::logger::RateLimit::check(&$limit) {
            $crate::logger::__log::log!(
                $level,
                "{}{}",
                ::std::format_args!($($arg)+),
                $crate::logger::Suppressed(suppressed)
            );
        }
    };
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
    fn rate_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(10));
        assert_eq!(limit.check_at(0), Some(0));
        assert_eq!(limit.check_at(1), None);
        assert_eq!(limit.check_at(9_999), None);
        assert_eq!(limit.check_at(10_000), Some(2));
        assert_eq!(limit.check_at(10_001), None);
        // A long quiet spell: the next line goes out at once, with the one held back.
        assert_eq!(limit.check_at(100_000), Some(1));
        assert_eq!(limit.check_at(110_000), Some(0));
    }

    #[test]
    fn rate_limit_is_shared_between_threads() {
        static LIMIT: RateLimit = RateLimit::new(Duration::from_secs(3600));
        let through: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..1000).filter(|_| LIMIT.check_at(5).is_some()).count() as u64))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(through, 1);
        assert_eq!(LIMIT.check_at(3_600_005), Some(3999));
    }

    #[test]
    fn suppressed_count_reads_as_a_tail() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(3).to_string(), " (3 more since the last such line)");
        let limit = RateLimit::new(Duration::from_secs(10));
        log_limited!(limit, Level::Warn, "limited {}", 1);
        log_limited!(limit, Level::Warn, "limited {}", 2);
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 1);
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
