//! The method HTTP API's listener (`[hub] https`): TLS with the hub's server certificate, then
//! one request per connection through [`tinyedge_platform::http`]'s bounded loop, turned into
//! a call by [`super::http`] and answered by the [`Invoker`]. Only bytes move here.
//!
//! Log lines name the caller, the target, the method and the status; never the `Authorization`
//! header or any part of a token.

use std::sync::Arc;
use std::time::Duration;

use tinyedge_platform::http::{self as platform_http, Gate, Limits, Request, Response, HEAD_BYTES_MAX};
use tinyedge_platform::log_limited;
use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};

use super::http::{self, BODY_BYTES_MAX};
use super::Invoker;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::tls::Acceptor;

/// Connections served at once. Each holds one call, which may wait up to the 300 s response
/// timeout, so this is also the most calls in flight through HTTPS: a gateway's few dozen
/// modules calling each other at once, well under the hub's `CALLS_MAX`.
pub const CONNECTIONS_MAX: usize = 64;
const _: () = assert!(CONNECTIONS_MAX <= super::CALLS_MAX);
/// The API's bounds: the platform's head limit and request deadline, bodies up to a full
/// payload. The TLS handshake gets the same deadline before it.
pub const LIMITS: Limits = Limits {
    connections_max: CONNECTIONS_MAX,
    head_bytes_max: HEAD_BYTES_MAX,
    body_bytes_max: BODY_BYTES_MAX,
    request_timeout: platform_http::REQUEST_TIMEOUT,
};
/// After an accept error (out of descriptors), wait before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

static REFUSED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
static HANDSHAKE_FAILED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
static ACCEPT_FAILED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
static CALL_REFUSED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);

/// What the API needs from the hub.
#[derive(Clone)]
pub struct MethodApi {
    /// This edge device: only its modules may call.
    pub device_id: String,
    /// The identities and keys as of now (they change with each deployment).
    pub authenticator: Arc<dyn Fn() -> Arc<Authenticator> + Send + Sync>,
    pub invoker: Invoker,
}

impl MethodApi {
    /// The API of `broker`'s hub, for the edge device `device_id`.
    pub fn new(broker: &Arc<Broker>, device_id: &str) -> MethodApi {
        let keys = Arc::clone(broker);
        MethodApi {
            device_id: device_id.to_owned(),
            authenticator: Arc::new(move || keys.authenticator()),
            invoker: broker.method_invoker(),
        }
    }

    /// The answer to one request.
    pub async fn respond(&self, request: Request) -> Response {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let auth = (self.authenticator)();
        let call = match http::parse_request(&request.head, &request.body, &auth, &self.device_id, now) {
            Ok(call) => call,
            Err(rejection) => {
                log_limited!(
                    CALL_REFUSED,
                    log::Level::Info,
                    "method API: {} {} from {:?}: {rejection}",
                    request.head.method,
                    request.head.path,
                    request.head.module_id.as_deref().unwrap_or("?")
                );
                return rejection.response();
            }
        };
        let (caller, target, name) = (call.caller.clone(), call.target.clone(), call.name.clone());
        let response = http::answer((self.invoker)(call).await);
        log::debug!("method API: {caller} called {name:?} on {target}: {}", response.status);
        response
    }
}

/// Serves the method API on `listener` with TLS from `acceptor` until the task is dropped.
pub async fn serve(listener: tinyedge_platform::rt::TcpListener, acceptor: Acceptor, api: MethodApi) {
    let api = Arc::new(api);
    let gate = Gate::new(LIMITS.connections_max);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log_limited!(ACCEPT_FAILED, log::Level::Warn, "method API: accept: {e}");
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = gate.enter() else {
            // Answering would take a TLS handshake: closing is cheaper, and the caller retries.
            drop(stream);
            log_limited!(
                REFUSED,
                log::Level::Warn,
                "method API: {peer}: closed at accept: {CONNECTIONS_MAX} connections already"
            );
            continue;
        };
        let stream = match tinyedge_platform::rt::TcpSocket::new(stream) {
            Ok(stream) => stream,
            Err(e) => {
                log_limited!(ACCEPT_FAILED, log::Level::Warn, "method API: {peer}: socket not registered ({e})");
                continue;
            }
        };
        let (api, acceptor) = (api.clone(), acceptor.clone());
        tinyedge_platform::rt::spawn(async move {
            match platform_http::within(LIMITS.request_timeout, acceptor.accept(stream)).await {
                Some(Ok(tls)) => {
                    platform_http::serve_connection(tls, &LIMITS, &|request| api.respond(request)).await;
                }
                Some(Err(e)) => log_limited!(HANDSHAKE_FAILED, log::Level::Info, "method API: {peer}: TLS: {e}"),
                None => log_limited!(HANDSHAKE_FAILED, log::Level::Info, "method API: {peer}: TLS handshake too slow"),
            }
            drop(permit);
        })
        .detach();
    }
}
