//! Store → cloud: the `$upstream` endpoint of the store as the upstream link's [`Outbox`].
//!
//! Each record goes to the IoT Hub topic of its origin: a module's message to
//! `devices/{d}/modules/{m}/messages/events/{bag}`, a device's to `devices/{d}/messages/events/{bag}`,
//! the device and module taken from the `$.cdid`/`$.cmid` the hub stamped on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::message::Properties;
use crate::store::{EndpointReader, Store, StoredRecord};
use crate::upstream::{OutMessage, Outbox};

pub struct StoreOutbox {
    store: Arc<Store>,
    endpoint: u16,
    cursor: Mutex<Cursor>,
}

/// The reader, and one record read ahead by `wait_for_more` to learn whether there is any.
struct Cursor {
    reader: EndpointReader,
    peeked: Option<StoredRecord>,
}

impl StoreOutbox {
    pub fn new(store: Arc<Store>, endpoint: u16) -> StoreOutbox {
        let cursor = Mutex::new(Cursor { reader: store.reader(endpoint), peeked: None });
        StoreOutbox { store, endpoint, cursor }
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The IoT Hub telemetry topic of a stored record's sender, or `None` if it has none.
pub fn upstream_topic(record: &StoredRecord) -> Option<String> {
    let properties = Properties::parse(&record.properties).ok()?;
    let device = properties.system("$.cdid")?;
    let mut topic = format!("devices/{device}/");
    if let Some(module) = properties.system("$.cmid") {
        topic.push_str("modules/");
        topic.push_str(module);
        topic.push('/');
    }
    topic.push_str("messages/events/");
    topic.push_str(&record.properties);
    Some(topic)
}

impl Outbox for StoreOutbox {
    fn next_batch(&self, after: u64, max: usize) -> Vec<OutMessage> {
        let mut cursor = self.cursor();
        let peeked_next = cursor.peeked.as_ref().is_some_and(|p| p.seq > after);
        if !peeked_next && cursor.reader.position() != after {
            cursor.reader.seek_after(after);
            cursor.peeked = None;
        }
        let mut batch = Vec::new();
        while batch.len() < max {
            let next = match cursor.peeked.take() {
                Some(record) => Ok(Some(record)),
                None => cursor.reader.next(now_unix_ms()),
            };
            match next {
                Ok(Some(record)) => match upstream_topic(&record) {
                    Some(topic) => batch.push(OutMessage { seq: record.seq, topic, payload: record.payload }),
                    None => {
                        log::warn!("$upstream record {} has no sender properties; skipped", record.seq);
                        self.store.commit(self.endpoint, record.seq);
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
        // Listen first, then read one ahead: an append in between is not missed. Any append
        // wakes the link (spurious wake-ups are allowed); it then asks again.
        let listener = self.store.appended().listen();
        let ready = {
            let mut cursor = self.cursor();
            if cursor.peeked.is_none() {
                cursor.peeked = cursor.reader.next(now_unix_ms()).ok().flatten();
            }
            cursor.peeked.is_some()
        };
        Box::pin(async move {
            if !ready {
                listener.await;
            }
        })
    }

    fn acked(&self, seq: u64) {
        self.store.commit(self.endpoint, seq);
    }

    fn resume_after(&self) -> u64 {
        self.store.reader(self.endpoint).position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(properties: &str) -> StoredRecord {
        StoredRecord { seq: 1, enqueued_unix_ms: 0, endpoints: Vec::new(), source: String::new(), properties: properties.into(), payload: Bytes::new() }
    }

    #[test]
    fn topics_follow_the_sender() {
        assert_eq!(upstream_topic(&record("a=1&%24.cdid=gw&%24.cmid=filter")).as_deref(), Some("devices/gw/modules/filter/messages/events/a=1&%24.cdid=gw&%24.cmid=filter"));
        assert_eq!(upstream_topic(&record("%24.cdid=sensor-7")).as_deref(), Some("devices/sensor-7/messages/events/%24.cdid=sensor-7"));
        assert_eq!(upstream_topic(&record("a=1")), None);
    }
}
