//! Counters of everything the hub accepts, routes, holds back or drops. Every drop has a
//! counter; nothing is dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters since start (and `connections_open`, `connections_unauthenticated`,
        /// gauges).
        #[derive(Debug, Default)]
        pub struct Metrics { $($(#[$doc])* pub $name: AtomicU64,)* }

        impl Metrics {
            /// `name value` pairs, for logs and `tinyedge status`.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Sockets currently open, counted from accept (gauge; `max_connections` bounds it).
    connections_open,
    /// Of those, sockets whose CONNECT is not accepted yet, TLS handshake included (gauge;
    /// `max_unauthenticated` bounds it).
    connections_unauthenticated,
    /// CONNECTs refused (authentication, protocol version).
    connections_refused,
    /// Sockets closed right after accept: `max_connections` or `max_unauthenticated` reached.
    connections_refused_limit,
    /// Sockets closed for sending no complete CONNECT within `connect_timeout_secs`.
    connect_timeouts,
    /// accept() failures (out of file descriptors and the like); the listener backs off.
    accept_errors,
    /// Connections closed for a malformed, oversized or out-of-place packet.
    malformed_packets,
    /// PUBLISH or SUBSCRIBE refused because the topic is not the client's own.
    unauthorized_topics,
    /// Telemetry messages accepted from clients.
    messages_received,
    /// Messages that matched no route.
    messages_unrouted,
    /// Endpoint deliveries stored (one message routed to two endpoints counts two).
    deliveries_queued,
    /// Deliveries written to a connected module.
    deliveries_sent,
    /// Times a module's delivery queue was full and its pump waited (the store holds the rest).
    backpressure_waits,
    /// Messages not accepted because the store was full under `reject_new` (no PUBACK).
    store_rejected,
    /// Messages not accepted because the store failed to write or sync (no PUBACK).
    store_errors,
    /// Connections closed because the store did not take one of their QoS 1 messages: the
    /// client sends it again after reconnecting (QoS 0 messages are dropped, counted above).
    store_refused_disconnects,
    /// Twin GETs answered (from the local twin, at once).
    twin_gets,
    /// Reported-property patches applied.
    twin_reported_patches,
    /// Twin requests refused (invalid patch, unknown twin) with an error response.
    twin_errors,
    /// Desired-property patches sent to clients.
    twin_desired_patches,
    /// `$iothub` requests the hub does not serve, answered with an error (never silence).
    iothub_unserved,
    /// Direct-method calls made, answered, and failed (404, 504, 400).
    method_calls,
    method_answers,
    method_failures,
    /// Control-lane items dropped because the client had not subscribed to their topic.
    control_unsubscribed,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
