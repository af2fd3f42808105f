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
//!
//! # Layout
//! This file holds the agent's state, its loop and the dispatch of inputs; each concern the
//! loop calls into has a file of its own, all of them `impl Agent` blocks on that one state.
//! - `deployment`: [`validate`] and [`AgentHandle`] (the management API's side), and what
//!   accepting a deployment does (persist it, tell the hub, one workload socket per module).
//! - `bookkeeping`: the agent's record of each module, and the restart bookkeeping that
//!   survives agent restarts (`modules.json`).
//! - `observe`: containerd seen from the agent: connecting, the exit event watcher, re-reading
//!   containers and tasks, losing the connection.
//! - `reconcile`: plan against what was observed, execute in order, book failures and retries.
//! - `lifecycle`: the container commands: create, start, stop, remove.
//! - `images`: references, registry credentials, pulls, local resolution, and deleting the
//!   images no module uses any more.
//! - `health`: health checks (exec'd in the container) and their verdicts.
//! - `status`: each module's reported status, and publishing the reported document.
//! - [`report`]: the reported document and the `list` table (pure).
//! - [`mgmt`]: the management socket (HTTP over a Unix socket).
//! - [`workload`]: the per-module workload API sockets.

mod bookkeeping;
mod deployment;
mod health;
mod images;
mod lifecycle;
pub mod mgmt;
mod observe;
mod reconcile;
pub mod report;
mod status;
pub mod workload;

pub use deployment::{validate, AgentHandle};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use smol::channel::{Receiver, Sender};

use crate::containerd::client::{now_ms, Containerd, CtrError, TaskExit};
use crate::containerd::pull::ReadyImage;
use crate::manifest::{Deployment, ModuleSpec};
use crate::plan::RestartSettings;
use bookkeeping::Module;

/// Label on every container the agent makes: the module's name.
pub const LABEL_MODULE: &str = "tinyedge.module";
/// Label with the image as the deployment wrote it (reported as `settings.image`).
pub const LABEL_IMAGE: &str = "tinyedge.image";
/// Label with the [`crate::plan::config_hash`] the container was made from.
pub const LABEL_CONFIG: &str = "tinyedge.config-hash";
/// Inputs waiting for the agent (deployments, exits, health verdicts); a full queue makes
/// senders wait (deployments) or drops the event (exits: the next reconcile reads every task's
/// state from containerd anyway).
pub const INPUT_QUEUE_MAX: usize = 256;
/// Longest wait between two attempts to reach containerd.
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);
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
        let handle = AgentHandle::new(tx.clone(), report.clone(), settings.volumes_dir());
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
            Input::Exit(exit) => self.exited(&exit),
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
}
