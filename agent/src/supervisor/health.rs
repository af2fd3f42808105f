//! Health checks, as Docker runs them: a module whose createOptions has a `Healthcheck` gets a
//! loop that execs the check in its container every interval ([`health_once`]), kills a check
//! that outlives its timeout, and sends the verdict to the agent task, which counts failures
//! after the start period and marks the module unhealthy after `retries` of them
//! ([`Agent::health_verdict`]). Check output is not kept.

use std::time::Duration;

use super::status::Description;
use super::{Agent, Input, KILL_WAIT};
use crate::container::{ContainerConfig, Healthcheck};
use crate::containerd::client::{now_ms, Containerd};
use crate::containerd::pull::ReadyImage;
use crate::containerd::spec::{self, SpecInputs};
use crate::manifest::ModuleSpec;

/// Prefix of a health check's exec id; the rest is the run's start time and a counter.
const HEALTH_EXEC_PREFIX: &str = "tinyedge-health-";

impl Agent {
    /// Books a health check's result; returns whether the module's health changed.
    pub(super) fn health_verdict(&mut self, module: &str, started_ms: u64, ok: bool, detail: &str) -> bool {
        let Some(m) = self.modules.get_mut(module) else { return false };
        if !m.state.running || m.state.last_start_unix_ms != Some(started_ms) {
            return false; // a verdict about an earlier run
        }
        let Some((check, _)) = &m.health else { return false };
        if ok {
            m.health_failures = 0;
            if m.state.healthy == Some(true) {
                return false;
            }
            log::info!("module {module}: healthy");
            m.state.healthy = Some(true);
            return true;
        }
        if now_ms().saturating_sub(started_ms) < check.start_period.as_millis() as u64 {
            return false; // failures in the start period do not count (Docker)
        }
        m.health_failures += 1;
        log::warn!("module {module}: health check failed ({}/{}): {detail}", m.health_failures, check.retries);
        if m.health_failures >= check.retries.max(1) && m.state.healthy != Some(false) {
            m.state.healthy = Some(false);
            m.description = Description::info(format!("health check failed {} times: {detail}", m.health_failures));
            return true;
        }
        false
    }

    /// The check of a module and the OCI process that runs it, or `None` when it has none.
    pub(super) fn health_plan(
        &self,
        spec: &ModuleSpec,
        config: &ContainerConfig,
        image: &ReadyImage,
    ) -> Option<(Healthcheck, Vec<u8>)> {
        let check = config.healthcheck.clone()?;
        let args = spec::health_args(&check.test)?;
        let inputs = SpecInputs {
            module: &spec.name,
            namespace: &self.settings.namespace,
            image: &image.config,
            devices: &[],
            host_files: &[],
        };
        let process = spec::process(config, &inputs, Some(args)).ok()?;
        Some((check, serde_json::to_vec(&process).ok()?))
    }

    /// Health loops for running modules that have none (adopted at a connect, or whose loop
    /// stopped); a container whose check is not worked out yet gets it from the deployment.
    pub(super) async fn start_missing_health_checks(&mut self) {
        let names: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, m)| m.state.running && m.health_task.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self.modules.get(&name).is_some_and(|m| !m.health_known) {
                if let Some(spec) = self.spec(&name) {
                    if let Ok(Some(image)) = self.resolve_local(&spec).await {
                        if let Ok((config, _)) = self.container_config(&spec) {
                            let health = self.health_plan(&spec, &config, &image);
                            if let Some(m) = self.modules.get_mut(&name) {
                                m.health = health;
                                m.health_known = true;
                            }
                        }
                    }
                }
            }
            self.start_health(&name);
        }
    }

    /// Starts the health loop of a running module that has a health check.
    pub(super) fn start_health(&mut self, name: &str) {
        let Some(ctr) = self.ctr.clone() else { return };
        let tx = self.tx.clone();
        let Some(m) = self.modules.get_mut(name) else { return };
        let Some((check, process)) = m.health.clone() else { return };
        let Some(started_ms) = m.state.last_start_unix_ms else { return };
        let module = name.to_owned();
        m.health_task = Some(tinyedge_platform::rt::spawn(async move {
            static EXECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            loop {
                smol::Timer::after(check.interval.max(Duration::from_millis(100))).await;
                // Unique per process lifetime: a loop cancelled mid-check may leave its exec
                // behind in the shim, and a reused id would then fail as "already exists".
                let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let exec_id = format!("{HEALTH_EXEC_PREFIX}{started_ms}-{n}");
                let Some((ok, detail)) = health_once(&ctr, &module, &exec_id, process.clone(), check.timeout).await
                else {
                    continue; // containerd unreachable: no verdict on the module
                };
                if tx.send(Input::Health { module: module.clone(), started_ms, ok, detail }).await.is_err() {
                    return;
                }
            }
        }));
    }
}

/// One health check: exec, wait with timeout, clean up. `(passed, detail)`, or `None` when
/// containerd could not be asked (that says nothing about the module).
async fn health_once(
    ctr: &Containerd,
    module: &str,
    exec_id: &str,
    process: Vec<u8>,
    timeout: Duration,
) -> Option<(bool, String)> {
    if let Err(e) = ctr.exec(module, exec_id, process).await {
        let _ = ctr.delete_process(module, exec_id).await;
        return (!e.unavailable).then_some((false, e.message));
    }
    let waited = smol::future::or(async { Some(ctr.wait(module, exec_id).await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await;
    let result = match waited {
        Some(Ok(0)) => Some((true, "exit 0".to_owned())),
        Some(Ok(code)) => Some((false, format!("the check exited with code {code}"))),
        Some(Err(e)) if e.unavailable => None,
        Some(Err(e)) => Some((false, e.message)),
        None => {
            let _ = ctr.kill(module, exec_id, 9).await;
            let _ = smol::future::or(async { ctr.wait(module, exec_id).await.ok() }, async {
                smol::Timer::after(KILL_WAIT).await;
                None
            })
            .await;
            Some((false, format!("the check did not finish within {} s", timeout.as_secs_f32())))
        }
    };
    let _ = ctr.delete_process(module, exec_id).await;
    result
}
