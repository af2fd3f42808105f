//! What a deployment changes in the hub, and applying one without the agent.
//!
//! With the agent enabled, the agent validates a deployment (modules, images, createOptions),
//! and calls [`apply_to_hub`] when it accepts it (its deployment hook). With the agent
//! disabled, [`without_agent`] validates the manifest itself with IoT Edge's codes, applies it
//! to the hub and keeps it for the next start — so `tinyedge deploy` changes routes,
//! identities and twins on a gateway that runs no modules.

use std::sync::{Arc, Mutex, PoisonError};

use tinyedge_agent::manifest::{self, Deployment};
use tinyedge_hub::broker::Broker;
use tinyedge_platform::Config;

use crate::plan;

/// What [`apply_to_hub`] needs: the config (identities of the device and its leaf devices),
/// the device key (module keys derive from it) and the hub.
pub struct HubTargets {
    pub config: Config,
    pub device_key: Vec<u8>,
    pub broker: Arc<Broker>,
    /// Agent-less deployments one at a time: applied and saved in the same order.
    applying: Mutex<()>,
}

impl HubTargets {
    pub fn new(config: Config, device_key: Vec<u8>, broker: Arc<Broker>) -> HubTargets {
        HubTargets { config, device_key, broker, applying: Mutex::new(()) }
    }
}

/// Applies an accepted deployment to the hub: its `$edgeHub` routes, and its modules as the
/// identities allowed to connect (with keys derived from the device key), and its twins: who
/// has one, and each module twin's desired properties
/// (`modulesContent.{module}.properties.desired`; subscribed clients get the diff).
pub fn apply_to_hub(hub: &HubTargets, deployment: &Deployment) {
    hub.broker.set_routes(plan::routes(Some(deployment)));
    hub.broker.set_authenticator(plan::authenticator(&hub.config, Some(deployment), &hub.device_key));
    let (identities, desired) = plan::twin_plan(&hub.config, Some(deployment));
    hub.broker.apply_twins(&identities, &desired);
}

/// `PUT /deployment` with the agent disabled: IoT Edge's code and message. The manifest is
/// validated (400 naming the field, 412 schemaVersion, 417 no deployment), applied to the hub,
/// and saved where the agent keeps its last deployment, so the next start uses it. Modules
/// are not run, so their images and createOptions are not checked.
pub fn without_agent(hub: &HubTargets, body: &[u8]) -> (u16, String) {
    let deployment = match manifest::parse_deployment(body) {
        Ok(deployment) => deployment,
        Err(e) if e.path.is_empty() => return (e.status.code(), e.message),
        Err(e) => return (e.status.code(), format!("{}: {}", e.path, e.message)),
    };
    let _one_at_a_time = hub.applying.lock().unwrap_or_else(PoisonError::into_inner);
    apply_to_hub(hub, &deployment);
    let saved = save(&plan::deployed_file(&hub.config), body);
    let modules = deployment.agent.modules.len();
    log::info!("deployment applied to the hub ({modules} module identities); the agent is disabled");
    match saved {
        Ok(()) => (200, format!("deployment applied to the hub: routes and {modules} module identities (the agent is disabled: no modules are run)")),
        Err(e) => {
            log::warn!("{e}; this deployment will not survive a restart");
            (200, format!("deployment applied to the hub, but not saved ({e}): a restart goes back to the previous one"))
        }
    }
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it).
fn save(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let tmp = path.with_extension("json.tmp");
    // fsync the file before the rename and the directory after it: an answered deployment
    // survives a power cut.
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(failed)
}
