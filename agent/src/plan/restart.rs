//! The restart policy with IoT Edge's backoff, as pure functions of a module's state and `now`.
//!
//! Follows `Agent.Core/RestartPolicyManager.cs` and `planner/HealthRestartPlanner.cs`
//! (Azure/iotedge): a module that should restart waits `min(unit × 2^restartCount, 300 s)`
//! after its last exit, is reported `backoff` meanwhile, and `failed` once it has used up
//! `MaxRestartCount` restarts; a module that has run longer than the intensive-care time gets
//! its restart statistics cleared. One deliberate difference: IoT Edge never produces
//! `unhealthy` (its health probes are a TODO), so on-unhealthy behaves like on-failure there;
//! here a failing health check (`healthy == Some(false)`) really triggers on-unhealthy and
//! always.

use std::time::Duration;

use super::state::{ModuleState, RuntimeStatus};
use crate::manifest::RestartPolicy;

/// IoT Edge's `MaxRestartCount` (`appsettings_agent.json`).
pub const DEFAULT_MAX_RESTART_COUNT: u32 = 20;
/// IoT Edge's `CoolOffTimeUnitInSeconds` (`appsettings_agent.json`).
pub const DEFAULT_COOL_OFF_UNIT: Duration = Duration::from_secs(10);
/// The cap on one cool-off, hard-coded in `RestartPolicyManager.cs` (issue #1334 shows
/// "scheduled to restart after 05m:00s").
pub const DEFAULT_COOL_OFF_MAX: Duration = Duration::from_secs(300);
/// IoT Edge's `IntensiveCareTimeInMinutes` (`appsettings_agent.json`).
pub const DEFAULT_INTENSIVE_CARE: Duration = Duration::from_secs(10 * 60);

/// How hard the agent tries to keep a crashing module up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartSettings {
    /// Restarts allowed before a module is left `failed` (until the counts are reset).
    pub max_restart_count: u32,
    /// The first cool-off; each restart doubles it.
    pub cool_off_unit: Duration,
    /// The longest cool-off.
    pub cool_off_max: Duration,
    /// A module running at least this long gets its restart count cleared.
    pub intensive_care: Duration,
}

impl Default for RestartSettings {
    /// IoT Edge's defaults: 20 restarts, 10 s doubling up to 300 s, 10 min of intensive care.
    fn default() -> Self {
        Self {
            max_restart_count: DEFAULT_MAX_RESTART_COUNT,
            cool_off_unit: DEFAULT_COOL_OFF_UNIT,
            cool_off_max: DEFAULT_COOL_OFF_MAX,
            intensive_care: DEFAULT_INTENSIVE_CARE,
        }
    }
}

/// Whether the container crashed: it ran, exited with a non-zero code, and not because the
/// agent stopped it.
fn crashed(state: &ModuleState) -> bool {
    !state.running && !state.stopped_by_agent && matches!(state.exit_code, Some(code) if code != 0)
}

/// Whether `policy` calls for a restart of a module in `state` (whose desired status is
/// running; the planner never restarts a module meant to be stopped):
/// - `never`: no;
/// - `on-failure`: after a crash (not running, non-zero exit);
/// - `on-unhealthy`: after a crash, or while running with a failing health check;
/// - `always`: after any exit, or while unhealthy.
///
/// An exit the agent caused (`stopped_by_agent`) is never a reason, and a container that was
/// created but never ran has nothing to restart (the planner simply starts it).
pub fn should_restart(policy: RestartPolicy, state: &ModuleState) -> bool {
    let unhealthy = state.running && state.is_unhealthy();
    match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => crashed(state),
        RestartPolicy::OnUnhealthy => crashed(state) || unhealthy,
        RestartPolicy::Always => {
            let exited = !state.running && !state.stopped_by_agent && state.has_exited();
            exited || unhealthy
        }
    }
}

/// The cool-off before restart number `restart_count + 1`: `min(unit × 2^restart_count, max)`,
/// saturating at `max` instead of overflowing (10, 20, 40, 80, 160, 300, 300 … s by default).
pub fn cool_off(settings: &RestartSettings, restart_count: u32) -> Duration {
    2u32.checked_pow(restart_count)
        .and_then(|factor| settings.cool_off_unit.checked_mul(factor))
        .map_or(settings.cool_off_max, |cool_off| cool_off.min(settings.cool_off_max))
}

/// The `runtimeStatus` to report for a module, rules in order:
/// 1. running with a failing health check → `unhealthy` (whatever the policy);
/// 2. running → `running`;
/// 3. stopped, and the policy wants a restart → `backoff` while `restart_count <
///    max_restart_count`, `failed` once the budget is spent (IoT Edge's overlay in
///    `RestartPolicyManager.ComputeModuleStatusFromRestartPolicy`);
/// 4. stopped by the agent, never ran, or exited with code 0 → `stopped`;
/// 5. exited with a non-zero code → `failed` (edgelet's `runtime_state`).
///
/// `unknown` and `dead` are never produced here: they describe containers the runtime cannot
/// report or gave up on, which the caller knows from the runtime itself. The status does not
/// depend on time (a restart that is due but not yet made is still `backoff`); `now_unix_ms`
/// is taken so that every restart function reads one clock the same way.
pub fn runtime_status(
    policy: RestartPolicy,
    state: &ModuleState,
    settings: &RestartSettings,
    now_unix_ms: u64,
) -> RuntimeStatus {
    let _ = now_unix_ms;
    if state.running {
        return if state.is_unhealthy() { RuntimeStatus::Unhealthy } else { RuntimeStatus::Running };
    }
    if should_restart(policy, state) {
        return if state.restart_count < settings.max_restart_count {
            RuntimeStatus::Backoff
        } else {
            RuntimeStatus::Failed
        };
    }
    match state.exit_code {
        Some(code) if code != 0 && !state.stopped_by_agent => RuntimeStatus::Failed,
        _ => RuntimeStatus::Stopped,
    }
}

/// When the restart policy's next restart of this module is due, in Unix ms; `None` when the
/// policy does not restart it or its restart budget is spent (IoT Edge leaves such a module
/// `failed` until a new deployment).
///
/// The cool-off is measured from the last exit, or, for a module that is running but
/// unhealthy, from its last start (so restarts are at least one cool-off apart either way).
/// A reference time after `now` (clock skew, e.g. an RTC-less gateway before NTP) or a missing
/// one makes the restart due now, as IoT Edge does for a negative elapsed time.
pub fn restart_due(
    policy: RestartPolicy,
    state: &ModuleState,
    settings: &RestartSettings,
    now_unix_ms: u64,
) -> Option<u64> {
    if !should_restart(policy, state) || state.restart_count >= settings.max_restart_count {
        return None;
    }
    let since_unix_ms = if state.running { state.last_start_unix_ms } else { state.last_exit_unix_ms };
    let Some(since_unix_ms) = since_unix_ms.filter(|since| *since <= now_unix_ms) else {
        return Some(now_unix_ms);
    };
    Some(since_unix_ms.saturating_add(duration_ms(cool_off(settings, state.restart_count))))
}

/// Whether the module's restart statistics should be cleared: it has restarts on record and
/// has been running, healthy or without a verdict, for at least the intensive-care time.
/// A start time after `now` (clock skew) does not count as a long run.
pub fn reset_counts_due(state: &ModuleState, settings: &RestartSettings, now_unix_ms: u64) -> bool {
    reset_counts_at(state, settings).is_some_and(|due| due <= now_unix_ms)
        && state.last_start_unix_ms.is_some_and(|started| started <= now_unix_ms)
}

/// When [`reset_counts_due`] becomes true if the module keeps running; `None` when there is
/// nothing to reset or the module is not running well.
pub fn reset_counts_at(state: &ModuleState, settings: &RestartSettings) -> Option<u64> {
    let has_counts = state.restart_count > 0 || state.last_restart_unix_ms.is_some();
    if !has_counts || !state.running || state.is_unhealthy() {
        return None;
    }
    let started = state.last_start_unix_ms?;
    Some(started.saturating_add(duration_ms(settings.intensive_care)))
}

/// A duration in whole milliseconds, saturating (a `Duration` can exceed `u64` ms).
fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
