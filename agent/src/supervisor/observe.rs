//! containerd as the agent sees it: a connection with an exit-event watcher ([`Agent::connected`]),
//! the state of every container the agent made and its task ([`Agent::refresh`]), exits as they
//! are reported ([`Agent::exited`]), and losing the connection ([`Agent::lost`]).

use std::collections::HashSet;

use super::bookkeeping::Module;
use super::{Agent, Input, LABEL_CONFIG, LABEL_IMAGE, LABEL_MODULE};
use crate::containerd::client::{now_ms, Containerd, CtrError, TaskExit};
use crate::containerd::stdio;

impl Agent {
    /// A fresh connection: subscribe to exits first (so none is missed), then adopt.
    pub(super) async fn connected(&mut self, ctr: Containerd) {
        let tx = self.tx.clone();
        let watcher_ctr = ctr.clone();
        self.watcher = Some(tinyedge_platform::rt::spawn(async move {
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

    /// A task exited (from the event stream); returns whether it calls for a reconcile.
    pub(super) fn exited(&mut self, exit: &TaskExit) -> bool {
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

    /// Re-reads every container the agent made and its task from containerd.
    pub(super) async fn refresh(&mut self) {
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
        self.start_missing_health_checks().await;
    }

    /// containerd is gone (or answered unusably): drop the connection, the event watcher and
    /// the health loops; verdicts from before the outage do not count after it.
    pub(super) fn lost(&mut self, e: CtrError) {
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
}
