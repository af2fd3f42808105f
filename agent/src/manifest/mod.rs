//! Deployment manifests: parse and validate what IoT Hub (or a file) says should run.
//!
//! [`parse_deployment`] turns manifest bytes into a [`Deployment`] or a [`DeploymentError`] that
//! carries the status code edgeAgent would report (`lastDesiredStatus.code`), the dotted JSON
//! path of the offending field and a message that says what to fix, e.g.
//!
//! ```text
//! 400 at modulesContent.$edgeAgent.properties.desired.modules.tempSensor.restartPolicy: expected one of "never", "on-failure", "on-unhealthy", "always", got "sometimes"
//! ```
//!
//! Two shapes are accepted, because tools write both:
//! - the full manifest, `{"modulesContent": {"$edgeAgent": {"properties.desired": …}, …}}`, as in
//!   IoT Edge's templates and `az iot edge deployment create --content`;
//! - the bare content of `modulesContent`, `{"$edgeAgent": …, "$edgeHub": …, "<module>": …}`,
//!   which `az iot edge set-modules --content` and some tools also use.
//!
//! Rules follow IoT Edge's C# model (each file cites its sources in Azure/iotedge) and SchemaStore's
//! `azure-iot-edge-deployment-2.0.json` name patterns. Unknown fields are ignored, as IoT Hub
//! adds some (`$version`, `$metadata`); known fields of the wrong type are a 400. A `null` field
//! counts as absent: that is how a twin patch deletes a property. Field names are
//! case-sensitive, as twin keys are. Parsing is pure and never panics; the input size is capped
//! before parsing and serde_json caps nesting at 128 levels.
//!
//! # Layout
//! - [`error`]: [`DeploymentStatus`] codes and [`DeploymentError`].
//! - `json`: typed reads from `serde_json::Value` that name the JSON path of every failure.
//! - `names`: name patterns for modules, routes, registries and environment variables.
//! - `schema_version`: the `schemaVersion` checks of both twins (412 on mismatch).
//! - [`agent`]: `$edgeAgent`: runtime, registry credentials, system and user modules.
//! - [`module`]: one module: status, policies, startup order, env.
//! - `settings`: a module's image, chunked create options and digest.
//! - [`hub`]: `$edgeHub`: routes and store-and-forward settings.

pub mod agent;
pub mod error;
pub mod hub;
mod json;
pub mod module;
mod names;
mod schema_version;
mod settings;
#[cfg(test)]
mod tests;

pub use agent::{AgentDesired, RegistryCredential};
pub use error::{DeploymentError, DeploymentStatus};
pub use hub::{HubDesired, RouteSpec, StoreAndForward, DEFAULT_TIME_TO_LIVE_SECS};
pub use module::{DesiredStatus, ImagePullPolicy, ModuleSpec, RestartPolicy, DEFAULT_STARTUP_ORDER};

use log::debug;
use serde_json::Value;

use json::{as_object, field, Object, Path};
use names::check_module_name;

/// Largest manifest accepted, in bytes. IoT Hub caps each twin's desired properties at 32 KiB,
/// so even a layered deployment with many module twins is far below 1 MiB; the cap keeps a
/// hostile file from costing more than a moment of parsing.
pub const DEPLOYMENT_BYTES_MAX: usize = 1024 * 1024;

const MODULES_CONTENT: &str = "modulesContent";
const AGENT_TWIN: &str = "$edgeAgent";
const HUB_TWIN: &str = "$edgeHub";
const DESIRED: &str = "properties.desired";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A validated deployment: what the agent should run and how the hub should route.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// `$edgeAgent` desired properties.
    pub agent: AgentDesired,
    /// `$edgeHub` desired properties; defaults (no routes) when the manifest has none.
    pub hub: HubDesired,
    /// The desired properties of every other entry of `modulesContent` (module twins), sorted
    /// by module name. They are passed to the modules as-is.
    pub module_twins: Vec<(String, Value)>,
}

impl Deployment {
    /// The user module called `name`; system modules are in `agent.system_modules`.
    pub fn module(&self, name: &str) -> Option<&ModuleSpec> {
        self.agent.modules.iter().find(|module| module.name == name)
    }
}

/// Parses and validates a deployment manifest (either shape; see the module docs).
///
/// Errors: 400 for a document over [`DEPLOYMENT_BYTES_MAX`], invalid JSON (with serde_json's
/// line and column) or any malformed field; 412 for an unsupported `schemaVersion` (or a
/// schema-1.0 `startupOrder`); 417 when there is no deployment at all (empty document, no
/// `$edgeAgent`, or empty `$edgeAgent` desired properties).
pub fn parse_deployment(json: &[u8]) -> Result<Deployment, DeploymentError> {
    if json.len() > DEPLOYMENT_BYTES_MAX {
        return Err(DeploymentError::bad_request(
            String::new(),
            format!("manifest is {} bytes; the limit is {DEPLOYMENT_BYTES_MAX} bytes", json.len()),
        ));
    }
    // Windows tools (PowerShell's Out-File, Notepad) may start a file with a UTF-8 byte order
    // mark, which is not JSON; dropping it costs nothing and spares users a baffling error.
    let json = json.strip_prefix(UTF8_BOM).unwrap_or(json);
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(DeploymentError::empty(String::new(), "the deployment is empty"));
    }
    let document: Value = serde_json::from_slice(json)
        .map_err(|error| DeploymentError::bad_request(String::new(), format!("invalid JSON: {error}")))?;
    let root = Path::root();
    let top = as_object(&document, &root)?;

    let wrapped_path = root.push(MODULES_CONTENT);
    let (content, content_path) = match field(top, MODULES_CONTENT) {
        Some(_) if top.contains_key(AGENT_TWIN) => {
            return Err(root
                .push(AGENT_TWIN)
                .bad("the document has both modulesContent and a bare $edgeAgent; use one shape"))
        }
        Some(content) => (as_object(content, &wrapped_path)?, wrapped_path),
        None => (top, root),
    };

    let agent_path = content_path.push(AGENT_TWIN);
    let agent_desired = twin_desired(content, AGENT_TWIN, &content_path)?.ok_or_else(|| {
        DeploymentError::empty(agent_path.render(), "no $edgeAgent desired properties: this device has no deployment")
    })?;
    let agent = agent::parse(agent_desired, &agent_path.push(DESIRED))?;

    let hub_path = content_path.push(HUB_TWIN);
    let hub = match twin_desired(content, HUB_TWIN, &content_path)? {
        Some(desired) => hub::parse(desired, &hub_path.push(DESIRED))?,
        None => HubDesired::default(),
    };

    let module_twins = module_twins(content, &content_path)?;
    debug!(
        "parsed deployment: {} user modules, {} routes, {} module twins",
        agent.modules.len(),
        hub.routes.len(),
        module_twins.len()
    );
    Ok(Deployment { agent, hub, module_twins })
}

/// The `properties.desired` object of the twin `name`; `None` when the twin, its desired
/// properties, or every non-metadata key in them is absent (edgeAgent's `ConfigEmptyException`
/// fires on an empty twin; IoT Hub's `$version`/`$metadata` do not count).
fn twin_desired<'v>(content: &'v Object, name: &str, path: &Path) -> Result<Option<&'v Object>, DeploymentError> {
    let Some(twin) = field(content, name) else {
        return Ok(None);
    };
    let twin_path = path.push(name);
    let Some(desired) = field(as_object(twin, &twin_path)?, DESIRED) else {
        return Ok(None);
    };
    let desired = as_object(desired, &twin_path.push(DESIRED))?;
    let has_content = desired.keys().any(|key| !key.starts_with('$'));
    Ok(has_content.then_some(desired))
}

/// Every entry of `modulesContent` other than `$edgeAgent` and `$edgeHub`: `{name:
/// {"properties.desired": {...}}}`. Other `$` keys (template markers such as
/// `$schema-template`) are not module twins and are skipped.
fn module_twins(content: &Object, path: &Path) -> Result<Vec<(String, Value)>, DeploymentError> {
    let mut twins = Vec::new();
    for (name, twin) in content {
        if name.starts_with('$') || twin.is_null() {
            continue;
        }
        let twin_path = path.push(name);
        check_module_name(name).map_err(|why| twin_path.bad(why))?;
        let twin = as_object(twin, &twin_path)?;
        let desired = json::required(twin, DESIRED, &twin_path)?;
        as_object(desired, &twin_path.push(DESIRED))?;
        twins.push((name.clone(), desired.clone()));
    }
    twins.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(twins)
}
