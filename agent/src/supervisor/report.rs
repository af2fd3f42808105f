//! The reported properties document edgeAgent writes to its twin, and the `iotedge list`-style
//! table made from it. Pure code.
//!
//! Shape (IoT Edge `Agent.Core/Reported` / `DockerReportedRuntimeInfo`): `schemaVersion`,
//! `version` (the last applied desired version), `lastDesiredStatus {code, description}`,
//! `lastDesiredVersion`, `runtime {type, platform}`, `systemModules {edgeAgent, edgeHub}`, and
//! per module `runtimeStatus`, `exitCode`, `statusDescription`, `lastStartTimeUtc`,
//! `lastExitTimeUtc`, `restartCount`, `lastRestartTimeUtc`, plus the desired `status`,
//! `version`, `restartPolicy`, `imagePullPolicy`, `startupOrder`, `type`, `settings`.

use serde_json::{json, Map, Value};

use crate::manifest::ModuleSpec;
use crate::plan::{ModuleState, RuntimeStatus};

/// IoT Edge's "never" time.
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// A module's `runtimeStatus`: the runtime's, or `downloading`, which IoT Edge reports as a
/// status of its own while a module's image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedStatus {
    Runtime(RuntimeStatus),
    Downloading,
}

impl ReportedStatus {
    /// The spelling used in edgeAgent's reported properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Runtime(status) => status.as_str(),
            Self::Downloading => "downloading",
        }
    }
}

impl From<RuntimeStatus> for ReportedStatus {
    fn from(status: RuntimeStatus) -> ReportedStatus {
        ReportedStatus::Runtime(status)
    }
}

/// One module's line in the document.
#[derive(Debug, Clone)]
pub struct ModuleReport<'a> {
    pub spec: Option<&'a ModuleSpec>,
    pub name: &'a str,
    pub state: &'a ModuleState,
    pub status: ReportedStatus,
    pub description: &'a str,
    pub image: &'a str,
}

/// RFC 3339 with milliseconds, or IoT Edge's "never".
fn utc(ms: Option<u64>) -> String {
    ms.map_or_else(|| NEVER.to_owned(), |ms| tinyedge_platform::utc::UtcDateTime::from_unix_millis(ms).to_string())
}

fn module_json(report: &ModuleReport<'_>) -> Value {
    let mut m = json!({
        "runtimeStatus": report.status.as_str(),
        "exitCode": report.state.exit_code.unwrap_or(0),
        "statusDescription": report.description,
        "lastStartTimeUtc": utc(report.state.last_start_unix_ms),
        "lastExitTimeUtc": utc(report.state.last_exit_unix_ms),
        "restartCount": report.state.restart_count,
        "lastRestartTimeUtc": utc(report.state.last_restart_unix_ms),
        "type": "docker",
        "settings": {"image": report.image},
    });
    if let Some(spec) = report.spec {
        m["status"] = json!(spec.status.as_str());
        m["version"] = json!(spec.version);
        m["restartPolicy"] = json!(spec.restart_policy.as_str());
        m["imagePullPolicy"] = json!(spec.image_pull_policy.as_str());
        if spec.startup_order != crate::manifest::DEFAULT_STARTUP_ORDER {
            m["startupOrder"] = json!(spec.startup_order);
        }
        m["settings"]["createOptions"] = json!(spec.create_options);
    }
    m
}

/// Everything the document says besides the modules.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub schema_version: &'a str,
    pub desired_version: u64,
    pub status_code: u16,
    pub status_description: &'a str,
    /// Start of this tinyedge process, for the system modules.
    pub started_unix_ms: u64,
    /// containerd's state: `None` when connected, else why not.
    pub containerd_error: Option<&'a str>,
}

/// The reported properties document.
pub fn document(header: &Header<'_>, modules: &[ModuleReport<'_>]) -> Value {
    let platform = crate::image::oci::host_platform();
    let system = |name: &str| {
        json!({
            "runtimeStatus": "running", "exitCode": 0, "statusDescription": "part of the tinyedge process",
            "lastStartTimeUtc": utc(Some(header.started_unix_ms)), "lastExitTimeUtc": NEVER, "restartCount": 0,
            "lastRestartTimeUtc": NEVER, "type": "docker", "settings": {"image": format!("tinyedge:{}", env!("CARGO_PKG_VERSION"))},
            "status": "running", "restartPolicy": "always", "name": name,
        })
    };
    let mut mods = Map::new();
    for m in modules {
        mods.insert(m.name.to_owned(), module_json(m));
    }
    let mut doc = json!({
        "schemaVersion": header.schema_version,
        "version": header.desired_version,
        "lastDesiredVersion": header.desired_version,
        "lastDesiredStatus": {"code": header.status_code, "description": header.status_description},
        "runtime": {"type": "docker", "platform": {"os": platform.os, "architecture": platform.architecture}},
        "systemModules": {"edgeAgent": system("edgeAgent"), "edgeHub": system("edgeHub")},
        "modules": mods,
    });
    if let Some(e) = header.containerd_error {
        doc["runtime"]["statusDescription"] = json!(e);
    }
    doc
}

/// `iotedge list`'s table: NAME, STATUS, DESCRIPTION, CONFIG (the image).
pub fn table(doc: &Value) -> String {
    let mut rows = vec![("NAME".to_owned(), "STATUS".to_owned(), "DESCRIPTION".to_owned(), "CONFIG".to_owned())];
    let mut add = |name: &str, m: &Value| {
        let status = m["runtimeStatus"].as_str().unwrap_or("unknown").to_owned();
        let mut description = m["statusDescription"].as_str().unwrap_or_default().replace('\n', " ");
        if description.len() > 100 {
            let mut cut = 97;
            while !description.is_char_boundary(cut) {
                cut -= 1;
            }
            description.truncate(cut);
            description.push_str("...");
        }
        let image = m["settings"]["image"].as_str().unwrap_or_default().to_owned();
        rows.push((name.to_owned(), status, description, image));
    };
    for section in ["systemModules", "modules"] {
        if let Some(map) = doc[section].as_object() {
            for (name, m) in map {
                add(name, m);
            }
        }
    }
    let width = |column: usize| {
        rows.iter()
            .map(|r| match column {
                0 => r.0.chars().count(),
                1 => r.1.chars().count(),
                _ => r.2.chars().count(),
            })
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for (name, status, description, image) in &rows {
        let pad = w2.saturating_sub(description.chars().count());
        out.push_str(&format!("{name:<w0$}  {status:<w1$}  {description}{}  {image}\n", " ".repeat(pad)));
    }
    if let Some(e) = doc["runtime"]["statusDescription"].as_str() {
        out.push_str(&format!("\ncontainerd: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_and_table() {
        let state = ModuleState {
            name: "sensor".into(),
            exit_code: Some(137),
            restart_count: 2,
            last_start_unix_ms: Some(0),
            ..ModuleState::default()
        };
        let modules = [ModuleReport {
            spec: None,
            name: "sensor",
            state: &state,
            status: RuntimeStatus::Backoff.into(),
            description: "exited with code 137",
            image: "localhost:5000/s:1",
        }];
        let header = Header {
            schema_version: "1.1",
            desired_version: 3,
            status_code: 200,
            status_description: "",
            started_unix_ms: 1000,
            containerd_error: None,
        };
        let doc = document(&header, &modules);
        assert_eq!(doc["modules"]["sensor"]["runtimeStatus"], "backoff");
        assert_eq!(doc["modules"]["sensor"]["exitCode"], 137);
        assert_eq!(doc["modules"]["sensor"]["restartCount"], 2);
        assert_eq!(doc["modules"]["sensor"]["lastStartTimeUtc"], "1970-01-01T00:00:00.000Z");
        assert_eq!(doc["modules"]["sensor"]["lastExitTimeUtc"], NEVER);
        assert_eq!(doc["lastDesiredStatus"]["code"], 200);
        assert_eq!(doc["lastDesiredVersion"], 3);
        let text = table(&doc);
        assert!(text.lines().next().unwrap().starts_with("NAME"));
        assert!(text.contains("sensor") && text.contains("backoff") && text.contains("edgeHub"), "{text}");
    }
}
