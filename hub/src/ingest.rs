//! Ingest: the one synchronous path from a client's telemetry into the routes and the store,
//! shared by every protocol adapter (MQTT today; AMQP builds the same [`Properties`] from its
//! message properties and calls the same function).
//!
//! It stamps the sender's ids (`$.cdid`, `$.cmid`, as IoT Hub does, so a client cannot claim
//! another identity), works out the route source (`/messages/modules/{m}/outputs/{o}` or
//! `/messages`), reads the clock once for the enqueue time, and routes the message into the
//! store. It never waits: durability is the adapter's to await before it acknowledges.

use bytes::Bytes;

use crate::auth::Identity;
use crate::broker::Router;
use crate::message::{Message, Properties};
use crate::metrics::Metrics;

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Routed; acknowledge once the store's record `seq` is durable (0: nothing stored to wait
    /// for, e.g. no route matched).
    Accepted(u64),
    /// The store did not take it (full, or the disk failed): do not acknowledge. The reason
    /// is one line for the log.
    Refused(String),
}

/// Ingests one message of `identity` with the `properties` its protocol carried.
pub fn ingest(
    router: &Router,
    metrics: &Metrics,
    identity: &Identity,
    properties: Properties,
    payload: Bytes,
) -> Ingested {
    let message = prepare(metrics, identity, properties, payload, tinyedge_platform::rt::now_unix_ms());
    match router.route(message) {
        Ok(seq) => Ingested::Accepted(seq.unwrap_or(0)),
        Err(failure) => Ingested::Refused(failure.to_string()),
    }
}

/// Ingests messages of `identity` that arrived together (the PUBLISHes of one socket read):
/// one clock read for all of them, and one store write when they fit
/// ([`Router::route_many`]). Pushes one outcome per message onto `outcomes`, in order.
pub fn ingest_many(
    router: &Router,
    metrics: &Metrics,
    identity: &Identity,
    messages: impl Iterator<Item = (Properties, Bytes)>,
    outcomes: &mut Vec<Ingested>,
) {
    let now = tinyedge_platform::rt::now_unix_ms();
    let messages: Vec<Message> =
        messages.map(|(properties, payload)| prepare(metrics, identity, properties, payload, now)).collect();
    let mut routed = Vec::with_capacity(messages.len());
    router.route_many(&messages, &mut routed);
    outcomes.extend(routed.into_iter().map(|outcome| match outcome {
        Ok(seq) => Ingested::Accepted(seq.unwrap_or(0)),
        Err(failure) => Ingested::Refused(failure.to_string()),
    }));
}

/// Stamps the sender's ids and works out the route source; `enqueued_unix_ms` is the one
/// clock reading, for the route's `$enqueuedTime` and the store's record time.
fn prepare(
    metrics: &Metrics,
    identity: &Identity,
    mut properties: Properties,
    payload: Bytes,
    enqueued_unix_ms: u64,
) -> Message {
    properties.set_system("$.cdid", &identity.device_id);
    let source = match &identity.module_id {
        Some(module) => {
            properties.set_system("$.cmid", module);
            match properties.system("$.on") {
                Some(output) => format!("/messages/modules/{module}/outputs/{output}"),
                None => format!("/messages/modules/{module}"),
            }
        }
        None => {
            properties.remove_system("$.cmid");
            "/messages".to_string()
        }
    };
    Metrics::inc(&metrics.messages_received);
    let enqueued_time = tinyedge_platform::utc::UtcDateTime::from_unix_millis(enqueued_unix_ms).to_string();
    Message { source, properties, enqueued_time, enqueued_unix_ms, payload }
}
