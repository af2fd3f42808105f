//! What a deployment means for the hub: who may connect (and with which key), which routes
//! apply, who has a twin and with which desired properties, and where the last deployment is
//! kept. The runtime applies it at start and [`crate::deploy`] on every new deployment; it
//! imports nothing else of the binary.

use tinyedge_agent::manifest::Deployment;
use tinyedge_hub::auth::{Authenticator, Identity};
use tinyedge_hub::cloud::scope::{self, Scope};
use tinyedge_hub::route::{Route, RouteTable};
use tinyedge_platform::{identity, Config};

/// Where the last deployment applied through `tinyedge deploy` is kept (by the agent, or by
/// the hub alone when the agent is disabled).
pub fn deployed_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("agent").join("deployment.json")
}

/// Where the device scope read from the cloud is cached (`[upstream] protocol = "iothub"`).
pub fn scope_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("scope.json")
}

/// Whether the cloud's device scope is used: an `[upstream]` speaking IoT Hub's contract.
pub fn uses_scope(config: &Config) -> bool {
    config.upstream.as_ref().is_some_and(|u| u.protocol == "iothub")
}

/// Ids the device scope never gives a key to: the edge device itself and the configured
/// `[[devices]]` (the config wins).
pub fn scope_reserved(config: &Config) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    let mut reserved: std::collections::HashSet<String> = config.devices.iter().map(|d| d.id.clone()).collect();
    reserved.insert(config.device_id.clone());
    move |id| reserved.contains(id)
}

/// The device scope cached on disk (empty without one, or when it is not used); why it could
/// not be read, if it could not.
pub fn cached_scope(config: &Config) -> (Scope, Option<String>) {
    if !uses_scope(config) {
        return (Scope::default(), None);
    }
    let path = scope_file(config);
    let read = match tinyedge_platform::fsutil::read_bounded(&path, scope::CACHE_BYTES_MAX as u64) {
        Ok(bytes) => scope::decode_cache(&bytes, &config.device_id),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Scope::default(), None),
        Err(e) => Err(e.to_string()),
    };
    match read {
        Ok((scope, _refreshed)) => (scope.without(scope_reserved(config)), None),
        Err(why) => (Scope::default(), Some(format!("{}: {why}", path.display()))),
    }
}

/// Everyone allowed to connect: the edge device itself, each module of the deployment (key
/// derived from the device key), each configured downstream device, and each device of the
/// cached device scope (unless configured: the config wins).
pub fn authenticator(config: &Config, deployment: Option<&Deployment>, device_key: &[u8]) -> Authenticator {
    let mut auth = Authenticator::new(&config.iothub_hostname, &config.hostname);
    for device in cached_scope(config).0.devices() {
        auth.insert(Identity::device(&device.id), device.primary_key.clone());
    }
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
/// devices, the devices of the cached device scope (while there is room for twins) — and the
/// desired properties the deployment gives each module twin
/// (`modulesContent.{module}.properties.desired`; `{}` for a module without one).
pub fn twin_plan(config: &Config, deployment: Option<&Deployment>) -> (Vec<String>, Vec<(String, serde_json::Value)>) {
    let device = &config.device_id;
    let modules = deployment.map(|d| d.agent.modules.as_slice()).unwrap_or_default();
    let mut identities = vec![device.clone(), format!("{device}/$edgeAgent"), format!("{device}/$edgeHub")];
    identities.extend(modules.iter().map(|module| format!("{device}/{}", module.name)));
    identities.extend(config.devices.iter().map(|leaf| leaf.id.clone()));
    let room = tinyedge_hub::twin::TWINS_MAX.saturating_sub(identities.len());
    identities.extend(cached_scope(config).0.devices().take(room).map(|leaf| leaf.id.clone()));
    // With the cloud's twins (`[upstream] protocol = "iothub"`), a module's desired properties
    // come from its twin in the cloud; a deployment only sets those it states.
    let cloud_twins = config.upstream.as_ref().is_some_and(|u| u.protocol == "iothub");
    let desired = modules
        .iter()
        .filter(|module| {
            !cloud_twins || deployment.is_some_and(|d| d.module_twins.iter().any(|(n, _)| *n == module.name))
        })
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
