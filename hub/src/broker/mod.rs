//! The protocol-neutral core of the hub: who is connected and subscribed (sessions and their
//! lanes), where a message goes (router, into the store), how stored messages reach a client
//! (pumps) or the cloud (outbox), and how deliveries in flight are acknowledged in order. The
//! protocol adapters ([`crate::mqtt`], a future AMQP one) turn deliveries and lane items into
//! their wire forms; nothing here builds a topic or a packet.
//!
//! # Layout
//! - `session`: per-identity slots with their bounded lanes (module inputs from the store, the
//!   control lane for twin responses, desired patches and method calls) and [`Delivery`];
//! - `inflight`: deliveries sent and not yet acknowledged, committed to the store in order;
//! - `router`: from a message to its endpoints, into the store;
//! - `pump`: from the store to a module's slot, one task per module-input endpoint;
//! - `outbox`: from the store to the upstream link;
//! - `requests`: a client's twin and method requests, served for every protocol adapter;
//! - `priority`: the merged reader over an endpoint's priority queues;
//! - `queue`: lazily allocated bounded queues and signals.

pub mod inflight;
pub mod outbox;
pub mod priority;
mod pump;
pub(crate) mod queue;
pub mod requests;
pub mod router;
pub mod session;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::auth::{Authenticator, Identity};
use crate::methods::{Invoker, MethodCall, MethodError, MethodResponse, Methods};
use crate::metrics::Metrics;
use crate::route::{Endpoint, RouteTable};
use crate::store::Store;
use crate::twin::Twins;
use tinyedge_platform::config::HubConfig;

pub use router::{endpoint_name, Router};
pub use session::{Delivery, Sessions, Settle};

/// The numeric limits of a broker; the config's `[hub]` section sets them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted (IoT Hub: 256 KiB); a larger one closes the connection.
    pub max_packet_bytes: usize,
    /// Deliveries queued per identity before publishers are held back (online) or deliveries
    /// dropped (offline).
    pub subscriber_queue_max: usize,
    /// Unacknowledged at-least-once deliveries per connection.
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

/// The largest `[hub] max_packet_bytes` whose messages the store can hold: a PUBLISH's payload
/// is at most its packet, and the store takes payloads up to
/// [`crate::store::record::PAYLOAD_BYTES_MAX`] (the topic's property bag and the record's other
/// fields fit beside it in a record). Above it, a large message would be accepted by the
/// connection and then refused by the store, and a QoS 1 publisher would resend it forever.
pub const MAX_PACKET_BYTES_STORABLE: usize = crate::store::record::PAYLOAD_BYTES_MAX;
const _: () = assert!(tinyedge_platform::config::DEFAULT_MAX_PACKET_BYTES <= MAX_PACKET_BYTES_STORABLE);

impl Limits {
    /// Refuses a `[hub]` section the hub could not honour: the platform checks each key's own
    /// range, this relates them to what the hub's parts hold (`max_packet_bytes` to the store).
    pub fn check(hub: &HubConfig) -> Result<(), String> {
        if hub.max_packet_bytes > MAX_PACKET_BYTES_STORABLE {
            return Err(format!(
                "hub.max_packet_bytes = {}: the store holds messages of at most {MAX_PACKET_BYTES_STORABLE} bytes of \
                 payload, so larger packets could never be stored or acknowledged; set it to at most \
                 {MAX_PACKET_BYTES_STORABLE}",
                hub.max_packet_bytes
            ));
        }
        Ok(())
    }
}

/// The config's defaults (`tinyedge_platform::config`), so they are written down once.
impl Default for Limits {
    fn default() -> Limits {
        Limits::from(&HubConfig::default())
    }
}

/// Shared state of the hub's broker.
pub struct Broker {
    authenticator: RwLock<Arc<Authenticator>>,
    pub router: Router,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    /// Per-client counters (bounded), for the metrics' `id` label.
    pub clients: crate::metrics::Clients,
    pub limits: Limits,
    next_connection_id: AtomicU64,
    /// Advances a store endpoint's checkpoint (module acknowledgements).
    pub(crate) commit: inflight::Commit,
    device_id: String,
    pumps: Mutex<Vec<(Endpoint, Vec<(u8, u16)>, smol::Task<()>)>>,
    /// Every identity's twin.
    pub twins: Arc<Twins>,
    /// Direct-method calls waiting for their answers.
    pub methods: Methods,
    /// The cloud side, told what clients do with twins, subscriptions and connections.
    cloud: RwLock<Option<Arc<dyn CloudHooks>>>,
    /// Identities of the cloud's device scope, asked about clients the authenticator refuses.
    scope: RwLock<Option<Arc<dyn ScopeLookup>>>,
}

/// The cloud's device scope (`crate::cloud::scope`): leaf devices this edge device may serve
/// although nobody configured them. A CONNECT the authenticator refuses as an unknown identity,
/// or whose token its key does not verify, is checked again with the keys this gives.
pub trait ScopeLookup: Send + Sync {
    /// The keys `identity` may sign its tokens with (primary first), or none when it is not in
    /// the scope. May ask the cloud (bounded in time and rate-limited); the future owns what
    /// it needs.
    fn lookup(&self, identity: &Identity) -> Pin<Box<dyn Future<Output = Vec<Vec<u8>>> + Send>>;
}

/// What the cloud side (`crate::cloud`) learns from the hub's clients. Calls come from the
/// connections' tasks: implementations only record and wake, never wait.
pub trait CloudHooks: Send + Sync {
    /// A client of `id` asked for its twin, changed its reported properties (`reported`) or
    /// subscribed to desired patches: its twin is kept in sync with the cloud.
    fn twin_used(&self, id: &str, reported: bool);
    /// The twin, method and C2D subscriptions of `id`'s client changed.
    fn subscriptions(&self, id: &str, subscriptions: session::Subscriptions);
    /// `id`'s client disconnected.
    fn disconnected(&self, id: &str);
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
            clients: crate::metrics::Clients::default(),
            limits,
            next_connection_id: AtomicU64::new(1),
            commit: Arc::new(move |endpoint, seq| commit_store.commit(endpoint, seq)),
            device_id: device_id.to_string(),
            pumps: Mutex::new(Vec::new()),
            twins,
            methods: Methods::default(),
            cloud: RwLock::new(None),
            scope: RwLock::new(None),
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
            let pump = pump::ModulePump {
                store: self.router.store().clone(),
                slot: self.sessions.slot(&format!("{}/{}", self.device_id, module)),
                metrics: self.metrics.clone(),
                queues: queues.clone(),
                input: Arc::from(input.as_str()),
                label: format!("{}/{module}/inputs/{input}", self.device_id),
            };
            pumps.push((endpoint.clone(), queues, tinyedge_platform::rt::spawn(pump.run())));
        }
    }

    /// Connects the cloud side (see [`CloudHooks`]).
    pub fn set_cloud(&self, hooks: Arc<dyn CloudHooks>) {
        *self.cloud.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hooks);
    }

    /// The cloud side, if one is connected.
    pub fn cloud(&self) -> Option<Arc<dyn CloudHooks>> {
        self.cloud.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The edge device this hub serves.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the identities allowed to connect (a new deployment). Open connections stay.
    pub fn set_authenticator(&self, authenticator: Authenticator) {
        *self.authenticator.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(authenticator);
    }

    /// Changes the identities allowed to connect in place (the device scope's devices), so a
    /// deployment applied meanwhile is not undone.
    pub fn update_authenticator(&self, change: impl FnOnce(&mut Authenticator)) {
        let mut current = self.authenticator.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut authenticator = Authenticator::clone(&current);
        change(&mut authenticator);
        *current = Arc::new(authenticator);
    }

    /// Connects the cloud's device scope (see [`ScopeLookup`]).
    pub fn set_scope(&self, scope: Arc<dyn ScopeLookup>) {
        *self.scope.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(scope);
    }

    /// The device scope, if one is connected.
    pub fn scope(&self) -> Option<Arc<dyn ScopeLookup>> {
        self.scope.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new connection of `identity` takes its slot (MQTT client-id takeover, AMQP link
    /// attach): it becomes the owner, and an earlier owner is kicked and given
    /// [`session::TAKEOVER_WAIT`] to hand the session over. The caller resets or keeps the
    /// slot's state and starts a generation.
    pub(crate) async fn take_slot(&self, identity: &Identity, kick: session::Kick, peer: &str) -> session::Claim {
        let slot = self.sessions.slot(&identity.client_id());
        let kick = Arc::new(kick);
        let connection_id = self.next_connection_id();
        let owner = session::Owner { connection_id, kick: kick.clone() };
        let previous = slot.state().owner.replace(owner);
        if let Some(previous) = previous {
            log::info!("{peer}: {identity} connected again; closing its previous connection");
            previous.kick.fire();
            let handed_over = previous.kick.done.wait();
            let waited = async {
                smol::Timer::after(session::TAKEOVER_WAIT).await;
            };
            smol::future::or(handed_over, waited).await;
        }
        session::Claim { slot, connection_id, kick }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_packet_bytes_beyond_the_store_is_refused() {
        let mut hub = HubConfig::default();
        assert_eq!(Limits::check(&hub), Ok(()));
        hub.max_packet_bytes = MAX_PACKET_BYTES_STORABLE;
        assert_eq!(Limits::check(&hub), Ok(()));
        hub.max_packet_bytes = tinyedge_platform::config::MAX_PACKET_BYTES_MAX;
        let refused = Limits::check(&hub).expect_err("256 MiB");
        assert!(refused.contains("hub.max_packet_bytes") && refused.contains("327680"), "{refused}");
    }

    #[test]
    fn default_limits_are_the_configs() {
        let limits = Limits::default();
        assert_eq!(limits.max_connections, tinyedge_platform::config::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(limits.max_unauthenticated, tinyedge_platform::config::DEFAULT_MAX_UNAUTHENTICATED);
        assert_eq!(limits.connect_timeout, Duration::from_secs(10));
    }
}
