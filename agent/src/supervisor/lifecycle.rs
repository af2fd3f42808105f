//! A module's container from birth to removal: the planner's commands carried out against
//! containerd ([`Agent::execute`]). Create builds the OCI spec from createOptions and the IoT
//! Edge environment and makes the container under a lease; start wires the log FIFOs and
//! starts the task; stop is SIGTERM, then SIGKILL after the stop timeout; remove deletes task,
//! container, snapshot and FIFOs.

use std::collections::HashMap;
use std::path::Path;

use super::bookkeeping::Module;
use super::status::{Description, DescriptionKind};
use super::{workload, Agent, KILL_WAIT, LABEL_CONFIG, LABEL_IMAGE, LABEL_MODULE};
use crate::container::{self, ContainerConfig, EdgeIds};
use crate::containerd::client::{now_ms, Containerd, CtrError};
use crate::containerd::spec::{self, DeviceNode, SpecInputs};
use crate::containerd::stdio;
use crate::manifest::ModuleSpec;
use crate::plan::{self, Command, ModuleState};

/// Why a command failed.
#[derive(Debug)]
pub(super) enum CommandError {
    /// containerd refused, or is gone ([`CtrError::unavailable`]), or the agent could not
    /// prepare the call (a bad reference, createOptions, a device, a volume).
    Containerd(CtrError),
    /// The module's image is not on the device, so its container cannot be made.
    ImageMissing(String),
}

impl CommandError {
    /// What the module's description says, once it is this error.
    pub(super) fn kind(&self) -> DescriptionKind {
        match self {
            CommandError::Containerd(_) => DescriptionKind::Info,
            CommandError::ImageMissing(_) => DescriptionKind::ImageMissing,
        }
    }
}

impl From<CtrError> for CommandError {
    fn from(e: CtrError) -> CommandError {
        CommandError::Containerd(e)
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Containerd(e) => e.fmt(f),
            CommandError::ImageMissing(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CommandError {}

impl Agent {
    /// Carries out one command of the plan.
    pub(super) async fn execute(&mut self, ctr: &Containerd, command: &Command) -> Result<(), CommandError> {
        let name = command.module().to_owned();
        match command {
            Command::Pull { .. } => Ok(self.pull(ctr, &name).await?),
            Command::Create { .. } => self.create(ctr, &name).await,
            Command::Start { .. } => Ok(self.start(ctr, &name).await?),
            Command::Stop { .. } => Ok(self.stop(ctr, &name).await?),
            Command::Remove { .. } => Ok(self.remove(ctr, &name).await?),
        }
    }

    /// createOptions translated with the manifest env and the IoT Edge environment.
    pub(super) fn container_config(&self, spec: &ModuleSpec) -> Result<(ContainerConfig, String), CtrError> {
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

    async fn create(&mut self, ctr: &Containerd, name: &str) -> Result<(), CommandError> {
        let spec = self.spec(name).ok_or_else(|| CtrError::other("not in the deployment"))?;
        let reference = self.reference(&spec)?;
        let image = match self.images.get(&reference.name()) {
            Some(image) => image.clone(),
            None => self.resolve_local(&spec).await?.ok_or_else(|| {
                CommandError::ImageMissing(format!(
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
            return Err(e.into());
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
        m.description = if unsupported.is_empty() {
            Description::default()
        } else {
            Description::new(
                DescriptionKind::CreateOptionsNotApplied,
                format!("createOptions not applied: {unsupported}"),
            )
        };
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
        if m.description.kind != DescriptionKind::CreateOptionsNotApplied {
            m.description = Description::default();
        }
        log::info!("module {name}: started (pid {pid})");
        self.start_health(name);
        Ok(())
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

    /// Stops the module, then deletes its task, container, snapshot and FIFOs; its record
    /// starts afresh (its restart counts go with the container).
    async fn remove(&mut self, ctr: &Containerd, name: &str) -> Result<(), CtrError> {
        self.stop(ctr, name).await?;
        ctr.delete_task(name).await?;
        ctr.delete_container(name).await?;
        ctr.remove_snapshot(name).await?;
        stdio::remove_fifos(&self.settings.fifo_dir(), name);
        if let Some(m) = self.modules.get_mut(name) {
            m.exists = false;
            m.pump = None;
            m.health_task = None;
            m.health = None;
            m.health_known = false;
            m.state = ModuleState { name: name.to_owned(), ..ModuleState::default() };
        }
        log::info!("module {name}: container removed");
        Ok(())
    }
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
