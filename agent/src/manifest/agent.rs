//! `$edgeAgent` desired properties: schema version, runtime settings, system and user modules.
//!
//! Sources (Azure/iotedge): `edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Core/DeploymentConfig.cs`
//! (`runtime` and `systemModules` required, `modules` optional), `Agent.Core/SystemModules.cs`
//! (each system module optional), `Agent.Docker/DockerRuntimeConfig.cs` and
//! `Agent.Docker/RegistryCredentials.cs` (credentials), `Agent.IoTHub/EdgeAgentConnection.cs`
//! (schema checks).

use log::warn;
use serde_json::Value;

use super::error::DeploymentError;
use super::json::{as_object, as_str, field, one_of, optional_str, required, Object, Path};
use super::module::{self, ModuleSpec, Role, DEFAULT_STARTUP_ORDER};
use super::names::{check_key_name, check_user_module_name, EDGE_AGENT, EDGE_HUB};
use super::schema_version::{self, Twin};

/// The `$edgeAgent` twin's desired properties, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDesired {
    /// `schemaVersion` as written ("1.0", "1.1", …).
    pub schema_version: String,
    /// `runtime.settings.registryCredentials`, sorted by name.
    pub registry_credentials: Vec<RegistryCredential>,
    /// `systemModules`: edgeAgent then edgeHub, each only if present.
    pub system_modules: Vec<ModuleSpec>,
    /// `modules`, sorted by (`startup_order`, `name`): the order to start them in.
    pub modules: Vec<ModuleSpec>,
}

/// Credentials for one private registry (`RegistryCredentials.cs`: all three `Required.Always`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The key under `registryCredentials`.
    pub name: String,
    /// Registry host (and optional port), e.g. `myacr.azurecr.io`.
    pub address: String,
    /// User name for the registry.
    pub username: String,
    /// Password or token for the registry.
    pub password: String,
}

/// Hand-written so that logging a deployment cannot leak a registry password.
impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RegistryCredential")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads the `$edgeAgent` desired properties at `path`.
pub(crate) fn parse(desired: &Object, path: &Path) -> Result<AgentDesired, DeploymentError> {
    // The version decides how to read everything else, so it is checked first.
    let (version, schema_version) = schema_version::read(desired, path, Twin::Agent)?;
    let schema_version = schema_version.to_string();

    let runtime_path = path.push("runtime");
    let registry_credentials = parse_runtime(required(desired, "runtime", path)?, &runtime_path)?;

    let system_path = path.push("systemModules");
    let system = as_object(required(desired, "systemModules", path)?, &system_path)?;
    let mut system_modules = Vec::with_capacity(2);
    for (name, role) in [(EDGE_AGENT, Role::Agent), (EDGE_HUB, Role::Hub)] {
        if let Some(value) = field(system, name) {
            system_modules.push(module::parse(name, value, &system_path.push(name), role)?);
        }
    }

    let modules_path = path.push("modules");
    let mut modules = match field(desired, "modules") {
        None => Vec::new(),
        Some(value) => parse_user_modules(value, &modules_path)?,
    };
    if version.minor == 0 {
        check_no_startup_order(&modules, &modules_path)?;
    }
    modules.sort_by(|left, right| (left.startup_order, &left.name).cmp(&(right.startup_order, &right.name)));

    if field(desired, "integrity").is_some() {
        // Signed manifests: tinyedge has no manifest trust bundle, so it cannot verify them.
        warn!("$edgeAgent carries an integrity section; tinyedge does not verify manifest signatures");
    }
    Ok(AgentDesired { schema_version, registry_credentials, system_modules, modules })
}

/// `runtime`: `{"type": "docker", "settings": {...}}`; returns the registry credentials.
///
/// `minDockerVersion` is "currently ignored" by IoT Edge (edgeAgent `config.json`) and
/// `loggingOptions` applies to Docker only; both are type-checked and otherwise unused.
fn parse_runtime(value: &Value, path: &Path) -> Result<Vec<RegistryCredential>, DeploymentError> {
    let runtime = as_object(value, path)?;
    one_of(required(runtime, "type", path)?, &path.push("type"), &[("docker", ())])?;
    let Some(settings) = field(runtime, "settings") else {
        return Ok(Vec::new());
    };
    let settings_path = path.push("settings");
    let settings = as_object(settings, &settings_path)?;
    optional_str(settings, "minDockerVersion", &settings_path)?;
    optional_str(settings, "loggingOptions", &settings_path)?;
    match field(settings, "registryCredentials") {
        None => Ok(Vec::new()),
        Some(value) => parse_credentials(value, &settings_path.push("registryCredentials")),
    }
}

/// `registryCredentials`: `{name: {address, username, password}}`, sorted by name.
fn parse_credentials(value: &Value, path: &Path) -> Result<Vec<RegistryCredential>, DeploymentError> {
    let registries = as_object(value, path)?;
    let mut credentials = Vec::with_capacity(registries.len());
    for (name, entry) in registries {
        let entry_path = path.push(name);
        check_key_name(name, "registry").map_err(|why| entry_path.bad(why))?;
        if entry.is_null() {
            continue;
        }
        let entry = as_object(entry, &entry_path)?;
        let text = |key: &str| -> Result<String, DeploymentError> {
            let value = required(entry, key, &entry_path)?;
            Ok(as_str(value, &entry_path.push(key))?.to_string())
        };
        let address = text("address")?;
        // SchemaStore: `"address": {"pattern": "^[^\\s]+$"}`; a blank host cannot be logged into.
        if address.is_empty() || address.chars().any(char::is_whitespace) {
            return Err(entry_path.push("address").bad("registry address must be a host name without spaces"));
        }
        credentials.push(RegistryCredential {
            name: name.clone(),
            address,
            username: text("username")?,
            password: text("password")?,
        });
    }
    credentials.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(credentials)
}

/// `modules`: `{name: module}`; names checked, `null` entries (deleted) skipped.
fn parse_user_modules(value: &Value, path: &Path) -> Result<Vec<ModuleSpec>, DeploymentError> {
    let entries = as_object(value, path)?;
    let mut modules = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let entry_path = path.push(name);
        check_user_module_name(name).map_err(|why| entry_path.bad(why))?;
        if entry.is_null() {
            continue;
        }
        modules.push(module::parse(name, entry, &entry_path, Role::User)?);
    }
    Ok(modules)
}

/// Schema 1.0 has no startup order: `ValidateSchemaVersion` refuses a user module whose
/// `startupOrder` differs from the default with `InvalidSchemaVersion`, so this is a 412.
fn check_no_startup_order(modules: &[ModuleSpec], path: &Path) -> Result<(), DeploymentError> {
    match modules.iter().find(|module| module.startup_order != DEFAULT_STARTUP_ORDER) {
        None => Ok(()),
        Some(module) => {
            let module_path = path.push(&module.name);
            Err(DeploymentError::unsupported_schema(
                module_path.push("startupOrder").render(),
                "startupOrder needs $edgeAgent schemaVersion \"1.1\"; schema \"1.0\" does not support it",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::error::DeploymentStatus;
    use serde_json::json;

    fn desired(version: &str, modules: Value) -> Value {
        json!({
            "schemaVersion": version,
            "runtime": {"type": "docker", "settings": {}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "agent"}},
                "edgeHub": {"type": "docker", "status": "running", "settings": {"image": "hub"}},
            },
            "modules": modules,
        })
    }

    fn agent(document: &Value) -> Result<AgentDesired, DeploymentError> {
        parse(document.as_object().expect("object literal"), &Path::root())
    }

    fn module(order: Option<u32>) -> Value {
        let mut module = json!({"type": "docker", "status": "running", "settings": {"image": "img"}});
        if let Some(order) = order {
            module["startupOrder"] = json!(order);
        }
        module
    }

    #[test]
    fn modules_are_sorted_by_startup_order_then_name() {
        let modules = json!({"c": module(Some(1)), "b": module(None), "a": module(None), "z": module(Some(0))});
        let parsed = agent(&desired("1.1", modules)).expect("valid");
        let names: Vec<&str> = parsed.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["z", "c", "a", "b"]);
        let system: Vec<&str> = parsed.system_modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(system, ["edgeAgent", "edgeHub"]);
    }

    #[test]
    fn schema_one_zero_refuses_startup_order_with_412() {
        let error = agent(&desired("1.0", json!({"m": module(Some(3))}))).expect_err("1.0 with order");
        assert_eq!(error.status, DeploymentStatus::PreconditionFailed);
        assert_eq!(error.path, "modules.m.startupOrder");
        // The default value is indistinguishable from absence, as in IoT Edge.
        assert!(agent(&desired("1.0", json!({"m": module(Some(u32::MAX))}))).is_ok());
    }

    #[test]
    fn user_modules_cannot_use_system_names_or_bad_names() {
        for name in ["edgeHub", "bad name"] {
            let error = agent(&desired("1.1", json!({ name: module(None) }))).expect_err(name);
            assert_eq!(error.path, format!("modules.{name}"));
        }
    }

    #[test]
    fn runtime_and_system_modules_are_required() {
        for key in ["runtime", "systemModules"] {
            let mut document = desired("1.1", json!({}));
            document[key] = Value::Null;
            let error = agent(&document).expect_err(key);
            assert_eq!((error.path.as_str(), error.status), (key, DeploymentStatus::BadRequest));
        }
        let mut document = desired("1.1", json!({}));
        document["runtime"]["type"] = json!("containerd");
        assert_eq!(agent(&document).expect_err("runtime type").path, "runtime.type");
    }

    #[test]
    fn registry_credentials_need_all_three_fields() {
        let credential = json!({"address": "r.io", "username": "u", "password": "p"});
        for key in ["address", "username", "password"] {
            let mut document = desired("1.1", json!({}));
            let mut entry = credential.clone();
            entry[key] = Value::Null;
            document["runtime"]["settings"]["registryCredentials"] = json!({ "acr": entry });
            let error = agent(&document).expect_err(key);
            assert_eq!(error.path, format!("runtime.settings.registryCredentials.acr.{key}"));
            assert_eq!(error.message, "required field is missing");
        }
        let mut document = desired("1.1", json!({}));
        document["runtime"]["settings"]["registryCredentials"] = json!({ "a.b": credential });
        assert_eq!(agent(&document).expect_err("name").path, "runtime.settings.registryCredentials.a.b");
    }

    #[test]
    fn registry_password_is_redacted_in_debug_output() {
        let credential = RegistryCredential {
            name: "acr".into(),
            address: "r.io".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
    }
}
