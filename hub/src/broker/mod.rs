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
//! - `queue`, `transport`: lazily allocated queues and signals, the byte streams.

pub mod codec;
mod connection;
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
use std::time::Duration;

use smol::Async;
use std::net::{TcpListener, TcpStream};

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::route::{Endpoint, RouteTable};
use crate::store::Store;

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
    /// Open connections; more are closed right after accept.
    pub max_connections: usize,
    /// Time a new connection has to send CONNECT (IoT Edge: `ConnectArrivalTimeout`).
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_packet_bytes: 256 * 1024,
            subscriber_queue_max: 1000,
            max_inflight: 16,
            max_connections: 1000,
            connect_timeout: Duration::from_secs(60),
        }
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
        });
        broker.set_routes(routes);
        broker
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
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("accept on {local}: {e}");
                    smol::Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if self.metrics.connections_open.load(Ordering::Relaxed) >= self.limits.max_connections as u64 {
                Metrics::inc(&self.metrics.connections_refused);
                log::warn!("{peer}: refused: {} connections open (limit)", self.limits.max_connections);
                continue;
            }
            let _ = stream.get_ref().set_nodelay(true);
            let broker = self.clone();
            let tls = tls.clone();
            smol::spawn(async move { broker.serve_stream(stream, peer, tls).await }).detach();
        }
    }

    async fn serve_stream(
        self: Arc<Broker>,
        stream: Async<TcpStream>,
        peer: SocketAddr,
        tls: Option<futures_rustls::TlsAcceptor>,
    ) {
        let peer = peer.to_string();
        match tls {
            None => {
                let socket = Arc::new(stream);
                let reader =
                    transport::Reader { inner: transport::TcpHalf(socket.clone()), probe: Some(socket.clone()) };
                connection::serve(self, reader, transport::TcpHalf(socket), peer).await;
            }
            // Boxed: the TLS handshake state is large and only needed while it runs, and the
            // spawned task would otherwise be sized for it for the connection's whole life.
            Some(acceptor) => Box::pin(self.serve_tls(stream, peer, acceptor)).await,
        }
    }

    async fn serve_tls(
        self: Arc<Broker>,
        stream: Async<TcpStream>,
        peer: String,
        acceptor: futures_rustls::TlsAcceptor,
    ) {
        let handshake = async { Some(acceptor.accept(stream).await) };
        let timeout = async {
            smol::Timer::after(self.limits.connect_timeout).await;
            None
        };
        match smol::future::or(handshake, timeout).await {
            Some(Ok(tls_stream)) => {
                let (read_half, write_half) = smol::io::split(tls_stream);
                connection::serve(self, transport::Reader { inner: read_half, probe: None }, write_half, peer).await;
            }
            Some(Err(e)) => log::warn!("{peer}: TLS handshake failed: {e}"),
            None => log::warn!("{peer}: TLS handshake timed out"),
        }
    }
}
