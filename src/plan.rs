//! What a deployment means for the hub: who may connect (and with which key), which routes
//! apply, who has a twin and with which desired properties, and where the last deployment is
//! kept. The runtime applies it at start and [`crate::deploy`] on every new deployment; it
//! imports nothing else of the binary.

use tinyedge_agent::manifest::Deployment;
use tinyedge_hub::auth::{Authenticator, Identity};
use tinyedge_hub::route::{Route, RouteTable};
use tinyedge_platform::{identity, Config};

/// Where the last deployment applied through `tinyedge deploy` is kept (by the agent, or by
/// the hub alone when the agent is disabled).
pub fn deployed_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("agent").join("deployment.json")
}

/// Everyone allowed to connect: the edge device itself, each module of the deployment (key
/// derived from the device key), and each configured downstream device.
pub fn authenticator(config: &Config, deployment: Option<&Deployment>, device_key: &[u8]) -> Authenticator {
    let mut auth = Authenticator::new(&config.iothub_hostname, &config.hostname);
    auth.insert(Identity::device(&config.device_id), device_key.to_vec());
    for module in deployment.map(|d| d.agent.modules.as_slice()).unwrap_or_default() {
        auth.insert(
            Identity::module(&config.device_id, &module.name),
            identity::derive_module_key(device_key, &module.name),
        );
    }
    for device in &config.devices {
        auth.insert(Identity::device(&device.id), device.key.clone());
    }
    auth
}

/// Who has a twin — the edge device, its system and user modules (`d/m`), the configured leaf
/// devices — and the desired properties the deployment gives each module twin
/// (`modulesContent.{module}.properties.desired`; `{}` for a module without one).
pub fn twin_plan(config: &Config, deployment: Option<&Deployment>) -> (Vec<String>, Vec<(String, serde_json::Value)>) {
    let device = &config.device_id;
    let modules = deployment.map(|d| d.agent.modules.as_slice()).unwrap_or_default();
    let mut identities = vec![device.clone(), format!("{device}/$edgeAgent"), format!("{device}/$edgeHub")];
    identities.extend(modules.iter().map(|module| format!("{device}/{}", module.name)));
    identities.extend(config.devices.iter().map(|leaf| leaf.id.clone()));
    // With the cloud's twins (`[upstream] protocol = "iothub"`), a module's desired properties
    // come from its twin in the cloud; a deployment only sets those it states.
    let cloud_twins = config.upstream.as_ref().is_some_and(|u| u.protocol == "iothub");
    let desired = modules
        .iter()
        .filter(|module| !cloud_twins || deployment.is_some_and(|d| d.module_twins.iter().any(|(n, _)| *n == module.name)))
        .map(|module| {
            let twin = deployment
                .and_then(|d| d.module_twins.iter().find(|(name, _)| *name == module.name))
                .map_or_else(|| serde_json::json!({}), |(_, desired)| desired.clone());
            (format!("{device}/{}", module.name), twin)
        })
        .collect();
    (identities, desired)
}

/// Compiles the deployment's routes; a bad route is logged and skipped, the rest apply.
pub fn routes(deployment: Option<&Deployment>) -> RouteTable {
    let mut compiled = Vec::new();
    for spec in deployment.map(|d| d.hub.routes.as_slice()).unwrap_or_default() {
        match Route::parse(&spec.name, &spec.route, spec.priority, spec.time_to_live_secs) {
            Ok(route) => compiled.push(route),
            Err(e) => log::error!("{e}; this route is ignored, the others apply"),
        }
    }
    RouteTable::new(compiled)
}
