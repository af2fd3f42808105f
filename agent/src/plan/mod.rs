//! Reconcile planning: from the modules that exist to the modules the deployment wants.
//!
//! [`plan`] compares the desired [`ModuleSpec`]s with what the container runtime has
//! ([`ModuleState`]) and returns the [`Command`]s that close the gap, with a reason per module
//! for the logs. It is pure: the caller lists the containers, passes the clock in, executes the
//! commands, and plans again when something changes or at [`next_wakeup`]. Planning the state
//! that results from executing a plan yields no commands.
//!
//! Follows edgeAgent's `planner/HealthRestartPlanner.cs` (Azure/iotedge); each rule below names
//! the IoT Edge behaviour it keeps, and where it differs on purpose.
//!
//! # Layout
//! - [`state`]: [`ModuleState`], [`RuntimeStatus`] and the [`config_hash`] stored on containers.
//! - [`restart`]: the restart policy with IoT Edge's backoff and intensive care.

pub mod restart;
#[cfg(test)]
mod restart_tests;
pub mod state;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use restart::{
    cool_off, reset_counts_at, reset_counts_due, restart_due, runtime_status, should_restart, RestartSettings,
};
pub use state::{config_hash, ModuleState, RuntimeStatus};

use log::debug;

use crate::manifest::{DesiredStatus, ImagePullPolicy, ModuleSpec};

/// One step for the caller to execute against the container runtime. A recreate is
/// `Pull` (per policy) + `Stop` (if running) + `Remove` + `Create` + `Start` (if wanted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Pull `image` (the spec's `settings.image`; the executor applies its `digest`).
    Pull { module: String, image: String },
    /// Create the module's container from its desired spec, labelled with its
    /// [`config_hash`]. The created container starts with fresh restart statistics.
    Create { module: String },
    /// Start the container; clears `stopped_by_agent`.
    Start { module: String },
    /// Stop the container; sets `stopped_by_agent`.
    Stop { module: String },
    /// Remove the (stopped) container.
    Remove { module: String },
}

impl Command {
    /// The module the command acts on.
    pub fn module(&self) -> &str {
        match self {
            Self::Pull { module, .. }
            | Self::Create { module }
            | Self::Start { module }
            | Self::Stop { module }
            | Self::Remove { module } => module,
        }
    }
}

/// What to do now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Commands in execution order (see [`plan`] for the order).
    pub commands: Vec<Command>,
    /// `(module, reason)` for every module that gets commands or is deliberately left alone
    /// (backoff, failed, image missing), for the logs and `statusDescription`.
    pub reasons: Vec<(String, String)>,
    /// Modules whose `Start` is a restart by the restart policy: after it succeeds the caller
    /// books it with [`ModuleState::record_restart`] (IoT Edge: `restartCount + 1`,
    /// `lastRestartTime = now`).
    pub restarted: Vec<String>,
    /// Modules that ran long enough to have their restart statistics cleared
    /// ([`ModuleState::reset_restart_counts`]).
    pub reset_counts: Vec<String>,
}

/// What one desired module needs; assembled into phases by [`plan`].
#[derive(Debug, Default)]
struct Decision {
    stop: bool,
    remove: bool,
    pull: bool,
    create: bool,
    start: bool,
    restart: bool,
    reset_counts: bool,
    reason: Option<String>,
}

/// Plans the commands that take `actual` to `desired`.
///
/// Rules, per module:
/// - In `actual` but not `desired` → `Stop` (if running) + `Remove` (IoT Edge's "removed
///   modules"). These come first, so names, ports and memory are free before anything new.
/// - In `desired` but not `actual` → `Pull` (imagePullPolicy `on-create`), `Create`, and
///   `Start` if desired running. With `never`, an image that `image_present` says is absent
///   means no `Create`, only a reason: the caller reports the module failed, as IoT Edge does
///   when the create fails for want of the image.
/// - [`config_hash`] differs → recreate (IoT Edge's "updated modules"). Only image,
///   createOptions, env and digest count; a change of status, restartPolicy, startupOrder or
///   version is applied without recreating. With pull policy `never` and the new image absent
///   the old container is left as it is (better than IoT Edge, which removes it first).
/// - Desired stopped and running → `Stop`.
/// - Desired running and not running → `Start` if it never ran or the agent stopped it
///   (a deployment that switches status back to running); otherwise only if the restart
///   policy wants it and [`restart_due`] has come (IoT Edge restarts only `backoff` modules,
///   once their cool-off has passed). Not yet due → nothing now; see [`next_wakeup`].
/// - Running but unhealthy, policy on-unhealthy or always, restart due → `Stop` + `Start`
///   (IoT Edge never detects unhealthy; see [`restart`]).
/// - Running long enough → its restart counts are reset (IoT Edge's intensive care).
///
/// Order: removals (by name); then every `Pull` in ascending (startupOrder, name), so a module
/// being recreated runs on while its new image downloads (IoT Edge removes it first); then other
/// `Stop`s and `Remove`s in reverse (startupOrder, name); then per module in ascending
/// (startupOrder, name) its `Create`, `Start` (IoT Edge: lower startupOrder starts first;
/// stopping in reverse keeps dependencies up longest).
///
/// Cost: O(desired × actual) name lookups, fine for the tens of modules a gateway runs.
pub fn plan(
    desired: &[ModuleSpec],
    actual: &[ModuleState],
    image_present: &dyn Fn(&str) -> bool,
    settings: &RestartSettings,
    now_unix_ms: u64,
) -> Plan {
    let mut result = Plan::default();

    let mut removed: Vec<&ModuleState> =
        actual.iter().filter(|state| !desired.iter().any(|spec| spec.name == state.name)).collect();
    removed.sort_by(|left, right| left.name.cmp(&right.name));
    for state in removed {
        if state.running {
            result.commands.push(stop(&state.name));
        }
        result.commands.push(remove(&state.name));
        result.reasons.push((state.name.clone(), "not in the deployment: removing".to_owned()));
    }

    let decisions: Vec<(&ModuleSpec, Decision)> = startup_ordered(desired)
        .into_iter()
        .map(|spec| {
            let state = actual.iter().find(|state| state.name == spec.name);
            (spec, decide(spec, state, image_present, settings, now_unix_ms))
        })
        .collect();

    // Pulls before any stop: a module being recreated keeps running while its new image
    // downloads, and keeps running if the pull fails (the executor skips a module's remaining
    // commands after one fails).
    for (spec, decision) in &decisions {
        if decision.pull {
            result.commands.push(Command::Pull { module: spec.name.clone(), image: spec.image.clone() });
        }
    }
    for (spec, decision) in decisions.iter().rev() {
        if decision.stop {
            result.commands.push(stop(&spec.name));
        }
    }
    for (spec, decision) in decisions.iter().rev() {
        if decision.remove {
            result.commands.push(remove(&spec.name));
        }
    }
    for (spec, decision) in decisions {
        let module = spec.name.clone();
        if decision.create {
            result.commands.push(Command::Create { module: module.clone() });
        }
        if decision.start {
            result.commands.push(Command::Start { module: module.clone() });
        }
        if decision.restart {
            result.restarted.push(module.clone());
        }
        if decision.reset_counts {
            result.reset_counts.push(module.clone());
        }
        if let Some(reason) = decision.reason {
            result.reasons.push((module, reason));
        }
    }
    for (module, reason) in &result.reasons {
        debug!("plan: {module}: {reason}");
    }
    result
}

/// The earliest time after `now` at which planning again may do something without any other
/// change: a restart coming due after its cool-off, or restart counts coming due for a reset.
/// Due times at or before `now` are what [`plan`] acts on, so they are not repeated here.
/// `None` when nothing is waiting on the clock.
pub fn next_wakeup(
    desired: &[ModuleSpec],
    actual: &[ModuleState],
    settings: &RestartSettings,
    now_unix_ms: u64,
) -> Option<u64> {
    desired
        .iter()
        .filter(|spec| spec.status == DesiredStatus::Running)
        .filter_map(|spec| {
            let state = actual.iter().find(|state| state.name == spec.name)?;
            if state.config_hash != config_hash(spec) {
                return None;
            }
            let restart = restart_due(spec.restart_policy, state, settings, now_unix_ms);
            let reset = reset_counts_at(state, settings);
            [restart, reset].into_iter().flatten().filter(|due| *due > now_unix_ms).min()
        })
        .min()
}

/// `desired` in start order: ascending startupOrder, ties by name so the plan is deterministic.
fn startup_ordered(desired: &[ModuleSpec]) -> Vec<&ModuleSpec> {
    let mut ordered: Vec<&ModuleSpec> = desired.iter().collect();
    ordered.sort_by(|left, right| (left.startup_order, &left.name).cmp(&(right.startup_order, &right.name)));
    ordered
}

fn decide(
    spec: &ModuleSpec,
    state: Option<&ModuleState>,
    image_present: &dyn Fn(&str) -> bool,
    settings: &RestartSettings,
    now_unix_ms: u64,
) -> Decision {
    let Some(state) = state else {
        return create(spec, image_present, "new module");
    };
    if state.config_hash != config_hash(spec) {
        let mut decision = create(spec, image_present, "configuration changed: recreating");
        if decision.create {
            decision.stop = state.running;
            decision.remove = true;
        }
        return decision;
    }
    match (spec.status, state.running) {
        (DesiredStatus::Stopped, true) => Decision {
            stop: true,
            reason: Some("desired status is stopped: stopping".to_owned()),
            ..Decision::default()
        },
        (DesiredStatus::Stopped, false) => Decision::default(),
        (DesiredStatus::Running, false) => decide_stopped(spec, state, settings, now_unix_ms),
        (DesiredStatus::Running, true) => decide_running(spec, state, settings, now_unix_ms),
    }
}

/// A new module, or the create half of a recreate.
fn create(spec: &ModuleSpec, image_present: &dyn Fn(&str) -> bool, why: &str) -> Decision {
    let pull = spec.image_pull_policy == ImagePullPolicy::OnCreate;
    if !pull && !image_present(&spec.image) {
        return Decision {
            reason: Some(format!("{why}, but image {} is not on the device and imagePullPolicy is never", spec.image)),
            ..Decision::default()
        };
    }
    Decision {
        pull,
        create: true,
        start: spec.status == DesiredStatus::Running,
        reason: Some(why.to_owned()),
        ..Decision::default()
    }
}

/// Desired running, container not running.
fn decide_stopped(spec: &ModuleSpec, state: &ModuleState, settings: &RestartSettings, now_unix_ms: u64) -> Decision {
    if state.stopped_by_agent || !state.has_exited() {
        return Decision {
            start: true,
            reason: Some("desired status is running: starting".to_owned()),
            ..Decision::default()
        };
    }
    let policy = spec.restart_policy;
    let exit = state.exit_code.map_or_else(|| "unknown".to_owned(), |code| code.to_string());
    let reason = match restart_due(policy, state, settings, now_unix_ms) {
        Some(due) if due <= now_unix_ms => {
            return Decision {
                start: true,
                restart: true,
                reason: Some(format!(
                    "exited with code {exit}: restart {} of {} (restartPolicy {})",
                    state.restart_count.saturating_add(1),
                    settings.max_restart_count,
                    policy.as_str()
                )),
                ..Decision::default()
            }
        }
        Some(due) => format!("exited with code {exit}: backoff, restart due at {due} ms"),
        None if should_restart(policy, state) => {
            format!("exited with code {exit}: failed after {} restarts", state.restart_count)
        }
        None => format!("exited with code {exit}: restartPolicy {} does not restart it", policy.as_str()),
    };
    Decision { reason: Some(reason), ..Decision::default() }
}

/// Desired running, container running: restart it if unhealthy and due, or reset its counts.
fn decide_running(spec: &ModuleSpec, state: &ModuleState, settings: &RestartSettings, now_unix_ms: u64) -> Decision {
    let policy = spec.restart_policy;
    if !should_restart(policy, state) {
        return Decision { reset_counts: reset_counts_due(state, settings, now_unix_ms), ..Decision::default() };
    }
    let reason = match restart_due(policy, state, settings, now_unix_ms) {
        Some(due) if due <= now_unix_ms => {
            return Decision {
                stop: true,
                start: true,
                restart: true,
                reason: Some(format!(
                    "unhealthy: restart {} of {} (restartPolicy {})",
                    state.restart_count.saturating_add(1),
                    settings.max_restart_count,
                    policy.as_str()
                )),
                ..Decision::default()
            }
        }
        Some(due) => format!("unhealthy: backoff, restart due at {due} ms"),
        None => format!("unhealthy: restart budget spent after {} restarts", state.restart_count),
    };
    Decision { reason: Some(reason), ..Decision::default() }
}

fn stop(module: &str) -> Command {
    Command::Stop { module: module.to_owned() }
}

fn remove(module: &str) -> Command {
    Command::Remove { module: module.to_owned() }
}
