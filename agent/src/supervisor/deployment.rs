//! Deployments coming in: validated on the management API's side ([`validate`],
//! [`AgentHandle::deploy`]), then accepted by the agent task ([`Agent::accept`]): kept on disk
//! for restarts, handed to the hub, and given one workload API socket per module.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use smol::channel::Sender;

use super::bookkeeping::Override;
use super::{workload, Agent, Input};
use crate::container;
use crate::image::reference::Reference;
use crate::manifest::{self, Deployment, DeploymentError, DeploymentStatus};

/// How long `tinyedge deploy` waits for the agent to take a validated deployment.
const DEPLOY_REPLY_WAIT: Duration = Duration::from_secs(10);

/// The running agent, as seen from the management API.
#[derive(Clone)]
pub struct AgentHandle {
    tx: Sender<Input>,
    report: Arc<Mutex<Value>>,
    edge_ids_check: Arc<PathBuf>,
}

/// Validates a deployment the way the agent will apply it: the manifest itself (pure, with
/// IoT Edge's codes), then every module's image reference and createOptions.
///
/// # Errors
/// `(code, message)`: 400 naming the field, 412 for a schema version, 417 for no deployment.
pub fn validate(bytes: &[u8], volumes_dir: &Path) -> Result<Deployment, (u16, String)> {
    let deployment = manifest::parse_deployment(bytes).map_err(|e: DeploymentError| {
        // The one-line rendering (escaped path), without its leading code: the answer has it.
        let code = e.status.code();
        let text = e.to_string();
        let text = text
            .strip_prefix(&format!("{code} at "))
            .or_else(|| text.strip_prefix(&format!("{code}: ")))
            .unwrap_or(&text);
        (code, text.to_owned())
    })?;
    for spec in &deployment.agent.modules {
        let at = format!("modulesContent.$edgeAgent.properties.desired.modules.{}", spec.name);
        Reference::parse(&spec.image).map_err(|e| (400, format!("{at}.settings.image: {e}")))?;
        container::translate(&spec.create_options, &spec.env, &[], volumes_dir)
            .map_err(|e| (400, format!("{at}.settings.{e}")))?;
    }
    Ok(deployment)
}

impl AgentHandle {
    /// A handle on the agent task that reads `tx`; `volumes_dir` is where createOptions
    /// volumes are checked against while validating.
    pub(super) fn new(tx: Sender<Input>, report: Arc<Mutex<Value>>, volumes_dir: PathBuf) -> AgentHandle {
        AgentHandle { tx, report, edge_ids_check: Arc::new(volumes_dir) }
    }

    /// Validates and hands a deployment to the agent; answers IoT Edge's status code and a
    /// message. A rejected deployment never reaches the agent, so nothing changes.
    pub async fn deploy(&self, bytes: &[u8]) -> (u16, String) {
        let deployment = match validate(bytes, &self.edge_ids_check) {
            Ok(d) => d,
            Err(answer) => {
                // Reported as edgeAgent reports a bad desired state; nothing else changes.
                let _ = self.tx.send(Input::Rejected(answer.0, answer.1.clone())).await;
                return answer;
            }
        };
        let (reply_tx, reply_rx) = smol::channel::bounded(1);
        if self.tx.send(Input::Deploy(Box::new(deployment), bytes.to_vec(), reply_tx)).await.is_err() {
            return (DeploymentStatus::Failed.code(), "the agent is not running".to_owned());
        }
        // The agent takes inputs between reconciles; a long pull can hold it. The deployment is
        // queued and will be applied, so say so rather than time out.
        smol::future::or(async { reply_rx.recv().await.unwrap_or((500, "the agent stopped before answering".to_owned())) }, async {
            smol::Timer::after(DEPLOY_REPLY_WAIT).await;
            (200, "deployment accepted and queued: the agent is busy (pulling or stopping modules) and applies it next".to_owned())
        })
        .await
    }

    /// The reported properties document as of the last change.
    pub fn report(&self) -> Value {
        self.report.lock().map(|r| r.clone()).unwrap_or(Value::Null)
    }
}

impl Agent {
    /// Makes `deployment` the desired state (already validated).
    pub(super) fn accept(&mut self, deployment: Deployment, raw: &[u8]) {
        (self.hook)(&deployment);
        let path = self.settings.deployment_file();
        let tmp = path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, raw).and_then(|()| std::fs::rename(&tmp, &path)) {
            log::warn!("{}: {e}; this deployment will not survive a restart", path.display());
        }
        self.deployment = Some(deployment);
        self.sync_workloads();
        self.desired_version += 1;
        self.last_status = (200, String::new());
        for m in self.modules.values_mut() {
            // A new deployment gives failed commands a fresh chance, as IoT Edge does.
            if matches!(m.over, Some(Override::Failed { .. })) {
                m.over = None;
                m.failures = 0;
            }
        }
        log::info!("deployment {} accepted: {} module(s)", self.desired_version, self.desired().len());
        self.publish();
    }

    /// One workload API socket per desired module; sockets of modules no longer desired go.
    pub(super) fn sync_workloads(&mut self) {
        let desired: HashSet<String> = self.desired().into_iter().map(|s| s.name).collect();
        let gone: Vec<String> = self.workloads.keys().filter(|m| !desired.contains(*m)).cloned().collect();
        for module in gone {
            self.workloads.remove(&module);
            let _ = std::fs::remove_dir_all(workload::module_dir(&self.settings.dir, &module));
        }
        let (socket_name, _) = workload::container_location(&self.settings.workload_uri);
        for module in desired {
            if self.workloads.contains_key(&module) {
                continue;
            }
            let dir = workload::module_dir(&self.settings.dir, &module);
            let w = workload::ModuleWorkload {
                module: module.clone(),
                key: tinyedge_platform::identity::derive_module_key(&self.settings.device_key, &module),
                trust_bundle: self.settings.trust_bundle.clone(),
            };
            match workload::start(&dir, &socket_name, w) {
                Ok(task) => {
                    self.workloads.insert(module, task);
                }
                Err(e) => log::error!("module {module}: workload API socket in {}: {e}", dir.display()),
            }
        }
    }
}
