//! Deployments from the cloud, and the agent's status reported back (`[upstream] protocol =
//! "iothub"`).
//!
//! As on IoT Edge, the deployment lives in two module twins in IoT Hub: `$edgeAgent`'s desired
//! properties (schema, runtime, system modules, modules) and `$edgeHub`'s (routes, store and
//! forward). The cloud side keeps both twins in sync ([`tinyedge_hub::cloud::Cloud::watch`]);
//! whenever either changes, the two are put together as a deployment manifest
//! (`modulesContent.$edgeAgent/$edgeHub.properties.desired`) and applied through the same path
//! as `tinyedge deploy` — validated with IoT Edge's codes, kept on disk (so a reboot without a
//! cloud runs the same modules), handed to the agent (or, with the agent off, to the hub only).
//!
//! The agent's reported properties (`schemaVersion`, `version`, `lastDesiredVersion` = the
//! desired `$version` acted on, `lastDesiredStatus` with IoT Edge's codes, `runtime`,
//! `systemModules`, `modules` with their runtime status) go to `$edgeAgent`'s reported
//! properties as diffs, through the twin store, so they are kept on disk while the cloud is
//! away. Nothing is reported before the `$edgeAgent` twin was first read from the cloud, as
//! edgeAgent does. On shutdown, code 406 "Agent is not running" and every module `unknown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tinyedge_hub::broker::Broker;
use tinyedge_hub::cloud::Cloud;

use crate::deploy::{self, HubTargets};

/// How often the agent's document is compared with what was reported (edgeAgent reports
/// after each reconcile pass, every 5 s).
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// At shutdown, how long the 406 report may take to reach the cloud.
pub const SHUTDOWN_REPORT_WAIT: Duration = Duration::from_secs(3);

/// Applies a deployment manifest: IoT Edge's status code and message.
pub type Deployer = Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = (u16, String)> + Send>> + Send + Sync>;
/// The agent's reported properties document, as of now.
pub type Reporter = Arc<dyn Fn() -> Value + Send + Sync>;

/// The agent's deploy entry when it runs, else the hub-only path (`deploy::without_agent`).
pub fn deployer(agent: Option<&crate::mgmt::AgentApi>, hub: &Arc<HubTargets>) -> Deployer {
    match agent {
        Some(agent) => {
            let deploy = agent.deploy.clone();
            Arc::new(move |body| {
                let answering = deploy(body);
                Box::pin(async move {
                    let response = answering.await;
                    let message = serde_json::from_slice::<Value>(&response.body)
                        .ok()
                        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or_default();
                    (response.status, message)
                })
            })
        }
        None => {
            let hub = hub.clone();
            Arc::new(move |body| {
                let hub = hub.clone();
                Box::pin(async move { smol::unblock(move || deploy::without_agent(&hub, &body)).await })
            })
        }
    }
}

#[derive(Default)]
struct State {
    agent: Option<Value>,
    hub: Option<Value>,
    /// `(agent $version, hub $version)` of the last manifest handed over.
    applied: Option<(u64, u64)>,
    /// The `$edgeAgent` desired `$version` acted on, and the answer.
    acted: Option<(u64, u16, String)>,
    /// The `$edgeAgent` twin was read from the cloud in this process.
    synced: bool,
    shutting_down: bool,
}

/// Deployments from the `$edgeAgent`/`$edgeHub` twins, status back to `$edgeAgent`'s.
pub struct CloudDeploy {
    broker: Arc<Broker>,
    agent_twin: String,
    deployer: Deployer,
    reporter: Option<Reporter>,
    state: Mutex<State>,
    /// One deployment applied at a time; an older one still waiting is skipped.
    deploying: smol::lock::Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CloudDeploy {
    /// Watches the two deployment twins of `device_id` on `cloud` and starts the reporter.
    pub fn start(
        cloud: &Arc<Cloud>,
        broker: Arc<Broker>,
        device_id: &str,
        deployer: Deployer,
        reporter: Option<Reporter>,
    ) -> Arc<CloudDeploy> {
        let me = Arc::new(CloudDeploy {
            broker,
            agent_twin: format!("{device_id}/$edgeAgent"),
            deployer,
            reporter,
            state: Mutex::new(State::default()),
            deploying: smol::lock::Mutex::new(()),
        });
        for id in [format!("{device_id}/$edgeAgent"), format!("{device_id}/$edgeHub")] {
            let weak = Arc::downgrade(&me);
            cloud.watch(
                &id,
                Arc::new(move |id, desired| {
                    if let Some(me) = weak.upgrade() {
                        me.desired(id, desired);
                    }
                }),
            );
        }
        tinyedge_platform::rt::spawn(CloudDeploy::report_loop(Arc::downgrade(&me))).detach();
        me
    }

    /// The desired properties of `id` (one of the two twins) are now `desired`.
    fn desired(self: &Arc<Self>, id: &str, desired: &Value) {
        let manifest = {
            let mut state = lock(&self.state);
            if id == self.agent_twin {
                state.agent = Some(desired.clone());
                state.synced = true;
            } else {
                state.hub = Some(desired.clone());
            }
            let (Some(agent), Some(hub)) = (&state.agent, &state.hub) else { return };
            let versions = (version_of(agent), version_of(hub));
            if state.applied == Some(versions) {
                return;
            }
            if without_read_only(agent).as_object().is_none_or(Map::is_empty) {
                // An empty `$edgeAgent` twin: no deployment was set in the cloud.
                return;
            }
            let body = manifest(agent, hub);
            state.applied = Some(versions);
            (versions, body)
        };
        let me = self.clone();
        tinyedge_platform::rt::spawn(async move {
            let (versions, body) = manifest;
            let _one_at_a_time = me.deploying.lock().await;
            if lock(&me.state).applied != Some(versions) {
                return; // a newer one came meanwhile
            }
            let version = versions.0;
            let (code, message) = (me.deployer)(body).await;
            if code == 200 {
                log::info!("cloud deployment {version} applied");
            } else {
                log::warn!("cloud deployment {version} refused ({code}): {message}; nothing changes");
            }
            lock(&me.state).acted = Some((version, code, message));
            let reporter = me.clone();
            smol::unblock(move || reporter.report_now()).await;
        })
        .detach();
    }

    async fn report_loop(weak: std::sync::Weak<CloudDeploy>) {
        loop {
            smol::Timer::after(REPORT_EVERY).await;
            let Some(me) = weak.upgrade() else { return };
            // The twin store writes (and fsyncs) the patch: off the executor thread.
            smol::unblock(move || me.report_now()).await;
        }
    }

    /// The reported document as it should be now, or `None` before the first sync.
    fn document(&self) -> Option<Value> {
        let state = lock(&self.state);
        if !state.synced {
            return None;
        }
        let mut doc = match &self.reporter {
            Some(reporter) => reporter(),
            None => json!({"schemaVersion": "1.0"}),
        };
        if !doc.is_object() {
            return None;
        }
        doc["version"] = json!({"version": env!("CARGO_PKG_VERSION"), "build": "", "commit": ""});
        if let Some((version, code, message)) = &state.acted {
            doc["lastDesiredVersion"] = json!(version);
            // The agent's own status wins once it runs the deployment (a later failure of a
            // module, say); a refusal is this code's to report.
            if *code != 200 || self.reporter.is_none() {
                doc["lastDesiredStatus"] = json!({"code": code, "description": message});
            }
        }
        if state.shutting_down {
            doc["lastDesiredStatus"] = json!({"code": 406, "description": "Agent is not running"});
            if let Some(modules) = doc.get_mut("modules").and_then(Value::as_object_mut) {
                for module in modules.values_mut() {
                    module["runtimeStatus"] = json!("unknown");
                }
            }
        }
        Some(doc)
    }

    /// Sends the difference between the document and the reported properties, if any.
    fn report_now(&self) {
        let Some(doc) = self.document() else { return };
        let twins = &self.broker.twins;
        let Ok(current) = twins.get(&self.agent_twin) else { return };
        let reported = without_read_only(current.get("reported").unwrap_or(&Value::Null));
        let diff = tinyedge_hub::twin::diff(&reported, &doc);
        if diff.as_object().is_none_or(Map::is_empty) {
            return;
        }
        match twins.patch_reported(&self.agent_twin, diff.to_string().as_bytes()) {
            Ok(_) => {
                if let Some(cloud) = self.broker.cloud() {
                    cloud.twin_used(&self.agent_twin, true);
                }
            }
            Err(error) => log::warn!("agent status not reported: {error}"),
        }
    }

    /// Reports 406 "Agent is not running" and waits (bounded) for the cloud to take it.
    pub fn shutdown(&self) {
        lock(&self.state).shutting_down = true;
        self.report_now();
        let deadline = std::time::Instant::now() + SHUTDOWN_REPORT_WAIT;
        while self.broker.twins.pending_up(&self.agent_twin).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn version_of(desired: &Value) -> u64 {
    desired.get("$version").and_then(Value::as_u64).unwrap_or(0)
}

/// A twin section without `$version` and `$metadata`.
fn without_read_only(section: &Value) -> Value {
    match section {
        Value::Object(members) => Value::Object(
            members.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect(),
        ),
        other => other.clone(),
    }
}

/// The deployment manifest the two twins make.
fn manifest(agent: &Value, hub: &Value) -> Vec<u8> {
    json!({
        "modulesContent": {
            "$edgeAgent": {"properties.desired": without_read_only(agent)},
            "$edgeHub": {"properties.desired": without_read_only(hub)},
        }
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_twins_make_a_manifest_without_their_versions() {
        let agent = json!({"schemaVersion": "1.1", "modules": {}, "$version": 4, "$metadata": {}});
        let hub = json!({"routes": {"r": "FROM /messages/* INTO $upstream"}, "$version": 2});
        let m: Value = serde_json::from_slice(&manifest(&agent, &hub)).expect("json");
        assert_eq!(
            m["modulesContent"]["$edgeAgent"]["properties.desired"],
            json!({"schemaVersion": "1.1", "modules": {}})
        );
        assert_eq!(
            m["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["r"],
            "FROM /messages/* INTO $upstream"
        );
        assert_eq!(version_of(&agent), 4);
        assert_eq!(version_of(&json!({})), 0);
    }
}
