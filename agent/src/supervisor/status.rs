//! Each module's reported status, and publishing the reported document ([`Agent::publish`]).

use serde_json::Value;

use super::bookkeeping::{Module, Override};
use super::{report, Agent};
use crate::containerd::client::now_ms;
use crate::plan::{self, RuntimeStatus};

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
        let mut statuses = Vec::new();
        for name in &names {
            let m = self.modules.get(*name).unwrap_or(&empty);
            let spec = desired.iter().find(|s| &&s.name == name);
            let (status, description) = if let Some(e) = &self.ctr_error {
                (RuntimeStatus::Unknown, e.clone())
            } else {
                match (&m.over, spec) {
                    (Some(Override::Downloading), _) => (RuntimeStatus::Unknown, "downloading".to_owned()),
                    // A recreate whose pull failed: the old container runs on.
                    (Some(Override::Failed { .. }), Some(spec)) if m.exists && m.state.running => (
                        plan::runtime_status(spec.restart_policy, &m.state, &self.settings.restart, now),
                        m.description.clone(),
                    ),
                    (Some(Override::Failed { .. }), _) => (RuntimeStatus::Failed, m.description.clone()),
                    (None, Some(spec)) if m.exists => (
                        plan::runtime_status(spec.restart_policy, &m.state, &self.settings.restart, now),
                        m.description.clone(),
                    ),
                    (None, None) if m.exists => (RuntimeStatus::Stopped, "not in the deployment: removing".to_owned()),
                    (None, _) if m.description.contains("not on the device") => {
                        (RuntimeStatus::Failed, m.description.clone())
                    }
                    (None, _) => (RuntimeStatus::Unknown, m.description.clone()),
                }
            };
            statuses.push((name.as_str(), m, spec, status, description));
        }
        let reports: Vec<report::ModuleReport<'_>> = statuses
            .iter()
            .map(|(name, m, spec, status, description)| report::ModuleReport {
                spec: *spec,
                name,
                state: &m.state,
                status: *status,
                description,
                // What runs: the container's image; the desired one until a container exists.
                image: if m.exists || spec.is_none() {
                    m.image.as_str()
                } else {
                    spec.map_or("", |s| s.image.as_str())
                },
            })
            .collect();
        let schema = self.deployment.as_ref().map_or("1.1", |d| d.agent.schema_version.as_str());
        let header = report::Header {
            schema_version: schema,
            desired_version: self.desired_version,
            status_code: self.last_status.0,
            status_description: &self.last_status.1,
            started_unix_ms: self.started_ms,
            containerd_error: self.ctr_error.as_deref(),
        };
        let mut doc = report::document(&header, &reports);
        // "downloading" is a runtimeStatus of its own in IoT Edge's reports.
        for (name, m, ..) in &statuses {
            if m.over == Some(Override::Downloading) && self.ctr_error.is_none() {
                doc["modules"][*name]["runtimeStatus"] = Value::from("downloading");
            }
        }
        if let Ok(mut r) = self.report.lock() {
            *r = doc;
        }
    }
}
