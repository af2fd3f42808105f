//! Module environment: createOptions `Env`, its merge with the manifest's `env`, and the
//! variables IoT Edge injects into every module.
//!
//! Precedence, lowest first: createOptions `Env` < manifest `env` < IoT Edge variables. edgeAgent
//! builds the env the same way (`CreateOrUpdateCommand.cs::GetEnvVars` adds its own variables
//! last); putting the IoT Edge variables on top means a deployment cannot make a module talk to
//! the workload API or IoT Hub as somebody else.

use std::collections::HashMap;

use serde_json::Value;

use super::json;
use super::{CreateOptionsError, ENV_ENTRIES_MAX};

/// The workload API version aziot-edged gives edgeAgent (`watchdog.rs::agent_env`), which edgeAgent
/// copies to every module.
pub const WORKLOAD_API_VERSION: &str = "2022-08-03";

/// Who a module is, for [`edge_environment`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeIds {
    /// IoT Hub hostname, e.g. `myhub.azure-devices.net`.
    pub iothub_hostname: String,
    /// Hostname modules connect to for edgeHub. IoT Edge sets it for user modules and, for
    /// edgeAgent and edgeHub, only on a nested device (then the parent's); empty omits it.
    pub gateway_hostname: String,
    pub device_id: String,
    pub module_id: String,
    pub generation_id: String,
    /// e.g. `unix:///var/run/iotedge/workload.sock`.
    pub workload_uri: String,
    /// Normally [`WORKLOAD_API_VERSION`].
    pub api_version: String,
    /// `EdgeHubConnectionString`, the SDKs' fallback when the workload variables are missing.
    pub connection_string: Option<String>,
}

/// The variables IoT Edge sets in a module (reference §5), in the order edgeAgent adds them;
/// module SDKs read these to find edgeHub and the workload API.
#[must_use]
pub fn edge_environment(ids: &EdgeIds) -> Vec<(String, String)> {
    let mut env = vec![
        pair("IOTEDGE_IOTHUBHOSTNAME", &ids.iothub_hostname),
        pair("IOTEDGE_GATEWAYHOSTNAME", &ids.gateway_hostname),
        pair("IOTEDGE_DEVICEID", &ids.device_id),
        pair("IOTEDGE_MODULEID", &ids.module_id),
        pair("IOTEDGE_MODULEGENERATIONID", &ids.generation_id),
        pair("IOTEDGE_WORKLOADURI", &ids.workload_uri),
        pair("IOTEDGE_APIVERSION", &ids.api_version),
        pair("IOTEDGE_AUTHSCHEME", "sasToken"),
    ];
    if ids.gateway_hostname.is_empty() {
        env.retain(|(name, _)| name != "IOTEDGE_GATEWAYHOSTNAME");
    }
    if let Some(connection_string) = &ids.connection_string {
        env.push(pair("EdgeHubConnectionString", connection_string));
    }
    env
}

fn pair(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// createOptions `Env`: an array of `"NAME=value"`. A later entry for the same name wins, as in
/// Docker. A bare `"NAME"` unsets an image variable in Docker; tinyedge does not edit the image's
/// env, so such entries are reported in `unsupported` rather than failing the deployment.
pub(crate) fn parse(
    value: &Value,
    path: &str,
    unsupported: &mut Vec<String>,
) -> Result<Vec<(String, String)>, CreateOptionsError> {
    let items = json::array(value, path, ENV_ENTRIES_MAX)?;
    let mut env = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let item_path = json::index(path, position);
        let entry = json::string(item, &item_path)?;
        let Some((name, variable)) = entry.split_once('=') else {
            unsupported.push(format!(
                "{item_path}: not translated: {} without '=' would unset an image variable",
                json::quote(&entry)
            ));
            continue;
        };
        if name.is_empty() {
            return Err(json::error(&item_path, format!("expected \"NAME=value\", got {}", json::quote(&entry))));
        }
        env.push((name.to_owned(), variable.to_owned()));
    }
    Ok(env)
}

/// Merges the layers, later layers winning; one entry per name, in first-seen order so the
/// result is deterministic and easy to diff between deployments.
pub(crate) fn merge(
    create_env: &[(String, String)],
    manifest_env: &[(String, String)],
    edge_env: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut positions: HashMap<String, usize> = HashMap::new();
    for (name, value) in create_env.iter().chain(manifest_env).chain(edge_env) {
        match positions.get(name).and_then(|&position| merged.get_mut(position)) {
            Some(entry) => entry.1.clone_from(value),
            None => {
                positions.insert(name.clone(), merged.len());
                merged.push((name.clone(), value.clone()));
            }
        }
    }
    merged
}
