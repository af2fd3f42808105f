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
    /// Module-input deliveries written, and their milliseconds from enqueue to the write
    /// (`edgehub_message_process_duration_seconds{to="modules"}`).
    process_modules_count,
    process_modules_ms,
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

/// Per-client series (`edgehub_messages_received_total{id=…}` and the like) are kept for at
/// most this many identities; the clients beyond share one `id="other"` series (counted in
/// [`Clients::folded`]).
pub const CLIENT_SERIES_MAX: usize = 256;

/// One identity's counters, held by its connections (no lookup per message).
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub messages_received: AtomicU64,
    pub twin_gets: AtomicU64,
    pub reported_patches: AtomicU64,
}

/// The per-client counters of every identity seen, bounded by [`CLIENT_SERIES_MAX`].
#[derive(Debug, Default)]
pub struct Clients {
    table: std::sync::Mutex<Vec<(String, std::sync::Arc<ClientCounters>)>>,
    other: std::sync::Arc<ClientCounters>,
    /// Identities that got the shared `other` series.
    pub folded: AtomicU64,
}

impl Clients {
    /// The counters of `id` (`d` or `d/m`), made on first use.
    pub fn of(&self, id: &str) -> std::sync::Arc<ClientCounters> {
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, counters)) = table.iter().find(|(known, _)| known == id) {
            return counters.clone();
        }
        if table.len() >= CLIENT_SERIES_MAX {
            Metrics::inc(&self.folded);
            return self.other.clone();
        }
        let counters = std::sync::Arc::new(ClientCounters::default());
        table.push((id.to_string(), counters.clone()));
        counters
    }

    /// `(id, received, twin GETs, reported patches)` of every identity, in first-seen order,
    /// and `other` last if any client was folded into it.
    pub fn snapshot(&self) -> Vec<(String, [u64; 3])> {
        let read = |c: &ClientCounters| {
            [
                c.messages_received.load(Ordering::Relaxed),
                c.twin_gets.load(Ordering::Relaxed),
                c.reported_patches.load(Ordering::Relaxed),
            ]
        };
        let table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<(String, [u64; 3])> = table.iter().map(|(id, c)| (id.clone(), read(c))).collect();
        if self.folded.load(Ordering::Relaxed) > 0 {
            all.push(("other".to_string(), read(&self.other)));
        }
        all
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;

    #[test]
    fn clients_beyond_the_limit_share_one_series() {
        let clients = Clients::default();
        for i in 0..CLIENT_SERIES_MAX + 3 {
            Metrics::inc(&clients.of(&format!("d/m{i}")).messages_received);
        }
        Metrics::inc(&clients.of("d/m0").messages_received);
        let all = clients.snapshot();
        assert_eq!(all.len(), CLIENT_SERIES_MAX + 1);
        assert_eq!(all[0], ("d/m0".to_string(), [2, 0, 0]));
        assert_eq!(all.last().expect("other"), &("other".to_string(), [3, 0, 0]));
        assert_eq!(clients.folded.load(Ordering::Relaxed), 3);
    }
}
