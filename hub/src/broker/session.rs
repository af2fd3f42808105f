//! Sessions: one slot per identity, with its delivery queue and what survives a reconnect.
//!
//! Messages routed to a module live in the store until the module acknowledges them; a slot
//! only holds the few deliveries on their way from the store to the connection (its bounded
//! mailbox). Every change of who is connected or subscribed bumps the slot's generation: the
//! store pumps start again from the endpoint's checkpoint, and deliveries of an older generation
//! still in the mailbox are dropped by the writer instead of being sent twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use event_listener::Event;

use super::queue::{Queue, Signal};

/// How a newer connection of the same identity ends this one. A plain TCP connection is ended
/// by shutting its socket down, which its reader sees as end of stream: no wake-up registration
/// per idle connection. A TLS connection (whose socket sits inside the TLS stream) is told
/// through a signal its reader waits on.
///
/// It also carries the other direction of a takeover: the connection fires `done` once it
/// has ended, which the newer one waits for (one allocation per connection for both).
#[derive(Debug, Default)]
pub struct Kick {
    taken_over: AtomicBool,
    socket: Option<Arc<tinyedge_platform::rt::TcpSocket>>,
    signal: Signal,
    /// Fired by the connection once it has ended.
    pub done: Signal,
}

impl Kick {
    pub fn new(socket: Option<Arc<tinyedge_platform::rt::TcpSocket>>) -> Kick {
        Kick { taken_over: AtomicBool::new(false), socket, signal: Signal::default(), done: Signal::default() }
    }

    /// Ends the connection that owns this kick.
    pub fn fire(&self) {
        self.taken_over.store(true, Ordering::SeqCst);
        match &self.socket {
            Some(socket) => {
                let _ = socket.get_ref().shutdown(std::net::Shutdown::Both);
            }
            None => self.signal.fire(),
        }
    }

    pub fn taken_over(&self) -> bool {
        self.taken_over.load(Ordering::SeqCst)
    }

    /// The signal to wait on, for connections that cannot be shut down from outside.
    pub fn signal(&self) -> Option<&Signal> {
        self.socket.is_none().then_some(&self.signal)
    }
}

/// Where a delivery comes from in the store, so its acknowledgement can advance the endpoint's
/// checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub endpoint: u16,
    pub seq: u64,
    /// The slot generation the delivery was made for.
    pub generation: u64,
}

/// One message on its way to a module input, as the store holds it: each protocol adapter
/// turns it into its wire form (MQTT: a PUBLISH on
/// `devices/{d}/modules/{m}/inputs/{input}/{properties}`).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The module input the route names (shared by every delivery of its pump).
    pub input: Arc<str>,
    /// The record as the store holds it (shared with its tail cache and every other reader):
    /// its properties as an IoT Hub property bag (URL-encoded, system properties included) and
    /// its payload, see [`Delivery::properties`] and [`Delivery::payload`].
    pub record: Arc<crate::store::StoredRecord>,
    pub origin: Option<Origin>,
    /// Sent before (to an earlier connection) and not acknowledged (MQTT's DUP flag).
    pub dup: bool,
    /// When the hub took the message in (unix ms): its processing time ends when it is
    /// written to the module.
    pub enqueued_unix_ms: u64,
}

impl Delivery {
    /// The message's properties as an IoT Hub property bag, as stored.
    pub fn properties(&self) -> &str {
        &self.record.properties
    }

    pub fn payload(&self) -> &Bytes {
        &self.record.payload
    }
}

/// How a client settles its module-input deliveries: the protocol adapter maps its own terms
/// onto these (MQTT: the QoS granted for the inputs subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done once written (MQTT QoS 0): the checkpoint advances without an acknowledgement.
    AtMostOnce,
    /// Done once the client acknowledges it (MQTT QoS 1), in order per endpoint
    /// ([`super::inflight::InFlight`]).
    AtLeastOnce,
}

/// What the hub sends a client besides its routed module inputs (which come from the store):
/// one bounded lane per identity, drained by the connection's writer whether or not module
/// inputs are subscribed, and turned into the protocol's wire form there.
#[derive(Debug, Clone)]
pub enum Control {
    /// The answer to a twin request (GET: the document; PATCH: no body).
    /// `desired_version`: the desired `$version` a GET answer shows the client, recorded as
    /// delivered once the answer is on the socket.
    TwinResponse { status: u16, rid: String, version: Option<u64>, body: Bytes, desired_version: Option<u64> },
    /// The identity's desired properties changed: the writer asks the twin store for the one
    /// patch that brings this client up to date, so patches coalesce and are never lost.
    DesiredChanged,
    /// A direct method call.
    MethodRequest { name: String, rid: String, payload: Bytes },
    /// A cloud-to-device message for a leaf device: `bag` is its property bag as IoT Hub
    /// sent it; `done` is called once the device acknowledged it (then it is completed in
    /// the cloud). Sent at least once: a message not acknowledged is redelivered by the cloud.
    DeviceBound { bag: String, payload: Bytes, done: Completion },
}

/// Called once when a delivery is settled by the client.
#[derive(Clone)]
pub struct Completion(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

/// Items on a control lane: a client's own requests wait for room (it is the one that drains
/// them), a method caller waits up to its response timeout, and desired changes coalesce into
/// one item, so a small lane suffices.
pub const CONTROL_LANE_MAX: usize = 16;

/// The twin, method and C2D subscriptions an identity holds (module inputs are `inputs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub twin_responses: bool,
    pub desired: bool,
    pub methods: bool,
    pub device_bound: bool,
}

/// How long a new owner of a slot waits for the previous connection to hand it over.
pub const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection's ownership of its identity's slot ([`super::Broker::take_slot`]).
#[derive(Debug)]
pub struct Claim {
    pub slot: Arc<Slot>,
    pub connection_id: u64,
    /// Fired when a newer connection takes over; its `done` is to fire once this connection
    /// has ended.
    pub kick: Arc<Kick>,
}

/// The connection that currently owns a slot.
#[derive(Debug)]
pub struct Owner {
    pub connection_id: u64,
    /// Fired to tell the owner to end (a newer connection took over); its `done` fires when
    /// the owner has ended.
    pub kick: Arc<Kick>,
}

/// What a slot remembers between connections.
#[derive(Debug, Default)]
pub struct SlotState {
    pub owner: Option<Owner>,
    /// How the inputs subscription settles its deliveries, `None` while not subscribed.
    pub inputs: Option<Settle>,
    /// True when the last session asked to be kept (clean session = false).
    pub persistent: bool,
    /// Highest seq written per endpoint, to set DUP when it is sent again.
    pub last_sent: Vec<(u16, u64)>,
    /// Twin, method and C2D subscriptions (kept with a persistent session, like inputs).
    pub subscriptions: Subscriptions,
}

/// An identity's delivery queue and session state.
#[derive(Debug)]
pub struct Slot {
    pub mailbox: Queue<Delivery>,
    /// Twin responses, desired-change notices and method calls (see [`Control`]).
    pub control: Queue<Control>,
    /// A [`Control::DesiredChanged`] is on the lane already (changes coalesce into it).
    desired_queued: AtomicBool,
    state: Mutex<SlotState>,
    generation: AtomicU64,
    /// Notified whenever the owner or the inputs subscription changes.
    pub changed: Event,
}

impl Slot {
    pub(crate) fn new(queue_max: usize) -> Slot {
        Slot {
            mailbox: Queue::new(queue_max),
            control: Queue::new(CONTROL_LANE_MAX),
            desired_queued: AtomicBool::new(false),
            state: Mutex::new(SlotState::default()),
            generation: AtomicU64::new(0),
            changed: Event::new(),
        }
    }

    /// Locks the state. Every update is a single assignment, so a lock poisoned by a panic
    /// elsewhere cannot hold a half-made change and is taken over.
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Call after changing `owner` or `inputs` (with the state lock released): starts a new
    /// generation and wakes the pumps.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        super::queue::notify_listened(&self.changed, usize::MAX);
    }

    /// The current generation while a connected client takes deliveries.
    pub fn online_generation(&self) -> Option<u64> {
        let state = self.state();
        (state.owner.is_some() && state.inputs.is_some()).then(|| self.generation())
    }

    /// Tells the connection (if it subscribed to desired patches) that the desired properties
    /// changed. At most one notice waits on the lane.
    pub fn desired_changed(&self) {
        if !self.state().subscriptions.desired || self.desired_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // Past the lane's bound if it is full (at most one notice waits: the flag), so a lane
        // crowded with method calls or twin answers never withholds a desired change.
        if self.control.push_over_bound(Control::DesiredChanged).is_err() {
            // Closed: there is no connection to tell.
            self.desired_queued.store(false, Ordering::Release);
        }
    }

    /// The writer took the desired-change notice off the lane.
    pub fn desired_taken(&self) {
        self.desired_queued.store(false, Ordering::Release);
    }

    /// Whether a connected client of this identity has subscribed to method calls.
    pub fn takes_methods(&self) -> bool {
        let state = self.state();
        state.owner.is_some() && state.subscriptions.methods
    }

    pub fn last_sent(&self, endpoint: u16) -> u64 {
        self.state().last_sent.iter().find(|(e, _)| *e == endpoint).map_or(0, |(_, s)| *s)
    }

    pub fn note_sent(&self, endpoint: u16, seq: u64) {
        let mut state = self.state();
        match state.last_sent.iter_mut().find(|(e, _)| *e == endpoint) {
            Some(slot) => slot.1 = slot.1.max(seq),
            None => state.last_sent.push((endpoint, seq)),
        }
    }
}

/// All slots, by client id (`d` or `d/m`). Slots are made only for authenticated identities
/// and route targets, so their number is bounded by the configuration.
#[derive(Debug)]
pub struct Sessions {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    queue_max: usize,
}

impl Sessions {
    pub fn new(queue_max: usize) -> Sessions {
        Sessions { slots: Mutex::new(HashMap::new()), queue_max }
    }

    /// The slot of `client_id`, made on first use.
    pub fn slot(&self, client_id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.get(client_id) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::new(self.queue_max));
        slots.insert(client_id.to_string(), slot.clone());
        slot
    }
}
