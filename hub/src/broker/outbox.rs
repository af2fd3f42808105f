//! Store → cloud: the `$upstream` endpoint of the store as the upstream link's [`Outbox`].
//!
//! Each record goes to the IoT Hub topic of its origin: a module's message to
//! `devices/{d}/modules/{m}/messages/events/{bag}`, a device's to `devices/{d}/messages/events/{bag}`,
//! the device and module taken from the `$.cdid`/`$.cmid` the hub stamped on it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::message::Properties;
use crate::store::{Store, StoredRecord};
use crate::upstream::{OutMessage, Outbox};

use super::priority::MergedReader;

pub struct StoreOutbox {
    store: Arc<Store>,
    cursor: Mutex<Cursor>,
}

/// The merged reader over the `$upstream` priority queues, and the link's sequence numbers.
///
/// The link wants one increasing sequence and acknowledges "everything up to N"; records come
/// from several queues (one per priority) in an order chosen by priority, so each handed-out
/// message gets the next link sequence number, remembered with its queue and store seq until
/// acknowledged (at most the link's window, 128).
struct Cursor {
    reader: MergedReader,
    next_link_seq: u64,
    in_flight: VecDeque<(u64, u16, u64)>,
}

impl StoreOutbox {
    /// `queues`: (priority, store endpoint id) of the `$upstream` queues.
    pub fn new(store: Arc<Store>, queues: &[(u8, u16)]) -> StoreOutbox {
        let cursor = Mutex::new(Cursor {
            reader: MergedReader::new(&store, queues),
            next_link_seq: 1,
            in_flight: VecDeque::new(),
        });
        StoreOutbox { store, cursor }
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The IoT Hub telemetry topic of a stored record's sender, or `None` if it has none.
pub fn upstream_topic(record: &StoredRecord) -> Option<String> {
    let properties = Properties::parse(&record.properties).ok()?;
    let device = properties.system("$.cdid")?;
    let mut topic = String::new();
    crate::topic::telemetry_topic_into(device, properties.system("$.cmid"), &record.properties, &mut topic);
    Some(topic)
}

impl Outbox for StoreOutbox {
    /// The link asks for what follows the last message it was given (it keeps and resends its
    /// own unacknowledged window), so `after` only tells where a fresh link starts: at 0.
    fn next_batch(&self, _after: u64, max: usize) -> Vec<OutMessage> {
        let mut cursor = self.cursor();
        let mut batch = Vec::new();
        while batch.len() < max {
            match cursor.reader.next(tinyedge_platform::rt::now_unix_ms()) {
                Ok(Some((queue, record))) => match upstream_topic(&record) {
                    Some(topic) => {
                        let link_seq = cursor.next_link_seq;
                        cursor.next_link_seq += 1;
                        cursor.in_flight.push_back((link_seq, queue, record.seq));
                        // Lease first, so a crash after the send still flags the resend.
                        self.store.note_sent(queue, record.seq);
                        let maybe_sent = self.store.maybe_sent_before(queue, record.seq);
                        batch.push(OutMessage {
                            seq: link_seq,
                            topic,
                            payload: record.payload.clone(),
                            maybe_sent,
                            enqueued_unix_ms: record.enqueued_unix_ms,
                        });
                    }
                    None => {
                        log::warn!("$upstream record {} has no sender properties; skipped", record.seq);
                        let link_seq = cursor.next_link_seq;
                        cursor.next_link_seq += 1;
                        cursor.in_flight.push_back((link_seq, queue, record.seq));
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("$upstream: reading the store failed: {e}");
                    break;
                }
            }
        }
        batch
    }

    fn wait_for_more(&self, _after: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Listen first, then read ahead: an append in between is not missed. Any append wakes
        // the link (spurious wake-ups are allowed); it then asks again.
        let listener = self.store.appended().listen();
        let ready = self.cursor().reader.has_next(tinyedge_platform::rt::now_unix_ms()).unwrap_or(false);
        Box::pin(async move {
            if !ready {
                listener.await;
            }
        })
    }

    fn acked(&self, link_seq: u64) {
        let mut cursor = self.cursor();
        while cursor.in_flight.front().is_some_and(|(s, _, _)| *s <= link_seq) {
            if let Some((_, queue, seq)) = cursor.in_flight.pop_front() {
                self.store.commit(queue, seq);
            }
        }
    }

    /// Link sequence numbers start afresh with every process; the queues themselves resume
    /// from their checkpoints.
    fn resume_after(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(properties: &str) -> StoredRecord {
        StoredRecord {
            seq: 1,
            enqueued_unix_ms: 0,
            endpoints: Vec::new(),
            source: String::new(),
            properties: properties.into(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn topics_follow_the_sender() {
        assert_eq!(
            upstream_topic(&record("a=1&%24.cdid=gw&%24.cmid=filter")).as_deref(),
            Some("devices/gw/modules/filter/messages/events/a=1&%24.cdid=gw&%24.cmid=filter")
        );
        assert_eq!(
            upstream_topic(&record("%24.cdid=sensor-7")).as_deref(),
            Some("devices/sensor-7/messages/events/%24.cdid=sensor-7")
        );
        assert_eq!(upstream_topic(&record("a=1")), None);
    }
}
