//! The MQTT broker: listeners, connections, sessions, routing.
//!
//! # Layout
//! - `codec`: packet framing (mqttbytes in, a few hand-encoded packets out);
//! - `connection`: CONNECT, authentication, the reading half of a connection;
//! - `writer`: the writing half: acknowledgements and deliveries;
//! - `session`: per-identity slots with their bounded delivery queues;
//! - `router`: from a message to its endpoints, into the store;
//! - `pump`: from the store to a module's connection, one task per module-input endpoint;
//! - `outbox`: from the store to the upstream link;
//! - `queue`, `transport`: lazily allocated queues and signals, the byte streams;
//! - `fdlimit`: the file descriptor budget `max_connections` is fitted to at start.
//!
//! # Bounds before authentication
//! A socket counts toward `max_connections` from the moment it is accepted, and toward
//! `max_unauthenticated` until its CONNECT is accepted (TLS handshake included); at either
//! bound a new socket is accepted and closed at once, so the kernel's backlog never fills.
//! From accept to a complete CONNECT a connection has `connect_timeout` in all, and its first
//! bytes are checked as they arrive (type, flags, length, protocol name), so a peer that says
//! nothing, dribbles, or sends bytes that cannot be a CONNECT holds its slot briefly.

pub mod codec;
mod connection;
pub mod fdlimit;
pub mod outbox;
pub mod priority;
mod pump;
mod queue;
pub mod router;
pub mod session;
mod transport;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use smol::Async;
use std::net::{TcpListener, TcpStream};

use crate::auth::Authenticator;
use crate::methods::{Invoker, MethodCall, MethodError, MethodResponse, Methods};
use crate::metrics::Metrics;
use crate::route::{Endpoint, RouteTable};
use crate::store::Store;
use crate::twin::Twins;
use tinyedge_platform::config::HubConfig;
use tinyedge_platform::log_limited;
use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};

pub use router::{endpoint_name, Router};
pub use session::Sessions;

/// The numeric limits of a broker; the config's `[hub]` section sets them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted (IoT Hub: 256 KiB); a larger one closes the connection.
    pub max_packet_bytes: usize,
    /// Deliveries queued per identity before publishers are held back (online) or deliveries
    /// dropped (offline).
    pub subscriber_queue_max: usize,
    /// Unacknowledged QoS 1 deliveries per connection.
    pub max_inflight: usize,
    /// Open sockets, counted from accept; more are closed right after accept.
    pub max_connections: usize,
    /// Open sockets whose CONNECT is not accepted yet; more are closed right after accept.
    pub max_unauthenticated: usize,
    /// Time from accept to a complete CONNECT, TLS handshake included.
    pub connect_timeout: Duration,
}

impl From<&HubConfig> for Limits {
    fn from(hub: &HubConfig) -> Limits {
        Limits {
            max_packet_bytes: hub.max_packet_bytes,
            subscriber_queue_max: hub.subscriber_queue_max,
            max_inflight: hub.max_inflight,
            max_connections: hub.max_connections,
            max_unauthenticated: hub.max_unauthenticated,
            connect_timeout: Duration::from_secs(hub.connect_timeout_secs),
        }
    }
}

/// The config's defaults (`tinyedge_platform::config`), so they are written down once.
impl Default for Limits {
    fn default() -> Limits {
        Limits::from(&HubConfig::default())
    }
}

/// How long a listener waits after a failed accept() (out of descriptors, mostly) before it
/// tries again: the pending connection stays in the backlog and would wake it at once, so
/// without a pause the loop would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sockets closed at accept because a connection limit is reached.
static REFUSED_AT_LIMIT: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
/// accept() failures.
static ACCEPT_FAILED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);

/// Which bound a socket met at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtLimit {
    Connections,
    Unauthenticated,
}

/// A socket's place under `max_connections` and, until its CONNECT is accepted, under
/// `max_unauthenticated`: taken at accept, given back on drop, whichever way the connection
/// ends.
#[derive(Debug)]
pub(crate) struct Permit {
    metrics: Arc<Metrics>,
    authenticated: bool,
}

/// Adds one to `counter` unless it is at `max` already.
fn increment_below(counter: &AtomicU64, max: usize) -> bool {
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

impl Permit {
    fn acquire(metrics: &Arc<Metrics>, limits: &Limits) -> Result<Permit, AtLimit> {
        if !increment_below(&metrics.connections_open, limits.max_connections) {
            return Err(AtLimit::Connections);
        }
        if !increment_below(&metrics.connections_unauthenticated, limits.max_unauthenticated) {
            Metrics::dec(&metrics.connections_open);
            return Err(AtLimit::Unauthenticated);
        }
        Ok(Permit { metrics: metrics.clone(), authenticated: false })
    }

    /// The CONNECT is accepted: the socket leaves the unauthenticated count.
    pub(crate) fn authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            Metrics::dec(&self.metrics.connections_unauthenticated);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.authenticated {
            Metrics::dec(&self.metrics.connections_unauthenticated);
        }
        Metrics::dec(&self.metrics.connections_open);
    }
}

/// Shared state of the hub's broker.
pub struct Broker {
    authenticator: RwLock<Arc<Authenticator>>,
    pub router: Router,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    next_connection_id: AtomicU64,
    /// Advances a store endpoint's checkpoint (module acknowledgements).
    commit: writer::Commit,
    device_id: String,
    pumps: Mutex<Vec<(Endpoint, Vec<(u8, u16)>, smol::Task<()>)>>,
    /// Every identity's twin.
    pub twins: Arc<Twins>,
    /// Direct-method calls waiting for their answers.
    pub methods: Methods,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("device_id", &self.device_id).field("limits", &self.limits).finish()
    }
}

impl Broker {
    /// A broker routing into `store`, with one pump per module input its routes name.
    pub fn new(
        device_id: &str,
        authenticator: Authenticator,
        routes: RouteTable,
        limits: Limits,
        store: Arc<Store>,
        twins: Arc<Twins>,
    ) -> Arc<Broker> {
        let metrics = Arc::new(Metrics::default());
        let sessions = Arc::new(Sessions::new(limits.subscriber_queue_max));
        let commit_store = store.clone();
        let broker = Arc::new(Broker {
            authenticator: RwLock::new(Arc::new(authenticator)),
            router: Router::new(RouteTable::new(Vec::new()), store, metrics.clone()),
            sessions,
            metrics,
            limits,
            next_connection_id: AtomicU64::new(1),
            commit: Arc::new(move |endpoint, seq| commit_store.commit(endpoint, seq)),
            device_id: device_id.to_string(),
            pumps: Mutex::new(Vec::new()),
            twins,
            methods: Methods::default(),
        });
        broker.set_routes(routes);
        broker
    }

    /// Calls a direct method on a connected module or leaf device (see [`crate::methods`]).
    pub async fn invoke_method(&self, call: MethodCall) -> Result<MethodResponse, MethodError> {
        Metrics::inc(&self.metrics.method_calls);
        let slot = self.sessions.slot(&call.target);
        let outcome = self.methods.invoke(&slot, call).await;
        Metrics::inc(if outcome.is_ok() { &self.metrics.method_answers } else { &self.metrics.method_failures });
        outcome
    }

    /// The method entry point for callers outside the hub (management socket, HTTPS API).
    pub fn method_invoker(self: &Arc<Broker>) -> Invoker {
        let broker = Arc::clone(self);
        Arc::new(move |call| {
            let broker = Arc::clone(&broker);
            Box::pin(async move { broker.invoke_method(call).await })
        })
    }

    /// Applies a deployment's twins: `identities` have twins (modules as `d/m`, devices as
    /// `d`); `desired` gives the desired properties of module twins by client id. A client
    /// subscribed to desired patches is told of every change (one coalesced patch).
    pub fn apply_twins(&self, identities: &[String], desired: &[(String, serde_json::Value)]) {
        if let Err(error) = self.twins.set_identities(identities) {
            log::warn!("twins: {error}");
        }
        for (id, properties) in desired {
            match self.twins.set_desired(id, properties) {
                Ok(Some(_patch)) => self.sessions.slot(id).desired_changed(),
                Ok(None) => {}
                Err(error) => log::warn!("twin of {id}: desired properties not applied: {error}"),
            }
        }
    }

    /// Applies a route table: every module input it names gets a pump over its priority
    /// queues (a pump whose queues changed is replaced; the store keeps records of routes that
    /// went away until their TTL).
    pub fn set_routes(&self, routes: RouteTable) {
        let endpoints: Vec<Endpoint> = routes.routes().iter().map(|r| r.endpoint.clone()).collect();
        self.router.set_routes(routes);
        let mut pumps = self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for endpoint in endpoints {
            let Endpoint::Module { module, input } = &endpoint else { continue };
            let queues = match self.router.queues_of(&endpoint) {
                Ok(queues) => queues,
                Err(e) => {
                    log::error!("module input {module}/{input}: {e}; it gets nothing");
                    continue;
                }
            };
            if pumps.iter().any(|(e, q, _)| e == &endpoint && q == &queues) {
                continue;
            }
            pumps.retain(|(e, _, _)| e != &endpoint);
            let mut topic_prefix = String::new();
            crate::topic::input_topic_into(&self.device_id, module, input, &mut topic_prefix);
            let pump = pump::ModulePump {
                store: self.router.store().clone(),
                slot: self.sessions.slot(&format!("{}/{}", self.device_id, module)),
                metrics: self.metrics.clone(),
                queues: queues.clone(),
                topic_prefix,
            };
            pumps.push((endpoint.clone(), queues, smol::spawn(pump.run())));
        }
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the identities allowed to connect (a new deployment). Open connections stay.
    pub fn set_authenticator(&self, authenticator: Authenticator) {
        *self.authenticator.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(authenticator);
    }

    fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Accepts connections on `listener` until the listener fails; TLS when `tls` is given.
    pub async fn serve(self: Arc<Broker>, listener: Async<TcpListener>, tls: Option<futures_rustls::TlsAcceptor>) {
        let local = listener.get_ref().local_addr().map(|a| a.to_string()).unwrap_or_default();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) and the like: back off instead
                    // of spinning on the connection still waiting in the backlog.
                    Metrics::inc(&self.metrics.accept_errors);
                    log_limited!(
                        ACCEPT_FAILED,
                        log::Level::Warn,
                        "accept on {local}: {e} ({} sockets open); retrying every {} ms",
                        self.metrics.connections_open.load(Ordering::Relaxed),
                        ACCEPT_BACKOFF.as_millis()
                    );
                    smol::Timer::after(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let deadline = Instant::now() + self.limits.connect_timeout;
            let permit = match Permit::acquire(&self.metrics, &self.limits) {
                Ok(permit) => permit,
                Err(at) => {
                    // Dropping the stream closes it: the backlog keeps moving.
                    drop(stream);
                    Metrics::inc(&self.metrics.connections_refused_limit);
                    let (max, what, key) = match at {
                        AtLimit::Connections => (self.limits.max_connections, "sockets open", "hub.max_connections"),
                        AtLimit::Unauthenticated => {
                            (self.limits.max_unauthenticated, "sockets before CONNECT", "hub.max_unauthenticated")
                        }
                    };
                    log_limited!(
                        REFUSED_AT_LIMIT,
                        log::Level::Warn,
                        "{peer}: closed at accept: {max} {what} already, the limit ({key})"
                    );
                    continue;
                }
            };
            let _ = stream.get_ref().set_nodelay(true);
            let broker = self.clone();
            let tls = tls.clone();
            smol::spawn(async move { broker.serve_stream(stream, peer, tls, permit, deadline).await }).detach();
        }
    }

    async fn serve_stream(
        self: Arc<Broker>,
        stream: Async<TcpStream>,
        peer: SocketAddr,
        tls: Option<futures_rustls::TlsAcceptor>,
        permit: Permit,
        deadline: Instant,
    ) {
        let peer = peer.to_string();
        match tls {
            None => {
                let socket = Arc::new(stream);
                let reader =
                    transport::Reader { inner: transport::TcpHalf(socket.clone()), probe: Some(socket.clone()) };
                let accepted = connection::Accepted { peer, permit, deadline };
                connection::serve(self, reader, transport::TcpHalf(socket), accepted).await;
            }
            // Boxed: the TLS handshake state is large and only needed while it runs, and the
            // spawned task would otherwise be sized for it for the connection's whole life.
            Some(acceptor) => Box::pin(self.serve_tls(stream, peer, acceptor, permit, deadline)).await,
        }
    }

    async fn serve_tls(
        self: Arc<Broker>,
        stream: Async<TcpStream>,
        peer: String,
        acceptor: futures_rustls::TlsAcceptor,
        permit: Permit,
        deadline: Instant,
    ) {
        let handshake = async { Some(acceptor.accept(stream).await) };
        let timeout = async {
            smol::Timer::at(deadline).await;
            None
        };
        match smol::future::or(handshake, timeout).await {
            Some(Ok(tls_stream)) => {
                let (read_half, write_half) = smol::io::split(tls_stream);
                let accepted = connection::Accepted { peer, permit, deadline };
                connection::serve(self, transport::Reader { inner: read_half, probe: None }, write_half, accepted)
                    .await;
            }
            Some(Err(e)) => log::warn!("{peer}: TLS handshake failed: {e}"),
            None => {
                Metrics::inc(&self.metrics.connect_timeouts);
                log::info!(
                    "{peer}: TLS handshake not done within {} s (hub.connect_timeout_secs); closing",
                    self.limits.connect_timeout.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_sockets_from_accept_and_give_them_back_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits { max_connections: 3, max_unauthenticated: 2, ..Limits::default() };
        let mut a = Permit::acquire(&metrics, &limits).expect("first");
        let b = Permit::acquire(&metrics, &limits).expect("second");
        assert_eq!(Permit::acquire(&metrics, &limits).map(|_| ()), Err(AtLimit::Unauthenticated));
        a.authenticated();
        a.authenticated();
        let c = Permit::acquire(&metrics, &limits).expect("a slot before CONNECT is free again");
        assert_eq!(Permit::acquire(&metrics, &limits).map(|_| ()), Err(AtLimit::Connections));
        let gauges = |m: &Metrics| {
            (m.connections_open.load(Ordering::Relaxed), m.connections_unauthenticated.load(Ordering::Relaxed))
        };
        assert_eq!(gauges(&metrics), (3, 2));
        drop((a, b, c));
        assert_eq!(gauges(&metrics), (0, 0));
    }

    #[test]
    fn default_limits_are_the_configs() {
        let limits = Limits::default();
        assert_eq!(limits.max_connections, tinyedge_platform::config::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(limits.max_unauthenticated, tinyedge_platform::config::DEFAULT_MAX_UNAUTHENTICATED);
        assert_eq!(limits.connect_timeout, Duration::from_secs(10));
    }
}
