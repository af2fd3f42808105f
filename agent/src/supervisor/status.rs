//! Each module's reported status: [`reported`] decides it from typed facts (pure, table-tested
//! below), and [`Agent::publish`] gathers the facts and writes the reported document.
//!
//! A module's `statusDescription` is text for people; what a decision needs from it travels
//! beside it as a [`DescriptionKind`], set where the text is made, so no decision reads text.

use super::bookkeeping::{Module, Override};
use super::report::{self, ReportedStatus};
use super::Agent;
use crate::containerd::client::now_ms;
use crate::manifest::{ImagePullPolicy, ModuleSpec};
use crate::plan::{self, ModuleState, RuntimeStatus};

/// What a module's description tells of, as far as a decision depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum DescriptionKind {
    /// Nothing a decision depends on: a plan's reason, a failed command (that one is
    /// [`Override::Failed`]), a health verdict, or no description at all.
    #[default]
    Info,
    /// The module's container cannot be made: its image is not on the device, and
    /// imagePullPolicy never forbids pulling it (or it could not be resolved locally). IoT
    /// Edge reports such a module `failed`, not `unknown`.
    ImageMissing,
    /// createOptions the container was made without; it stays until the container is made
    /// again (starting the container does not clear it).
    CreateOptionsNotApplied,
}

/// A module's `statusDescription` and its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Description {
    pub(super) text: String,
    pub(super) kind: DescriptionKind,
}

impl Description {
    pub(super) fn new(kind: DescriptionKind, text: impl Into<String>) -> Description {
        Description { text: text.into(), kind }
    }

    /// A description no decision depends on.
    pub(super) fn info(text: impl Into<String>) -> Description {
        Description::new(DescriptionKind::Info, text)
    }
}

/// The kind of the planner's reason for a module. [`plan::plan`] gives a module that needs a
/// container (it has none, or its configuration changed) only a reason, and no command, when
/// imagePullPolicy is never and the image is not on the device; every other reason only informs.
pub(super) fn reason_kind(
    spec: Option<&ModuleSpec>,
    state: Option<&ModuleState>,
    image_present: bool,
) -> DescriptionKind {
    let Some(spec) = spec else { return DescriptionKind::Info };
    let needs_container = state.is_none_or(|state| state.config_hash != plan::config_hash(spec));
    if needs_container && spec.image_pull_policy == ImagePullPolicy::Never && !image_present {
        DescriptionKind::ImageMissing
    } else {
        DescriptionKind::Info
    }
}

/// What one module's reported status is decided from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts<'a> {
    /// Why containerd cannot be asked, when it cannot: then nothing is known of any module.
    pub(super) containerd_error: Option<&'a str>,
    /// Its image is being pulled, or a command on it failed.
    pub(super) over: Option<&'a Override>,
    /// The status by the restart policy ([`plan::runtime_status`]); `None`: not desired.
    pub(super) by_policy: Option<RuntimeStatus>,
    /// A container exists in containerd.
    pub(super) exists: bool,
    /// Its task runs.
    pub(super) running: bool,
    pub(super) description: &'a Description,
}

/// Description of a module that has a container but is not in the deployment.
const REMOVING: &str = "not in the deployment: removing";
/// Description of a module whose image is being pulled.
const DOWNLOADING: &str = "downloading";

/// A module's reported `runtimeStatus` and `statusDescription`. First match wins:
///
/// | containerd | override    | desired | container        | kind         | status            | description |
/// |------------|-------------|---------|------------------|--------------|-------------------|-------------|
/// | error      | any         | any     | any              | any          | `unknown`         | the error   |
/// | up         | downloading | any     | any              | any          | `downloading`     | downloading |
/// | up         | failed      | yes     | exists, running  | any          | by restart policy | its own     |
/// | up         | failed      | any     | any              | any          | `failed`          | its own     |
/// | up         | none        | yes     | exists           | any          | by restart policy | its own     |
/// | up         | none        | no      | exists           | any          | `stopped`         | removing    |
/// | up         | none        | any     | none             | ImageMissing | `failed`          | its own     |
/// | up         | none        | any     | none             | other        | `unknown`         | its own     |
///
/// A failed command with a running container is a recreate whose pull failed: the old
/// container runs on, so its status is the runtime's.
pub(super) fn reported<'a>(facts: &Facts<'a>) -> (ReportedStatus, &'a str) {
    use ReportedStatus::{Downloading, Runtime};
    let own = facts.description.text.as_str();
    if let Some(error) = facts.containerd_error {
        return (Runtime(RuntimeStatus::Unknown), error);
    }
    match (facts.over, facts.by_policy) {
        (Some(Override::Downloading), _) => (Downloading, DOWNLOADING),
        (Some(Override::Failed { .. }), Some(status)) if facts.exists && facts.running => (Runtime(status), own),
        (Some(Override::Failed { .. }), _) => (Runtime(RuntimeStatus::Failed), own),
        (None, Some(status)) if facts.exists => (Runtime(status), own),
        (None, None) if facts.exists => (Runtime(RuntimeStatus::Stopped), REMOVING),
        (None, _) if facts.description.kind == DescriptionKind::ImageMissing => (Runtime(RuntimeStatus::Failed), own),
        (None, _) => (Runtime(RuntimeStatus::Unknown), own),
    }
}

impl Agent {
    /// Recomputes the reported document.
    pub(super) fn publish(&self) {
        let desired = self.desired();
        let now = now_ms();
        let mut names: Vec<&String> = self.modules.keys().collect();
        for spec in &desired {
            if !self.modules.contains_key(&spec.name) {
                names.push(&spec.name);
            }
        }
        names.sort();
        names.dedup();
        let empty = Module::new("");
        let mut reports: Vec<report::ModuleReport<'_>> = Vec::with_capacity(names.len());
        for name in names {
            let m = self.modules.get(name).unwrap_or(&empty);
            let spec = desired.iter().find(|s| &s.name == name);
            let facts = Facts {
                containerd_error: self.ctr_error.as_deref(),
                over: m.over.as_ref(),
                by_policy: spec
                    .map(|spec| plan::runtime_status(spec.restart_policy, &m.state, &self.settings.restart, now)),
                exists: m.exists,
                running: m.state.running,
                description: &m.description,
            };
            let (status, description) = reported(&facts);
            reports.push(report::ModuleReport {
                spec,
                name,
                state: &m.state,
                status,
                description,
                // What runs: the container's image; the desired one until a container exists.
                image: if m.exists || spec.is_none() {
                    m.image.as_str()
                } else {
                    spec.map_or("", |s| s.image.as_str())
                },
            });
        }
        let schema = self.deployment.as_ref().map_or("1.1", |d| d.agent.schema_version.as_str());
        let header = report::Header {
            schema_version: schema,
            desired_version: self.desired_version,
            status_code: self.last_status.0,
            status_description: &self.last_status.1,
            started_unix_ms: self.started_ms,
            containerd_error: self.ctr_error.as_deref(),
        };
        let doc = report::document(&header, &reports);
        if let Ok(mut r) = self.report.lock() {
            *r = doc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DesiredStatus, RestartPolicy};
    use crate::plan::{Command, RestartSettings};
    use std::time::Duration;

    const FAILED: Override = Override::Failed { retry_at: 5_000 };

    /// One row of the decision table: the facts, then what is reported.
    struct Row {
        why: &'static str,
        containerd_error: Option<&'static str>,
        over: Option<Override>,
        by_policy: Option<RuntimeStatus>,
        exists: bool,
        running: bool,
        kind: DescriptionKind,
        status: ReportedStatus,
        description: &'static str,
    }

    /// A desired module with a running container and nothing going on; rows change one thing.
    const RUNNING: Row = Row {
        why: "",
        containerd_error: None,
        over: None,
        by_policy: Some(RuntimeStatus::Running),
        exists: true,
        running: true,
        kind: DescriptionKind::Info,
        status: ReportedStatus::Runtime(RuntimeStatus::Running),
        description: "own",
    };

    #[test]
    fn reported_status_follows_the_decision_table() {
        use ReportedStatus::{Downloading, Runtime};
        let rows = [
            Row { why: "running, as the restart policy says", ..RUNNING },
            Row {
                why: "containerd unreachable: unknown with its error, whatever else is known",
                containerd_error: Some("containerd: no such socket"),
                over: Some(Override::Downloading),
                status: Runtime(RuntimeStatus::Unknown),
                description: "containerd: no such socket",
                ..RUNNING
            },
            Row {
                why: "containerd unreachable beats a missing image",
                containerd_error: Some("gone"),
                exists: false,
                running: false,
                kind: DescriptionKind::ImageMissing,
                status: Runtime(RuntimeStatus::Unknown),
                description: "gone",
                ..RUNNING
            },
            Row {
                why: "pulling: downloading, even with a container running",
                over: Some(Override::Downloading),
                status: Downloading,
                description: "downloading",
                ..RUNNING
            },
            Row {
                why: "pulling a module not yet created",
                over: Some(Override::Downloading),
                exists: false,
                running: false,
                status: Downloading,
                description: "downloading",
                ..RUNNING
            },
            Row {
                why: "a recreate whose pull failed: the old container runs on",
                over: Some(FAILED),
                by_policy: Some(RuntimeStatus::Unhealthy),
                status: Runtime(RuntimeStatus::Unhealthy),
                ..RUNNING
            },
            Row {
                why: "a failed command, container stopped",
                over: Some(FAILED),
                by_policy: Some(RuntimeStatus::Stopped),
                running: false,
                status: Runtime(RuntimeStatus::Failed),
                ..RUNNING
            },
            Row {
                why: "a failed command, no container",
                over: Some(FAILED),
                exists: false,
                running: false,
                status: Runtime(RuntimeStatus::Failed),
                ..RUNNING
            },
            Row {
                why: "a failed command on a module no longer desired, even if it runs",
                over: Some(FAILED),
                by_policy: None,
                status: Runtime(RuntimeStatus::Failed),
                ..RUNNING
            },
            Row {
                why: "exited, restart policy says backoff",
                by_policy: Some(RuntimeStatus::Backoff),
                running: false,
                status: Runtime(RuntimeStatus::Backoff),
                ..RUNNING
            },
            Row {
                why: "a container the deployment no longer wants",
                by_policy: None,
                status: Runtime(RuntimeStatus::Stopped),
                description: "not in the deployment: removing",
                ..RUNNING
            },
            Row {
                why: "a container exists: its image was there, whatever the description says",
                by_policy: Some(RuntimeStatus::Running),
                kind: DescriptionKind::ImageMissing,
                status: Runtime(RuntimeStatus::Running),
                ..RUNNING
            },
            Row {
                why: "no container and its image is not on the device: failed",
                exists: false,
                running: false,
                kind: DescriptionKind::ImageMissing,
                status: Runtime(RuntimeStatus::Failed),
                ..RUNNING
            },
            Row {
                why: "no container, image missing, no longer desired: still failed until forgotten",
                by_policy: None,
                exists: false,
                running: false,
                kind: DescriptionKind::ImageMissing,
                status: Runtime(RuntimeStatus::Failed),
                ..RUNNING
            },
            Row {
                why: "no container yet (about to be created): unknown",
                exists: false,
                running: false,
                status: Runtime(RuntimeStatus::Unknown),
                ..RUNNING
            },
            Row {
                why: "no container, a createOptions note left from the removed one: unknown",
                exists: false,
                running: false,
                kind: DescriptionKind::CreateOptionsNotApplied,
                status: Runtime(RuntimeStatus::Unknown),
                ..RUNNING
            },
        ];
        for row in rows {
            let description = Description::new(row.kind, "own");
            let facts = Facts {
                containerd_error: row.containerd_error,
                over: row.over.as_ref(),
                by_policy: row.by_policy,
                exists: row.exists,
                running: row.running,
                description: &description,
            };
            assert_eq!(reported(&facts), (row.status, row.description), "{}", row.why);
        }
    }

    fn spec(policy: ImagePullPolicy, status: DesiredStatus) -> ModuleSpec {
        ModuleSpec {
            name: "sensor".to_owned(),
            version: "1.0".to_owned(),
            module_type: "docker".to_owned(),
            status,
            restart_policy: RestartPolicy::Always,
            image_pull_policy: policy,
            startup_order: 0,
            env: Vec::new(),
            image: "localhost:5000/sensor:1".to_owned(),
            create_options: "{}".to_owned(),
            digest: None,
        }
    }

    #[test]
    fn reason_kind_says_image_missing_exactly_when_the_planner_leaves_the_module_for_want_of_its_image() {
        let settings = RestartSettings {
            max_restart_count: 3,
            cool_off_unit: Duration::from_millis(100),
            cool_off_max: Duration::from_millis(1000),
            intensive_care: Duration::from_millis(5000),
        };
        let mut missing_cases = 0;
        for policy in [ImagePullPolicy::OnCreate, ImagePullPolicy::Never] {
            for status in [DesiredStatus::Running, DesiredStatus::Stopped] {
                let spec = spec(policy, status);
                let state = |hash: &str, running: bool| ModuleState {
                    name: spec.name.clone(),
                    config_hash: hash.to_owned(),
                    running,
                    ..ModuleState::default()
                };
                let hash = plan::config_hash(&spec);
                let states = [
                    None,
                    Some(state(&hash, false)),
                    Some(state(&hash, true)),
                    Some(state("older", false)),
                    Some(state("older", true)),
                ];
                for state in &states {
                    for present in [false, true] {
                        let actual: Vec<ModuleState> = state.iter().cloned().collect();
                        let plan = plan::plan(std::slice::from_ref(&spec), &actual, &|_| present, &settings, 1_000_000);
                        let creates = plan.commands.iter().any(|c| matches!(c, Command::Create { .. }));
                        let reason = plan.reasons.iter().find(|(m, _)| m == &spec.name).map(|(_, r)| r.as_str());
                        let case = format!("{policy:?} {status:?} {state:?} present {present}: {reason:?}");
                        // The planner's words for it, read here (and only here) so that the
                        // rule follows the planner should the planner change.
                        let missing = reason.is_some_and(|r| r.contains("not on the device"));
                        let kind = reason_kind(Some(&spec), state.as_ref(), present);
                        assert_eq!(kind == DescriptionKind::ImageMissing, missing, "{case}");
                        if missing {
                            assert!(!creates, "{case}");
                            missing_cases += 1;
                        }
                    }
                }
            }
        }
        // imagePullPolicy never, image absent: no container or a changed configuration
        // (running or not), desired running or stopped.
        assert_eq!(missing_cases, 6, "the cases the planner leaves for want of the image");
        assert_eq!(reason_kind(None, None, false), DescriptionKind::Info, "a module not desired");
    }
}
