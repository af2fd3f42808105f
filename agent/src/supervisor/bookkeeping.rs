//! The agent's record of each module ([`Module`]): what containerd last said about it, what the
//! agent is doing to it, and the restart bookkeeping that survives agent restarts (IoT Edge keeps
//! the latter in its module store; here it is `{agent dir}/modules.json`, written atomically and
//! only when it changed).

use serde_json::Value;

use super::status::Description;
use super::Agent;
use crate::container::Healthcheck;
use crate::containerd::stdio::Pump;
use crate::plan::ModuleState;

/// How a module is doing beyond what containerd says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Override {
    /// Pulling its image.
    Downloading,
    /// A command failed; retried at `retry_at`.
    Failed { retry_at: u64 },
}

/// The agent's record of one module.
pub(super) struct Module {
    pub(super) state: ModuleState,
    /// A container exists in containerd.
    pub(super) exists: bool,
    pub(super) image: String,
    /// Its `statusDescription`, unless the status decision says otherwise.
    pub(super) description: Description,
    pub(super) over: Option<Override>,
    pub(super) failures: u32,
    pub(super) health: Option<(Healthcheck, Vec<u8>)>,
    /// `health` has been worked out for the current container (it may be `None`: no check).
    pub(super) health_known: bool,
    pub(super) health_task: Option<smol::Task<()>>,
    pub(super) health_failures: u32,
    pub(super) pump: Option<Pump>,
}

impl Module {
    pub(super) fn new(name: &str) -> Module {
        Module {
            state: ModuleState { name: name.to_owned(), ..ModuleState::default() },
            exists: false,
            image: String::new(),
            description: Description::default(),
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

impl Agent {
    /// Restart bookkeeping survives agent restarts (IoT Edge keeps it in its module store).
    pub(super) fn save_bookkeeping(&self) {
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

    pub(super) fn load_bookkeeping(&mut self) {
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
