//! Counters of everything the hub accepts, routes, holds back or drops. Every drop has a
//! counter; nothing is dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters since start (and `connections_open`, a gauge).
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
    /// Connections currently open (gauge).
    connections_open,
    /// CONNECTs refused (authentication, protocol, limits).
    connections_refused,
    /// Connections closed for a malformed or oversized packet.
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
