//! # The upstream link
//!
//! One MQTT 3.1.1 client connection from the edge hub to the cloud IoT Hub, as edgeHub keeps
//! one: it connects as the edge device with a SAS token (renewed before it expires), publishes
//! the messages of an [`Outbox`] with QoS 1 — at most `window` unacknowledged, acknowledged
//! back to the outbox strictly in order — keeps the connection alive, and reconnects forever
//! with exponential backoff and jitter. Whatever was not acknowledged when a connection dropped
//! is sent again (DUP set) on the next one: delivery is at least once, in order.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tinyedge_hub::broker::outbox::StoreOutbox;
//! # use tinyedge_hub::store::{Store, StoreConfig};
//! # use tinyedge_hub::upstream::{Link, UpstreamConfig};
//! // The store's `$upstream` queue (priority 10 = routes without one) is what the link drains.
//! let (store, _recovery) = Store::open(StoreConfig::new("/var/lib/tinyedge/store")).expect("store");
//! let store = Arc::new(store);
//! let queue = store.endpoint_id("$upstream#10").expect("endpoint");
//! let outbox = Arc::new(StoreOutbox::new(store, &[(10, queue)]));
//! let config = UpstreamConfig::new("mqtts://myhub.azure-devices.net", "myhub.azure-devices.net", "gw-1", vec![7; 32]);
//! let link = Link::new(config, outbox).expect("valid upstream config");
//! smol::spawn(link.clone().run()).detach();
//! // later: link.status().connected, .acked, .last_error ...
//! ```
//!
//! # Layout
//! - [`config`]: [`UpstreamConfig`], URL parsing, trusted roots;
//! - [`session`]: one connection — connect, publish window, keep-alive, inbound messages;
//! - [`window`]: the in-flight window and the in-order acknowledgement rule (pure);
//! - [`token`]: CONNECT credentials and when to renew them (pure);
//! - [`backoff`]: reconnect delays with jitter (pure);
//! - [`error`]: [`UpstreamError`] (configuration) and [`LinkError`] (one connection's end).

pub mod backoff;
pub mod config;
pub mod error;
pub mod session;
pub mod token;
pub mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustls::pki_types::ServerName;

pub use config::{parse_url, Target, UpstreamConfig};
pub use error::{LinkError, UpstreamError};

use backoff::{Backoff, XorShift64};
use session::{Ended, Pipeline};
use window::Window;

/// A session that stayed up this long proves the hub accepts us: the backoff starts again
/// from its minimum. Shorter sessions keep it growing, so a hub that accepts and then drops
/// the link at once is not hammered. 30 s is edgeHub's endpoint revive period.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// One message for the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Position in the outbox; strictly increasing (gaps allowed).
    pub seq: u64,
    /// `devices/{d}/modules/{m}/messages/events/{bag}` or `devices/{d}/messages/events/{bag}`.
    pub topic: String,
    pub payload: Bytes,
    /// It may have been sent before a restart: sent with the DUP flag from the first time.
    pub maybe_sent: bool,
}

/// Where the link gets its messages: the store's `$upstream` endpoint in production, a Vec in
/// tests.
pub trait Outbox: Send + Sync + 'static {
    /// Up to `max` messages after sequence `after` (exclusive), in order; empty when none are
    /// waiting.
    fn next_batch(&self, after: u64, max: usize) -> Vec<OutMessage>;
    /// Resolves when messages after `after` may be available (e.g. an `event_listener::Event`
    /// notified on append). May resolve spuriously, but must not stay ready while none are.
    fn wait_for_more(&self, after: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Every message up to and including `seq` was acknowledged by the cloud. Called with
    /// increasing values only.
    fn acked(&self, seq: u64);
    /// Where to resume after a restart: the last acked seq (0 = from the start).
    fn resume_after(&self) -> u64;
}

/// Receives PUBLISHes from the cloud (C2D messages, twin updates): topic and payload. Runs on
/// the link's task, so it must return quickly (e.g. `try_send` into a bounded channel).
pub type OnMessage = dyn Fn(String, Bytes) + Send + Sync;

/// A snapshot of the link's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Connected (CONNACK accepted) right now.
    pub connected: bool,
    /// When `connected` last changed (unix ms; 0 before the first attempt ended).
    pub since_unix_ms: u64,
    /// Why the last connection attempt or connection failed; kept after reconnecting.
    pub last_error: Option<String>,
    /// Successful connections after the first one (losses and token renewals).
    pub reconnects: u64,
    /// Messages written to the cloud at least once (resends are not counted again).
    pub published: u64,
    /// Messages acknowledged by the cloud (released to the outbox in order).
    pub acked: u64,
    /// Messages skipped because they can never be delivered (bad topic, over 256 KiB).
    pub dropped: u64,
}

#[derive(Default)]
struct StatusCell {
    status: LinkStatus,
    connects: u64,
}

/// The link. Build it with [`Link::new`], spawn [`Link::run`], read [`Link::status`].
pub struct Link {
    config: UpstreamConfig,
    target: Target,
    tls: Option<(futures_rustls::TlsConnector, ServerName<'static>)>,
    outbox: Arc<dyn Outbox>,
    on_message: Mutex<Option<Arc<OnMessage>>>,
    status: Mutex<StatusCell>,
}

impl Link {
    /// Validates the configuration and, for `mqtts://`, loads the trusted roots (the system
    /// bundle [`config::SYSTEM_CA_BUNDLE`] plus `config.ca`). Nothing is connected yet.
    pub fn new(config: UpstreamConfig, outbox: Arc<dyn Outbox>) -> Result<Arc<Link>, UpstreamError> {
        let target = config.validate()?;
        let tls = if target.tls {
            let bundle = std::path::Path::new(config::SYSTEM_CA_BUNDLE);
            Some(config::tls_connector(&target.host, config.ca.as_deref(), bundle)?)
        } else {
            None
        };
        Ok(Arc::new(Link {
            config,
            target,
            tls,
            outbox,
            on_message: Mutex::new(None),
            status: Mutex::new(StatusCell::default()),
        }))
    }

    /// Hands inbound PUBLISHes to `callback` (see [`OnMessage`]) and subscribes to
    /// [`inbound_subscriptions`]. Takes effect from the next connection, so set it before
    /// spawning [`Link::run`]. Without a callback the link subscribes to nothing.
    pub fn set_on_message(&self, callback: Box<OnMessage>) {
        *lock(&self.on_message) = Some(Arc::from(callback));
    }

    /// Where the link connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A snapshot of the connection state and counters (one short mutex hold).
    pub fn status(&self) -> LinkStatus {
        lock(&self.status).status.clone()
    }

    /// Connects, publishes and reconnects forever; spawn it (`smol::spawn(link.clone().run())`).
    /// Dropping the future closes the connection without a DISCONNECT.
    pub async fn run(self: Arc<Self>) {
        let mut pipeline =
            Pipeline { window: Window::new(self.config.window), fetched_through: self.outbox.resume_after() };
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max, XorShift64::from_clock());
        let mut last_reason: Option<String> = None;
        loop {
            match session::run(&self, &mut pipeline).await {
                Ok(Ended::Renewal) => {
                    log::info!("upstream renewing its SAS token: reconnecting to {}", self.target);
                    self.mark_disconnected(None);
                }
                Err(failure) => {
                    if failure.connected_for.is_some_and(|up| up >= STABLE_SESSION) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    let reason = failure.error.to_string();
                    // Log changes at warn; the same failure again (a long outage) at debug.
                    if failure.connected_for.is_some() || last_reason.as_deref() != Some(reason.as_str()) {
                        log::warn!("upstream lost: {reason}; retrying in {:.1} s", delay.as_secs_f64());
                    } else {
                        log::debug!("upstream still down: {reason}; retrying in {:.1} s", delay.as_secs_f64());
                    }
                    self.mark_disconnected(Some(reason.clone()));
                    last_reason = Some(reason);
                    smol::Timer::after(delay).await;
                }
            }
        }
    }

    fn on_message(&self) -> Option<Arc<OnMessage>> {
        lock(&self.on_message).clone()
    }

    fn mark_connected(&self) {
        log::info!("upstream connected to {}", self.target);
        let mut cell = lock(&self.status);
        cell.connects += 1;
        cell.status.reconnects = cell.connects - 1;
        cell.status.connected = true;
        cell.status.since_unix_ms = unix_ms();
    }

    fn mark_disconnected(&self, error: Option<String>) {
        let mut cell = lock(&self.status);
        if cell.status.connected || cell.status.since_unix_ms == 0 {
            cell.status.since_unix_ms = unix_ms();
        }
        cell.status.connected = false;
        if error.is_some() {
            cell.status.last_error = error;
        }
    }

    fn count_published(&self, n: usize) {
        if n > 0 {
            lock(&self.status).status.published += n as u64;
        }
    }

    fn count_acked(&self, n: usize) {
        if n > 0 {
            lock(&self.status).status.acked += n as u64;
        }
    }

    fn count_dropped(&self) {
        lock(&self.status).status.dropped += 1;
    }
}

/// The topics the link subscribes to when it has an inbound callback: cloud-to-device
/// messages, desired-property patches and twin responses of the edge device. Direct methods
/// are left out: subscribing without answering would turn "device offline" into a timeout.
pub fn inbound_subscriptions(device_id: &str) -> [String; 3] {
    [
        format!("devices/{device_id}/messages/devicebound/#"),
        "$iothub/twin/PATCH/properties/desired/#".to_owned(),
        "$iothub/twin/res/#".to_owned(),
    ]
}

/// A poisoned lock only means another thread panicked mid-update of plain counters: keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
