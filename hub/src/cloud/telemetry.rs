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

    /// Hands `message` over, waiting while [`IDENTITY_QUEUE_MAX`] wait already.
    async fn hand_over(&self, message: OutMessage) {
        loop {
            let listener = self.room.listen();
            {
                let mut lane = lock(&self.lane);
                if lane.waiting.len() < IDENTITY_QUEUE_MAX {
                    lane.unacked.push_back(message.seq);
                    lane.waiting.push_back(message);
                    drop(lane);
                    self.more.notify(usize::MAX);
                    return;
                }
            }
            listener.await;
        }
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
    fn release(&self) {
        let lowest = lock(&self.lanes).iter().filter_map(std::sync::Weak::upgrade).filter_map(|l| l.lowest_unacked()).min();
        let mut tracker = lock(&self.tracker);
        let through = match lowest {
            Some(seq) => seq.saturating_sub(1).min(tracker.read_through),
            None => tracker.read_through,
        };
        if through > tracker.released {
            tracker.released = through;
            drop(tracker);
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
                            outbox.hand_over(message).await;
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
