//! MQTT 3.1.1 as IoT Hub speaks it: one adapter over the protocol-neutral core
//! ([`crate::broker`]). It turns bytes into packets, packets into the core's calls (ingest,
//! subscriptions, twin and method requests) and the core's deliveries and lane items into
//! PUBLISHes; the IoT Hub topic grammar it uses is [`crate::topic`]'s.
//!
//! # Layout
//! - `codec`: packet framing (mqttbytes in, a few hand-encoded packets out);
//! - `connection`: CONNECT, authentication, the reading half of a connection;
//! - `writer`: the writing half: acknowledgements, deliveries and control-lane items as
//!   PUBLISHes (topics built with [`crate::topic`]);
//! - `transport`: the byte streams (plain TCP halves, TLS split) and the read-readiness probe;
//! - this file: the accept loop of a plain or TLS listener ([`serve`]).
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
mod transport;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyedge_platform::log_limited;
use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};
use tinyedge_platform::rt::{self, TcpListener, TcpSocket};

use crate::broker::Broker;
use crate::listeners::permit::{AtLimit, Permit};
use crate::metrics::Metrics;
use crate::tls::Acceptor;

/// How long a listener waits after a failed accept() (out of descriptors, mostly) before it
/// tries again: the pending connection stays in the backlog and would wake it at once, so
/// without a pause the loop would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sockets closed at accept because a connection limit is reached.
static REFUSED_AT_LIMIT: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
/// accept() failures.
static ACCEPT_FAILED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);

/// Accepts MQTT connections on `listener` for as long as the future runs (dropping it closes
/// the listener; connections already accepted go on); TLS when `tls` is given.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, tls: Option<Acceptor>) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE) and the like: back off instead
                // of spinning on the connection still waiting in the backlog.
                Metrics::inc(&broker.metrics.accept_errors);
                log_limited!(
                    ACCEPT_FAILED,
                    log::Level::Warn,
                    "accept on {local}: {e} ({} sockets open); retrying every {} ms",
                    broker.metrics.connections_open.load(Ordering::Relaxed),
                    ACCEPT_BACKOFF.as_millis()
                );
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let deadline = Instant::now() + broker.limits.connect_timeout;
        let permit = match Permit::acquire(&broker.metrics, &broker.limits) {
            Ok(permit) => permit,
            Err(at) => {
                // Dropping the stream closes it: the backlog keeps moving.
                drop(stream);
                Metrics::inc(&broker.metrics.connections_refused_limit);
                let (max, what, key) = match at {
                    AtLimit::Connections => (broker.limits.max_connections, "sockets open", "hub.max_connections"),
                    AtLimit::Unauthenticated => {
                        (broker.limits.max_unauthenticated, "sockets before CONNECT", "hub.max_unauthenticated")
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
        let Some(stream) = crate::listeners::register(&broker, stream, &peer, "MQTT") else { continue };
        let broker = broker.clone();
        let tls = tls.clone();
        rt::spawn(async move { serve_stream(broker, stream, peer, tls, permit, deadline).await }).detach();
    }
}

async fn serve_stream(
    broker: Arc<Broker>,
    stream: TcpSocket,
    peer: SocketAddr,
    tls: Option<Acceptor>,
    permit: Permit,
    deadline: Instant,
) {
    let peer = peer.to_string();
    match tls {
        None => {
            let socket = Arc::new(stream);
            let reader = transport::Reader { inner: transport::TcpHalf(socket.clone()), probe: Some(socket.clone()) };
            let accepted = connection::Accepted { peer, permit, deadline };
            connection::serve(broker, reader, transport::TcpHalf(socket), accepted).await;
        }
        // Boxed: the TLS handshake state is large and only needed while it runs, and the
        // spawned task would otherwise be sized for it for the connection's whole life.
        Some(acceptor) => Box::pin(serve_tls(broker, stream, peer, acceptor, permit, deadline)).await,
    }
}

async fn serve_tls(
    broker: Arc<Broker>,
    stream: TcpSocket,
    peer: String,
    acceptor: Acceptor,
    permit: Permit,
    deadline: Instant,
) {
    let Some(tls_stream) = crate::tls::handshake_within(&broker, &acceptor, stream, &peer, "", deadline).await else {
        return;
    };
    let (read_half, write_half) = smol::io::split(tls_stream);
    let accepted = connection::Accepted { peer, permit, deadline };
    connection::serve(broker, transport::Reader { inner: read_half, probe: None }, write_half, accepted).await;
}
