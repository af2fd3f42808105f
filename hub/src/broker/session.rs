//! Sessions: one slot per identity, holding its input queue and what survives a reconnect.
//!
//! The input queue belongs to the identity, not to the connection: messages routed to a module
//! wait there while it is offline (bounded), and a reconnecting module gets them in order, as
//! IoT Edge delivers module inputs whatever the clean-session flag. Deliveries written but not
//! acknowledged when a connection ends are put back at the front and sent again with DUP.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mqttbytes::QoS;
use super::queue::{Queue, Signal};

/// One message on its way to a module input.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `devices/{d}/modules/{m}/inputs/{input}/{bag}`.
    pub topic: String,
    pub payload: Bytes,
}

/// The connection that currently owns a slot.
#[derive(Debug)]
pub struct Owner {
    pub connection_id: u64,
    /// Fired to tell the owner to end (a newer connection took over).
    pub kick: Arc<Signal>,
    /// Fired when the owner has ended and given back its unacknowledged deliveries.
    pub done: Arc<Signal>,
}

/// What a slot remembers between connections.
#[derive(Debug, Default)]
pub struct SlotState {
    pub owner: Option<Owner>,
    /// QoS granted for the inputs subscription, `None` while not subscribed.
    pub inputs_qos: Option<QoS>,
    /// True when the last session asked to be kept (clean session = false).
    pub persistent: bool,
    /// Written, not acknowledged; redelivered first.
    pub unacked: VecDeque<Delivery>,
}

/// An identity's input queue and session state.
#[derive(Debug)]
pub struct Slot {
    pub mailbox: Queue<Delivery>,
    state: Mutex<SlotState>,
}

impl Slot {
    fn new(queue_max: usize) -> Slot {
        Slot { mailbox: Queue::new(queue_max), state: Mutex::new(SlotState::default()) }
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-updated (every
    /// update is a single assignment), so a poisoned lock is taken over.
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a connected client is taking deliveries: then a full queue back-pressures the
    /// publisher; otherwise a full queue drops (the module is offline).
    pub fn is_online(&self) -> bool {
        let state = self.state();
        state.owner.is_some() && state.inputs_qos.is_some()
    }

    /// Messages waiting (queued plus unacknowledged).
    pub fn pending(&self) -> usize {
        self.mailbox.len() + self.state().unacked.len()
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
