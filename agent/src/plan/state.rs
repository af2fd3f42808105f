//! What the agent knows of a module that exists in the container runtime, and the hash that
//! tells whether its container still matches the deployment.
//!
//! Sources (Azure/iotedge): `Agent.Core/IModule.cs` (`ModuleStatus` names),
//! `Agent.Docker/DockerRuntimeModule.cs` (the reported per-module fields these mirror),
//! `Agent.Core/ModuleState.cs` (restart count and last restart time, kept in a store).

use crate::manifest::ModuleSpec;

/// A module's `runtimeStatus`, as IoT Edge reports it (`IModule.cs`, `ModuleStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuntimeStatus {
    /// `"unknown"`: the runtime could not say (e.g. the container vanished mid-listing).
    #[default]
    Unknown,
    /// `"backoff"`: stopped, and the restart policy will restart it after a cool-off.
    Backoff,
    /// `"running"`.
    Running,
    /// `"unhealthy"`: running, but its health check fails.
    Unhealthy,
    /// `"stopped"`: not running, by a clean exit or because the agent stopped it.
    Stopped,
    /// `"failed"`: exited with an error and will not be restarted (policy or restart budget).
    Failed,
    /// `"dead"`: the container runtime gave up on the container (Docker's `dead` state).
    Dead,
}

impl RuntimeStatus {
    /// The spelling used in edgeAgent's reported properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Backoff => "backoff",
            Self::Running => "running",
            Self::Unhealthy => "unhealthy",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// One module as it exists in the container runtime, plus the restart bookkeeping the agent
/// keeps for it (IoT Edge keeps the latter in its module-state store, not in the container).
///
/// Times are Unix milliseconds; `None` means "never" (IoT Edge reports `0001-01-01T00:00:00`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleState {
    /// The module's name (the container's name).
    pub name: String,
    /// [`config_hash`] of the desired spec the container was created from, stored as a
    /// container label so that a restarted agent still knows it.
    pub config_hash: String,
    /// The image the container was created from.
    pub image: String,
    /// Whether the container's process is running now.
    pub running: bool,
    /// The health check's verdict; `None` when the module has no health check or no verdict yet.
    pub healthy: Option<bool>,
    /// Exit code of the last run; `None` if it never exited.
    pub exit_code: Option<i64>,
    /// When the container last started.
    pub last_start_unix_ms: Option<u64>,
    /// When the container last exited.
    pub last_exit_unix_ms: Option<u64>,
    /// Restarts made by the restart policy since the counts were last reset.
    pub restart_count: u32,
    /// When the restart policy last restarted the module.
    pub last_restart_unix_ms: Option<u64>,
    /// Set when the agent itself stopped the container (desired `stopped`, or the stop half of
    /// a restart) and cleared when it starts it again. An exit the agent caused is not a crash:
    /// without this, a module stopped by SIGTERM (exit 143) would read as `failed` and be
    /// restarted by on-failure, and a stopped→running change of `status` in the deployment
    /// could not be told from a clean exit that the policy must leave alone.
    pub stopped_by_agent: bool,
}

impl ModuleState {
    /// Whether the container has run and exited at least once (as opposed to created, never
    /// started).
    pub fn has_exited(&self) -> bool {
        self.exit_code.is_some() || self.last_exit_unix_ms.is_some()
    }

    /// Whether the health check says the module is unhealthy.
    pub fn is_unhealthy(&self) -> bool {
        self.healthy == Some(false)
    }

    /// Books a restart made by the restart policy, as IoT Edge does after its stop + start:
    /// `restartCount + 1` and `lastRestartTime = now`.
    pub fn record_restart(&mut self, now_unix_ms: u64) {
        self.restart_count = self.restart_count.saturating_add(1);
        self.last_restart_unix_ms = Some(now_unix_ms);
    }

    /// Clears the restart statistics (after a long healthy run, see
    /// [`super::restart::reset_counts_due`]).
    pub fn reset_restart_counts(&mut self) {
        self.restart_count = 0;
        self.last_restart_unix_ms = None;
    }
}

/// Version of the canonical serialization hashed by [`config_hash`]; bump it when the covered
/// fields change, which recreates every module once (the same as changing their config).
const CONFIG_HASH_SCHEME: u8 = 1;

/// FNV-1a 64-bit parameters (offset basis and prime, from the FNV specification).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Field tags of the canonical serialization, so that no two fields can be confused.
const TAG_IMAGE: u8 = 1;
const TAG_CREATE_OPTIONS: u8 = 2;
const TAG_ENV: u8 = 3;
const TAG_DIGEST_NONE: u8 = 4;
const TAG_DIGEST_SOME: u8 = 5;

/// A deterministic hash of the parts of `spec` that live inside the container: image,
/// createOptions (as the joined text), env and digest. The planner recreates a module when this
/// changes; `status`, `restartPolicy`, `imagePullPolicy`, `startupOrder` and `version` are left
/// out because the agent applies them without touching the container.
///
/// Returns 16 lowercase hex digits of FNV-1a 64 over a length-prefixed, tagged serialization
/// (so `("ab","c")` and `("a","bc")` differ). It is not cryptographic, and need not be: it is
/// compared only with a label the agent wrote itself, anyone who can forge container labels
/// already controls the container runtime, and an accidental collision (about 2^-64 per change)
/// would only delay a recreate until the next change.
pub fn config_hash(spec: &ModuleSpec) -> String {
    let mut hasher = Fnv1a::new();
    hasher.write(&[CONFIG_HASH_SCHEME]);
    hasher.field(TAG_IMAGE, spec.image.as_bytes());
    hasher.field(TAG_CREATE_OPTIONS, spec.create_options.as_bytes());
    hasher.write(&[TAG_ENV]);
    hasher.length(spec.env.len());
    for (name, value) in &spec.env {
        hasher.length(name.len());
        hasher.write(name.as_bytes());
        hasher.length(value.len());
        hasher.write(value.as_bytes());
    }
    match &spec.digest {
        None => hasher.write(&[TAG_DIGEST_NONE]),
        Some(digest) => hasher.field(TAG_DIGEST_SOME, digest.as_bytes()),
    }
    format!("{:016x}", hasher.state)
}

/// FNV-1a, 64-bit: tiny, dependency-free and stable across Rust versions (unlike `std`'s
/// `DefaultHasher`, whose output may change between releases and would recreate modules).
struct Fnv1a {
    state: u64,
}

impl Fnv1a {
    fn new() -> Self {
        Self { state: FNV_OFFSET_BASIS }
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    /// Lengths as fixed-width little-endian, so the serialization is the same on every target.
    fn length(&mut self, length: usize) {
        self.write(&(length as u64).to_le_bytes());
    }

    fn field(&mut self, tag: u8, bytes: &[u8]) {
        self.write(&[tag]);
        self.length(bytes.len());
        self.write(bytes);
    }
}
