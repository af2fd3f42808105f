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

/// Queue ids kept per route priority (0..=9 and "none given", 10).
const PRIORITY_SLOTS: usize = crate::route::DEFAULT_PRIORITY as usize + 1;
/// A queue id not looked up yet.
const UNKNOWN: u16 = u16::MAX;

/// A route table with the store queue ids of its endpoints, filled in as they are first used:
/// routing a message looks its queues up by number, without a name compared or cloned.
struct Compiled {
    table: Arc<RouteTable>,
    /// Per route index (of the first route naming an endpoint) and priority.
    ids: Mutex<Vec<[u16; PRIORITY_SLOTS]>>,
}

impl Compiled {
    fn new(table: RouteTable) -> Compiled {
        let ids = vec![[UNKNOWN; PRIORITY_SLOTS]; table.routes().len()];
        Compiled { table: Arc::new(table), ids: Mutex::new(ids) }
    }
}

/// A message of a batch before the store: its endpoint refs and bag, or the outcome decided
/// without the store (no route matched, or a queue could not be registered).
type Prepared = Result<(Vec<EndpointRef>, String), Result<Option<u64>, RouteFailure>>;

/// Routes messages with the current route table into the store.
pub struct Router {
    routes: RwLock<Arc<Compiled>>,
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
        Router {
            routes: RwLock::new(Arc::new(Compiled::new(routes))),
            store,
            endpoint_ids: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// Replaces the route table (a new deployment).
    pub fn set_routes(&self, routes: RouteTable) {
        *self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Compiled::new(routes));
    }

    pub fn routes(&self) -> Arc<RouteTable> {
        self.compiled().table.clone()
    }

    fn compiled(&self) -> Arc<Compiled> {
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
    pub fn route(&self, msg: Message) -> Result<Option<u64>, RouteFailure> {
        let compiled = self.compiled();
        let mut endpoints = Vec::new();
        compiled.table.endpoint_indices_for(&msg, &mut endpoints);
        if endpoints.is_empty() {
            Metrics::inc(&self.metrics.messages_unrouted);
            log::debug!("message from {} matched no route", msg.source);
            return Ok(None);
        }
        let refs = self.refs(&compiled, &endpoints).map_err(RouteFailure::Store)?;
        let mut bag = String::new();
        msg.properties.encode_into(&mut bag);
        let record = NewRecord {
            enqueued_unix_ms: msg.enqueued_unix_ms,
            endpoints: &refs,
            source: &msg.source,
            properties: &bag,
            payload: &msg.payload,
        };
        self.outcome(self.store.append(&record), refs.len()).map(Some)
    }

    /// [`Router::route`] for messages that arrived together (one socket read): the stored ones
    /// go to the store as one batch ([`Store::append_many`]: one write when they fit). Pushes
    /// one outcome per message onto `outcomes`, in order.
    pub fn route_many(&self, msgs: &[Message], outcomes: &mut Vec<Result<Option<u64>, RouteFailure>>) {
        let compiled = self.compiled();
        let mut endpoints = Vec::new();
        let mut prepared: Vec<Prepared> = Vec::with_capacity(msgs.len());
        for msg in msgs {
            compiled.table.endpoint_indices_for(msg, &mut endpoints);
            if endpoints.is_empty() {
                Metrics::inc(&self.metrics.messages_unrouted);
                log::debug!("message from {} matched no route", msg.source);
                prepared.push(Err(Ok(None)));
                continue;
            }
            match self.refs(&compiled, &endpoints) {
                Ok(refs) => {
                    let mut bag = String::new();
                    msg.properties.encode_into(&mut bag);
                    prepared.push(Ok((refs, bag)));
                }
                Err(e) => prepared.push(Err(Err(RouteFailure::Store(e)))),
            }
        }
        let records: Vec<NewRecord<'_>> = msgs
            .iter()
            .zip(&prepared)
            .filter_map(|(msg, prepared)| {
                let (refs, bag) = prepared.as_ref().ok()?;
                Some(NewRecord {
                    enqueued_unix_ms: msg.enqueued_unix_ms,
                    endpoints: refs,
                    source: &msg.source,
                    properties: bag,
                    payload: &msg.payload,
                })
            })
            .collect();
        let mut seqs = Vec::with_capacity(records.len());
        self.store.append_many(&records, &mut seqs);
        let mut seqs = seqs.into_iter();
        for prepared in prepared {
            outcomes.push(match prepared {
                Ok((refs, _)) => match seqs.next() {
                    Some(appended) => self.outcome(appended, refs.len()).map(Some),
                    None => Err(RouteFailure::Store(StoreError::NotAppended { seq: 0, last: 0 })),
                },
                Err(decided) => decided,
            });
        }
    }

    /// The store refs of the endpoints a message is routed to (by route index, see
    /// [`RouteTable::endpoint_indices_for`]), registering new queues on first use.
    fn refs(&self, compiled: &Compiled, endpoints: &[(usize, u8, u32)]) -> Result<Vec<EndpointRef>, StoreError> {
        let mut ids = compiled.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        endpoints
            .iter()
            .map(|&(index, priority, ttl_secs)| {
                let slot = ids.get_mut(index).and_then(|slots| slots.get_mut(usize::from(priority)));
                let id = match slot {
                    Some(id) if *id != UNKNOWN => *id,
                    slot => {
                        let id = self.endpoint_id(&compiled.table.routes()[index].endpoint, priority)?;
                        if let Some(known) = slot {
                            *known = id;
                        }
                        id
                    }
                };
                Ok(EndpointRef { id, priority, ttl_secs })
            })
            .collect()
    }

    /// Counts what became of an append to `deliveries` endpoints.
    fn outcome(&self, appended: Result<u64, StoreError>, deliveries: usize) -> Result<u64, RouteFailure> {
        match appended {
            Ok(seq) => {
                Metrics::add(&self.metrics.deliveries_queued, deliveries as u64);
                Ok(seq)
            }
            Err(StoreError::Full { .. }) => {
                Metrics::inc(&self.metrics.store_rejected);
                Err(RouteFailure::StoreFull)
            }
            Err(e) => {
                Metrics::inc(&self.metrics.store_errors);
                Err(RouteFailure::Store(e))
            }
        }
    }
}
