//! Tests of the restart policy: which policy restarts what, the backoff, the restart budget,
//! intensive care and clock skew.

use std::time::Duration;

use super::restart::{cool_off, reset_counts_due, restart_due, runtime_status, should_restart, RestartSettings};
use super::state::{ModuleState, RuntimeStatus};
use crate::manifest::RestartPolicy;

const NOW: u64 = 1_000_000;

fn small_settings() -> RestartSettings {
    RestartSettings {
        max_restart_count: 3,
        cool_off_unit: Duration::from_millis(100),
        cool_off_max: Duration::from_millis(1000),
        intensive_care: Duration::from_millis(5000),
    }
}

fn exited(code: i64) -> ModuleState {
    ModuleState {
        name: "sensor".to_owned(),
        exit_code: Some(code),
        last_start_unix_ms: Some(NOW - 500),
        last_exit_unix_ms: Some(NOW - 50),
        ..ModuleState::default()
    }
}

fn unhealthy() -> ModuleState {
    ModuleState {
        name: "sensor".to_owned(),
        running: true,
        healthy: Some(false),
        last_start_unix_ms: Some(NOW - 500),
        ..ModuleState::default()
    }
}

#[test]
fn each_policy_restarts_what_it_promises() {
    use RestartPolicy::{Always, Never, OnFailure, OnUnhealthy};
    // (policy, after exit 0, after exit 1, while unhealthy)
    let table = [
        (Never, false, false, false),
        (OnFailure, false, true, false),
        (OnUnhealthy, false, true, true),
        (Always, true, true, true),
    ];
    for (policy, clean, crash, sick) in table {
        assert_eq!(should_restart(policy, &exited(0)), clean, "{policy:?} exit 0");
        assert_eq!(should_restart(policy, &exited(1)), crash, "{policy:?} exit 1");
        assert_eq!(should_restart(policy, &unhealthy()), sick, "{policy:?} unhealthy");
    }
}

#[test]
fn an_exit_the_agent_caused_is_never_restarted() {
    let state = ModuleState { stopped_by_agent: true, ..exited(143) };
    for policy in [RestartPolicy::OnFailure, RestartPolicy::Always] {
        assert!(!should_restart(policy, &state));
    }
    let status = runtime_status(RestartPolicy::OnFailure, &state, &small_settings(), NOW);
    assert_eq!(status, RuntimeStatus::Stopped);
}

#[test]
fn healthy_or_unchecked_running_module_is_not_restarted() {
    for healthy in [None, Some(true)] {
        let state = ModuleState { healthy, ..unhealthy() };
        assert!(!should_restart(RestartPolicy::Always, &state));
    }
}

#[test]
fn backoff_doubles_from_ten_seconds_up_to_five_minutes() {
    let settings = RestartSettings::default();
    let seconds: Vec<u64> = (0..7).map(|count| cool_off(&settings, count).as_secs()).collect();
    assert_eq!(seconds, [10, 20, 40, 80, 160, 300, 300]);
}

#[test]
fn backoff_saturates_instead_of_overflowing() {
    let settings = RestartSettings::default();
    for count in [31, 32, 64, u32::MAX] {
        assert_eq!(cool_off(&settings, count), Duration::from_secs(300));
    }
}

#[test]
fn restart_is_due_one_cool_off_after_the_last_exit() {
    let settings = small_settings();
    let mut state = exited(1);
    state.restart_count = 2;
    let due = restart_due(RestartPolicy::OnFailure, &state, &settings, NOW);
    assert_eq!(due, Some(NOW - 50 + 400));
}

#[test]
fn unhealthy_restart_is_measured_from_the_last_start() {
    let settings = small_settings();
    let due = restart_due(RestartPolicy::OnUnhealthy, &unhealthy(), &settings, NOW);
    assert_eq!(due, Some(NOW - 500 + 100));
}

#[test]
fn exit_in_the_future_makes_the_restart_due_now() {
    let mut state = exited(1);
    state.last_exit_unix_ms = Some(NOW + 60_000);
    let due = restart_due(RestartPolicy::Always, &state, &small_settings(), NOW);
    assert_eq!(due, Some(NOW));
}

#[test]
fn unknown_exit_time_makes_the_restart_due_now() {
    let mut state = exited(1);
    state.last_exit_unix_ms = None;
    let due = restart_due(RestartPolicy::Always, &state, &small_settings(), NOW);
    assert_eq!(due, Some(NOW));
}

#[test]
fn no_restart_is_due_when_the_policy_declines() {
    let due = restart_due(RestartPolicy::OnFailure, &exited(0), &small_settings(), NOW);
    assert_eq!(due, None);
}

#[test]
fn crashing_module_is_in_backoff_until_the_budget_is_spent_then_failed() {
    let settings = small_settings();
    let mut state = exited(1);
    for count in 0..settings.max_restart_count {
        state.restart_count = count;
        let status = runtime_status(RestartPolicy::OnFailure, &state, &settings, NOW);
        assert_eq!(status, RuntimeStatus::Backoff, "after {count} restarts");
        assert!(restart_due(RestartPolicy::OnFailure, &state, &settings, NOW).is_some());
    }
    state.restart_count = settings.max_restart_count;
    let status = runtime_status(RestartPolicy::OnFailure, &state, &settings, NOW);
    assert_eq!(status, RuntimeStatus::Failed);
    assert_eq!(restart_due(RestartPolicy::OnFailure, &state, &settings, NOW), None);
}

#[test]
fn runtime_status_follows_each_rule() {
    let settings = small_settings();
    let running = ModuleState { running: true, ..ModuleState::default() };
    let never_ran = ModuleState::default();
    let table = [
        (RestartPolicy::Never, running, RuntimeStatus::Running),
        (RestartPolicy::Never, unhealthy(), RuntimeStatus::Unhealthy),
        (RestartPolicy::Always, unhealthy(), RuntimeStatus::Unhealthy),
        (RestartPolicy::Never, exited(0), RuntimeStatus::Stopped),
        (RestartPolicy::Never, exited(1), RuntimeStatus::Failed),
        (RestartPolicy::OnFailure, exited(0), RuntimeStatus::Stopped),
        (RestartPolicy::OnFailure, exited(1), RuntimeStatus::Backoff),
        (RestartPolicy::Always, exited(0), RuntimeStatus::Backoff),
        (RestartPolicy::Always, never_ran, RuntimeStatus::Stopped),
    ];
    for (policy, state, expected) in table {
        let status = runtime_status(policy, &state, &settings, NOW);
        assert_eq!(status, expected, "{policy:?} {state:?}");
    }
}

#[test]
fn runtime_status_names_match_iot_edge() {
    let names: Vec<&str> = [
        RuntimeStatus::Unknown,
        RuntimeStatus::Backoff,
        RuntimeStatus::Running,
        RuntimeStatus::Unhealthy,
        RuntimeStatus::Stopped,
        RuntimeStatus::Failed,
        RuntimeStatus::Dead,
    ]
    .iter()
    .map(RuntimeStatus::as_str)
    .collect();
    assert_eq!(names, ["unknown", "backoff", "running", "unhealthy", "stopped", "failed", "dead"]);
}

#[test]
fn counts_reset_after_intensive_care_only() {
    let settings = small_settings();
    let mut state = ModuleState {
        running: true,
        restart_count: 3,
        last_restart_unix_ms: Some(NOW - 6000),
        last_start_unix_ms: Some(NOW - 5000),
        ..ModuleState::default()
    };
    assert!(reset_counts_due(&state, &settings, NOW));
    assert!(!reset_counts_due(&state, &settings, NOW - 1));

    state.healthy = Some(false);
    assert!(!reset_counts_due(&state, &settings, NOW), "unhealthy");
    state.healthy = None;
    state.running = false;
    assert!(!reset_counts_due(&state, &settings, NOW), "not running");
    state.running = true;
    state.last_start_unix_ms = Some(NOW + 10_000);
    assert!(!reset_counts_due(&state, &settings, NOW), "started in the future");
    state.last_start_unix_ms = Some(0);
    state.reset_restart_counts();
    assert!(!reset_counts_due(&state, &settings, NOW), "nothing to reset");
}
