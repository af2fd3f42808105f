//! The agent's side of the binary: starting it beside the hub, and the `deploy`, `list` and
//! `logs` commands (cargo feature `agent`, on by default).

use std::sync::Arc;

use tinyedge_agent::manifest::Deployment;
use tinyedge_hub::broker::Broker;
use tinyedge_platform::Config;

use crate::runtime::{self, Failure};

/// Starts the agent and its management socket; a new deployment also updates the hub's routes
/// and module identities.
pub fn start(config: &Config, deployment: Option<Deployment>, key: &[u8], broker: &Arc<Broker>) -> Result<(), Failure> {
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
        device_key: key.to_vec(),
        workload_uri: a.workload_uri.clone(),
        trust_bundle: config
            .data_dir
            .join(tinyedge_platform::certs::CERTS_DIR)
            .join(tinyedge_platform::certs::CA_CERT_FILE),
    };
    let hook_config = config.clone();
    let hook_key = key.to_vec();
    let hook_broker = broker.clone();
    let hook = Box::new(move |d: &Deployment| {
        hook_broker.set_routes(runtime::routes(Some(d)));
        hook_broker.set_authenticator(runtime::authenticator(&hook_config, Some(d), &hook_key));
    });
    let socket = mgmt::socket_path(&config.data_dir);
    let listener =
        mgmt::bind(&socket).map_err(|e| Failure::Runtime(format!("management socket {}: {e}", socket.display())))?;
    let (agent, handle) = Agent::new(settings, deployment, hook);
    smol::spawn(agent.run()).detach();
    smol::spawn(mgmt::serve(listener, handle)).detach();
    log::info!(
        "agent: containerd {} namespace {:?}; management socket {}",
        a.containerd.display(),
        a.namespace,
        socket.display()
    );
    Ok(())
}

/// `tinyedge deploy FILE`.
pub fn deploy(config: &Config, file: &str) -> Result<String, Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Usage(format!("{file}: {e}")))?;
    let socket = tinyedge_agent::supervisor::mgmt::socket_path(&config.data_dir);
    let (code, body) =
        tinyedge_agent::supervisor::mgmt::request(&socket, "PUT", "/deployment", &bytes).map_err(Failure::Runtime)?;
    let text = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    if code == 200 {
        Ok(format!("{code} {text}"))
    } else {
        Err(Failure::Rejected(code, text))
    }
}

/// `tinyedge list [--json]`.
pub fn list(config: &Config, json: bool) -> Result<String, Failure> {
    let socket = tinyedge_agent::supervisor::mgmt::socket_path(&config.data_dir);
    let (code, body) =
        tinyedge_agent::supervisor::mgmt::request(&socket, "GET", "/modules", b"").map_err(Failure::Runtime)?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Runtime(format!("management socket answered {code} with invalid JSON: {e}")))?;
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
