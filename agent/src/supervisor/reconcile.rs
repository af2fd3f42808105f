//! One reconcile: re-read containerd, plan ([`crate::plan::plan`]), execute the commands in
//! order, and book what came of them — a failed command skips the module's remaining commands
//! and is retried after a cool-off, restarts and count resets are booked, modules neither
//! desired nor in containerd are forgotten. [`Agent::next_wakeup`] says when to come back
//! without any input.

use std::collections::HashSet;

use super::bookkeeping::{Module, Override};
use super::lifecycle::CommandError;
use super::status::{self, Description};
use super::Agent;
use crate::containerd::client::now_ms;
use crate::plan::{self, Command, ModuleState};

impl Agent {
    /// Plans against containerd's state and executes the plan.
    pub(super) async fn reconcile(&mut self) {
        self.refresh().await;
        let Some(ctr) = self.ctr.clone() else {
            self.publish();
            return;
        };
        let desired = self.desired();
        let now = now_ms();
        // Images present locally, for imagePullPolicy never.
        let present = self.present_images(&ctr, &desired).await;
        let actual: Vec<ModuleState> = self.modules.values().filter(|m| m.exists).map(|m| m.state.clone()).collect();
        let plan = plan::plan(&desired, &actual, &|image| present.contains(image), &self.settings.restart, now);
        self.planned_at = now;
        for (module, reason) in &plan.reasons {
            let spec = desired.iter().find(|spec| &spec.name == module);
            let state = actual.iter().find(|state| &state.name == module);
            let kind = status::reason_kind(spec, state, spec.is_some_and(|spec| present.contains(&spec.image)));
            let m = self.modules.entry(module.clone()).or_insert_with(|| Module::new(module));
            m.description = Description::new(kind, reason.as_str());
        }
        let mut failed: HashSet<String> = HashSet::new();
        for command in &plan.commands {
            let name = command.module().to_owned();
            if failed.contains(&name) {
                continue;
            }
            if let Some(Override::Failed { retry_at }) = self.modules.get(&name).and_then(|m| m.over.clone()) {
                if retry_at > now && !matches!(command, Command::Stop { .. } | Command::Remove { .. }) {
                    failed.insert(name);
                    continue;
                }
            }
            if let Err(e) = self.execute(&ctr, command).await {
                log::error!("module {name}: {e}");
                failed.insert(name.clone());
                let m = self.modules.entry(name.clone()).or_insert_with(|| Module::new(&name));
                let wait = plan::cool_off(&self.settings.restart, m.failures);
                m.failures = m.failures.saturating_add(1);
                m.over = Some(Override::Failed { retry_at: now_ms() + wait.as_millis() as u64 });
                m.description = Description::new(e.kind(), e.to_string());
                if let CommandError::Containerd(e) = e {
                    if e.unavailable {
                        self.lost(e);
                        break;
                    }
                }
            } else if let Some(m) = self.modules.get_mut(&name) {
                if !matches!(command, Command::Pull { .. }) || m.over == Some(Override::Downloading) {
                    m.over = None;
                }
                m.failures = 0;
            }
        }
        // A failure whose retry came and found nothing left to do is over.
        let commanded: HashSet<&str> = plan.commands.iter().map(Command::module).collect();
        let planned_at = self.planned_at;
        for (name, m) in &mut self.modules {
            if let Some(Override::Failed { retry_at }) = m.over {
                if retry_at <= planned_at && !failed.contains(name) && !commanded.contains(name.as_str()) {
                    m.over = None;
                    m.failures = 0;
                }
            }
        }
        let now = now_ms();
        for name in &plan.restarted {
            if let Some(m) = self.modules.get_mut(name) {
                if !failed.contains(name) {
                    m.state.record_restart(now);
                }
            }
        }
        for name in &plan.reset_counts {
            if let Some(m) = self.modules.get_mut(name) {
                m.state.reset_restart_counts();
            }
        }
        // Modules that are neither desired nor in containerd are gone.
        let desired_names: HashSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        self.modules.retain(|name, m| m.exists || desired_names.contains(name.as_str()));
        self.collect_images(&ctr, &desired).await;
        self.save_bookkeeping();
        self.publish();
    }

    /// When to reconcile again without any input: a restart or count reset coming due, or a
    /// failed command's retry.
    pub(super) fn next_wakeup(&self) -> Option<u64> {
        let actual: Vec<ModuleState> = self.modules.values().filter(|m| m.exists).map(|m| m.state.clone()).collect();
        // From the time the last plan was made: a restart that came due while that plan was
        // being executed (pulls and stops take time) is still ahead of it, so it is not lost.
        let planned = plan::next_wakeup(&self.desired(), &actual, &self.settings.restart, self.planned_at);
        // Retries the last plan could not act on yet, even if due by now (a long pull of
        // another module may have outlasted them).
        let planned_at = self.planned_at;
        let retries = self.modules.values().filter_map(|m| match m.over {
            Some(Override::Failed { retry_at }) if retry_at > planned_at => Some(retry_at),
            _ => None,
        });
        planned.into_iter().chain(retries).min()
    }
}
