//! One module's desired configuration: the system modules and user modules alike.
//!
//! Sources (Azure/iotedge): `edge-agent/src/Microsoft.Azure.Devices.Edge.Agent.Core/IModule.cs`
//! (enums and their JSON spellings), `Agent.Core/Constants.cs` (defaults),
//! `Agent.Docker/DockerDesiredModule.cs` (user modules), `Agent.Docker/EdgeAgentDockerModule.cs`
//! and `Agent.Docker/EdgeHubDockerModule.cs` (system modules), `Agent.Core/EnvVal.cs` (env).

use serde_json::Value;

use super::error::DeploymentError;
use super::json::{as_object, describe, field, integer, one_of, optional_str, required, Path};
use super::names::check_env_name;
use super::settings;

/// `startupOrder` when absent: `Constants.DefaultStartupOrder = uint.MaxValue`, i.e. "after every
/// module that has an explicit order".
pub const DEFAULT_STARTUP_ORDER: u32 = u32::MAX;

/// What the deployment wants a module to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredStatus {
    /// `"running"`.
    Running,
    /// `"stopped"`.
    Stopped,
}

impl DesiredStatus {
    const CHOICES: [(&'static str, Self); 2] = [("running", Self::Running), ("stopped", Self::Stopped)];

    /// The manifest spelling, for echoing back in reported properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

/// When the runtime restarts a module that stopped running (`IModule.cs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// `"never"`.
    Never,
    /// `"on-failure"`: after a non-zero exit.
    OnFailure,
    /// `"on-unhealthy"`: after a failure or a failed health check. IoT Edge's default
    /// (`Constants.DefaultRestartPolicy`).
    #[default]
    OnUnhealthy,
    /// `"always"`.
    Always,
}

impl RestartPolicy {
    const CHOICES: [(&'static str, Self); 4] = [
        ("never", Self::Never),
        ("on-failure", Self::OnFailure),
        ("on-unhealthy", Self::OnUnhealthy),
        ("always", Self::Always),
    ];

    /// The manifest spelling, for echoing back in reported properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::OnUnhealthy => "on-unhealthy",
            Self::Always => "always",
        }
    }
}

/// Whether the runtime may pull the module's image (`IModule.cs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImagePullPolicy {
    /// `"on-create"`: pull when the container is created. The default.
    #[default]
    OnCreate,
    /// `"never"`: the image must already be present.
    Never,
}

impl ImagePullPolicy {
    const CHOICES: [(&'static str, Self); 2] = [("on-create", Self::OnCreate), ("never", Self::Never)];

    /// The manifest spelling, for echoing back in reported properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::OnCreate => "on-create",
            Self::Never => "never",
        }
    }
}

/// One module as the deployment wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The module's name: its key under `modules`, or `edgeAgent` / `edgeHub`.
    pub name: String,
    /// Free text from `version`; `""` when absent.
    pub version: String,
    /// Always `"docker"`, the only module type IoT Edge knows.
    pub module_type: String,
    /// `status`; edgeAgent is always [`DesiredStatus::Running`].
    pub status: DesiredStatus,
    /// `restartPolicy`; defaults to [`RestartPolicy::OnUnhealthy`] for user modules and
    /// [`RestartPolicy::Always`] for edgeHub; edgeAgent is always `Always`.
    pub restart_policy: RestartPolicy,
    /// `imagePullPolicy`; defaults to [`ImagePullPolicy::OnCreate`].
    pub image_pull_policy: ImagePullPolicy,
    /// `startupOrder`: lower starts first; [`DEFAULT_STARTUP_ORDER`] when absent; edgeAgent 0.
    pub startup_order: u32,
    /// `env`, sorted by name; numbers and booleans are given as their JSON text.
    pub env: Vec<(String, String)>,
    /// `settings.image`, trimmed.
    pub image: String,
    /// `settings.createOptions` with its chunks joined, a JSON object's text; `""` if none.
    pub create_options: String,
    /// `settings.digest`, `sha256:<64 hex>`, when the deployment pins the image.
    pub digest: Option<String>,
}

/// Which rules a module is read with; the system modules have fixed or different defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `systemModules.edgeAgent`: always running, always restarted, started first
    /// (`EdgeAgentDockerModule.cs` passes `Running`, `Always`, `HighestPriority`); any `status`,
    /// `restartPolicy` or `startupOrder` it carries is ignored, as there.
    Agent,
    /// `systemModules.edgeHub`: `status` required, `restartPolicy` defaults to `always`
    /// (`EdgeHubDockerModule.cs`).
    Hub,
    /// An entry of `modules`: `status` required, `restartPolicy` defaults to `on-unhealthy`
    /// (`DockerDesiredModule.cs`).
    User,
}

/// Reads the module `name` from `value` at `path` with the rules of `role`.
pub(crate) fn parse(name: &str, value: &Value, path: &Path, role: Role) -> Result<ModuleSpec, DeploymentError> {
    let module = as_object(value, path)?;
    // `type` is checked first: for another runtime type the other fields could mean anything.
    one_of(required(module, "type", path)?, &path.push("type"), &[("docker", ())])?;
    let status = match role {
        Role::Agent => DesiredStatus::Running,
        Role::Hub | Role::User => {
            one_of(required(module, "status", path)?, &path.push("status"), &DesiredStatus::CHOICES)?
        }
    };
    let restart_policy = match (role, field(module, "restartPolicy")) {
        (Role::Agent, _) | (Role::Hub, None) => RestartPolicy::Always,
        (Role::User, None) => RestartPolicy::default(),
        (Role::Hub | Role::User, Some(policy)) => one_of(policy, &path.push("restartPolicy"), &RestartPolicy::CHOICES)?,
    };
    let image_pull_policy = match field(module, "imagePullPolicy") {
        None => ImagePullPolicy::default(),
        Some(policy) => one_of(policy, &path.push("imagePullPolicy"), &ImagePullPolicy::CHOICES)?,
    };
    let startup_order = match (role, field(module, "startupOrder")) {
        (Role::Agent, _) => 0,
        (_, None) => DEFAULT_STARTUP_ORDER,
        (_, Some(order)) => integer(order, &path.push("startupOrder"), 0, u32::MAX)?,
    };
    let version = optional_str(module, "version", path)?.unwrap_or_default().to_string();
    let env = match field(module, "env") {
        None => Vec::new(),
        Some(env) => parse_env(env, &path.push("env"))?,
    };
    let settings = settings::parse(required(module, "settings", path)?, &path.push("settings"))?;
    Ok(ModuleSpec {
        name: name.to_string(),
        version,
        module_type: "docker".to_string(),
        status,
        restart_policy,
        image_pull_policy,
        startup_order,
        env,
        image: settings.image,
        create_options: settings.create_options,
        digest: settings.digest,
    })
}

/// `env`: `{"NAME": {"value": string | number | bool}}`, sorted by name.
///
/// A missing `value` is `""`, as `EnvVal` makes it. Numbers and booleans become their JSON text
/// (`true`, `42`, `1.5`); Newtonsoft's conversion in IoT Edge gives `True` for a bool.
fn parse_env(value: &Value, path: &Path) -> Result<Vec<(String, String)>, DeploymentError> {
    let variables = as_object(value, path)?;
    let mut env = Vec::with_capacity(variables.len());
    for (name, entry) in variables {
        let entry_path = path.push(name);
        check_env_name(name).map_err(|why| entry_path.bad(why))?;
        if entry.is_null() {
            continue;
        }
        let entry = as_object(entry, &entry_path)?;
        let value_path = entry_path.push("value");
        let text = match field(entry, "value") {
            None => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(Value::Number(number)) => number.to_string(),
            Some(other) => {
                return Err(value_path.bad(format!("expected a string, number or boolean, got {}", describe(other))))
            }
        };
        if text.contains('\0') {
            return Err(value_path.bad("environment values cannot contain NUL"));
        }
        env.push((name.clone(), text));
    }
    // serde_json's map order depends on a crate feature; sort so the result never does.
    env.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::error::DeploymentStatus;
    use serde_json::json;

    fn user(value: Value) -> Result<ModuleSpec, DeploymentError> {
        parse("temp", &value, &Path::root().push("temp"), Role::User)
    }

    fn minimal() -> Value {
        json!({"type": "docker", "status": "running", "settings": {"image": "img:1"}})
    }

    #[test]
    fn user_module_defaults_follow_iot_edge() {
        let module = user(minimal()).expect("minimal module");
        assert_eq!(module.name, "temp");
        assert_eq!(module.version, "");
        assert_eq!(module.module_type, "docker");
        assert_eq!(module.status, DesiredStatus::Running);
        assert_eq!(module.restart_policy, RestartPolicy::OnUnhealthy);
        assert_eq!(module.image_pull_policy, ImagePullPolicy::OnCreate);
        assert_eq!(module.startup_order, DEFAULT_STARTUP_ORDER);
        assert!(module.env.is_empty());
        assert_eq!((module.image.as_str(), module.create_options.as_str()), ("img:1", ""));
        assert_eq!(module.digest, None);
    }

    #[test]
    fn system_modules_have_their_own_defaults() {
        let agent = json!({"type": "docker", "settings": {"image": "agent"}, "status": "stopped", "startupOrder": 9});
        let agent = parse("edgeAgent", &agent, &Path::root(), Role::Agent).expect("agent");
        assert_eq!(
            (agent.status, agent.restart_policy, agent.startup_order),
            (DesiredStatus::Running, RestartPolicy::Always, 0)
        );
        let hub = parse("edgeHub", &minimal(), &Path::root(), Role::Hub).expect("hub");
        assert_eq!((hub.restart_policy, hub.startup_order), (RestartPolicy::Always, DEFAULT_STARTUP_ORDER));
        let mut no_status = minimal();
        no_status["status"] = Value::Null;
        let error = parse("edgeHub", &no_status, &Path::root().push("edgeHub"), Role::Hub).expect_err("status");
        assert_eq!(error.path, "edgeHub.status");
    }

    #[test]
    fn enums_accept_their_manifest_spellings() {
        for (text, policy) in RestartPolicy::CHOICES {
            let mut module = minimal();
            module["restartPolicy"] = json!(text);
            assert_eq!(user(module).expect(text).restart_policy, policy);
            assert_eq!(policy.as_str(), text);
        }
        let mut module = minimal();
        module["status"] = json!("stopped");
        module["imagePullPolicy"] = json!("never");
        module["startupOrder"] = json!(0);
        module["version"] = json!("1.0");
        let module = user(module).expect("all fields");
        assert_eq!(
            (module.status, module.image_pull_policy, module.startup_order),
            (DesiredStatus::Stopped, ImagePullPolicy::Never, 0)
        );
        assert_eq!(module.version, "1.0");
    }

    #[test]
    fn each_field_of_the_wrong_type_or_value_is_a_400_at_its_path() {
        let table = [
            ("type", json!("rkt"), "temp.type", r#"expected one of "docker", got "rkt""#),
            ("status", json!("paused"), "temp.status", r#"expected one of "running", "stopped", got "paused""#),
            (
                "restartPolicy",
                json!("sometimes"),
                "temp.restartPolicy",
                r#"expected one of "never", "on-failure", "on-unhealthy", "always", got "sometimes""#,
            ),
            (
                "imagePullPolicy",
                json!(true),
                "temp.imagePullPolicy",
                r#"expected one of "on-create", "never", got true"#,
            ),
            ("startupOrder", json!(-1), "temp.startupOrder", "expected an integer from 0 to 4294967295, got -1"),
            (
                "startupOrder",
                json!(4294967296u64),
                "temp.startupOrder",
                "expected an integer from 0 to 4294967295, got 4294967296",
            ),
            ("version", json!(1.0), "temp.version", "expected a string, got 1.0"),
            ("env", json!([]), "temp.env", "expected an object, got an array"),
            ("settings", json!("img"), "temp.settings", "expected an object, got \"img\""),
        ];
        for (key, value, path, message) in table {
            let mut module = minimal();
            module[key] = value;
            let error = user(module).expect_err(key);
            assert_eq!(error.status, DeploymentStatus::BadRequest);
            assert_eq!((error.path.as_str(), error.message.as_str()), (path, message), "{key}");
        }
        for key in ["type", "status", "settings"] {
            let mut module = minimal();
            module[key] = Value::Null;
            let error = user(module).expect_err(key);
            assert_eq!(error.path, format!("temp.{key}"));
            assert_eq!(error.message, "required field is missing");
        }
    }

    #[test]
    fn env_values_may_be_strings_numbers_or_booleans() {
        let mut module = minimal();
        module["env"] = json!({
            "S": {"value": "text"}, "I": {"value": 42}, "F": {"value": 1.5},
            "B": {"value": false}, "E": {}, "GONE": null,
        });
        let env = user(module).expect("env").env;
        let expected = [("B", "false"), ("E", ""), ("F", "1.5"), ("I", "42"), ("S", "text")];
        let expected: Vec<(String, String)> = expected.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let table = [
            (json!({"A.B": {"value": "x"}}), "temp.env.A.B"),
            (json!({"A": {"value": [1]}}), "temp.env.A.value"),
            (json!({"A": {"value": {"x": 1}}}), "temp.env.A.value"),
            (json!({"A": "x"}), "temp.env.A"),
            (json!({"A": {"value": "nul\u{0}"}}), "temp.env.A.value"),
        ];
        for (env, path) in table {
            let mut module = minimal();
            module["env"] = env;
            assert_eq!(user(module).expect_err(path).path, path);
        }
    }
}
