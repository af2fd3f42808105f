//! Routing an accepted message: its routes name endpoints (module inputs, `$upstream`); the
//! message is appended once to the store with that list, and is accepted — a QoS 1 PUBACK may go
//! out — when the store says it is durable. Pumps and the upstream link take it from there.

use std::sync::{Arc, Mutex, RwLock};

use crate::message::Message;
use crate::metrics::Metrics;
use crate::route::{Endpoint, RouteTable};
use crate::store::{EndpointRef, NewRecord, Store, StoreError};

/// Why a message was not accepted; the publisher gets no PUBACK and resends it later.
#[derive(Debug)]
pub enum RouteFailure {
    /// The store is at `max_bytes` with `when_full = "reject_new"`.
    StoreFull,
    /// The store could not write or sync (disk full, IO error).
    Store(StoreError),
}

impl std::fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteFailure::StoreFull => f.write_str("the store is at max_bytes (when_full = \"reject_new\")"),
            RouteFailure::Store(e) => write!(f, "{e}"),
        }
    }
}

/// The store's name of an endpoint's queue for one route priority (`$upstream#0`,
/// `module:filter/input1#10`; 10 is "no priority given").
pub fn endpoint_name(endpoint: &Endpoint, priority: u8) -> String {
    match endpoint {
        Endpoint::Upstream => format!("$upstream#{priority}"),
        Endpoint::Module { module, input } => format!("module:{module}/{input}#{priority}"),
    }
}

/// Routes messages with the current route table into the store.
pub struct Router {
    routes: RwLock<Arc<RouteTable>>,
    store: Arc<Store>,
    /// Store ids of the endpoint queues seen so far: a handful, scanned without a key to build.
    endpoint_ids: Mutex<Vec<(Endpoint, u8, u16)>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("routes", &self.routes().routes().len()).finish()
    }
}

impl Router {
    pub fn new(routes: RouteTable, store: Arc<Store>, metrics: Arc<Metrics>) -> Router {
        Router { routes: RwLock::new(Arc::new(routes)), store, endpoint_ids: Mutex::new(Vec::new()), metrics }
    }

    /// Replaces the route table (a new deployment).
    pub fn set_routes(&self, routes: RouteTable) {
        *self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store id of `endpoint`'s queue for `priority`, registered on first use.
    pub fn endpoint_id(&self, endpoint: &Endpoint, priority: u8) -> Result<u16, StoreError> {
        let mut ids = self.endpoint_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Found by reference: no key is cloned per message.
        if let Some((_, _, id)) = ids.iter().find(|(e, p, _)| *p == priority && e == endpoint) {
            return Ok(*id);
        }
        let id = self.store.endpoint_id(&endpoint_name(endpoint, priority))?;
        ids.push((endpoint.clone(), priority, id));
        Ok(id)
    }

    /// The (priority, store id) of every queue the current routes give `endpoint`.
    pub fn queues_of(&self, endpoint: &Endpoint) -> Result<Vec<(u8, u16)>, StoreError> {
        let mut priorities: Vec<u8> =
            self.routes().routes().iter().filter(|r| &r.endpoint == endpoint).map(|r| r.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        priorities.into_iter().map(|p| self.endpoint_id(endpoint, p).map(|id| (p, id))).collect()
    }

    /// Appends `msg` for every endpoint its routes name (each once) and returns its seq
    /// (`None`: no route matched). The message is accepted once the store makes that seq
    /// durable (`Store::durable`), the moment a QoS 1 PUBACK may go out; the caller does not
    /// wait for it here, so one connection can have many messages on their way to the disk.
    pub fn route(&self, msg: Message, endpoints: &mut Vec<(Endpoint, u8, u32)>) -> Result<Option<u64>, RouteFailure> {
        endpoints.clear();
        self.routes().endpoints_for(&msg, endpoints);
        if endpoints.is_empty() {
            Metrics::inc(&self.metrics.messages_unrouted);
            log::debug!("message from {} matched no route", msg.source);
            return Ok(None);
        }
        let mut refs = Vec::with_capacity(endpoints.len());
        for (endpoint, priority, ttl_secs) in endpoints.iter() {
            let id = self.endpoint_id(endpoint, *priority).map_err(RouteFailure::Store)?;
            refs.push(EndpointRef { id, priority: *priority, ttl_secs: *ttl_secs });
        }
        let mut bag = String::new();
        msg.properties.encode_into(&mut bag);
        let record = NewRecord {
            enqueued_unix_ms: msg.enqueued_unix_ms,
            endpoints: &refs,
            source: &msg.source,
            properties: &bag,
            payload: &msg.payload,
        };
        let seq = match self.store.append(&record) {
            Ok(seq) => seq,
            Err(StoreError::Full { .. }) => {
                Metrics::inc(&self.metrics.store_rejected);
                return Err(RouteFailure::StoreFull);
            }
            Err(e) => {
                Metrics::inc(&self.metrics.store_errors);
                return Err(RouteFailure::Store(e));
            }
        };
        Metrics::add(&self.metrics.deliveries_queued, refs.len() as u64);
        Ok(Some(seq))
    }
}
