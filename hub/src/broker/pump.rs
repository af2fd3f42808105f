//! Store → module: one pump per module-input endpoint reads the endpoint's records from the
//! store, in order, and hands them to the module's connection while it is online and
//! subscribed. While it is not, records simply stay in the store (bounded by the store, up to
//! their TTL), so a module that connects late gets everything in order.
//!
//! The endpoint's checkpoint advances only when the module acknowledges (see `inflight`); when
//! the connection or subscription changes the pump starts over from the checkpoint, so
//! nothing acknowledged is sent twice and nothing unacknowledged is lost.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Store, StoredRecord};

use super::priority::MergedReader;
use super::queue::PushError;
use super::session::{Delivery, Origin, Slot};

/// Pause after a store read error before trying again (a damaged file, an IO error): long
/// enough not to spin, short enough that delivery resumes quickly once the cause is gone.
const READ_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a pump feeds.
pub struct ModulePump {
    pub store: Arc<Store>,
    pub slot: Arc<Slot>,
    pub metrics: Arc<Metrics>,
    /// (priority, store endpoint id) of each of the endpoint's priority queues.
    pub queues: Vec<(u8, u16)>,
    /// The module input the endpoint names (every delivery shares it).
    pub input: Arc<str>,
    /// `{d}/{m}/inputs/{input}`, for log lines.
    pub label: String,
}

impl ModulePump {
    /// Runs for as long as the route exists (the task is dropped to stop it).
    pub async fn run(self) {
        loop {
            let generation = self.wait_online().await;
            self.deliver(generation).await;
        }
    }

    async fn wait_online(&self) -> u64 {
        loop {
            let changed = super::queue::listen(&self.slot.changed);
            if let Some(generation) = self.slot.online_generation() {
                return generation;
            }
            changed.await;
        }
    }

    /// Delivers from the checkpoint on until the slot's generation changes.
    async fn deliver(&self, generation: u64) {
        let mut reader = MergedReader::new(&self.store, &self.queues);
        loop {
            let (endpoint, record) = match reader.next(tinyedge_platform::rt::now_unix_ms()) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    // Listen first, then look again: an append between the two is not missed.
                    let appended = self.store.appended().listen();
                    let changed = super::queue::listen(&self.slot.changed);
                    if self.slot.generation() != generation {
                        return;
                    }
                    match reader.next(tinyedge_platform::rt::now_unix_ms()) {
                        Ok(Some(record)) => record,
                        Ok(None) => {
                            smol::future::or(appended, changed).await;
                            continue;
                        }
                        Err(e) => {
                            self.read_failed(&e).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    self.read_failed(&e).await;
                    continue;
                }
            };
            if self.slot.generation() != generation || !self.hand_over(endpoint, record, generation).await {
                return;
            }
        }
    }

    async fn read_failed(&self, error: &crate::store::StoreError) {
        log::error!("delivery from the store to {} paused: {error}", self.label);
        smol::Timer::after(READ_RETRY_DELAY).await;
    }

    /// Queues one record for the connection; false when the generation changed meanwhile.
    async fn hand_over(&self, endpoint: u16, record: Arc<StoredRecord>, generation: u64) -> bool {
        // Lease first, so a crash after the send still flags the resend as a duplicate.
        self.store.note_sent(endpoint, record.seq);
        let dup = self.slot.last_sent(endpoint) >= record.seq || self.store.maybe_sent_before(endpoint, record.seq);
        let delivery = Delivery {
            input: self.input.clone(),
            origin: Some(Origin { endpoint, seq: record.seq, generation }),
            dup,
            enqueued_unix_ms: record.enqueued_unix_ms,
            record,
        };
        match self.slot.mailbox.try_push(delivery) {
            Ok(()) => true,
            Err(PushError::Closed(_)) => false,
            Err(PushError::Full(delivery)) => {
                // The module reads slower than messages arrive: wait for room (the store holds
                // the backlog), unless the connection changes meanwhile.
                Metrics::inc(&self.metrics.backpressure_waits);
                let changed = super::queue::listen(&self.slot.changed);
                if self.slot.generation() != generation {
                    return false;
                }
                let push = async { self.slot.mailbox.push(delivery).await.is_ok() };
                let interrupted = async {
                    changed.await;
                    false
                };
                smol::future::or(push, interrupted).await
            }
        }
    }
}
