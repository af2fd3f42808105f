//! Test fixtures for the planner tests: specs, states, command builders and a tiny executor
//! that applies a plan to a list of module states the way the real one would.

use std::time::Duration;

use super::state::config_hash;
use super::{plan, Command, ModuleState, Plan, RestartSettings};
use crate::manifest::{DesiredStatus, ImagePullPolicy, ModuleSpec, RestartPolicy};
pub(super) const NOW: u64 = 1_000_000;

pub(super) fn settings() -> RestartSettings {
    RestartSettings {
        max_restart_count: 3,
        cool_off_unit: Duration::from_millis(100),
        cool_off_max: Duration::from_millis(1000),
        intensive_care: Duration::from_millis(5000),
    }
}

pub(super) fn spec(name: &str, startup_order: u32) -> ModuleSpec {
    ModuleSpec {
        name: name.to_owned(),
        version: "1.0".to_owned(),
        module_type: "docker".to_owned(),
        status: DesiredStatus::Running,
        restart_policy: RestartPolicy::OnFailure,
        image_pull_policy: ImagePullPolicy::OnCreate,
        startup_order,
        env: vec![("LEVEL".to_owned(), "info".to_owned())],
        image: format!("example.azurecr.io/{name}:1"),
        create_options: "{}".to_owned(),
        digest: None,
    }
}

/// A running container created from `spec`.
pub(super) fn running(spec: &ModuleSpec) -> ModuleState {
    ModuleState {
        name: spec.name.clone(),
        config_hash: config_hash(spec),
        image: spec.image.clone(),
        running: true,
        last_start_unix_ms: Some(NOW - 1000),
        ..ModuleState::default()
    }
}

pub(super) fn always_present(_image: &str) -> bool {
    true
}

pub(super) fn never_present(_image: &str) -> bool {
    false
}

pub(super) fn plan_now(desired: &[ModuleSpec], actual: &[ModuleState]) -> Plan {
    plan(desired, actual, &always_present, &settings(), NOW)
}

pub(super) fn pull(module: &str, image: &str) -> Command {
    Command::Pull { module: module.to_owned(), image: image.to_owned() }
}
pub(super) fn create(module: &str) -> Command {
    Command::Create { module: module.to_owned() }
}
pub(super) fn start(module: &str) -> Command {
    Command::Start { module: module.to_owned() }
}
pub(super) fn stop(module: &str) -> Command {
    Command::Stop { module: module.to_owned() }
}
pub(super) fn remove(module: &str) -> Command {
    Command::Remove { module: module.to_owned() }
}

/// Applies a plan the way a well-behaved executor would, at time `now`.
pub(super) fn execute(plan: &Plan, desired: &[ModuleSpec], actual: &mut Vec<ModuleState>, now: u64) {
    for command in &plan.commands {
        let name = command.module();
        match command {
            Command::Pull { .. } => {}
            Command::Create { .. } => {
                let Some(spec) = desired.iter().find(|spec| spec.name == name) else {
                    continue;
                };
                actual.push(ModuleState {
                    name: name.to_owned(),
                    config_hash: config_hash(spec),
                    image: spec.image.clone(),
                    ..ModuleState::default()
                });
            }
            Command::Remove { .. } => actual.retain(|state| state.name != name),
            Command::Start { .. } | Command::Stop { .. } => {
                let Some(state) = actual.iter_mut().find(|state| state.name == name) else {
                    continue;
                };
                if matches!(command, Command::Start { .. }) {
                    state.running = true;
                    state.healthy = None;
                    state.stopped_by_agent = false;
                    state.last_start_unix_ms = Some(now);
                } else {
                    state.running = false;
                    state.stopped_by_agent = true;
                    state.exit_code = Some(143);
                    state.last_exit_unix_ms = Some(now);
                }
            }
        }
    }
    for state in actual.iter_mut() {
        if plan.restarted.contains(&state.name) {
            state.record_restart(now);
        }
        if plan.reset_counts.contains(&state.name) {
            state.reset_restart_counts();
        }
    }
}
