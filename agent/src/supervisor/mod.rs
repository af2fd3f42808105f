//! The agent at work: it keeps containerd's containers equal to the deployment, restarts
//! modules by their restart policy, runs their health checks, and keeps the reported document.
//!
//! One task owns all module state ([`Agent::run`]); everything else talks to it through a
//! bounded channel of [`Input`]s: a new deployment (from the management socket), a task exit
//! (from containerd's event stream — exits are learned from events, never by polling), a health
//! check verdict (from a module's health task), or containerd going away. After each input, and
//! when the planner's next restart comes due, the agent re-reads the state of its containers
//! from containerd, plans ([`crate::plan::plan`]) and executes the commands in order.
//!
//! containerd unreachable: every module reports `unknown` with the reason, connection attempts
//! back off from 1 s to 60 s, and deployments are still accepted (applied once connected).

pub mod mgmt;
pub mod report;
pub mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use smol::channel::{Receiver, Sender};

use crate::container::{self, ContainerConfig, EdgeIds, Healthcheck};
use crate::containerd::client::{now_ms, Containerd, CtrError, TaskExit};
use crate::containerd::pull::{self, ReadyImage};
use crate::containerd::spec::{self, DeviceNode, SpecInputs};
use crate::containerd::stdio::{self, Pump};
use crate::image::reference::Reference;
use crate::image::registry::Credentials;
use crate::manifest::{self, Deployment, DeploymentError, DeploymentStatus, ModuleSpec, RegistryCredential};
use crate::plan::{self, Command, ModuleState, RestartSettings, RuntimeStatus};

/// Label on every container the agent makes: the module's name.
pub const LABEL_MODULE: &str = "tinyedge.module";
/// Label with the image as the deployment wrote it (reported as `settings.image`).
pub const LABEL_IMAGE: &str = "tinyedge.image";
/// Label with the [`plan::config_hash`] the container was made from.
pub const LABEL_CONFIG: &str = "tinyedge.config-hash";
/// Inputs waiting for the agent (deployments, exits, health verdicts); a full queue makes
/// senders wait (deployments) or drops the event (exits: the next reconcile reads every task's
/// state from containerd anyway).
pub const INPUT_QUEUE_MAX: usize = 256;
/// Longest wait between two attempts to reach containerd.
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Health-check output is not kept; a check that does not exit within its timeout is killed.
const HEALTH_EXEC_PREFIX: &str = "tinyedge-health-";
/// How long `tinyedge deploy` waits for the agent to take a validated deployment.
const DEPLOY_REPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for a process to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the agent needs to know about its device and host.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// containerd's socket (`[agent] containerd`).
    pub socket: PathBuf,
    /// containerd namespace of the modules (`[agent] namespace`).
    pub namespace: String,
    /// `{data_dir}/agent`: logs, FIFOs, downloads, the last deployment and module bookkeeping.
    pub dir: PathBuf,
    pub restart: RestartSettings,
    /// Bound of one module log file (`[agent] log_max_bytes`).
    pub log_max_bytes: u64,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Time between SIGTERM and SIGKILL when stopping a module (Docker's default is 10 s).
    pub stop_timeout: Duration,
    pub device_id: String,
    pub iothub_hostname: String,
    /// Hostname modules reach edgeHub at (the config's `hostname`).
    pub gateway_hostname: String,
    /// The device key; module keys derive from it.
    pub device_key: Vec<u8>,
    /// Workload API URI given to modules; each module's socket is mounted at its path.
    pub workload_uri: String,
    /// The edge CA (PEM) the workload API hands out as the trust bundle.
    pub trust_bundle: PathBuf,
}

impl AgentSettings {
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }
    fn downloads_dir(&self) -> PathBuf {
        self.dir.join("downloads")
    }
    fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }
    /// Where the last accepted deployment is kept, so a restarted agent applies it again.
    pub fn deployment_file(&self) -> PathBuf {
        self.dir.join("deployment.json")
    }
    fn bookkeeping_file(&self) -> PathBuf {
        self.dir.join("modules.json")
    }
}

/// Messages to the agent task.
pub enum Input {
    /// A validated deployment, its JSON text (kept for restarts), and where to answer.
    Deploy(Box<Deployment>, Vec<u8>, Sender<(u16, String)>),
    Exit(TaskExit),
    Health {
        module: String,
        started_ms: u64,
        ok: bool,
        detail: String,
    },
    Disconnected(CtrError),
    /// A deployment was refused: only `lastDesiredStatus` changes.
    Rejected(u16, String),
}

/// Called with every accepted deployment (the runtime updates the hub's routes and identities).
pub type DeploymentHook = Box<dyn Fn(&Deployment) + Send + Sync>;

/// The running agent, as seen from the management API.
#[derive(Clone)]
pub struct AgentHandle {
    tx: Sender<Input>,
    report: Arc<Mutex<Value>>,
    edge_ids_check: Arc<PathBuf>,
}

/// Validates a deployment the way the agent will apply it: the manifest itself (pure, with
/// IoT Edge's codes), then every module's image reference and createOptions.
///
/// # Errors
/// `(code, message)`: 400 naming the field, 412 for a schema version, 417 for no deployment.
pub fn validate(bytes: &[u8], volumes_dir: &Path) -> Result<Deployment, (u16, String)> {
    let deployment = manifest::parse_deployment(bytes).map_err(|e: DeploymentError| {
        // The one-line rendering (escaped path), without its leading code: the answer has it.
        let code = e.status.code();
        let text = e.to_string();
        let text = text
            .strip_prefix(&format!("{code} at "))
            .or_else(|| text.strip_prefix(&format!("{code}: ")))
            .unwrap_or(&text);
        (code, text.to_owned())
    })?;
    for spec in &deployment.agent.modules {
        let at = format!("modulesContent.$edgeAgent.properties.desired.modules.{}", spec.name);
        Reference::parse(&spec.image).map_err(|e| (400, format!("{at}.settings.image: {e}")))?;
        container::translate(&spec.create_options, &spec.env, &[], volumes_dir)
            .map_err(|e| (400, format!("{at}.settings.{e}")))?;
    }
    Ok(deployment)
}

impl AgentHandle {
    /// Validates and hands a deployment to the agent; answers IoT Edge's status code and a
    /// message. A rejected deployment never reaches the agent, so nothing changes.
    pub async fn deploy(&self, bytes: &[u8]) -> (u16, String) {
        let deployment = match validate(bytes, &self.edge_ids_check) {
            Ok(d) => d,
            Err(answer) => {
                // Reported as edgeAgent reports a bad desired state; nothing else changes.
                let _ = self.tx.send(Input::Rejected(answer.0, answer.1.clone())).await;
                return answer;
            }
        };
        let (reply_tx, reply_rx) = smol::channel::bounded(1);
        if self.tx.send(Input::Deploy(Box::new(deployment), bytes.to_vec(), reply_tx)).await.is_err() {
            return (DeploymentStatus::Failed.code(), "the agent is not running".to_owned());
        }
        // The agent takes inputs between reconciles; a long pull can hold it. The deployment is
        // queued and will be applied, so say so rather than time out.
        smol::future::or(async { reply_rx.recv().await.unwrap_or((500, "the agent stopped before answering".to_owned())) }, async {
            smol::Timer::after(DEPLOY_REPLY_WAIT).await;
            (200, "deployment accepted and queued: the agent is busy (pulling or stopping modules) and applies it next".to_owned())
        })
        .await
    }

    /// The reported properties document as of the last change.
    pub fn report(&self) -> Value {
        self.report.lock().map(|r| r.clone()).unwrap_or(Value::Null)
    }
}

/// How a module is doing beyond what containerd says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Override {
    /// Pulling its image.
    Downloading,
    /// A command failed; retried at `retry_at`.
    Failed { retry_at: u64 },
}

/// The agent's record of one module.
struct Module {
    state: ModuleState,
    /// A container exists in containerd.
    exists: bool,
    image: String,
    description: String,
    over: Option<Override>,
    failures: u32,
    health: Option<(Healthcheck, Vec<u8>)>,
    /// `health` has been worked out for the current container (it may be `None`: no check).
    health_known: bool,
    health_task: Option<smol::Task<()>>,
    health_failures: u32,
    pump: Option<Pump>,
}

impl Module {
    fn new(name: &str) -> Module {
        Module {
            state: ModuleState { name: name.to_owned(), ..ModuleState::default() },
            exists: false,
            image: String::new(),
            description: String::new(),
            over: None,
            failures: 0,
            health: None,
            health_known: false,
            health_task: None,
            health_failures: 0,
            pump: None,
        }
    }
}

/// The agent task's state.
pub struct Agent {
    settings: AgentSettings,
    hook: DeploymentHook,
    deployment: Option<Deployment>,
    desired_version: u64,
    last_status: (u16, String),
    modules: BTreeMap<String, Module>,
    ctr: Option<Containerd>,
    ctr_error: Option<String>,
    watcher: Option<smol::Task<()>>,
    tx: Sender<Input>,
    rx: Receiver<Input>,
    report: Arc<Mutex<Value>>,
    started_ms: u64,
    /// The clock reading the last plan was made with.
    planned_at: u64,
    /// The bookkeeping file's last written text.
    saved: Mutex<String>,
    /// Workload API sockets, one per desired module (served while the module is desired,
    /// whether or not containerd is up).
    workloads: HashMap<String, smol::Task<()>>,
    /// Images this agent manages (pulled, or run by its containers), by containerd name.
    managed_images: HashSet<String>,
    /// Images resolved in this process, by containerd name.
    images: HashMap<String, ReadyImage>,
}

impl Agent {
    /// Makes the agent and its handle; `deployment` is applied when [`Agent::run`] starts.
    pub fn new(settings: AgentSettings, deployment: Option<Deployment>, hook: DeploymentHook) -> (Agent, AgentHandle) {
        let (tx, rx) = smol::channel::bounded(INPUT_QUEUE_MAX);
        let report = Arc::new(Mutex::new(Value::Null));
        let handle =
            AgentHandle { tx: tx.clone(), report: report.clone(), edge_ids_check: Arc::new(settings.volumes_dir()) };
        let desired_version = u64::from(deployment.is_some());
        let agent = Agent {
            settings,
            hook,
            deployment,
            desired_version,
            last_status: (200, String::new()),
            modules: BTreeMap::new(),
            ctr: None,
            ctr_error: None,
            watcher: None,
            tx,
            rx,
            report,
            started_ms: now_ms(),
            planned_at: now_ms(),
            saved: Mutex::new(String::new()),
            managed_images: HashSet::new(),
            workloads: HashMap::new(),
            images: HashMap::new(),
        };
        agent.publish();
        (agent, handle)
    }

    fn desired(&self) -> Vec<ModuleSpec> {
        self.deployment.as_ref().map(|d| d.agent.modules.clone()).unwrap_or_default()
    }

    fn spec(&self, name: &str) -> Option<ModuleSpec> {
        self.deployment.as_ref().and_then(|d| d.agent.modules.iter().find(|m| m.name == name).cloned())
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        for dir in [self.settings.dir.clone(), self.settings.logs_dir(), self.settings.fifo_dir()] {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                log::error!("agent directory {}: {e}", dir.display());
            }
        }
        let _ = std::fs::set_permissions(&self.settings.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        // Downloads interrupted by a crash or power cut are of no use: blobs are fetched again.
        let _ = std::fs::remove_dir_all(self.settings.downloads_dir());
        self.load_bookkeeping();
        self.sync_workloads();
        let mut backoff = Duration::from_secs(1);
        let mut work = true;
        loop {
            if self.ctr.is_none() {
                match Containerd::connect(&self.settings.socket, &self.settings.namespace).await {
                    Ok(ctr) => {
                        backoff = Duration::from_secs(1);
                        self.connected(ctr).await;
                    }
                    Err(e) => {
                        if self.ctr_error.as_deref() != Some(&e.message) {
                            log::error!("{e}; modules are not managed until it answers (retrying with backoff up to {}s); the hub keeps running", RECONNECT_MAX.as_secs());
                        }
                        self.ctr_error = Some(e.message);
                        self.publish();
                        work = true;
                        self.wait_input(Some(now_ms() + backoff.as_millis() as u64)).await;
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            if work {
                self.reconcile().await;
            }
            // containerd lost during the reconcile: go back to connecting (with backoff).
            let wake = if self.ctr.is_none() { Some(now_ms()) } else { self.next_wakeup() };
            work = self.wait_input(wake).await;
        }
    }

    /// Waits for an input (or until `until_ms`), then handles it and every input already queued.
    /// Returns whether something happened that calls for a reconcile (the timer counts).
    async fn wait_input(&mut self, until_ms: Option<u64>) -> bool {
        let rx = self.rx.clone();
        let timer = async {
            match until_ms {
                Some(at) => smol::Timer::after(Duration::from_millis(at.saturating_sub(now_ms()).max(1))).await,
                None => smol::Timer::never().await,
            };
            None
        };
        let first = smol::future::or(async { rx.recv().await.ok() }, timer).await;
        let Some(first) = first else { return true };
        let mut work = self.handle(first).await;
        while let Ok(next) = rx.try_recv() {
            work |= self.handle(next).await;
        }
        work
    }

    /// Handles one input; returns whether it calls for a reconcile.
    async fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Deploy(deployment, raw, reply) => {
                self.accept(*deployment, &raw);
                let _ = reply.try_send((200, "deployment accepted; modules are being reconciled".to_owned()));
                true
            }
            Input::Exit(exit) => {
                if exit.container_id != exit.process_id {
                    return false; // an exec'd health check; its task waits for it itself
                }
                if let Some(m) = self.modules.get_mut(&exit.container_id) {
                    log::info!("module {}: exited with code {}", exit.container_id, exit.exit_status);
                    if m.state.running {
                        m.state.running = false;
                        m.state.exit_code = Some(i64::from(exit.exit_status));
                        m.state.last_exit_unix_ms = Some(exit.exited_at_unix_ms);
                        m.state.healthy = None;
                    }
                    m.health_task = None;
                }
                true
            }
            Input::Health { module, started_ms, ok, detail } => self.health_verdict(&module, started_ms, ok, &detail),
            Input::Rejected(code, message) => {
                self.last_status = (code, message);
                self.publish();
                false
            }
            Input::Disconnected(e) => {
                log::error!("{e}; reconnecting");
                self.lost(e);
                true
            }
        }
    }

    /// Makes `deployment` the desired state (already validated).
    fn accept(&mut self, deployment: Deployment, raw: &[u8]) {
        (self.hook)(&deployment);
        let path = self.settings.deployment_file();
        let tmp = path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, raw).and_then(|()| std::fs::rename(&tmp, &path)) {
            log::warn!("{}: {e}; this deployment will not survive a restart", path.display());
        }
        self.deployment = Some(deployment);
        self.sync_workloads();
        self.desired_version += 1;
        self.last_status = (200, String::new());
        for m in self.modules.values_mut() {
            // A new deployment gives failed commands a fresh chance, as IoT Edge does.
            if matches!(m.over, Some(Override::Failed { .. })) {
                m.over = None;
                m.failures = 0;
            }
        }
        log::info!("deployment {} accepted: {} module(s)", self.desired_version, self.desired().len());
        self.publish();
    }

    /// One workload API socket per desired module; sockets of modules no longer desired go.
    fn sync_workloads(&mut self) {
        let desired: HashSet<String> = self.desired().into_iter().map(|s| s.name).collect();
        let gone: Vec<String> = self.workloads.keys().filter(|m| !desired.contains(*m)).cloned().collect();
        for module in gone {
            self.workloads.remove(&module);
            let _ = std::fs::remove_dir_all(workload::module_dir(&self.settings.dir, &module));
        }
        let (socket_name, _) = workload::container_location(&self.settings.workload_uri);
        for module in desired {
            if self.workloads.contains_key(&module) {
                continue;
            }
            let dir = workload::module_dir(&self.settings.dir, &module);
            let w = workload::ModuleWorkload {
                module: module.clone(),
                key: tinyedge_platform::identity::derive_module_key(&self.settings.device_key, &module),
                trust_bundle: self.settings.trust_bundle.clone(),
            };
            match workload::start(&dir, &socket_name, w) {
                Ok(task) => {
                    self.workloads.insert(module, task);
                }
                Err(e) => log::error!("module {module}: workload API socket in {}: {e}", dir.display()),
            }
        }
    }

    /// Books a health check's result; returns whether the module's health changed.
    fn health_verdict(&mut self, module: &str, started_ms: u64, ok: bool, detail: &str) -> bool {
        let Some(m) = self.modules.get_mut(module) else { return false };
        if !m.state.running || m.state.last_start_unix_ms != Some(started_ms) {
            return false; // a verdict about an earlier run
        }
        let Some((check, _)) = &m.health else { return false };
        if ok {
            m.health_failures = 0;
            if m.state.healthy == Some(true) {
                return false;
            }
            log::info!("module {module}: healthy");
            m.state.healthy = Some(true);
            return true;
        }
        if now_ms().saturating_sub(started_ms) < check.start_period.as_millis() as u64 {
            return false; // failures in the start period do not count (Docker)
        }
        m.health_failures += 1;
        log::warn!("module {module}: health check failed ({}/{}): {detail}", m.health_failures, check.retries);
        if m.health_failures >= check.retries.max(1) && m.state.healthy != Some(false) {
            m.state.healthy = Some(false);
            m.description = format!("health check failed {} times: {detail}", m.health_failures);
            return true;
        }
        false
    }

    /// A fresh connection: subscribe to exits first (so none is missed), then adopt.
    async fn connected(&mut self, ctr: Containerd) {
        let tx = self.tx.clone();
        let watcher_ctr = ctr.clone();
        self.watcher = Some(smol::spawn(async move {
            let tx_exit = tx.clone();
            let e = watcher_ctr
                .watch_exits(move |exit| {
                    if tx_exit.try_send(Input::Exit(exit)).is_err() {
                        log::warn!("agent input queue full: an exit event is dropped (the next reconcile reads it from containerd)");
                    }
                })
                .await;
            let _ = tx.send(Input::Disconnected(e)).await;
        }));
        self.ctr = Some(ctr);
        self.ctr_error = None;
        self.refresh().await;
        log::info!(
            "agent: {} existing module container(s) adopted",
            self.modules.values().filter(|m| m.exists).count()
        );
    }

    /// Re-reads every container the agent made and its task from containerd.
    async fn refresh(&mut self) {
        let Some(ctr) = self.ctr.clone() else { return };
        let containers = match ctr.containers_with_label(LABEL_MODULE).await {
            Ok(c) => c,
            Err(e) => {
                self.lost(e);
                return;
            }
        };
        let present: HashSet<String> = containers.iter().map(|c| c.id.clone()).collect();
        for m in self.modules.values_mut() {
            if !present.contains(&m.state.name) {
                m.exists = false;
                m.state.running = false;
                m.health_task = None;
            }
        }
        for c in containers {
            let task = match ctr.task(&c.id).await {
                Ok(t) => t,
                Err(e) if e.unavailable => {
                    self.lost(e);
                    return;
                }
                Err(e) => {
                    log::warn!("module {}: {e}; its state is read again at the next reconcile", c.id);
                    continue;
                }
            };
            let fifo_dir = self.settings.fifo_dir();
            let logs_dir = self.settings.logs_dir();
            let max = self.settings.log_max_bytes;
            let m = self.modules.entry(c.id.clone()).or_insert_with(|| Module::new(&c.id));
            let adopted = !m.exists;
            m.exists = true;
            m.image = c.labels.get(LABEL_IMAGE).cloned().unwrap_or_else(|| c.image.clone());
            m.state.image = c.image.clone();
            self.managed_images.insert(c.image.clone());
            m.state.config_hash = c.labels.get(LABEL_CONFIG).cloned().unwrap_or_default();
            if m.pump.is_none() {
                match stdio::start_pump(&fifo_dir, &logs_dir, &c.id, max) {
                    Ok(p) => m.pump = Some(p),
                    Err(e) => log::warn!("module {}: log FIFOs: {e}", c.id),
                }
            }
            match task {
                Some(t) if t.running => {
                    if !m.state.running {
                        m.state.running = true;
                        m.state.stopped_by_agent = false;
                        if m.state.last_start_unix_ms.is_none() {
                            m.state.last_start_unix_ms = Some(now_ms());
                        }
                    }
                }
                Some(t) => {
                    if m.state.running || adopted {
                        m.state.running = false;
                        m.state.exit_code = t.exit_status.map(i64::from);
                        if let Some(at) = t.exited_at_unix_ms {
                            m.state.last_exit_unix_ms = Some(at);
                        }
                    }
                    m.health_task = None;
                }
                None => {
                    m.state.running = false;
                    m.health_task = None;
                }
            }
            if adopted && m.state.running {
                log::info!("module {}: adopted running container", c.id);
            }
        }
        // Health checks of running modules whose container matches the deployment.
        let names: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, m)| m.state.running && m.health_task.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self.modules.get(&name).is_some_and(|m| !m.health_known) {
                if let Some(spec) = self.spec(&name) {
                    if let Ok(Some(image)) = self.resolve_local(&spec).await {
                        if let Ok((config, _)) = self.container_config(&spec) {
                            let health = self.health_plan(&spec, &config, &image);
                            if let Some(m) = self.modules.get_mut(&name) {
                                m.health = health;
                                m.health_known = true;
                                m.health_known = true;
                            }
                        }
                    }
                }
            }
            self.start_health(&name);
        }
    }

    /// containerd is gone (or answered unusably): drop the connection, the event watcher and
    /// the health loops; verdicts from before the outage do not count after it.
    fn lost(&mut self, e: CtrError) {
        log::error!("{e}");
        if e.unavailable {
            self.ctr = None;
            self.watcher = None;
            for m in self.modules.values_mut() {
                m.health_task = None;
                m.health_failures = 0;
                m.state.healthy = None;
            }
            self.ctr_error = Some(e.message);
            self.publish();
        }
    }

    /// Plans against containerd's state and executes the plan.
    async fn reconcile(&mut self) {
        self.refresh().await;
        let Some(ctr) = self.ctr.clone() else {
            self.publish();
            return;
        };
        let desired = self.desired();
        let now = now_ms();
        // Images present locally, for imagePullPolicy never.
        let mut present = HashSet::new();
        for spec in desired.iter().filter(|s| s.image_pull_policy == manifest::ImagePullPolicy::Never) {
            if let Ok(reference) = self.reference(spec) {
                if matches!(ctr.image(&reference.name()).await, Ok(Some(_))) {
                    present.insert(spec.image.clone());
                }
            }
        }
        let actual: Vec<ModuleState> = self.modules.values().filter(|m| m.exists).map(|m| m.state.clone()).collect();
        let plan = plan::plan(&desired, &actual, &|image| present.contains(image), &self.settings.restart, now);
        self.planned_at = now;
        for (module, reason) in &plan.reasons {
            let m = self.modules.entry(module.clone()).or_insert_with(|| Module::new(module));
            m.description.clone_from(reason);
        }
        let mut failed: HashSet<String> = HashSet::new();
        for command in &plan.commands {
            let name = command.module().to_owned();
            if failed.contains(&name) {
                continue;
            }
            if let Some(Override::Failed { retry_at }) = self.modules.get(&name).and_then(|m| m.over.clone()) {
                if retry_at > now && !matches!(command, Command::Stop { .. } | Command::Remove { .. }) {
                    failed.insert(name);
                    continue;
                }
            }
            if let Err(e) = self.execute(&ctr, command).await {
                log::error!("module {name}: {e}");
                failed.insert(name.clone());
                let unit = self.settings.restart.cool_off_unit;
                let m = self.modules.entry(name.clone()).or_insert_with(|| Module::new(&name));
                let wait =
                    plan::cool_off(&RestartSettings { cool_off_unit: unit, ..self.settings.restart }, m.failures);
                m.failures = m.failures.saturating_add(1);
                m.over = Some(Override::Failed { retry_at: now_ms() + wait.as_millis() as u64 });
                m.description = e.message.clone();
                if e.unavailable {
                    self.lost(e);
                    break;
                }
            } else if let Some(m) = self.modules.get_mut(&name) {
                if !matches!(command, Command::Pull { .. }) || m.over == Some(Override::Downloading) {
                    m.over = None;
                }
                m.failures = 0;
            }
        }
        // A failure whose retry came and found nothing left to do is over.
        let commanded: HashSet<&str> = plan.commands.iter().map(Command::module).collect();
        let planned_at = self.planned_at;
        for (name, m) in &mut self.modules {
            if let Some(Override::Failed { retry_at }) = m.over {
                if retry_at <= planned_at && !failed.contains(name) && !commanded.contains(name.as_str()) {
                    m.over = None;
                    m.failures = 0;
                }
            }
        }
        let now = now_ms();
        for name in &plan.restarted {
            if let Some(m) = self.modules.get_mut(name) {
                if !failed.contains(name) {
                    m.state.record_restart(now);
                }
            }
        }
        for name in &plan.reset_counts {
            if let Some(m) = self.modules.get_mut(name) {
                m.state.reset_restart_counts();
            }
        }
        // Modules that are neither desired nor in containerd are gone.
        let desired_names: HashSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        self.modules.retain(|name, m| m.exists || desired_names.contains(name.as_str()));
        self.collect_images(&ctr, &desired).await;
        self.save_bookkeeping();
        self.publish();
    }

    /// Deletes the images this agent pulled that no container and no desired module uses any
    /// more (a module removed, or recreated from a new image), so the disk does not fill up
    /// with every image ever deployed. containerd's garbage collector frees their layers.
    /// Images put into the namespace by other means and never run by a module are left alone.
    async fn collect_images(&mut self, ctr: &Containerd, desired: &[ModuleSpec]) {
        let mut used: HashSet<String> =
            self.modules.values().filter(|m| m.exists).map(|m| m.state.image.clone()).collect();
        for spec in desired {
            if let Ok(reference) = self.reference(spec) {
                used.insert(reference.name());
            }
        }
        let unused: Vec<String> = self.managed_images.iter().filter(|name| !used.contains(*name)).cloned().collect();
        for name in unused {
            match ctr.delete_image(&name).await {
                Ok(()) => {
                    log::info!("image {name}: no module uses it any more; deleted");
                    self.images.remove(&name);
                    self.managed_images.remove(&name);
                }
                Err(e) => log::warn!("{e}"),
            }
        }
    }

    fn reference(&self, spec: &ModuleSpec) -> Result<Reference, CtrError> {
        let mut reference = Reference::parse(&spec.image).map_err(|e| CtrError::other(e.to_string()))?;
        if let Some(digest) = &spec.digest {
            reference.digest = Some(digest.clone());
            reference.tag = None;
        }
        Ok(reference)
    }

    fn credentials(&self, reference: &Reference) -> Option<Credentials> {
        let creds: &[RegistryCredential] =
            self.deployment.as_ref().map(|d| d.agent.registry_credentials.as_slice()).unwrap_or_default();
        creds
            .iter()
            .find(|c| {
                let address =
                    c.address.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
                address == reference.registry || address == reference.api_host()
            })
            .map(|c| Credentials { username: c.username.clone(), password: c.password.clone() })
    }

    async fn resolve_local(&mut self, spec: &ModuleSpec) -> Result<Option<ReadyImage>, CtrError> {
        let reference = self.reference(spec)?;
        if let Some(image) = self.images.get(&reference.name()) {
            return Ok(Some(image.clone()));
        }
        let Some(ctr) = self.ctr.clone() else { return Ok(None) };
        let image = pull::local(&ctr, &reference).await?;
        if let Some(image) = &image {
            self.images.insert(image.name.clone(), image.clone());
        }
        Ok(image)
    }

    /// createOptions translated with the manifest env and the IoT Edge environment.
    fn container_config(&self, spec: &ModuleSpec) -> Result<(ContainerConfig, String), CtrError> {
        let key = tinyedge_platform::identity::derive_module_key(&self.settings.device_key, &spec.name);
        let connection_string = tinyedge_platform::identity::connection_string(
            &self.settings.iothub_hostname,
            &self.settings.device_id,
            Some(&spec.name),
            &key,
            &self.settings.gateway_hostname,
        );
        let ids = EdgeIds {
            iothub_hostname: self.settings.iothub_hostname.clone(),
            gateway_hostname: self.settings.gateway_hostname.clone(),
            device_id: self.settings.device_id.clone(),
            module_id: spec.name.clone(),
            generation_id: plan::config_hash(spec),
            workload_uri: self.settings.workload_uri.clone(),
            api_version: container::env::WORKLOAD_API_VERSION.to_owned(),
            connection_string: Some(connection_string),
        };
        let edge_env = container::edge_environment(&ids);
        let config = container::translate(&spec.create_options, &spec.env, &edge_env, &self.settings.volumes_dir())
            .map_err(|e| CtrError::other(e.to_string()))?;
        let unsupported = config.unsupported.join("; ");
        Ok((config, unsupported))
    }

    fn health_plan(
        &self,
        spec: &ModuleSpec,
        config: &ContainerConfig,
        image: &ReadyImage,
    ) -> Option<(Healthcheck, Vec<u8>)> {
        let check = config.healthcheck.clone()?;
        let args = spec::health_args(&check.test)?;
        let inputs = SpecInputs {
            module: &spec.name,
            namespace: &self.settings.namespace,
            image: &image.config,
            devices: &[],
            host_files: &[],
        };
        let process = spec::process(config, &inputs, Some(args)).ok()?;
        Some((check, serde_json::to_vec(&process).ok()?))
    }

    async fn execute(&mut self, ctr: &Containerd, command: &Command) -> Result<(), CtrError> {
        let name = command.module().to_owned();
        match command {
            Command::Pull { .. } => {
                let spec = self.spec(&name).ok_or_else(|| CtrError::other("not in the deployment"))?;
                let reference = self.reference(&spec)?;
                let m = self.modules.entry(name.clone()).or_insert_with(|| Module::new(&name));
                m.over = Some(Override::Downloading);
                self.publish();
                let started = std::time::Instant::now();
                let image = pull::pull(
                    ctr,
                    &reference,
                    self.credentials(&reference),
                    &self.settings.insecure_registries,
                    &self.settings.downloads_dir(),
                )
                .await?;
                log::info!("module {name}: image {} pulled in {} ms", reference, started.elapsed().as_millis());
                self.managed_images.insert(image.name.clone());
                self.images.insert(image.name.clone(), image);
                if let Some(m) = self.modules.get_mut(&name) {
                    m.over = None;
                }
                Ok(())
            }
            Command::Create { .. } => self.create(ctr, &name).await,
            Command::Start { .. } => self.start(ctr, &name).await,
            Command::Stop { .. } => self.stop(ctr, &name).await,
            Command::Remove { .. } => {
                self.stop(ctr, &name).await?;
                ctr.delete_task(&name).await?;
                ctr.delete_container(&name).await?;
                ctr.remove_snapshot(&name).await?;
                stdio::remove_fifos(&self.settings.fifo_dir(), &name);
                if let Some(m) = self.modules.get_mut(&name) {
                    m.exists = false;
                    m.pump = None;
                    m.health_task = None;
                    m.health = None;
                    m.health_known = false;
                    m.state = ModuleState { name: name.clone(), ..ModuleState::default() };
                }
                log::info!("module {name}: container removed");
                Ok(())
            }
        }
    }

    async fn create(&mut self, ctr: &Containerd, name: &str) -> Result<(), CtrError> {
        let spec = self.spec(name).ok_or_else(|| CtrError::other("not in the deployment"))?;
        let reference = self.reference(&spec)?;
        let image = match self.images.get(&reference.name()) {
            Some(image) => image.clone(),
            None => self.resolve_local(&spec).await?.ok_or_else(|| {
                CtrError::other(format!(
                    "image {reference} is not on the device (imagePullPolicy {})",
                    spec.image_pull_policy.as_str()
                ))
            })?,
        };
        let (mut config, unsupported) = self.container_config(&spec)?;
        // The module's own workload API socket, at the path IOTEDGE_WORKLOADURI names.
        let (_, workload_dir) = workload::container_location(&self.settings.workload_uri);
        config.mounts.push(container::Mount {
            source: workload::module_dir(&self.settings.dir, name).display().to_string(),
            target: workload_dir,
            read_only: false,
            kind: container::MountKind::Bind,
        });
        if !unsupported.is_empty() {
            log::warn!("module {name}: createOptions not applied: {unsupported}");
        }
        let devices = config
            .devices
            .iter()
            .map(|d| device_node(&d.host_path, &d.container_path, &d.permissions))
            .collect::<Result<Vec<_>, _>>()?;
        for mount in config.mounts.iter().filter(|m| m.kind == container::MountKind::Volume) {
            std::fs::create_dir_all(&mount.source)
                .map_err(|e| CtrError::other(format!("volume {}: {e}", mount.source)))?;
        }
        let host_files: Vec<&str> =
            ["/etc/hosts", "/etc/resolv.conf"].into_iter().filter(|f| Path::new(f).exists()).collect();
        let inputs = SpecInputs {
            module: name,
            namespace: &self.settings.namespace,
            image: &image.config,
            devices: &devices,
            host_files: &host_files,
        };
        let oci = spec::runtime_spec(&config, &inputs).map_err(|e| CtrError::other(format!("module {name}: {e}")))?;
        let spec_json = serde_json::to_vec(&oci).map_err(|e| CtrError::other(e.to_string()))?;
        // A stale snapshot or container of the same name (a crash mid-create) is replaced.
        let _ = ctr.delete_container(name).await;
        ctr.remove_snapshot(name).await?;
        // Until the container references its rootfs snapshot, only a lease keeps containerd's
        // garbage collector (which runs after every lease deletion, e.g. a pull's) off it.
        let lease = format!("tinyedge-create-{name}-{}", now_ms());
        ctr.create_lease(&lease).await?;
        // createOptions Labels become container labels (as in Docker); ours win.
        let mut labels: HashMap<String, String> = config.labels.iter().cloned().collect();
        labels.insert(LABEL_MODULE.to_owned(), name.to_owned());
        labels.insert(LABEL_CONFIG.to_owned(), plan::config_hash(&spec));
        labels.insert(LABEL_IMAGE.to_owned(), spec.image.clone());
        let created = async {
            ctr.prepare(name, &image.top_snapshot, Some(&lease)).await?;
            ctr.create_container(name, &image.name, spec_json, labels).await
        }
        .await;
        let _ = ctr.delete_lease(&lease).await;
        if let Err(e) = created {
            let _ = ctr.remove_snapshot(name).await;
            return Err(e);
        }
        let health = self.health_plan(&spec, &config, &image);
        let m = self.modules.entry(name.to_owned()).or_insert_with(|| Module::new(name));
        m.state = ModuleState {
            name: name.to_owned(),
            config_hash: plan::config_hash(&spec),
            image: image.name.clone(),
            ..ModuleState::default()
        };
        m.exists = true;
        m.image = spec.image.clone();
        m.health = health;
        m.health_failures = 0;
        m.description =
            if unsupported.is_empty() { String::new() } else { format!("createOptions not applied: {unsupported}") };
        log::info!("module {name}: container created from {}", image.name);
        Ok(())
    }

    async fn start(&mut self, ctr: &Containerd, name: &str) -> Result<(), CtrError> {
        let fifo_dir = self.settings.fifo_dir();
        let logs_dir = self.settings.logs_dir();
        let max = self.settings.log_max_bytes;
        let m = self.modules.entry(name.to_owned()).or_insert_with(|| Module::new(name));
        if m.pump.is_none() {
            m.pump = Some(
                stdio::start_pump(&fifo_dir, &logs_dir, name, max)
                    .map_err(|e| CtrError::other(format!("log FIFOs: {e}")))?,
            );
        }
        ctr.delete_task(name).await?;
        let mounts = match ctr.mounts(name).await {
            Ok(mounts) => mounts,
            Err(e) if e.not_found => {
                // The rootfs snapshot is gone (removed by hand, or lost to an old GC race):
                // drop the container so the next plan creates it afresh.
                ctr.delete_container(name).await?;
                return Err(CtrError::other(format!("{}; the container is recreated", e.message)));
            }
            Err(e) => return Err(e),
        };
        let (stdout, stderr) = stdio::fifo_paths(&fifo_dir, name);
        let pid = ctr.start_task(name, mounts, &stdout, &stderr).await?;
        let m = self.modules.get_mut(name).ok_or_else(|| CtrError::other("vanished"))?;
        m.state.running = true;
        m.state.stopped_by_agent = false;
        m.state.healthy = None;
        m.state.last_start_unix_ms = Some(now_ms());
        m.health_failures = 0;
        if !m.description.starts_with("createOptions not applied") {
            m.description.clear();
        }
        log::info!("module {name}: started (pid {pid})");
        self.start_health(name);
        Ok(())
    }

    /// Starts the health loop of a running module that has a health check.
    fn start_health(&mut self, name: &str) {
        let Some(ctr) = self.ctr.clone() else { return };
        let tx = self.tx.clone();
        let Some(m) = self.modules.get_mut(name) else { return };
        let Some((check, process)) = m.health.clone() else { return };
        let Some(started_ms) = m.state.last_start_unix_ms else { return };
        let module = name.to_owned();
        m.health_task = Some(smol::spawn(async move {
            static EXECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            loop {
                smol::Timer::after(check.interval.max(Duration::from_millis(100))).await;
                // Unique per process lifetime: a loop cancelled mid-check may leave its exec
                // behind in the shim, and a reused id would then fail as "already exists".
                let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let exec_id = format!("{HEALTH_EXEC_PREFIX}{started_ms}-{n}");
                let Some((ok, detail)) = health_once(&ctr, &module, &exec_id, process.clone(), check.timeout).await
                else {
                    continue; // containerd unreachable: no verdict on the module
                };
                if tx.send(Input::Health { module: module.clone(), started_ms, ok, detail }).await.is_err() {
                    return;
                }
            }
        }));
    }

    async fn stop(&mut self, ctr: &Containerd, name: &str) -> Result<(), CtrError> {
        if let Some(m) = self.modules.get_mut(name) {
            m.health_task = None;
        }
        let running = matches!(ctr.task(name).await?, Some(t) if t.running);
        let mut exit_code = None;
        if running {
            ctr.kill(name, "", 15).await?;
            let timeout = self.settings.stop_timeout;
            let waited = smol::future::or(async { Some(ctr.wait(name, "").await) }, async {
                smol::Timer::after(timeout).await;
                None
            })
            .await;
            exit_code = match waited {
                Some(Ok(code)) => Some(code),
                _ => {
                    log::warn!("module {name}: still running {}s after SIGTERM; SIGKILL", timeout.as_secs());
                    ctr.kill(name, "", 9).await?;
                    // A process stuck in the kernel (D state) may never die: do not wait forever.
                    smol::future::or(async { ctr.wait(name, "").await.ok() }, async {
                        smol::Timer::after(KILL_WAIT).await;
                        log::error!("module {name}: still not dead {} s after SIGKILL", KILL_WAIT.as_secs());
                        None
                    })
                    .await
                }
            };
        }
        if let Some(m) = self.modules.get_mut(name) {
            if running || m.state.running {
                m.state.running = false;
                m.state.stopped_by_agent = true;
                m.state.healthy = None;
                m.state.last_exit_unix_ms = Some(now_ms());
                if let Some(code) = exit_code {
                    m.state.exit_code = Some(i64::from(code));
                }
                log::info!("module {name}: stopped");
            }
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Option<u64> {
        let actual: Vec<ModuleState> = self.modules.values().filter(|m| m.exists).map(|m| m.state.clone()).collect();
        // From the time the last plan was made: a restart that came due while that plan was
        // being executed (pulls and stops take time) is still ahead of it, so it is not lost.
        let planned = plan::next_wakeup(&self.desired(), &actual, &self.settings.restart, self.planned_at);
        // Retries the last plan could not act on yet, even if due by now (a long pull of
        // another module may have outlasted them).
        let planned_at = self.planned_at;
        let retries = self.modules.values().filter_map(|m| match m.over {
            Some(Override::Failed { retry_at }) if retry_at > planned_at => Some(retry_at),
            _ => None,
        });
        planned.into_iter().chain(retries).min()
    }

    /// Recomputes the reported document.
    fn publish(&self) {
        let desired = self.desired();
        let now = now_ms();
        let mut names: Vec<&String> = self.modules.keys().collect();
        for spec in &desired {
            if !self.modules.contains_key(&spec.name) {
                names.push(&spec.name);
            }
        }
        names.sort();
        names.dedup();
        let empty = Module::new("");
        let mut statuses = Vec::new();
        for name in &names {
            let m = self.modules.get(*name).unwrap_or(&empty);
            let spec = desired.iter().find(|s| &&s.name == name);
            let (status, description) = if let Some(e) = &self.ctr_error {
                (RuntimeStatus::Unknown, e.clone())
            } else {
                match (&m.over, spec) {
                    (Some(Override::Downloading), _) => (RuntimeStatus::Unknown, "downloading".to_owned()),
                    // A recreate whose pull failed: the old container runs on.
                    (Some(Override::Failed { .. }), Some(spec)) if m.exists && m.state.running => (
                        plan::runtime_status(spec.restart_policy, &m.state, &self.settings.restart, now),
                        m.description.clone(),
                    ),
                    (Some(Override::Failed { .. }), _) => (RuntimeStatus::Failed, m.description.clone()),
                    (None, Some(spec)) if m.exists => (
                        plan::runtime_status(spec.restart_policy, &m.state, &self.settings.restart, now),
                        m.description.clone(),
                    ),
                    (None, None) if m.exists => (RuntimeStatus::Stopped, "not in the deployment: removing".to_owned()),
                    (None, _) if m.description.contains("not on the device") => {
                        (RuntimeStatus::Failed, m.description.clone())
                    }
                    (None, _) => (RuntimeStatus::Unknown, m.description.clone()),
                }
            };
            statuses.push((name.as_str(), m, spec, status, description));
        }
        let reports: Vec<report::ModuleReport<'_>> = statuses
            .iter()
            .map(|(name, m, spec, status, description)| report::ModuleReport {
                spec: *spec,
                name,
                state: &m.state,
                status: *status,
                description,
                // What runs: the container's image; the desired one until a container exists.
                image: if m.exists || spec.is_none() {
                    m.image.as_str()
                } else {
                    spec.map_or("", |s| s.image.as_str())
                },
            })
            .collect();
        let schema = self.deployment.as_ref().map_or("1.1", |d| d.agent.schema_version.as_str());
        let header = report::Header {
            schema_version: schema,
            desired_version: self.desired_version,
            status_code: self.last_status.0,
            status_description: &self.last_status.1,
            started_unix_ms: self.started_ms,
            containerd_error: self.ctr_error.as_deref(),
        };
        let mut doc = report::document(&header, &reports);
        // "downloading" is a runtimeStatus of its own in IoT Edge's reports.
        for (name, m, ..) in &statuses {
            if m.over == Some(Override::Downloading) && self.ctr_error.is_none() {
                doc["modules"][*name]["runtimeStatus"] = Value::from("downloading");
            }
        }
        if let Ok(mut r) = self.report.lock() {
            *r = doc;
        }
    }

    /// Restart bookkeeping survives agent restarts (IoT Edge keeps it in its module store).
    fn save_bookkeeping(&self) {
        let doc: serde_json::Map<String, Value> = self
            .modules
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "restartCount": m.state.restart_count,
                        "lastRestartMs": m.state.last_restart_unix_ms,
                        "lastStartMs": m.state.last_start_unix_ms,
                        "lastExitMs": m.state.last_exit_unix_ms,
                        "exitCode": m.state.exit_code,
                        "stoppedByAgent": m.state.stopped_by_agent,
                    }),
                )
            })
            .collect();
        let text = Value::Object(doc).to_string();
        if let Ok(mut last) = self.saved.lock() {
            if *last == text {
                return; // unchanged: spare the SD card
            }
            last.clone_from(&text);
        }
        let path = self.settings.bookkeeping_file();
        let tmp = path.with_extension("json.tmp");
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            log::warn!("{}: {e}", path.display());
        }
    }

    fn load_bookkeeping(&mut self) {
        let Ok(bytes) = std::fs::read(self.settings.bookkeeping_file()) else { return };
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&bytes) else {
            log::warn!("{}: unreadable, restart counts start at 0", self.settings.bookkeeping_file().display());
            return;
        };
        for (name, v) in doc {
            let mut m = Module::new(&name);
            m.state.restart_count = v["restartCount"].as_u64().unwrap_or(0) as u32;
            m.state.last_restart_unix_ms = v["lastRestartMs"].as_u64();
            m.state.last_start_unix_ms = v["lastStartMs"].as_u64();
            m.state.last_exit_unix_ms = v["lastExitMs"].as_u64();
            m.state.exit_code = v["exitCode"].as_i64();
            m.state.stopped_by_agent = v["stoppedByAgent"].as_bool().unwrap_or(false);
            self.modules.insert(name, m);
        }
    }
}

/// One health check: exec, wait with timeout, clean up. `(passed, detail)`, or `None` when
/// containerd could not be asked (that says nothing about the module).
async fn health_once(
    ctr: &Containerd,
    module: &str,
    exec_id: &str,
    process: Vec<u8>,
    timeout: Duration,
) -> Option<(bool, String)> {
    if let Err(e) = ctr.exec(module, exec_id, process).await {
        let _ = ctr.delete_process(module, exec_id).await;
        return (!e.unavailable).then_some((false, e.message));
    }
    let waited = smol::future::or(async { Some(ctr.wait(module, exec_id).await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await;
    let result = match waited {
        Some(Ok(0)) => Some((true, "exit 0".to_owned())),
        Some(Ok(code)) => Some((false, format!("the check exited with code {code}"))),
        Some(Err(e)) if e.unavailable => None,
        Some(Err(e)) => Some((false, e.message)),
        None => {
            let _ = ctr.kill(module, exec_id, 9).await;
            let _ = smol::future::or(async { ctr.wait(module, exec_id).await.ok() }, async {
                smol::Timer::after(KILL_WAIT).await;
                None
            })
            .await;
            Some((false, format!("the check did not finish within {} s", timeout.as_secs_f32())))
        }
    };
    let _ = ctr.delete_process(module, exec_id).await;
    result
}

/// A host device for the spec: type and numbers from `stat`.
fn device_node(host: &str, container_path: &str, permissions: &str) -> Result<DeviceNode, CtrError> {
    let stat = rustix::fs::stat(host).map_err(|e| CtrError::other(format!("HostConfig.Devices {host}: {e}")))?;
    let kind = match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::CharacterDevice => 'c',
        rustix::fs::FileType::BlockDevice => 'b',
        _ => return Err(CtrError::other(format!("HostConfig.Devices {host}: not a device node"))),
    };
    Ok(DeviceNode {
        container_path: container_path.to_owned(),
        kind,
        major: u64::from(rustix::fs::major(stat.st_rdev)),
        minor: u64::from(rustix::fs::minor(stat.st_rdev)),
        file_mode: stat.st_mode & 0o777,
        permissions: permissions.to_owned(),
    })
}
