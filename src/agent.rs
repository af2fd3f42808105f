//! The agent's side of the binary: starting it beside the hub, and the `list` and `logs`
//! commands (cargo feature `agent`, on by default). The management socket is the runtime's
//! ([`crate::mgmt`]); the agent serves its endpoints there ([`AgentApi`]).

use std::sync::Arc;

use tinyedge_agent::manifest::Deployment;
use tinyedge_platform::Config;

use crate::deploy::{self, HubTargets};
use crate::failure::Failure;
use crate::mgmt::AgentApi;

/// Starts the agent; every deployment it accepts also updates the hub
/// ([`deploy::apply_to_hub`]). Returns its management endpoints.
pub fn start(config: &Config, deployment: Option<Deployment>, hub: &Arc<HubTargets>) -> Result<AgentApi, Failure> {
    use tinyedge_agent::plan::RestartSettings;
    use tinyedge_agent::supervisor::{mgmt, Agent, AgentSettings};
    let a = &config.agent;
    let settings = AgentSettings {
        socket: a.containerd.clone(),
        namespace: a.namespace.clone(),
        dir: config.data_dir.join("agent"),
        restart: RestartSettings {
            max_restart_count: a.max_restarts,
            cool_off_unit: std::time::Duration::from_millis(a.cool_off_ms),
            cool_off_max: std::time::Duration::from_millis(a.cool_off_max_ms),
            intensive_care: std::time::Duration::from_secs(a.intensive_care_secs),
        },
        log_max_bytes: a.log_max_bytes,
        insecure_registries: a.insecure_registries.clone(),
        stop_timeout: std::time::Duration::from_secs(a.stop_timeout_secs),
        device_id: config.device_id.clone(),
        iothub_hostname: config.iothub_hostname.clone(),
        gateway_hostname: config.hostname.clone(),
        device_key: hub.device_key.clone(),
        workload_uri: a.workload_uri.clone(),
        trust_bundle: config
            .data_dir
            .join(tinyedge_platform::certs::CERTS_DIR)
            .join(tinyedge_platform::certs::CA_CERT_FILE),
    };
    let hook_hub = hub.clone();
    let hook = Box::new(move |d: &Deployment| deploy::apply_to_hub(&hook_hub, d));
    let (agent, handle) = Agent::new(settings, deployment, hook);
    tinyedge_platform::rt::spawn(agent.run()).detach();
    log::info!("agent: containerd {} namespace {:?}", a.containerd.display(), a.namespace);
    let deploy_handle = handle.clone();
    Ok(AgentApi {
        deploy: Arc::new(move |body| {
            let handle = deploy_handle.clone();
            Box::pin(async move { mgmt::deploy(&handle, &body).await })
        }),
        modules: Arc::new(move || mgmt::modules(&handle)),
    })
}

/// `tinyedge list [--json]`.
pub fn list(config: &Config, json: bool) -> Result<String, Failure> {
    let socket = crate::mgmt::socket_path(&config.data_dir);
    let (code, body) =
        tinyedge_agent::supervisor::mgmt::request(&socket, "GET", "/modules", b"").map_err(Failure::Runtime)?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Runtime(format!("management socket answered {code} with invalid JSON: {e}")))?;
    if code != 200 {
        let message = doc["message"].as_str().map_or_else(|| doc.to_string(), str::to_owned);
        return Err(Failure::Runtime(format!("{code} {message}")));
    }
    if json {
        Ok(serde_json::to_string_pretty(&doc).unwrap_or_default())
    } else {
        Ok(tinyedge_agent::supervisor::report::table(&doc).trim_end().to_owned())
    }
}

/// `tinyedge logs MODULE [--tail N] [-f]`.
pub fn logs(config: &Config, module: &str, tail: Option<usize>, follow: bool) -> Result<(), Failure> {
    use std::io::Write as _;
    use tinyedge_agent::containerd::stdio;
    let logs_dir = config.data_dir.join("agent").join("logs");
    let bytes = stdio::read_tail(&logs_dir, module, tail).map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(&bytes).and_then(|()| stdout.flush()).is_err() {
        return Ok(());
    }
    if !follow {
        return Ok(());
    }
    let path = stdio::log_path(&logs_dir, module);
    let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if len < offset {
            offset = 0; // rotated: the new file starts over
        }
        if len > offset {
            let mut file =
                std::fs::File::open(&path).map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            use std::io::{Read as _, Seek as _};
            file.seek(std::io::SeekFrom::Start(offset)).map_err(|e| Failure::Runtime(e.to_string()))?;
            let mut chunk = Vec::new();
            file.take(len - offset).read_to_end(&mut chunk).map_err(|e| Failure::Runtime(e.to_string()))?;
            offset = len;
            if stdout.write_all(&chunk).and_then(|()| stdout.flush()).is_err() {
                return Ok(());
            }
        }
    }
}
