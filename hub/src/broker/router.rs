//! Routing an accepted message to its endpoints: module inputs (through their session
//! queues) and `$upstream` (a bounded queue until the cloud link drains it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::message::Message;
use crate::metrics::Metrics;
use crate::route::{Endpoint, RouteTable};

use super::codec::TOPIC_BYTES_MAX;
use super::queue::PushError;
use super::session::{Delivery, Sessions};

/// How long a publisher may be held back by a full subscriber queue before the hub gives up
/// on it: the publisher's connection is closed without acknowledging the message, so the
/// client sends it again after reconnecting. Without this limit, two modules routing to each
/// other with both queues and in-flight windows full would wait on each other forever.
pub const BACKPRESSURE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Messages held for `$upstream` until the cloud link takes them. At the limit the oldest is
/// dropped and counted (`upstream_dropped`). 10,000 messages of IoT Hub's 256 KiB maximum
/// would be 2.5 GiB, so the byte bound is the one that bites: see `UPSTREAM_QUEUE_BYTES_MAX`.
pub const UPSTREAM_QUEUE_MESSAGES_MAX: usize = 10_000;
/// Payload bytes held for `$upstream` (16 MiB: a few minutes of a busy gateway, small next to
/// a Pi's RAM).
pub const UPSTREAM_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why a message could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFailure {
    /// A connected subscriber did not take the message within [`BACKPRESSURE_WAIT_MAX`].
    BackpressureTimeout,
}

/// Messages waiting for the cloud link.
#[derive(Debug, Default)]
pub struct UpstreamQueue {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
}

impl UpstreamQueue {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Queues `msg`; returns how many old messages were dropped to make room.
    fn push(&mut self, msg: Arc<Message>) -> u64 {
        let mut dropped = 0;
        self.bytes += msg.payload.len();
        self.messages.push_back(msg);
        while self.messages.len() > UPSTREAM_QUEUE_MESSAGES_MAX || self.bytes > UPSTREAM_QUEUE_BYTES_MAX {
            match self.messages.pop_front() {
                Some(old) => {
                    self.bytes -= old.payload.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }
}

/// Routes messages with the current route table.
#[derive(Debug)]
pub struct Router {
    device_id: String,
    routes: RwLock<Arc<RouteTable>>,
    sessions: Arc<Sessions>,
    upstream: Mutex<UpstreamQueue>,
    metrics: Arc<Metrics>,
    sequence: AtomicU64,
}

impl Router {
    pub fn new(device_id: &str, routes: RouteTable, sessions: Arc<Sessions>, metrics: Arc<Metrics>) -> Router {
        Router {
            device_id: device_id.to_string(),
            routes: RwLock::new(Arc::new(routes)),
            sessions,
            upstream: Mutex::new(UpstreamQueue::default()),
            metrics,
            sequence: AtomicU64::new(0),
        }
    }

    /// Replaces the route table (a new deployment).
    pub fn set_routes(&self, routes: RouteTable) {
        *self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Messages waiting for `$upstream`.
    pub fn upstream_len(&self) -> usize {
        self.upstream.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// A per-hub sequence number, used as the message id when the sender gave none.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `msg` to every endpoint its routes name, each once. Returns when every endpoint
    /// has accepted it (the moment a QoS 1 PUBACK may go out).
    pub async fn route(&self, msg: Message, endpoints: &mut Vec<(Endpoint, u8, u32)>) -> Result<(), RouteFailure> {
        endpoints.clear();
        self.routes().endpoints_for(&msg, endpoints);
        if endpoints.is_empty() {
            Metrics::inc(&self.metrics.messages_unrouted);
            log::debug!("message from {} matched no route", msg.source);
            return Ok(());
        }
        // The bag is encoded once and shared by every module endpoint's topic.
        let mut bag = String::new();
        msg.properties.encode_into(&mut bag);
        let mut upstream = false;
        for (endpoint, _priority, _ttl) in endpoints.iter() {
            match endpoint {
                Endpoint::Upstream => upstream = true,
                Endpoint::Module { module, input } => self.to_module(module, input, &bag, &msg).await?,
            }
        }
        if upstream {
            let dropped = self.upstream.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::new(msg));
            Metrics::inc(&self.metrics.upstream_queued);
            if dropped > 0 {
                Metrics::add(&self.metrics.upstream_dropped, dropped);
                log::warn!("$upstream queue full: dropped {dropped} oldest message(s)");
            }
        }
        Ok(())
    }

    async fn to_module(&self, module: &str, input: &str, bag: &str, msg: &Message) -> Result<(), RouteFailure> {
        let mut topic = String::with_capacity(48 + module.len() + input.len() + bag.len());
        crate::topic::input_topic_into(&self.device_id, module, input, &mut topic);
        topic.push_str(bag);
        if topic.len() > TOPIC_BYTES_MAX {
            log::warn!("delivery to {module}/{input} dropped: topic with properties exceeds {TOPIC_BYTES_MAX} bytes");
            Metrics::inc(&self.metrics.deliveries_dropped_offline);
            return Ok(());
        }
        let slot = self.sessions.slot(&format!("{}/{}", self.device_id, module));
        let delivery = Delivery { topic, payload: msg.payload.clone() };
        match slot.mailbox.try_push(delivery) {
            Ok(()) => {}
            Err(PushError::Full(delivery)) if slot.is_online() => {
                Metrics::inc(&self.metrics.backpressure_waits);
                // The mailbox is never closed, so the push only ends with room.
                let send = async { slot.mailbox.push(delivery).await.is_ok() };
                let timeout = async {
                    smol::Timer::after(BACKPRESSURE_WAIT_MAX).await;
                    false
                };
                if !smol::future::or(send, timeout).await {
                    Metrics::inc(&self.metrics.backpressure_timeouts);
                    return Err(RouteFailure::BackpressureTimeout);
                }
            }
            Err(_) => {
                Metrics::inc(&self.metrics.deliveries_dropped_offline);
                log::warn!("module {module} is offline and its input queue is full: message dropped");
                return Ok(());
            }
        }
        Metrics::inc(&self.metrics.deliveries_queued);
        Ok(())
    }
}
