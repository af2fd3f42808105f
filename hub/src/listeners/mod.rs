//! The hub's listeners, built in one place: every socket the hub accepts on, what it speaks,
//! and one shutdown for all of them, so the runtime and a test run the hub the same way (a test
//! binds `127.0.0.1:0`).
//!
//! # Layout
//! - this file: [`Listener`], [`Kind`] and [`serve`];
//! - `permit`: a socket's place under the connection limits, for every protocol;
//! - `fdlimit`: the file descriptor budget `max_connections` is fitted to at start.

pub mod fdlimit;
pub mod permit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tinyedge_platform::rt::{self, TcpListener};

use crate::broker::Broker;
use crate::methods::listener::MethodApi;
use crate::tls::Acceptor;

/// What a listener speaks.
#[derive(Clone)]
pub enum Kind {
    /// MQTT over plain TCP (`[hub] mqtt`).
    Mqtt,
    /// MQTT over TLS with the hub's server certificate (`[hub] mqtts`).
    Mqtts(Acceptor),
    /// The direct-method HTTP API over TLS (`[hub] https`).
    MethodsHttps(Acceptor),
    /// AMQP 1.0 over TLS (`[hub] amqps`), for the SDKs' AMQP transport.
    #[cfg(feature = "amqp")]
    Amqps(Acceptor),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Mqtt => "mqtt",
            Kind::Mqtts(_) => "mqtts",
            Kind::MethodsHttps(_) => "https",
            #[cfg(feature = "amqp")]
            Kind::Amqps(_) => "amqps",
        })
    }
}

/// A bound socket and what it speaks.
#[derive(Debug)]
pub struct Listener {
    pub kind: Kind,
    /// On the executor thread's own reactor ([`tinyedge_platform::rt`]).
    pub listener: TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0: any free port) for `kind`.
    pub fn bind(kind: Kind, addr: SocketAddr) -> std::io::Result<Listener> {
        Ok(Listener { kind, listener: TcpListener::bind(addr)? })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Sockets that could not be registered with the executor's reactor.
static NOT_REGISTERED: tinyedge_platform::logger::RateLimit =
    tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);

/// An accepted hub socket, with `TCP_NODELAY`, on the executor's reactor; `None` (counted as an
/// accept error, logged rate-limited, the socket closed) if it cannot be registered. `what`
/// names the listener in the log ("MQTT", "AMQP").
pub(crate) fn register(
    broker: &Broker,
    stream: std::net::TcpStream,
    peer: &SocketAddr,
    what: &str,
) -> Option<rt::TcpSocket> {
    let _ = stream.set_nodelay(true);
    match rt::TcpSocket::new(stream) {
        Ok(socket) => Some(socket),
        Err(e) => {
            crate::metrics::Metrics::inc(&broker.metrics.accept_errors);
            tinyedge_platform::log_limited!(
                NOT_REGISTERED,
                log::Level::Warn,
                "{peer}: {what} socket not registered with the reactor ({e}); closed"
            );
            None
        }
    }
}

/// Accepts on every listener until `shutdown` resolves, then closes them all and returns.
/// Connections already accepted go on until they end; nothing new is accepted after the
/// return (the sockets are closed, so a connect is refused).
pub async fn serve(broker: Arc<Broker>, listeners: Vec<Listener>, shutdown: impl Future<Output = ()>) {
    let tasks: Vec<rt::Task<()>> = listeners
        .into_iter()
        .map(|Listener { kind, listener }| match kind {
            Kind::Mqtt => rt::spawn(crate::mqtt::serve(broker.clone(), listener, None)),
            Kind::Mqtts(acceptor) => rt::spawn(crate::mqtt::serve(broker.clone(), listener, Some(acceptor))),
            Kind::MethodsHttps(acceptor) => {
                let api = MethodApi::new(&broker, broker.device_id());
                rt::spawn(crate::methods::listener::serve(listener, acceptor, api))
            }
            #[cfg(feature = "amqp")]
            Kind::Amqps(acceptor) => rt::spawn(crate::amqp::serve(broker.clone(), listener, acceptor)),
        })
        .collect();
    shutdown.await;
    // Cancelling an accept loop drops its listener: the socket is closed when this returns.
    for task in tasks {
        task.cancel().await;
    }
}
