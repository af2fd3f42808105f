//! `Healthcheck`: what to run, how often, and when the container counts as unhealthy.
//!
//! Docker's rules (`api/types/container/config.go`, `daemon/health.go`): durations are integers
//! in nanoseconds, `0` means "use the default", and a non-zero duration below 1 ms is refused.
//! An empty or absent `Test` means "inherit the image's test"; tinyedge has no image test to
//! combine the timings with, so that case is reported and no health check is set.

use std::time::Duration;

use serde_json::Value;

use super::json;
use super::{CreateOptionsError, HealthTest, Healthcheck, ARGS_MAX};

/// Docker's default time between checks.
pub const HEALTH_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Docker's default time a single check may take.
pub const HEALTH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Docker's default grace period after start.
pub const HEALTH_START_PERIOD_DEFAULT: Duration = Duration::ZERO;
/// Docker's default number of consecutive failures before "unhealthy".
pub const HEALTH_RETRIES_DEFAULT: u32 = 3;
/// Docker's smallest non-zero duration; shorter checks would only load the gateway.
const HEALTH_DURATION_MIN: Duration = Duration::from_millis(1);

/// Parses `Healthcheck`; `None` when it sets no test (see the module docs).
pub(crate) fn parse(
    value: &Value,
    path: &str,
    unsupported: &mut Vec<String>,
) -> Result<Option<Healthcheck>, CreateOptionsError> {
    let map = json::object(value, path)?;
    let mut test = None;
    let mut check = Healthcheck {
        test: HealthTest::Disabled,
        interval: HEALTH_INTERVAL_DEFAULT,
        timeout: HEALTH_TIMEOUT_DEFAULT,
        start_period: HEALTH_START_PERIOD_DEFAULT,
        retries: HEALTH_RETRIES_DEFAULT,
    };
    for (key, field) in map {
        if field.is_null() {
            continue;
        }
        let field_path = json::child(path, key);
        match key.as_str() {
            "Test" => test = parse_test(field, &field_path)?,
            "Interval" => set_duration(&mut check.interval, field, &field_path)?,
            "Timeout" => set_duration(&mut check.timeout, field, &field_path)?,
            "StartPeriod" => set_duration(&mut check.start_period, field, &field_path)?,
            "Retries" => {
                let retries = json::unsigned(field, &field_path)?;
                let retries =
                    u32::try_from(retries).map_err(|_| json::error(&field_path, format!("{retries} is too large")))?;
                if retries > 0 {
                    check.retries = retries;
                }
            }
            _ => unsupported.push(format!("{field_path}: not translated")),
        }
    }
    let Some(test) = test else {
        unsupported.push(format!(
            "{path}.Test: not translated: without a test Docker inherits the image's, which tinyedge does not read"
        ));
        return Ok(None);
    };
    check.test = test;
    Ok(Some(check))
}

/// `Test`: `["CMD", program, args…]`, `["CMD-SHELL", command]` or `["NONE"]`; `[]` inherits.
fn parse_test(value: &Value, path: &str) -> Result<Option<HealthTest>, CreateOptionsError> {
    let items = json::array(value, path, ARGS_MAX)?;
    let words = json::strings(items, path)?;
    let Some((kind, rest)) = words.split_first() else {
        return Ok(None);
    };
    let test = match (kind.as_str(), rest) {
        ("NONE", []) => HealthTest::Disabled,
        ("CMD", [_, ..]) => HealthTest::Exec(rest.to_vec()),
        ("CMD-SHELL", [command]) => HealthTest::Shell(command.clone()),
        ("NONE" | "CMD" | "CMD-SHELL", _) => {
            return Err(json::error(
                path,
                format!(
                    "{} takes {}, got {} more elements",
                    json::quote(kind),
                    match kind.as_str() {
                        "NONE" => "nothing after it",
                        "CMD" => "a program and its arguments",
                        _ => "exactly one shell command",
                    },
                    rest.len()
                ),
            ))
        }
        _ => {
            return Err(json::error(
                path,
                format!(
                    "expected the first element to be \"CMD\", \"CMD-SHELL\" or \"NONE\", got {}",
                    json::quote(kind)
                ),
            ))
        }
    };
    Ok(Some(test))
}

/// Sets `target` from a nanosecond count; `0` keeps the default.
fn set_duration(target: &mut Duration, value: &Value, path: &str) -> Result<(), CreateOptionsError> {
    let nanoseconds = json::unsigned(value, path)?;
    let duration = Duration::from_nanos(nanoseconds);
    if duration.is_zero() {
        return Ok(());
    }
    if duration < HEALTH_DURATION_MIN {
        return Err(json::error(
            path,
            format!("{nanoseconds} ns is below the minimum of 1 ms (durations are in nanoseconds)"),
        ));
    }
    *target = duration;
    Ok(())
}
