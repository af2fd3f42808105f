//! # The cloud side: IoT Hub's device contract upstream, one connection per identity
//!
//! What edgeHub does with `UpstreamProtocol=Mqtt`: every identity with cloud traffic — its
//! telemetry routed to `$upstream`, a twin, desired-patch, method or C2D subscriptions — gets
//! its own MQTT connection to IoT Hub with its own credentials ([`crate::upstream::Link`]), as
//! IoT Hub allows one identity per MQTT connection. All links share one reconnect policy
//! ([`crate::upstream::Gate`]) and are bounded in number ([`CloudConfig::max_links`]); a link
//! that has been idle for [`CloudConfig::idle_timeout`] is closed unless it holds
//! subscriptions, and a leaf device's link is closed when the device disconnects (edgeHub's
//! `CloseCloudConnectionOnDeviceDisconnect`), so its undelivered C2D messages stay in the cloud.
//!
//! - Telemetry ([`telemetry`]): read in order from the store, each message sent on its
//!   sender's link; the store checkpoint moves only as far as every link has acknowledged.
//! - Twins ([`sync`]): reported changes are kept on disk until the cloud acknowledges them
//!   (sent on every connection of that identity, connected client or not); on every
//!   connection the cloud twin is fetched, the cloud's version wins, and a subscribed client
//!   gets one patch with the difference; desired patches the cloud pushes are merged when
//!   their version is the next one, else the twin is fetched again.
//! - Direct methods from the cloud reach the connected client through the hub's method
//!   machinery (404 at once if it is not connected and subscribed); the answer goes back.
//! - C2D messages for a leaf device are delivered on its `devicebound` topic and completed in
//!   the cloud (PUBACK) only once the device acknowledged them.

pub mod scope;
pub mod sync;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use serde_json::Value;

use crate::auth::Identity;
use crate::broker::session::{Completion, Control, Subscriptions};
use crate::broker::{Broker, CloudHooks};
use crate::methods::{MethodCall, MethodError};
use crate::topic::{self, FromCloud};
use crate::upstream::{config, Ack, Gate, Inbound, Link, LinkStatus, Outbox, Target, UpstreamConfig, UpstreamError};

use self::telemetry::{Dispatch, IdentityOutbox, RouteTo};

/// edgeHub's `MaxConnectedClients` (100) plus its own connection.
pub const DEFAULT_MAX_LINKS: usize = 101;
/// edgeHub's `CloudConnectionIdleTimeoutSecs`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// edgeHub's `CloudOperationTimeoutSecs`: a twin request the cloud does not answer in time is
/// given up (and tried again on the next connection).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a method call from the cloud may take: IoT Hub's own limit is 5 minutes; edgeHub
/// waits 5 min 30 s (`DeviceMethodMaxResponseTimeout`).
pub const METHOD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Twin requests waiting for the cloud's answer, all identities together; beyond it a request
/// is refused at once (and retried on the next connection).
pub const REQUESTS_WAITING_MAX: usize = 256;
/// Reported patches waiting for the cloud are retried this often while their link is up.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// The cloud side's settings; the link settings (URL, trust roots, timings) come from
/// `template`, whose device id and key are the edge device's.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    pub template: UpstreamConfig,
    pub max_links: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl CloudConfig {
    pub fn new(template: UpstreamConfig) -> CloudConfig {
        CloudConfig {
            template,
            max_links: DEFAULT_MAX_LINKS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why an identity needs its link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest {
    /// Its twin is mirrored (GET on every connection, reported changes sent, desired pushed).
    pub twin: bool,
    pub methods: bool,
    pub device_bound: bool,
    /// Always kept open (`$edgeAgent`, `$edgeHub`: the deployment twins).
    pub pinned: bool,
}

impl Interest {
    fn holds_subscriptions(&self) -> bool {
        self.twin || self.methods || self.device_bound || self.pinned
    }
}

/// Told when the desired properties of a watched twin (`$edgeAgent`, `$edgeHub`) change.
pub type OnDesired = dyn Fn(&str, &Value) + Send + Sync;

struct Entry {
    link: Arc<Link>,
    outbox: Arc<IdentityOutbox>,
    _task: smol::Task<()>,
    interest: Interest,
    last_used: Instant,
    /// A leaf device disconnected while telemetry of it was in flight: closed once idle.
    close_when_idle: bool,
    /// A C2D message came on this connection while the device could not take it and was left
    /// unacknowledged: the cloud delivers it again only on the link's next connection.
    c2d_left: bool,
}

/// A twin request waiting for the cloud's answer: status, `$version`, body.
type Answer = (u16, Option<u64>, Bytes);

/// The cloud side. Build with [`Cloud::start`].
pub struct Cloud {
    broker: Arc<Broker>,
    config: CloudConfig,
    target: Target,
    tls: Option<(futures_rustls::TlsConnector, ServerName<'static>)>,
    gate: Arc<Gate>,
    dispatch: Arc<Dispatch>,
    links: Mutex<HashMap<String, Entry>>,
    requests: Mutex<HashMap<String, smol::channel::Sender<Answer>>>,
    next_rid: AtomicU64,
    watched: Mutex<Vec<(String, Arc<OnDesired>)>>,
    /// One twin operation at a time per identity (fetch, cloud patch, reported push), so a
    /// GET answer never overwrites a newer patch and pushes do not pile up.
    sync_locks: Mutex<HashMap<String, Arc<smol::lock::Mutex<()>>>>,
    /// Twins whose last fetch failed: fetched again by housekeeping.
    unsynced: Mutex<std::collections::HashSet<String>>,
    myself: Weak<Cloud>,
    stats: Mutex<CloudStats>,
}

/// Counters of the cloud side, for the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudStats {
    pub links_opened: u64,
    pub links_closed: u64,
    pub twin_syncs: u64,
    pub reported_sent: u64,
    pub desired_from_cloud: u64,
    pub methods_from_cloud: u64,
    pub c2d_received: u64,
    pub c2d_completed: u64,
    pub refused_from_cloud: u64,
    /// Identities the cloud refused (their telemetry is dropped rather than holding the rest).
    pub refused_identities: u64,
    /// Counters of links already closed (so totals never go down).
    pub closed_totals: LinkStatus,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cloud {
    /// Validates the settings, loads the trust roots once, starts the telemetry reader over
    /// `outbox` (the store's `$upstream` queue) and opens the links of the identities whose
    /// reported changes wait from an earlier run. Register with [`Broker::set_cloud`] (done
    /// here) before clients connect.
    pub fn start(
        broker: Arc<Broker>,
        config: CloudConfig,
        outbox: Arc<dyn Outbox>,
    ) -> Result<Arc<Cloud>, UpstreamError> {
        let target = config.template.validate()?;
        let tls = if target.tls {
            let bundle = std::path::Path::new(config::SYSTEM_CA_BUNDLE);
            Some(config::tls_connector(&target.host, config.template.ca.as_deref(), bundle)?)
        } else {
            None
        };
        let gate = Gate::new(config.template.backoff_min, config.template.backoff_max);
        let dispatch = Dispatch::new(outbox);
        let cloud = Arc::new_cyclic(|myself| Cloud {
            broker: broker.clone(),
            config,
            target,
            tls,
            gate,
            dispatch: dispatch.clone(),
            links: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            watched: Mutex::new(Vec::new()),
            sync_locks: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(std::collections::HashSet::new()),
            myself: myself.clone(),
            stats: Mutex::new(CloudStats::default()),
        });
        broker.twins.track_upstream(true);
        broker.set_cloud(cloud.clone());
        let weak = Arc::downgrade(&cloud);
        let route: Arc<telemetry::Route> = Arc::new(move |message| {
            let cloud = weak.upgrade()?;
            let (device, module) = topic::telemetry_sender(&message.topic)?;
            let id = match module {
                Some(module) => format!("{device}/{module}"),
                None => device.to_string(),
            };
            Some(match cloud.link(&id, Interest::default()) {
                Some(entry) => RouteTo::Link(entry.1),
                None if cloud.key_of(&id).is_none() => RouteTo::NoKey,
                None => RouteTo::Busy,
            })
        });
        tinyedge_platform::rt::spawn(dispatch.run(route, cloud.gate.clone())).detach();
        for id in broker.twins.ids_with_pending_up() {
            cloud.want(&id, Interest { twin: true, ..Interest::default() });
        }
        tinyedge_platform::rt::spawn(Cloud::housekeeping(Arc::downgrade(&cloud))).detach();
        log::info!("cloud side started: one IoT Hub connection per identity to {}", cloud.target);
        Ok(cloud)
    }

    /// Keeps `id`'s twin in sync and tells `on_desired` whenever its desired properties change
    /// (first after the first sync); its link stays open.
    pub fn watch(&self, id: &str, on_desired: Arc<OnDesired>) {
        lock(&self.watched).push((id.to_string(), on_desired));
        self.want(id, Interest { twin: true, pinned: true, ..Interest::default() });
        // Its link may have synced before the watcher was there (`$edgeHub` is opened at
        // start): fetch again, so the watcher hears the cloud's document.
        if let Some(link) = self.link_of(id) {
            if link.status().connected {
                self.spawn_sync(id.to_string(), link.connection());
            }
        }
    }

    /// The lock serialising `id`'s twin operations (bounded by the identities with links).
    fn sync_lock(&self, id: &str) -> Arc<smol::lock::Mutex<()>> {
        let mut locks = lock(&self.sync_locks);
        if locks.len() > self.config.max_links * 2 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    fn is_watched(&self, id: &str) -> bool {
        lock(&self.watched).iter().any(|(w, _)| w == id)
    }

    /// A snapshot of every link: identity and status.
    pub fn links(&self) -> Vec<(String, LinkStatus)> {
        let links = lock(&self.links);
        let mut all: Vec<(String, LinkStatus)> = links.iter().map(|(id, e)| (id.clone(), e.link.status())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn stats(&self) -> CloudStats {
        lock(&self.stats).clone()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Adds the counters of closed links to the totals.
    fn retire(&self, closed: Vec<LinkStatus>) {
        if closed.is_empty() {
            return;
        }
        let mut stats = lock(&self.stats);
        for status in closed {
            stats.links_closed += 1;
            add_counts(&mut stats.closed_totals, &status);
        }
    }

    /// All links together: connected while every link that has tried is up (`false` if
    /// none is open), counters summed over open and closed links, the latest error.
    pub fn status(&self) -> LinkStatus {
        let mut total = lock(&self.stats).closed_totals.clone();
        total.connected = false;
        let links = self.links();
        let mut all_up = !links.is_empty();
        for (_, status) in &links {
            add_counts(&mut total, status);
            all_up &= status.connected;
            if status.since_unix_ms >= total.since_unix_ms {
                total.since_unix_ms = status.since_unix_ms;
                if status.last_error.is_some() {
                    total.last_error = status.last_error.clone();
                }
            }
        }
        total.connected = all_up;
        total
    }

    fn count(&self, bump: impl FnOnce(&mut CloudStats)) {
        bump(&mut lock(&self.stats));
    }

    /// Sends `payload` on `topic` as identity `id`, directly (not through the store or the
    /// routes), at QoS 1: `true` once the cloud acknowledged it. Opens `id`'s link if needed and
    /// waits up to `timeout` for it to connect.
    pub async fn send_direct(&self, id: &str, topic: String, payload: Bytes, timeout: Duration) -> bool {
        let Some((link, _)) = self.link(id, Interest::default()) else { return false };
        let deadline = Instant::now() + timeout;
        while !link.status().connected {
            if Instant::now() >= deadline {
                return false;
            }
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        link.publish_confirmed(topic, payload, deadline.saturating_duration_since(Instant::now())).await
    }

    /// Adds `more` to `id`'s interest, opening its link if needed.
    pub fn want(&self, id: &str, more: Interest) {
        let _ = self.link(id, more);
    }

    /// The link of `id` (opened if needed, with `more` added to its interest): the link and its
    /// telemetry outbox, or `None` if `id` has no key or the link limit is reached.
    fn link(&self, id: &str, more: Interest) -> Option<(Arc<Link>, Arc<IdentityOutbox>)> {
        let mut links = lock(&self.links);
        if links.get(id).is_some_and(|entry| entry.c2d_left && entry.outbox.is_idle()) {
            // Back before housekeeping closed the link: a new connection, so the cloud
            // delivers the C2D messages it holds for the device again.
            if let Some(entry) = links.remove(id) {
                log::info!("cloud: {id} is back with C2D messages left in the cloud: its link reconnects");
                self.retire(vec![entry.link.status()]);
            }
        }
        if let Some(entry) = links.get_mut(id) {
            entry.last_used = Instant::now();
            entry.close_when_idle = false;
            let before = entry.interest;
            entry.interest.twin |= more.twin;
            entry.interest.methods |= more.methods;
            entry.interest.device_bound |= more.device_bound;
            entry.interest.pinned |= more.pinned;
            let (link, outbox, after) = (entry.link.clone(), entry.outbox.clone(), entry.interest);
            drop(links);
            if before != after {
                subscribe(&link, id, after);
                if !before.twin && after.twin && link.status().connected {
                    self.spawn_sync(id.to_string(), link.connection());
                }
            }
            return Some((link, outbox));
        }
        let mut retired = Vec::new();
        let full = links.len() >= self.config.max_links
            && !Self::close_one_idle(&mut links, self.config.idle_timeout, true, &mut retired);
        self.retire(retired);
        if full {
            log::warn!("cloud: {} links open (the limit): {id} waits for one to close", links.len());
            return None;
        }
        let Some(key) = self.key_of(id) else {
            log::warn!("cloud: no key for {id}: it cannot connect to the cloud");
            return None;
        };
        let identity = identity_of(id);
        let mut config = self.config.template.clone();
        config.device_id = identity.device_id.clone();
        config.module_id = identity.module_id.clone();
        config.device_key = key;
        let outbox = IdentityOutbox::new(self.dispatch.clone());
        self.dispatch.register(&outbox);
        let link = Link::with_tls(config, self.target.clone(), self.tls.clone(), outbox.clone());
        link.share_gate(self.gate.clone());
        let weak = self.myself.clone();
        let link_id = id.to_string();
        link.on_inbound(Arc::new(move |inbound| match weak.upgrade() {
            Some(cloud) => cloud.inbound(&link_id, inbound),
            None => Ack::Now,
        }));
        let weak = self.myself.clone();
        let link_id = id.to_string();
        link.on_connected(Arc::new(move |connection| {
            if let Some(cloud) = weak.upgrade() {
                cloud.connected(&link_id, connection);
            }
        }));
        subscribe(&link, id, more);
        let task = tinyedge_platform::rt::spawn(link.clone().run());
        links.insert(
            id.to_string(),
            Entry {
                link: link.clone(),
                outbox: outbox.clone(),
                _task: task,
                interest: more,
                last_used: Instant::now(),
                close_when_idle: false,
                c2d_left: false,
            },
        );
        drop(links);
        self.count(|s| s.links_opened += 1);
        log::info!("cloud: opening the link of {id}");
        Some((link, outbox))
    }

    /// Closes one link with nothing in flight: one idle for `idle` (or, if `any`, the least
    /// recently used one without subscriptions). `true` if one was closed.
    fn close_one_idle(
        links: &mut HashMap<String, Entry>,
        idle: Duration,
        any: bool,
        retired: &mut Vec<LinkStatus>,
    ) -> bool {
        let now = Instant::now();
        let candidate = links
            .iter()
            .filter(|(_, e)| !e.interest.holds_subscriptions() && e.outbox.is_idle())
            .filter(|(_, e)| any || now.duration_since(e.last_used) >= idle)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(id, _)| id.clone());
        match candidate {
            Some(id) => {
                log::info!("cloud: closing the idle link of {id}");
                if let Some(entry) = links.remove(&id) {
                    retired.push(entry.link.status());
                }
                true
            }
            None => false,
        }
    }

    /// The key `id` signs its upstream tokens with: the edge device's, a module's (derived
    /// from it, as the hub's module identities are), or a leaf device's from the hub's
    /// identities.
    fn key_of(&self, id: &str) -> Option<Vec<u8>> {
        let identity = identity_of(id);
        let edge = &self.config.template.device_id;
        let device_key = &self.config.template.device_key;
        if identity.device_id == *edge {
            return Some(match &identity.module_id {
                None => device_key.clone(),
                Some(module) => tinyedge_platform::identity::derive_module_key(device_key, module),
            });
        }
        self.broker.authenticator().key_of(&identity).map(<[u8]>::to_vec)
    }

    /// Periodic work: close idle links, retry reported changes that are still waiting.
    async fn housekeeping(weak: Weak<Cloud>) {
        loop {
            smol::Timer::after(RETRY_EVERY).await;
            let Some(cloud) = weak.upgrade() else { return };
            let mut retired = Vec::new();
            let mut refused = Vec::new();
            {
                let mut links = lock(&cloud.links);
                while Self::close_one_idle(&mut links, cloud.config.idle_timeout, false, &mut retired) {}
                let closing: Vec<String> = links
                    .iter()
                    .filter(|(_, e)| e.close_when_idle && e.outbox.is_idle())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in closing {
                    if let Some(entry) = links.remove(&id) {
                        log::info!("cloud: {id} is gone and its telemetry acknowledged: its cloud link is closed");
                        retired.push(entry.link.status());
                    }
                }
                for (id, entry) in links.iter() {
                    let status = entry.link.status();
                    if status.refused && !entry.outbox.is_abandoned() {
                        refused.push((id.clone(), entry.outbox.clone()));
                    } else if status.connected && entry.outbox.is_abandoned() {
                        entry.outbox.resume();
                    }
                }
            }
            cloud.retire(retired);
            // Identities that lost their key (a leaf device removed from the config or the
            // device scope): their link is closed and what they left is dropped.
            let ids: Vec<String> = lock(&cloud.links).keys().cloned().collect();
            let keyless: Vec<String> = ids.into_iter().filter(|id| cloud.key_of(id).is_none()).collect();
            for id in keyless {
                let entry = lock(&cloud.links).remove(&id);
                if let Some(entry) = entry {
                    let dropped = entry.outbox.abandon();
                    log::warn!("cloud: {id} has no key any more: its cloud link is closed ({dropped} message(s) of it dropped)");
                    cloud.retire(vec![entry.link.status()]);
                }
            }
            for (id, outbox) in refused {
                let dropped = outbox.abandon();
                cloud.count(|s| s.refused_identities += 1);
                log::warn!(
                    "cloud: the cloud refuses {id} (not authorized): {dropped} message(s) of it in flight are dropped, and its next ones until it is accepted"
                );
            }
            let unsynced: Vec<String> = std::mem::take(&mut *lock(&cloud.unsynced)).into_iter().collect();
            for id in unsynced {
                match cloud.link_of(&id) {
                    Some(link) if link.status().connected => cloud.spawn_sync(id, link.connection()),
                    // Fetched again on its next connection.
                    _ => {}
                }
            }
            for id in cloud.broker.twins.ids_with_pending_up() {
                let link = lock(&cloud.links).get(&id).map(|e| e.link.clone());
                match link {
                    Some(link) if link.status().connected => cloud.spawn_push_reported(id, link),
                    Some(_) => {}
                    None => cloud.want(&id, Interest { twin: true, ..Interest::default() }),
                }
            }
        }
    }

    /// A link of `id` connected (connection number `connection`): send what is due.
    fn connected(&self, id: &str, connection: u64) {
        let interest = lock(&self.links).get(id).map(|e| e.interest).unwrap_or_default();
        if interest.twin || self.broker.twins.pending_up(id).is_some() {
            self.spawn_sync(id.to_string(), connection);
        }
    }

    fn spawn_sync(&self, id: String, connection: u64) {
        let Some(cloud) = self.myself.upgrade() else { return };
        tinyedge_platform::rt::spawn(async move { sync::on_connect(&cloud, &id, connection).await }).detach();
    }

    fn spawn_push_reported(&self, id: String, link: Arc<Link>) {
        let Some(cloud) = self.myself.upgrade() else { return };
        tinyedge_platform::rt::spawn(async move { sync::push_reported(&cloud, &id, &link).await }).detach();
    }

    /// The link of `id`, if open.
    fn link_of(&self, id: &str) -> Option<Arc<Link>> {
        lock(&self.links).get(id).map(|e| e.link.clone())
    }

    /// Sends a twin request on `link` and waits for the cloud's answer (at most the request
    /// timeout). `None`: no answer (refused to queue, timed out, or the link dropped).
    async fn request(&self, link: &Link, topic_of: impl Fn(&str) -> String, body: Bytes) -> Option<Answer> {
        let rid = format!("te{}", self.next_rid.fetch_add(1, Ordering::Relaxed));
        let (sender, receiver) = smol::channel::bounded(1);
        {
            let mut requests = lock(&self.requests);
            if requests.len() >= REQUESTS_WAITING_MAX {
                return None;
            }
            requests.insert(rid.clone(), sender);
        }
        let connection = link.connection();
        let answer = if link.send(topic_of(&rid), body) {
            let timeout = async {
                smol::Timer::after(self.config.request_timeout).await;
                None
            };
            // The connection it went out on ended: no answer will come on it.
            let dropped = async {
                while link.status().connected && link.connection() == connection {
                    smol::Timer::after(Duration::from_millis(250)).await;
                }
                None
            };
            smol::future::or(async { receiver.recv().await.ok() }, smol::future::or(dropped, timeout)).await
        } else {
            None
        };
        lock(&self.requests).remove(&rid);
        answer
    }

    /// A PUBLISH from the cloud on `id`'s link.
    fn inbound(&self, id: &str, inbound: Inbound) -> Ack {
        let Some(kind) = topic::parse_from_cloud(&inbound.topic) else {
            self.count(|s| s.refused_from_cloud += 1);
            log::warn!("cloud: {id} got a message on {:?}, not an IoT Hub topic; dropped", inbound.topic);
            return Ack::Now;
        };
        match kind {
            FromCloud::TwinResponse { status, rid, version } => {
                let waiting = lock(&self.requests).remove(rid);
                match waiting {
                    Some(sender) => {
                        let _ = sender.try_send((status, version, inbound.payload));
                    }
                    None => log::debug!("cloud: {id} got a twin answer for {rid}, which nobody waits for"),
                }
                Ack::Now
            }
            FromCloud::DesiredPatch { version } => {
                self.count(|s| s.desired_from_cloud += 1);
                if let Some(cloud) = self.myself.upgrade() {
                    let (id, payload) = (id.to_string(), inbound.payload);
                    tinyedge_platform::rt::spawn(
                        async move { sync::desired_patch(&cloud, &id, version, &payload).await },
                    )
                    .detach();
                }
                Ack::Now
            }
            FromCloud::MethodRequest { name, rid } => {
                self.count(|s| s.methods_from_cloud += 1);
                self.method(id, name, rid, inbound.payload);
                Ack::Now
            }
            FromCloud::DeviceBound { device, bag } => {
                if device != id {
                    self.count(|s| s.refused_from_cloud += 1);
                    log::warn!("cloud: the link of {id} got a C2D message for {device}; dropped");
                    return Ack::Now;
                }
                self.count(|s| s.c2d_received += 1);
                let bag = bag.to_string();
                self.device_bound(id, &bag, inbound)
            }
        }
    }

    /// A direct method from the cloud: invoked on the connected client, answered upstream.
    fn method(&self, id: &str, name: &str, rid: &str, payload: Bytes) {
        let Some(link) = self.link_of(id) else { return };
        let call = MethodCall {
            caller: String::new(),
            target: id.to_string(),
            name: name.to_string(),
            payload: if payload.is_empty() { Bytes::from_static(b"null") } else { payload },
            // IoT Hub calls with connectTimeout 0: a target that is not there is 404 at once.
            connect_timeout: Duration::ZERO,
            response_timeout: METHOD_RESPONSE_TIMEOUT,
        };
        let (broker, rid, connection) = (self.broker.clone(), rid.to_string(), link.connection());
        tinyedge_platform::rt::spawn(async move {
            let (status, body) = match broker.invoke_method(call).await {
                Ok(response) => (response.status, response.payload),
                Err(error) => {
                    let status = match &error {
                        MethodError::NotConnected(_) => 404,
                        MethodError::Timeout(_) => 504,
                        MethodError::Invalid(_) => 400,
                    };
                    (status, Bytes::from(serde_json::json!({ "message": error.to_string() }).to_string()))
                }
            };
            // An answer for an older connection is useless to the cloud (it timed out there).
            if link.connection() == connection && !link.send(topic::method_response_topic(status, &rid), body) {
                log::warn!("cloud: the answer to method call {rid} could not be queued");
            }
        })
        .detach();
    }

    /// A C2D message for leaf device `id`: delivered if it is connected and subscribed, and
    /// completed upstream once it acknowledges; otherwise left to the cloud.
    fn device_bound(&self, id: &str, bag: &str, inbound: Inbound) -> Ack {
        let slot = self.broker.sessions.slot(id);
        let takes = {
            let state = slot.state();
            state.owner.is_some() && state.subscriptions.device_bound
        };
        if !takes || !inbound.qos1 {
            // Not acknowledged: the cloud keeps it and delivers it again on the link's next
            // connection; the link is closed as soon as nothing of the device is in flight,
            // and opened again when the device is back.
            if let Some(entry) = lock(&self.links).get_mut(id) {
                entry.close_when_idle = true;
                entry.c2d_left |= inbound.qos1;
            }
            return if inbound.qos1 { Ack::Later } else { Ack::Now };
        }
        let Some(link) = self.link_of(id) else { return Ack::Later };
        let (weak, link, connection, pkid) =
            (self.myself.clone(), Arc::downgrade(&link), inbound.connection, inbound.pkid);
        let done = Completion(Arc::new(move || {
            // The link the message came on: a newer link of the same identity numbers its
            // connections from 1 again and must not get this PUBACK.
            if let (Some(cloud), Some(link)) = (weak.upgrade(), link.upgrade()) {
                link.puback(connection, pkid);
                cloud.count(|s| s.c2d_completed += 1);
            }
        }));
        let control = Control::DeviceBound { bag: bag.to_string(), payload: inbound.payload, done };
        if slot.control.push_over_bound(control).is_err() {
            log::debug!("cloud: C2D for {id} not delivered: it disconnected");
        }
        Ack::Later
    }

    /// Tells a subscribed client, or the watcher of a deployment twin, that `id`'s desired
    /// properties changed.
    fn desired_changed(&self, id: &str) {
        let watchers: Vec<Arc<OnDesired>> =
            lock(&self.watched).iter().filter(|(w, _)| w == id).map(|(_, f)| f.clone()).collect();
        if !watchers.is_empty() {
            if let Ok(body) = self.broker.twins.get(id) {
                let desired = body.get("desired").cloned().unwrap_or(Value::Null);
                for watcher in watchers {
                    watcher(id, &desired);
                }
            }
        }
        self.broker.sessions.slot(id).desired_changed();
    }
}

fn add_counts(total: &mut LinkStatus, status: &LinkStatus) {
    total.process_ms_sum += status.process_ms_sum;
    total.processed += status.processed;
    total.reconnects += status.reconnects;
    total.published += status.published;
    total.acked += status.acked;
    total.dropped += status.dropped;
}

/// Subscribes `link` to what `interest` needs upstream.
fn subscribe(link: &Link, id: &str, interest: Interest) {
    if interest.twin || interest.pinned {
        link.subscribe(topic::TWIN_RESPONSE_FILTER);
        link.subscribe(topic::DESIRED_PATCH_FILTER);
    }
    if interest.methods {
        link.subscribe(topic::METHODS_FILTER);
    }
    if interest.device_bound && !id.contains('/') {
        link.subscribe(&topic::device_bound_filter(id));
    }
}

fn identity_of(id: &str) -> Identity {
    match id.split_once('/') {
        Some((device, module)) => Identity::module(device, module),
        None => Identity::device(id),
    }
}

impl CloudHooks for Cloud {
    fn twin_used(&self, id: &str, reported: bool) {
        self.want(id, Interest { twin: true, ..Interest::default() });
        if reported {
            if let Some(link) = self.link_of(id) {
                if link.status().connected {
                    self.spawn_push_reported(id.to_string(), link);
                }
            }
        }
    }

    fn subscriptions(&self, id: &str, subscriptions: Subscriptions) {
        let interest = Interest {
            twin: subscriptions.desired,
            methods: subscriptions.methods,
            device_bound: subscriptions.device_bound,
            pinned: false,
        };
        if interest != Interest::default() {
            self.want(id, interest);
        }
    }

    fn disconnected(&self, id: &str) {
        // A leaf device's link closes with it (edgeHub's CloseCloudConnectionOnDeviceDisconnect)
        // once its telemetry is acknowledged, so undelivered C2D messages stay in the cloud.
        if id.contains('/') {
            return;
        }
        let mut links = lock(&self.links);
        let Some(entry) = links.get_mut(id) else { return };
        if entry.interest.pinned {
            return;
        }
        if !entry.outbox.is_idle() {
            // Closed by housekeeping once the cloud acknowledged what is in flight.
            entry.close_when_idle = true;
            return;
        }
        {
            let entry = links.remove(id);
            drop(links);
            self.retire(entry.map(|e| e.link.status()).into_iter().collect());
            log::info!("cloud: {id} disconnected: its cloud link is closed");
        }
    }
}
