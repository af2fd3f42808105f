//! Telemetry to the cloud, one connection per sender: the store's `$upstream` queue is read in
//! order, each message is handed to the link of the identity that sent it (its own MQTT
//! connection, as IoT Hub requires), and the queue's checkpoint moves only as far as every
//! link has acknowledged: what was handed out and not acknowledged before a crash is sent
//! again (DUP set), nothing is skipped.
//!
//! Bounded: each identity's hand-over queue holds at most [`IDENTITY_QUEUE_MAX`] messages
//! besides its link's window; when it is full the reader waits (messages of other identities
//! behind it wait too — one order for the whole queue, as the store keeps it).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::upstream::{OutMessage, Outbox};

/// Messages waiting for one identity's link besides those in its window.
pub const IDENTITY_QUEUE_MAX: usize = 16;
/// Messages read from the store per turn.
const READ_BATCH: usize = 32;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How far the shared queue may be released: the lowest seq some link still holds.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The last seq read from the store (handed out or skipped).
    read_through: u64,
    /// The last checkpoint given to the store.
    released: u64,
}

/// The hand-over queue of one identity, and the seqs its link holds unacknowledged.
#[derive(Debug, Default)]
struct Lane {
    waiting: VecDeque<OutMessage>,
    /// Handed out (waiting or in the link's window) and not acknowledged, in order.
    unacked: VecDeque<u64>,
    /// The cloud refuses the identity: messages for it are dropped.
    abandoned: bool,
}

/// One identity's view of the queue: the [`Outbox`] its link drains.
pub struct IdentityOutbox {
    lane: Mutex<Lane>,
    /// Notified when a message is handed over.
    more: Event,
    /// Notified when a message is taken or acknowledged (room for the reader).
    room: Event,
    dispatch: Arc<Dispatch>,
}

impl IdentityOutbox {
    pub fn new(dispatch: Arc<Dispatch>) -> Arc<IdentityOutbox> {
        Arc::new(IdentityOutbox { lane: Mutex::new(Lane::default()), more: Event::new(), room: Event::new(), dispatch })
    }

    /// Whether everything handed to this identity was acknowledged.
    pub fn is_idle(&self) -> bool {
        lock(&self.lane).unacked.is_empty()
    }

    /// The lowest seq this identity holds unacknowledged.
    fn lowest_unacked(&self) -> Option<u64> {
        lock(&self.lane).unacked.front().copied()
    }

    /// Hands `message` over, waiting while [`IDENTITY_QUEUE_MAX`] wait already. `false` if
    /// the lane was abandoned meanwhile (its identity is refused by the cloud): the message is
    /// dropped.
    async fn hand_over(&self, message: OutMessage) -> bool {
        loop {
            let listener = self.room.listen();
            {
                let mut lane = lock(&self.lane);
                if lane.abandoned {
                    return false;
                }
                if lane.waiting.len() < IDENTITY_QUEUE_MAX {
                    lane.unacked.push_back(message.seq);
                    lane.waiting.push_back(message);
                    drop(lane);
                    self.more.notify(usize::MAX);
                    return true;
                }
            }
            listener.await;
        }
    }

    /// The cloud refuses this identity (not authorized): what waits or is in flight for it
    /// no longer holds the checkpoint back (it is dropped, and counted by the caller), and
    /// nothing more is handed over until [`IdentityOutbox::resume`]. Returns how many
    /// messages were given up.
    pub fn abandon(&self) -> usize {
        let given_up = {
            let mut lane = lock(&self.lane);
            lane.abandoned = true;
            lane.waiting.clear();
            std::mem::take(&mut lane.unacked).len()
        };
        self.room.notify(usize::MAX);
        self.dispatch.release();
        given_up
    }

    /// The identity connected again: messages are handed over again.
    pub fn resume(&self) {
        lock(&self.lane).abandoned = false;
    }

    pub fn is_abandoned(&self) -> bool {
        lock(&self.lane).abandoned
    }
}

impl Outbox for IdentityOutbox {
    fn next_batch(&self, after: u64, max: usize) -> Vec<OutMessage> {
        let mut lane = lock(&self.lane);
        let mut batch = Vec::new();
        while batch.len() < max {
            match lane.waiting.pop_front() {
                Some(message) if message.seq > after => batch.push(message),
                Some(_) => {}
                None => break,
            }
        }
        drop(lane);
        if !batch.is_empty() {
            self.room.notify(usize::MAX);
        }
        batch
    }

    fn wait_for_more(&self, after: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let listener = self.more.listen();
                if lock(&self.lane).waiting.iter().any(|m| m.seq > after) {
                    return;
                }
                listener.await;
            }
        })
    }

    fn acked(&self, seq: u64) {
        {
            let mut lane = lock(&self.lane);
            while lane.unacked.front().is_some_and(|s| *s <= seq) {
                lane.unacked.pop_front();
            }
        }
        self.room.notify(usize::MAX);
        self.dispatch.release();
    }

    fn resume_after(&self) -> u64 {
        0
    }
}

/// Where a message goes: the outbox of its sender's link (made on first use), or `None` when
/// it can never be sent (no sender in its topic) and is skipped.
pub type Route = dyn Fn(&OutMessage) -> Option<RouteTo> + Send + Sync;

/// The answer of a [`Route`].
pub enum RouteTo {
    Link(Arc<IdentityOutbox>),
    /// No link can be made now (the limit is reached and none is idle): try again shortly.
    Busy,
    /// The sender has no key (no longer configured or in the device scope): the message can
    /// never be sent and is skipped.
    NoKey,
}

/// The reader of the shared `$upstream` queue.
pub struct Dispatch {
    source: Arc<dyn Outbox>,
    tracker: Mutex<Tracker>,
    lanes: Mutex<Vec<std::sync::Weak<IdentityOutbox>>>,
}

impl Dispatch {
    pub fn new(source: Arc<dyn Outbox>) -> Arc<Dispatch> {
        let resume = source.resume_after();
        Arc::new(Dispatch {
            source,
            tracker: Mutex::new(Tracker { read_through: resume, released: resume }),
            lanes: Mutex::new(Vec::new()),
        })
    }

    /// Registers an identity's outbox (made by the route) for the checkpoint computation.
    pub fn register(&self, outbox: &Arc<IdentityOutbox>) {
        let mut lanes = lock(&self.lanes);
        lanes.retain(|l| l.strong_count() > 0);
        lanes.push(Arc::downgrade(outbox));
    }

    /// Moves the store's checkpoint to just below the lowest seq any link still holds.
    /// `read_through` is read first: a message handed over after that read is above it, so it
    /// can never be released unacknowledged; the store is told under the tracker's lock, so
    /// checkpoints reach it in order.
    fn release(&self) {
        let mut tracker = lock(&self.tracker);
        let read_through = tracker.read_through;
        let lanes: Vec<Arc<IdentityOutbox>> = lock(&self.lanes).iter().filter_map(std::sync::Weak::upgrade).collect();
        let lowest = lanes.iter().filter_map(|l| l.lowest_unacked()).min();
        let through = match lowest {
            Some(seq) => seq.saturating_sub(1).min(read_through),
            None => read_through,
        };
        if through > tracker.released {
            tracker.released = through;
            self.source.acked(through);
        }
    }

    /// Reads the queue forever, handing each message to its sender's link. Reads only while
    /// the cloud is up (`gate`), as the single link does: messages stay in the store while it
    /// is away, so their time to live and the routes' priorities still apply when it is back.
    pub async fn run(self: Arc<Self>, route: Arc<Route>, gate: Arc<crate::upstream::Gate>) {
        loop {
            gate.wait_up().await;
            let after = lock(&self.tracker).read_through;
            let batch = self.source.next_batch(after, READ_BATCH);
            if batch.is_empty() {
                self.source.wait_for_more(after).await;
                continue;
            }
            for message in batch {
                let seq = message.seq;
                loop {
                    match route(&message) {
                        Some(RouteTo::Link(outbox)) => {
                            if !outbox.hand_over(message).await {
                                log::warn!("upstream: message {seq} dropped: the cloud refuses its sender");
                            }
                            break;
                        }
                        Some(RouteTo::NoKey) => {
                            log::warn!(
                                "upstream: message {seq} on {:?} dropped: its sender has no key any more",
                                message.topic
                            );
                            break;
                        }
                        Some(RouteTo::Busy) => {
                            smol::Timer::after(std::time::Duration::from_millis(500)).await;
                        }
                        None => {
                            log::error!("upstream: message {seq} on {:?} has no sender; skipped", message.topic);
                            break;
                        }
                    }
                }
                let mut tracker = lock(&self.tracker);
                tracker.read_through = tracker.read_through.max(seq);
            }
            self.release();
        }
    }
}
