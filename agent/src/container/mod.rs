//! Container configuration from Docker `createOptions`, for an OCI runtime (containerd + runc).
//!
//! IoT Edge hands `settings.createOptions` (Docker Engine API `ContainerCreate` JSON) straight to
//! Docker. tinyedge runs modules on containerd, so [`translate`] turns that JSON into a
//! [`ContainerConfig`] shaped like what an OCI runtime spec needs: process args, environment,
//! mounts, devices, resource limits, network mode and a health check.
//!
//! Rules:
//! - Empty (or whitespace, or `null`) create options give the defaults; so does `{}`.
//! - Invalid JSON, or a key tinyedge translates holding the wrong type or an invalid value, is a
//!   [`CreateOptionsError`] naming the JSON path: `createOptions.HostConfig.Memory: expected an
//!   integer, got a string`.
//! - A `null` value counts as absent, as in Docker's Go decoder.
//! - Every key present but not translated lands in [`ContainerConfig::unsupported`] as
//!   `"<path>: <why>"`, so the agent can show it in the module's status; nothing is silently
//!   dropped.
//! - Input is bounded before it is parsed ([`CREATE_OPTIONS_BYTES_MAX`]) and every list has a
//!   named limit; serde_json caps nesting at 128 levels. Translation is pure and never panics.
//!
//! ```
//! use std::path::Path;
//! use tinyedge_agent::container::{translate, Network};
//!
//! let options = r#"{"Env":["A=1"],"HostConfig":{"Binds":["/srv/data:/data:ro"],"Memory":134217728}}"#;
//! let config = translate(options, &[], &[], Path::new("/var/lib/tinyedge/volumes")).unwrap();
//! assert_eq!(config.env, vec![("A".to_owned(), "1".to_owned())]);
//! assert!(config.mounts[0].read_only);
//! assert_eq!(config.memory_limit_bytes, Some(134_217_728));
//! assert_eq!(config.network, Network::Host);
//! ```
//!
//! # Layout
//! - `json`: typed reads that name the JSON path of every failure.
//! - `options`: the top-level keys (Cmd, Entrypoint, WorkingDir, User, Labels, …).
//! - `host_config`: `HostConfig` resources, devices, network mode and port bindings.
//! - `mounts`: `HostConfig.Binds` and `HostConfig.Mounts`.
//! - `health`: `Healthcheck`.
//! - [`env`]: `Env`, the merge with the manifest env, and the IoT Edge module environment.

pub mod env;
mod health;
mod host_config;
mod json;
mod mounts;
mod options;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub use env::{edge_environment, EdgeIds};

/// Largest createOptions accepted, in bytes. IoT Edge stores createOptions in at most 100 twin
/// chunks of 512 characters (51,200); 64 KiB leaves room for multi-byte characters and for
/// files written by hand, and bounds what is parsed.
pub const CREATE_OPTIONS_BYTES_MAX: usize = 64 * 1024;
/// Most `Env` entries in createOptions. Linux's argument+environment limit is far larger, but a
/// module with more than a thousand variables is a mistake, not a configuration.
pub const ENV_ENTRIES_MAX: usize = 1024;
/// Most mounts (`Binds` and `Mounts` together); each is a mount syscall at container start.
pub const MOUNTS_MAX: usize = 256;
/// Most `HostConfig.Devices` entries.
pub const DEVICES_MAX: usize = 256;
/// Most `Labels`.
pub const LABELS_MAX: usize = 256;
/// Most port bindings, over all ports of `HostConfig.PortBindings`.
pub const PORT_BINDINGS_MAX: usize = 256;
/// Most elements of `Cmd`, `Entrypoint` or a health check command.
pub const ARGS_MAX: usize = 1024;

// The shortest list element is 3 bytes (`"",`); a list limit above a third of the byte limit
// could never be reached, so it would bound nothing.
const _: () = assert!(ENV_ENTRIES_MAX <= CREATE_OPTIONS_BYTES_MAX / 3);
const _: () = assert!(ARGS_MAX <= CREATE_OPTIONS_BYTES_MAX / 3);
const _: () = assert!(MOUNTS_MAX + DEVICES_MAX + LABELS_MAX + PORT_BINDINGS_MAX <= ENV_ENTRIES_MAX);

/// What the container runtime needs to create a module's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The process args when createOptions alone decide them: a non-empty `Entrypoint` (Docker
    /// then ignores the image's `Cmd`) followed by `Cmd`, or an explicitly empty `Entrypoint`
    /// with a non-empty `Cmd`. Empty when the image's defaults are needed: call
    /// [`ContainerConfig::process_args`] with the image config.
    pub args: Vec<String>,
    /// `Entrypoint` as given; `Some(vec![])` for `[]` or `[""]`, which clears the image's.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd` as given.
    pub cmd: Option<Vec<String>>,
    /// createOptions `Env`, overridden by the manifest env, overridden by the IoT Edge env; in
    /// first-seen order, one entry per name.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, absolute; `None` keeps the image's.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`, …); `None` keeps the image's.
    pub user: Option<String>,
    /// `Labels`, sorted by name.
    pub labels: Vec<(String, String)>,
    /// `HostConfig.Binds` then `HostConfig.Mounts`, in order.
    pub mounts: Vec<Mount>,
    /// `HostConfig.Devices`.
    pub devices: Vec<Device>,
    /// `HostConfig.Privileged`.
    pub privileged: bool,
    /// `HostConfig.Memory`; `None` (or `0`) means no limit.
    pub memory_limit_bytes: Option<u64>,
    /// CPU limits from `HostConfig.NanoCpus`, `CpuQuota`, `CpuPeriod` and `CpuShares`.
    pub cpu_quota: Option<CpuQuota>,
    /// `HostConfig.NetworkMode`, see [`Network`].
    pub network: Network,
    /// `HostConfig.PortBindings` as `"8883/tcp->8883"` (`"8883/tcp->127.0.0.1:8883"` with a
    /// `HostIp`). With host networking they hold as is; recorded for the status description.
    pub port_bindings: Vec<String>,
    /// `Healthcheck`; `None` when createOptions set none (the image's may apply).
    pub healthcheck: Option<Healthcheck>,
    /// Every key present but not translated, as `"<path>: <why>"`, one line each.
    pub unsupported: Vec<String>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            args: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            labels: Vec::new(),
            mounts: Vec::new(),
            devices: Vec::new(),
            privileged: false,
            memory_limit_bytes: None,
            cpu_quota: None,
            network: Network::Host,
            port_bindings: Vec::new(),
            healthcheck: None,
            unsupported: Vec::new(),
        }
    }
}

impl ContainerConfig {
    /// The process args given the image's `Entrypoint` and `Cmd`, by Docker's merge rule
    /// (`daemon/commit.go`): a non-empty `Entrypoint` replaces the image's and drops the image's
    /// `Cmd`; otherwise a non-empty `Cmd` replaces the image's `Cmd`, and the image's
    /// `Entrypoint` is kept unless `Entrypoint` was explicitly emptied.
    #[must_use]
    pub fn process_args(&self, image_entrypoint: &[String], image_cmd: &[String]) -> Vec<String> {
        let given_cmd = self.cmd.as_deref().unwrap_or_default();
        let (entrypoint, cmd) = match self.entrypoint.as_deref() {
            Some(entrypoint) if !entrypoint.is_empty() => (entrypoint, given_cmd),
            given => {
                let cmd = if given_cmd.is_empty() { image_cmd } else { given_cmd };
                (given.unwrap_or(image_entrypoint), cmd)
            }
        };
        entrypoint.iter().chain(cmd).cloned().collect()
    }

    /// [`ContainerConfig::args`]: the args when the image cannot change them.
    fn args_without_image(&self) -> Vec<String> {
        let decided = match self.entrypoint.as_deref() {
            Some(entrypoint) if !entrypoint.is_empty() => true,
            Some(_) => self.cmd.as_ref().is_some_and(|cmd| !cmd.is_empty()),
            None => false,
        };
        if decided {
            self.process_args(&[], &[])
        } else {
            Vec::new()
        }
    }
}

/// One filesystem mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path (bind, or `{volumes_dir}/{name}` for a volume); `"tmpfs"` for tmpfs.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    pub kind: MountKind,
}

/// How a [`Mount`] is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A host directory or file, bind-mounted.
    Bind,
    /// A named volume: a directory under the agent's volumes directory, bind-mounted; the
    /// runtime creates it when missing.
    Volume,
    /// A fresh in-memory filesystem.
    Tmpfs,
}

/// A device node made available to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub host_path: String,
    pub container_path: String,
    /// cgroup device permissions, a non-empty subset of `rwm` (default `rwm`, as Docker).
    pub permissions: String,
}

/// CPU limits for the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CFS quota per period in microseconds; `-1` is unlimited.
    pub quota_us: Option<i64>,
    /// CFS period in microseconds.
    pub period_us: Option<u64>,
    /// Relative weight (`cpu.shares`).
    pub shares: Option<u64>,
}

/// The container's network.
///
/// Host networking is the default, and the only one with connectivity: the gateway runs no CNI
/// plugins and no bridge, so there are no container networks like IoT Edge's `azure-iot-edge`.
/// Modules therefore share the host's interfaces and ports: a `PortBindings` entry is satisfied
/// by the module listening on that port, and modules reach edgeHub through the gateway hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace.
    Host,
    /// A private namespace with only loopback (`NetworkMode: "none"`).
    None,
}

/// A container health check, with Docker's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: HealthTest,
    /// Time between checks (default 30 s).
    pub interval: Duration,
    /// Time after which one check counts as failed (default 30 s).
    pub timeout: Duration,
    /// Time after start during which failures are not counted (default 0).
    pub start_period: Duration,
    /// Consecutive failures that make the container unhealthy (default 3).
    pub retries: u32,
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `["CMD", program, args…]`: run directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", command]`: run with `/bin/sh -c`.
    Shell(String),
    /// `["NONE"]`: no health check, not even the image's.
    Disabled,
}

/// Why createOptions could not be translated: the JSON path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptionsError {
    /// Dotted path inside createOptions, e.g. `HostConfig.Binds[0]`; empty for the whole text.
    pub path: String,
    pub message: String,
}

impl fmt::Display for CreateOptionsError {
    /// One line: `createOptions.<path>: <message>`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.path.is_empty() || self.path.starts_with('[') { "" } else { "." };
        // serde_json's messages are one line already; this keeps that true for any message.
        let message = self.message.replace(['\n', '\r'], " ");
        write!(formatter, "createOptions{separator}{}: {message}", self.path)
    }
}

impl std::error::Error for CreateOptionsError {}

/// Translates Docker `createOptions` into a [`ContainerConfig`].
///
/// `manifest_env` is the module's `env` from the deployment manifest and wins over createOptions
/// `Env`; `edge_env` (from [`edge_environment`]) wins over both, so a module cannot be pointed
/// at another identity. Named volumes live under `volumes_dir`.
///
/// # Errors
/// [`CreateOptionsError`] for text over [`CREATE_OPTIONS_BYTES_MAX`], invalid JSON, or a
/// translated key with the wrong type or an invalid value.
pub fn translate(
    create_options: &str,
    manifest_env: &[(String, String)],
    edge_env: &[(String, String)],
    volumes_dir: &Path,
) -> Result<ContainerConfig, CreateOptionsError> {
    if create_options.len() > CREATE_OPTIONS_BYTES_MAX {
        return Err(json::error(
            "",
            format!("{} bytes, at most {CREATE_OPTIONS_BYTES_MAX} are allowed", create_options.len()),
        ));
    }
    let mut config = ContainerConfig::default();
    let mut create_env = Vec::new();
    let text = create_options.trim();
    if !text.is_empty() {
        let root: Value =
            serde_json::from_str(text).map_err(|error| json::error("", format!("invalid JSON: {error}")))?;
        match &root {
            Value::Null => {}
            Value::Object(map) => options::apply(map, volumes_dir, &mut config, &mut create_env)?,
            other => return Err(json::error("", format!("expected a JSON object, got {}", json::kind(other)))),
        }
    }
    config.env = env::merge(&create_env, manifest_env, edge_env);
    config.args = config.args_without_image();
    Ok(config)
}
