//! Wiring: config + deployment → identities, routes, certificates, listeners.

use std::path::Path;
use std::sync::Arc;

use tinyedge_agent::manifest::{self, Deployment};
use tinyedge_hub::broker::{Broker, Limits};
use tinyedge_hub::listeners::{self, fdlimit, Kind, Listener};
use tinyedge_platform::{certs, identity, logger, Config};

use crate::failure::Failure;
use crate::plan::{authenticator, deployed_file, routes, twin_plan};

/// The deployment to start with: the one last applied with `tinyedge deploy` when it is newer
/// than the config's `deployment` file (or there is none), else the config's.
pub(crate) fn load_deployment(config: &Config) -> Result<Option<Deployment>, Failure> {
    let deployed = deployed_file(config);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let use_deployed = deployed.exists()
        && match &config.deployment {
            None => true,
            Some(path) => modified(&deployed) >= modified(path),
        };
    if use_deployed {
        let bytes =
            std::fs::read(&deployed).map_err(|e| Failure::Config(format!("deployment {}: {e}", deployed.display())))?;
        match manifest::parse_deployment(&bytes) {
            Ok(d) => {
                log::info!("deployment: {} (last applied with `tinyedge deploy`)", deployed.display());
                return Ok(Some(d));
            }
            Err(e) => log::warn!("deployment {}: {e}; using the config's", deployed.display()),
        }
    }
    let Some(path) = &config.deployment else { return Ok(None) };
    let bytes = std::fs::read(path).map_err(|e| Failure::Config(format!("deployment {}: {e}", path.display())))?;
    manifest::parse_deployment(&bytes)
        .map(Some)
        .map_err(|e| Failure::Config(format!("deployment {}: {e}", path.display())))
}

fn device_key(config: &Config) -> Result<Vec<u8>, Failure> {
    match &config.device_key {
        Some(key) => Ok(key.clone()),
        None => identity::load_or_create_device_key(&config.data_dir)
            .map_err(|e| Failure::Runtime(format!("device key in {}: {e}", config.data_dir.display()))),
    }
}

/// Where twins are kept under `data_dir`.
pub const TWINS_DIR: &str = "twins";

/// An identity the CLI can print credentials for: (device id, module id, key).
fn credentials_of(config: &Config, id: &str) -> Result<(String, Option<String>, Vec<u8>), Failure> {
    if let Some(device) = config.devices.iter().find(|d| d.id == id) {
        return Ok((device.id.clone(), None, device.key.clone()));
    }
    let deployment = load_deployment(config)?;
    if !deployment.as_ref().is_some_and(|d| d.module(id).is_some()) {
        return Err(Failure::Usage(format!(
            "{id:?} is neither a module of the deployment nor a device in [[devices]]"
        )));
    }
    let key = identity::derive_module_key(&device_key(config)?, id);
    Ok((config.device_id.clone(), Some(id.to_string()), key))
}

/// `tinyedge identity connection-string ID`.
pub fn connection_string(config: &Config, id: &str) -> Result<String, Failure> {
    let (device, module, key) = credentials_of(config, id)?;
    Ok(identity::connection_string(&config.iothub_hostname, &device, module.as_deref(), &key, &config.hostname))
}

/// `tinyedge identity mqtt-login ID [TTL_SECS]`: client id, username and SAS password for
/// MQTT tools that cannot sign tokens themselves (mosquitto_pub, MQTT Explorer).
pub fn mqtt_login(config: &Config, id: &str, ttl_secs: u64) -> Result<String, Failure> {
    let (device, module, key) = credentials_of(config, id)?;
    let expiry =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + ttl_secs;
    let resource = identity::sas_resource(&config.iothub_hostname, &device, module.as_deref());
    let token = tinyedge_platform::sas::generate(&resource, &key, expiry);
    let client_id = match &module {
        Some(m) => format!("{device}/{m}"),
        None => device.clone(),
    };
    let username = format!("{}/{client_id}/?api-version=2021-04-12", config.iothub_hostname);
    // Single-quoted so `eval "$(tinyedge identity mqtt-login ID)"` sets three shell variables;
    // none of the values can contain a quote (ids, host names and URL-encoded tokens).
    Ok(format!("client_id='{client_id}'\nusername='{username}'\npassword='{token}'"))
}

fn bind(kind: Kind, addr: std::net::SocketAddr) -> Result<Listener, Failure> {
    let what = format!("{kind:?}");
    let listener =
        Listener::bind(kind, addr).map_err(|e| Failure::Runtime(format!("{what} listener on {addr}: {e}")))?;
    log::info!("{what} listening on {}", listener.local_addr().map_or(addr, |a| a));
    Ok(listener)
}

/// The listeners `[hub]` asks for: MQTT, MQTT over TLS, the method API over TLS. At least one
/// MQTT listener is required.
fn hub_listeners(config: &Config) -> Result<Vec<Listener>, Failure> {
    let mut listeners = Vec::new();
    if let Some(addr) = config.hub.mqtt {
        listeners.push(bind(Kind::Mqtt, addr)?);
    }
    let acceptor = match (config.hub.mqtts, config.hub.https, config.hub.amqps) {
        (None, None, None) => None,
        _ => Some(tls_acceptor(config)?),
    };
    if let (Some(addr), Some(acceptor)) = (config.hub.mqtts, &acceptor) {
        listeners.push(bind(Kind::Mqtts(acceptor.clone()), addr)?);
    }
    if listeners.is_empty() {
        return Err(Failure::Config("no listener: hub.mqtt and hub.mqtts are both off".into()));
    }
    if let (Some(addr), Some(acceptor)) = (config.hub.https, &acceptor) {
        if let Some(listener) = bind_method_api(addr)? {
            listeners.push(Listener { kind: Kind::MethodsHttps(acceptor.clone()), listener });
        }
    }
    if let (Some(addr), Some(acceptor)) = (config.hub.amqps, &acceptor) {
        amqps_listener(addr, acceptor, &mut listeners)?;
    }
    Ok(listeners)
}

/// The AMQP listener (`hub.amqps`). As with the method API, the default address may be taken
/// (another runtime, a broker): then AMQP is off with a warning; a configured address must bind.
#[cfg(feature = "amqp")]
fn amqps_listener(
    addr: std::net::SocketAddr,
    acceptor: &tinyedge_hub::tls::Acceptor,
    listeners: &mut Vec<Listener>,
) -> Result<(), Failure> {
    match Listener::bind(Kind::Amqps(acceptor.clone()), addr) {
        Ok(listener) => {
            log::info!("amqps listening on {}", listener.local_addr().map_or(addr, |a| a));
            listeners.push(listener);
            Ok(())
        }
        Err(e) if addr == tinyedge_platform::config::DEFAULT_AMQPS_ADDR => {
            log::warn!("AMQP off: the default hub.amqps {addr}: {e}; set [hub] amqps to a free address, or \"\" to turn it off");
            Ok(())
        }
        Err(e) => Err(Failure::Runtime(format!("amqps listener on {addr} (hub.amqps): {e}"))),
    }
}

/// A build without the `amqp` feature serves no AMQP; a configured listener is only noted.
#[cfg(not(feature = "amqp"))]
fn amqps_listener(
    addr: std::net::SocketAddr,
    _acceptor: &tinyedge_hub::tls::Acceptor,
    _listeners: &mut Vec<Listener>,
) -> Result<(), Failure> {
    log::info!("hub.amqps {addr} not served: this build has no AMQP (feature \"amqp\")");
    Ok(())
}

/// The method API's listener (`hub.https`). The default address is a privileged port that
/// `tinyedge run` as a user, or a host with a web server, cannot bind: then the API is off with
/// a warning rather than the runtime refusing to start. A configured address must bind.
fn bind_method_api(addr: std::net::SocketAddr) -> Result<Option<tinyedge_platform::rt::TcpListener>, Failure> {
    match tinyedge_platform::rt::TcpListener::bind(addr) {
        Ok(listener) => {
            log::info!("method API (https) listening on {}", listener.local_addr().map_or(addr, |a| a));
            Ok(Some(listener))
        }
        Err(e) if addr == tinyedge_platform::config::DEFAULT_HTTPS_ADDR => {
            log::warn!("method API off: the default hub.https {addr}: {e}; set [hub] https to an address this process may bind, or \"\" to turn it off");
            Ok(None)
        }
        Err(e) => Err(Failure::Runtime(format!("https listener on {addr} (hub.https): {e}"))),
    }
}

fn tls_acceptor(config: &Config) -> Result<tinyedge_hub::tls::Acceptor, Failure> {
    let (cert, key) = match (&config.hub.tls_cert, &config.hub.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let edge = certs::ensure_edge_certs(&config.data_dir, &config.hostname)
                .map_err(|e| Failure::Runtime(format!("edge certificates: {e}")))?;
            log::info!("edge CA certificate for clients: {}", edge.ca_cert.display());
            (edge.server_cert, edge.server_key)
        }
    };
    tinyedge_hub::tls::acceptor(&cert, &key).map_err(|e| Failure::Config(format!("TLS: {e}")))
}

/// Rewrites the status file every few seconds.
async fn status_loop(
    data_dir: std::path::PathBuf,
    broker: std::sync::Arc<Broker>,
    store: std::sync::Arc<tinyedge_hub::store::Store>,
    link: Option<crate::cloud::Upstream>,
) {
    loop {
        let hub: serde_json::Map<String, serde_json::Value> =
            broker.metrics.snapshot().into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v))).collect();
        let doc = crate::status::document(vec![
            ("hub", serde_json::Value::Object(hub)),
            ("store", crate::cloud::store_status(&store)),
            ("upstream", crate::cloud::upstream_status(link.as_ref())),
        ]);
        if let Err(e) = crate::status::write(&data_dir, &doc) {
            static FAILED: tinyedge_platform::logger::RateLimit =
                tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);
            tinyedge_platform::log_limited!(FAILED, log::Level::Warn, "status file in {}: {e}", data_dir.display());
        }
        smol::Timer::after(crate::status::STATUS_INTERVAL).await;
    }
}

/// On SIGTERM or SIGINT: reports 406 "Agent is not running" to the cloud (bounded wait), then
/// exits, as edgeAgent does on shutdown.
fn stop_on_signal(deployments: Arc<crate::cloud_deploy::CloudDeploy>) {
    use async_signal::{Signal, Signals};
    use smol::stream::StreamExt as _;
    let mut signals = match Signals::new([Signal::Term, Signal::Int]) {
        Ok(signals) => signals,
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}): the shutdown status is not reported");
            return;
        }
    };
    tinyedge_platform::rt::spawn(async move {
        if let Some(Ok(signal)) = signals.next().await {
            log::info!("{signal:?}: reporting the shutdown to the cloud, then exiting");
            smol::unblock(move || deployments.shutdown()).await;
            std::process::exit(0);
        }
    })
    .detach();
}

/// `tinyedge run`.
pub fn run(config: Config) -> Result<(), Failure> {
    logger::init(config.log_level);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Failure::Runtime(format!("data_dir {}: {e}", config.data_dir.display())))?;
    let deployment = load_deployment(&config)?;
    let key = device_key(&config)?;
    let auth = authenticator(&config, deployment.as_ref(), &key);
    let table = routes(deployment.as_ref());
    log::info!("{} route(s) active", table.routes().len());
    let mut limits = Limits::from(&config.hub);
    // Before any socket or file is opened for clients: raise RLIMIT_NOFILE to its hard limit
    // and keep max_connections within the descriptors left after the runtime's own.
    limits.max_connections = fdlimit::fit_max_connections(limits.max_connections);
    let store = crate::cloud::open_store(crate::cloud::store_config(&config, deployment.as_ref()))?;
    let twins_dir = config.data_dir.join(TWINS_DIR);
    let (twins, twins_report) = tinyedge_hub::twin::Twins::open(twins_dir.clone())
        .map_err(|e| Failure::Runtime(format!("twins in {}: {e}", twins_dir.display())))?;
    log::info!("twins: {twins_report}");
    let broker = Broker::new(&config.device_id, auth, table, limits, store.clone(), Arc::new(twins));
    let (identities, desired) = twin_plan(&config, deployment.as_ref());
    broker.apply_twins(&identities, &desired);
    let link = crate::cloud::start_upstream(&config, &key, &broker)?;
    let served = tinyedge_platform::rt::spawn(listeners::serve(
        broker.clone(),
        hub_listeners(&config)?,
        smol::future::pending(),
    ));
    let link_for_metrics = link.clone();
    tinyedge_platform::rt::spawn(status_loop(config.data_dir.clone(), broker.clone(), store, link)).detach();
    let hub = Arc::new(crate::deploy::HubTargets::new(config.clone(), key.clone(), broker.clone()));
    let agent = if config.agent.enabled {
        #[cfg(feature = "agent")]
        let agent = Ok(crate::agent::start(&config, deployment, &hub)?);
        #[cfg(not(feature = "agent"))]
        let agent = {
            log::info!("this tinyedge is built without the agent (cargo feature `agent`): the hub runs alone");
            Err("this tinyedge is built without the agent (cargo feature `agent`): no modules are run")
        };
        agent
    } else {
        log::info!("agent disabled ([agent] enabled = false): the hub runs alone");
        Err("the agent is disabled ([agent] enabled = false): no modules are run")
    };
    let metrics = crate::metrics::start(
        &config,
        &broker,
        link_for_metrics.as_ref(),
        agent.as_ref().ok().map(|a: &crate::mgmt::AgentApi| a.modules.clone()),
    )?;
    if let Some(cloud) = link_for_metrics.as_ref().and_then(crate::cloud::Upstream::cloud) {
        crate::telemetry::Telemetry::start(&config, metrics, cloud.clone());
    }
    if let Some(cloud) = link_for_metrics.as_ref().and_then(crate::cloud::Upstream::cloud) {
        let deployer = crate::cloud_deploy::deployer(agent.as_ref().ok(), &hub);
        let reporter = agent.as_ref().ok().map(|a| {
            let modules = a.modules.clone();
            let reporter: crate::cloud_deploy::Reporter =
                Arc::new(move || serde_json::from_slice(&modules().body).unwrap_or(serde_json::Value::Null));
            reporter
        });
        let deployments =
            crate::cloud_deploy::CloudDeploy::start(cloud, broker.clone(), &config.device_id, deployer, reporter);
        stop_on_signal(deployments);
    }
    let socket = crate::mgmt::start(crate::mgmt::Management {
        twins: Some(crate::mgmt::twin_reader(&broker)),
        invoker: broker.method_invoker(),
        hub,
        agent,
    })?;
    log::info!("management socket {}", socket.display());
    log::info!(
        "tinyedge {} running as device {:?} (data in {})",
        env!("CARGO_PKG_VERSION"),
        config.device_id,
        Path::new(&config.data_dir).display()
    );
    crate::pages::release_after_start();
    // The main thread only waits. Every task runs on the executor thread
    // (`tinyedge_platform::rt`), which waits on its own epoll for the hub's sockets, so a
    // socket's readiness wakes its task on the thread that runs it.
    let (done, finished) = std::sync::mpsc::sync_channel::<()>(1);
    tinyedge_platform::rt::spawn(async move {
        served.await;
        let _ = done.send(());
    })
    .detach();
    let _ = finished.recv();
    Ok(())
}
