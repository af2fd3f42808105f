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
//! tinyedge_platform::rt::spawn(link.clone().run()).detach();
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
    /// When the hub took it in (unix ms; 0 unknown): its processing time is measured to the
    /// moment it is first written to the cloud.
    pub enqueued_unix_ms: u64,
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

/// Why [`probe`] failed.
#[derive(Debug)]
pub enum ProbeError {
    /// The configuration (URL, settings, trusted roots) cannot be used.
    Setup(UpstreamError),
    /// The connection failed at the step the error names.
    Link(LinkError),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Setup(error) => error.fmt(f),
            ProbeError::Link(error) => error.fmt(f),
        }
    }
}

/// An outbox that never has a message: what a [`probe`] link publishes.
struct NoOutbox;

impl Outbox for NoOutbox {
    fn next_batch(&self, _after: u64, _max: usize) -> Vec<OutMessage> {
        Vec::new()
    }
    fn wait_for_more(&self, _after: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
    fn acked(&self, _seq: u64) {}
    fn resume_after(&self) -> u64 {
        0
    }
}

/// Connects once as the link does — TCP, TLS with its trusted roots (the system bundle plus
/// `config.ca`) and, when `authenticate`, MQTT CONNECT with a fresh SAS token up to an
/// accepting CONNACK — then disconnects cleanly; nothing is subscribed or published.
/// `tinyedge check`'s upstream probe; `timeout` bounds all of it. Returns where it connected.
pub async fn probe(config: UpstreamConfig, authenticate: bool, timeout: Duration) -> Result<Target, ProbeError> {
    let link = Link::new(config, Arc::new(NoOutbox)).map_err(ProbeError::Setup)?;
    session::probe(&link, authenticate, timeout).await.map_err(ProbeError::Link)?;
    Ok(link.target.clone())
}

/// One PUBLISH from the cloud.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    /// QoS 1: the cloud waits for a PUBACK (see [`Ack`]).
    pub qos1: bool,
    pub pkid: u16,
    /// The connection it came on (see [`Link::connection`]); a later PUBACK names it.
    pub connection: u64,
}

/// When a QoS 1 PUBLISH from the cloud is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// At once (twin answers, desired patches, method calls: QoS 0 or 1, nothing to complete).
    Now,
    /// Later, through [`Link::puback`] (a C2D message is completed when the device
    /// acknowledges it); if the connection ends first, the cloud delivers it again.
    Later,
}

/// Receives PUBLISHes from the cloud. Runs on the link's task, so it must return quickly
/// (e.g. `try_send` into a bounded channel, or spawn).
pub type OnMessage = dyn Fn(Inbound) -> Ack + Send + Sync;

/// Told the number of each new connection, once its CONNACK and subscriptions are written:
/// the place to send what must follow every reconnect (pending reported properties, a twin
/// GET). Runs on the link's task: queue with [`Link::send`], do not wait.
pub type OnConnected = dyn Fn(u64) + Send + Sync;

/// A QoS 0 request, a deferred PUBACK, or a confirmed QoS 1 publish waiting for the link's
/// next write.
#[derive(Debug)]
pub enum Outgoing {
    Publish {
        topic: String,
        payload: Bytes,
    },
    PubAck {
        connection: u64,
        pkid: u16,
    },
    /// Sent at QoS 1 outside the window; `done` gets `()` on its PUBACK, and is dropped (the
    /// caller sees the channel closed) if the connection ends first.
    Confirmed {
        topic: String,
        payload: Bytes,
        done: smol::channel::Sender<()>,
    },
}

/// Requests waiting for the connection (twin GETs and PATCHes, method answers, PUBACKs): a
/// few per identity at a time; at the limit [`Link::send`] refuses and the caller retries.
pub const OUTGOING_MAX: usize = 64;
/// Filters one link may hold (IoT Hub allows a device few topics; an identity needs at most
/// four: twin responses, desired patches, methods, C2D).
pub const SUBSCRIPTIONS_MAX: usize = 8;

/// The link's requests and subscriptions besides the outbox.
#[derive(Debug, Default)]
struct Extra {
    outgoing: std::collections::VecDeque<Outgoing>,
    /// Filters subscribed on every connection (QoS 1), in the order they were added.
    subscriptions: Vec<String>,
}

/// The reconnect policy several links share, so a cloud outage is probed at one pace rather
/// than by every identity's link on its own schedule: a failed attempt sets the time of the
/// next one for all links that fail before it.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<(Backoff, Option<std::time::Instant>)>,
    /// Links sharing the gate that are connected right now.
    up: std::sync::atomic::AtomicUsize,
    changed: event_listener::Event,
}

impl Gate {
    pub fn new(min: Duration, max: Duration) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new((Backoff::new(min, max, XorShift64::from_clock()), None)),
            up: std::sync::atomic::AtomicUsize::new(0),
            changed: event_listener::Event::new(),
        })
    }

    /// Whether some link sharing the gate is connected (a link the cloud refuses does not
    /// make the cloud "down" for the others).
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Resolves once the cloud is up.
    pub async fn wait_up(&self) {
        loop {
            let listener = self.changed.listen();
            if self.is_up() {
                return;
            }
            listener.await;
        }
    }

    fn link_up(&self) {
        if self.up.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
            self.changed.notify(usize::MAX);
        }
    }

    fn link_down(&self) {
        let _ = self.up.fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
            n.checked_sub(1)
        });
        self.changed.notify(usize::MAX);
    }

    /// A connection failed: the wait before the next attempt (the one already set, if it lies
    /// ahead, else a new delay). `stable`: the failed connection had been up long enough to
    /// start the backoff again from its minimum.
    fn failed(&self, stable: bool) -> Duration {
        let mut state = lock(&self.state);
        let now = std::time::Instant::now();
        if stable {
            state.0.reset();
        }
        match state.1 {
            Some(at) if at > now && !stable => at - now,
            _ => {
                let delay = state.0.next_delay();
                state.1 = Some(now + delay);
                delay
            }
        }
    }

    /// A connection came up: the cloud is there.
    fn succeeded(&self) {
        lock(&self.state).1 = None;
    }
}

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
    /// Milliseconds from enqueue to the first write to the cloud, summed over `processed`
    /// messages (`edgehub_message_process_duration_seconds{to="upstream"}`).
    pub process_ms_sum: u64,
    pub processed: u64,
    /// The cloud refused the last CONNECT as not authorized (CONNACK 4 or 5): the identity's
    /// credentials are not (or no longer) valid there. Cleared by the next connection.
    pub refused: bool,
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
    on_connected: Mutex<Option<Arc<OnConnected>>>,
    extra: Mutex<Extra>,
    /// Notified when a request or a subscription is added.
    wake: event_listener::Event,
    gate: Mutex<Arc<Gate>>,
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
        Ok(Link::with_tls(config, target, tls, outbox))
    }

    /// A link reusing an already loaded TLS setup (one per cloud, shared by every identity's
    /// link, instead of parsing the roots again per link).
    pub fn with_tls(
        config: UpstreamConfig,
        target: Target,
        tls: Option<(futures_rustls::TlsConnector, ServerName<'static>)>,
        outbox: Arc<dyn Outbox>,
    ) -> Arc<Link> {
        let gate = Gate::new(config.backoff_min, config.backoff_max);
        Arc::new(Link {
            config,
            target,
            tls,
            outbox,
            on_message: Mutex::new(None),
            on_connected: Mutex::new(None),
            extra: Mutex::new(Extra::default()),
            wake: event_listener::Event::new(),
            gate: Mutex::new(gate),
            status: Mutex::new(StatusCell::default()),
        })
    }

    /// Hands inbound PUBLISHes to `callback` (acknowledged at once) and subscribes to
    /// [`inbound_subscriptions`] of the edge device — the single-connection mode's inbound
    /// side. Takes effect from the next connection, so set it before spawning [`Link::run`].
    pub fn set_on_message(&self, callback: Box<dyn Fn(String, Bytes) + Send + Sync>) {
        *lock(&self.on_message) = Some(Arc::new(move |inbound: Inbound| {
            callback(inbound.topic, inbound.payload);
            Ack::Now
        }));
        for filter in inbound_subscriptions(&self.config.device_id) {
            self.subscribe(&filter);
        }
    }

    /// Hands inbound PUBLISHes to `callback`, which decides when each is acknowledged.
    pub fn on_inbound(&self, callback: Arc<OnMessage>) {
        *lock(&self.on_message) = Some(callback);
    }

    /// Calls `callback` after every connection is made (see [`OnConnected`]).
    pub fn on_connected(&self, callback: Arc<OnConnected>) {
        *lock(&self.on_connected) = Some(callback);
    }

    /// Makes the link share `gate` (one reconnect policy for several links).
    pub fn share_gate(&self, gate: Arc<Gate>) {
        *lock(&self.gate) = gate;
    }

    /// Subscribes to `filter` (QoS 1) now if connected and on every later connection. A filter
    /// held already changes nothing; beyond [`SUBSCRIPTIONS_MAX`] it is refused.
    pub fn subscribe(&self, filter: &str) -> bool {
        let mut extra = lock(&self.extra);
        if extra.subscriptions.iter().any(|f| f == filter) {
            return true;
        }
        if extra.subscriptions.len() >= SUBSCRIPTIONS_MAX {
            return false;
        }
        extra.subscriptions.push(filter.to_owned());
        drop(extra);
        self.wake.notify(usize::MAX);
        true
    }

    /// Whether the link holds any subscription (it is then kept open while idle).
    pub fn has_subscriptions(&self) -> bool {
        !lock(&self.extra).subscriptions.is_empty()
    }

    /// Queues a QoS 0 PUBLISH for the current connection (requests queued while disconnected
    /// are dropped when the next connection starts: its [`OnConnected`] sends what is due).
    /// `false` when [`OUTGOING_MAX`] requests wait already.
    pub fn send(&self, topic: String, payload: Bytes) -> bool {
        self.push_outgoing(Outgoing::Publish { topic, payload })
    }

    /// Publishes at QoS 1 outside the telemetry window and waits (at most `timeout`) for the
    /// cloud's PUBACK: `true` once it arrived. For messages that must not go through the store
    /// and routes (the agent's diagnostics); `false` if not connected, the queue is full, the
    /// connection dropped, or the time ran out.
    pub async fn publish_confirmed(&self, topic: String, payload: Bytes, timeout: Duration) -> bool {
        if !self.status().connected {
            return false;
        }
        let (done, acked) = smol::channel::bounded(1);
        if !self.push_outgoing(Outgoing::Confirmed { topic, payload, done }) {
            return false;
        }
        let wait = async { acked.recv().await.is_ok() };
        let expire = async {
            smol::Timer::after(timeout).await;
            false
        };
        smol::future::or(wait, expire).await
    }

    /// Acknowledges an inbound PUBLISH that was answered [`Ack::Later`]; ignored if its
    /// connection has ended (the cloud then delivers it again).
    pub fn puback(&self, connection: u64, pkid: u16) {
        if connection == self.connection() {
            // Past the bound: a lost completion would stall the device's C2D queue.
            lock(&self.extra).outgoing.push_back(Outgoing::PubAck { connection, pkid });
            self.wake.notify(usize::MAX);
        }
    }

    fn push_outgoing(&self, item: Outgoing) -> bool {
        let mut extra = lock(&self.extra);
        if extra.outgoing.len() >= OUTGOING_MAX {
            return false;
        }
        extra.outgoing.push_back(item);
        drop(extra);
        self.wake.notify(usize::MAX);
        true
    }

    /// The number of the current (or last) connection: 1 for the first.
    pub fn connection(&self) -> u64 {
        lock(&self.status).connects
    }

    /// Where the link connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The identity the link connects as: `d` or `d/m`.
    pub fn client_id(&self) -> String {
        match &self.config.module_id {
            Some(module) => format!("{}/{module}", self.config.device_id),
            None => self.config.device_id.clone(),
        }
    }

    /// A snapshot of the connection state and counters (one short mutex hold).
    pub fn status(&self) -> LinkStatus {
        lock(&self.status).status.clone()
    }

    /// Connects, publishes and reconnects forever; spawn it (`tinyedge_platform::rt::spawn(link.clone().run())`).
    /// Dropping the future closes the connection without a DISCONNECT.
    pub async fn run(self: Arc<Self>) {
        /// A link whose task is dropped while connected (closed by the cloud side) leaves the
        /// shared gate's count of connected links.
        struct Closed(Arc<Link>);
        impl Drop for Closed {
            fn drop(&mut self) {
                self.0.mark_disconnected(Some("closed".to_string()), false);
            }
        }
        let _closed = Closed(self.clone());
        let mut pipeline = Pipeline {
            window: Window::new(self.config.window),
            enqueued: std::collections::VecDeque::new(),
            fetched_through: self.outbox.resume_after(),
        };
        let mut last_reason: Option<String> = None;
        loop {
            match session::run(&self, &mut pipeline).await {
                Ok(Ended::Renewal) => {
                    log::info!("upstream {} renewing its SAS token: reconnecting to {}", self.client_id(), self.target);
                    self.mark_disconnected(None, false);
                }
                Err(failure) => {
                    let gate = lock(&self.gate).clone();
                    let delay = gate.failed(failure.connected_for.is_some_and(|up| up >= STABLE_SESSION));
                    let reason = failure.error.to_string();
                    // Log changes at warn; the same failure again (a long outage) at debug.
                    if failure.connected_for.is_some() || last_reason.as_deref() != Some(reason.as_str()) {
                        log::warn!(
                            "upstream {} lost: {reason}; retrying in {:.1} s",
                            self.client_id(),
                            delay.as_secs_f64()
                        );
                    } else {
                        log::debug!(
                            "upstream {} still down: {reason}; retrying in {:.1} s",
                            self.client_id(),
                            delay.as_secs_f64()
                        );
                    }
                    let refused = matches!(failure.error, LinkError::Refused(4 | 5));
                    self.mark_disconnected(Some(reason.clone()), refused);
                    last_reason = Some(reason);
                    smol::Timer::after(delay).await;
                }
            }
        }
    }

    fn on_message(&self) -> Option<Arc<OnMessage>> {
        lock(&self.on_message).clone()
    }

    fn connected_callback(&self) -> Option<Arc<OnConnected>> {
        lock(&self.on_connected).clone()
    }

    /// Every filter held (subscribed on a new connection).
    fn subscriptions(&self) -> Vec<String> {
        lock(&self.extra).subscriptions.clone()
    }

    /// Filters added after the first `known` ones.
    fn subscriptions_after(&self, known: usize) -> Vec<String> {
        lock(&self.extra).subscriptions.iter().skip(known).cloned().collect()
    }

    fn take_outgoing(&self) -> std::collections::VecDeque<Outgoing> {
        std::mem::take(&mut lock(&self.extra).outgoing)
    }

    fn mark_connected(&self) {
        log::info!("upstream {} connected to {}", self.client_id(), self.target);
        lock(&self.gate).succeeded();
        // Requests made for an earlier connection: what is still due is sent again by the
        // connection callback.
        lock(&self.extra).outgoing.clear();
        let mut cell = lock(&self.status);
        if !cell.status.connected {
            lock(&self.gate).link_up();
        }
        cell.connects += 1;
        cell.status.reconnects = cell.connects - 1;
        cell.status.connected = true;
        cell.status.refused = false;
        cell.status.since_unix_ms = unix_ms();
    }

    fn mark_disconnected(&self, error: Option<String>, refused: bool) {
        let mut cell = lock(&self.status);
        if cell.status.connected {
            lock(&self.gate).link_down();
        }
        if cell.status.connected || cell.status.since_unix_ms == 0 {
            cell.status.since_unix_ms = unix_ms();
        }
        cell.status.connected = false;
        cell.status.refused = refused;
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

    fn count_processed(&self, ms: u64) {
        let mut cell = lock(&self.status);
        cell.status.process_ms_sum += ms;
        cell.status.processed += 1;
    }

    fn count_dropped(&self) {
        lock(&self.status).status.dropped += 1;
    }
}

/// The topics the single-connection link subscribes to when it has an inbound callback:
/// cloud-to-device messages, desired-property patches and twin responses of the edge device.
/// Direct methods are left out: subscribing without answering would turn "device offline"
/// into a timeout.
pub fn inbound_subscriptions(device_id: &str) -> [String; 3] {
    [
        crate::topic::device_bound_filter(device_id),
        crate::topic::DESIRED_PATCH_FILTER.to_owned(),
        crate::topic::TWIN_RESPONSE_FILTER.to_owned(),
    ]
}

/// A poisoned lock only means another thread panicked mid-update of plain counters: keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
