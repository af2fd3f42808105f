//! Small async primitives that allocate as they fill instead of up front.
//!
//! async-channel's bounded channel preallocates every slot and pads its state to cache lines:
//! about 1 KiB per channel before the first message, plus `max` slots (at 1000 slots of 64 bytes,
//! 64 KiB per connected module). A gateway holds a few of these per connection, so they are
//! replaced here by a `VecDeque` behind a mutex with two event-listener `Event`s, and a
//! one-shot [`Signal`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use event_listener::{Event, EventListener};

/// Capacity kept after a queue drains; above it the storage is given back, so a burst does
/// not pin its peak allocation to an idle connection.
const RETAINED_SLOTS_MAX: usize = 32;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A bounded FIFO. `try_push` hands the item back at the bound; `push` waits for room.
/// Closing wakes everyone: pushes fail, pops drain what is left and then return `None`.
pub struct Queue<T> {
    state: Mutex<State<T>>,
    max: usize,
    has_items: Event,
    has_room: Event,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.len()).field("max", &self.max).finish()
    }
}

/// Why an item was not queued; it comes back inside.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    Full(T),
    Closed(T),
}

impl<T> Queue<T> {
    pub fn new(max: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State { items: VecDeque::new(), closed: false }),
            max,
            has_items: Event::new(),
            has_room: Event::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a single push, pop or flag: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Queues `item`, or hands it back when the queue is full or closed.
    pub fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(PushError::Closed(item));
            }
            if state.items.len() >= self.max {
                return Err(PushError::Full(item));
            }
            state.items.push_back(item);
        }
        self.has_items.notify(1);
        Ok(())
    }

    /// Queues `item` even if the queue is at its bound (hands it back only if closed). For the
    /// one item a caller guards with its own flag, so the bound is exceeded by at most one.
    pub fn push_over_bound(&self, item: T) -> Result<(), T> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(item);
            }
            state.items.push_back(item);
        }
        self.has_items.notify(1);
        Ok(())
    }

    /// Queues `item`, waiting for room; hands it back if the queue is closed.
    pub async fn push(&self, mut item: T) -> Result<(), T> {
        loop {
            match self.try_push(item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => item = back,
            }
            let listener = self.has_room.listen();
            // Room may have appeared between the failed push and listening.
            {
                let state = self.lock();
                if state.closed || state.items.len() < self.max {
                    continue;
                }
            }
            listener.await;
        }
    }

    /// The oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        let item = {
            let mut state = self.lock();
            let item = state.items.pop_front();
            if state.items.is_empty() && state.items.capacity() > RETAINED_SLOTS_MAX {
                state.items.shrink_to_fit();
            }
            item
        };
        if item.is_some() {
            self.has_room.notify(1);
        }
        item
    }

    /// The oldest item, waiting for one; `None` once the queue is closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            let listener = self.has_items.listen();
            {
                let state = self.lock();
                if !state.items.is_empty() {
                    continue;
                }
                if state.closed {
                    return None;
                }
            }
            listener.await;
        }
    }

    /// [`Queue::pop`] as a poll, for a task that waits on several queues at once without a
    /// future per wait: `listener` is the caller's, kept between polls (`None` to start).
    /// `Ready(None)`: closed and drained.
    pub fn poll_pop(&self, cx: &mut Context<'_>, listener: &mut Option<EventListener>) -> Poll<Option<T>> {
        loop {
            if let Some(item) = self.try_pop() {
                *listener = None;
                return Poll::Ready(Some(item));
            }
            match listener {
                None => {
                    *listener = Some(self.has_items.listen());
                    let state = self.lock();
                    if state.items.is_empty() && state.closed {
                        *listener = None;
                        return Poll::Ready(None);
                    }
                    // Items that came meanwhile are taken on the next turn; else the new
                    // listener is polled, which registers the waker.
                }
                Some(waiting) => match Pin::new(waiting).poll(cx) {
                    Poll::Ready(()) => *listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    /// Refuses further pushes and wakes every waiter.
    pub fn close(&self) {
        self.lock().closed = true;
        self.has_items.notify(usize::MAX);
        self.has_room.notify(usize::MAX);
    }
}

/// A one-shot flag that can be awaited: "your connection was taken over", "I am done".
#[derive(Debug, Default)]
pub struct Signal {
    fired: AtomicBool,
    event: Event,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// [`Signal::wait`] as a poll; `listener` is the caller's, kept between polls.
    pub fn poll_wait(&self, cx: &mut Context<'_>, listener: &mut Option<EventListener>) -> Poll<()> {
        loop {
            if self.is_fired() {
                *listener = None;
                return Poll::Ready(());
            }
            match listener {
                None => *listener = Some(self.event.listen()),
                Some(waiting) => match Pin::new(waiting).poll(cx) {
                    Poll::Ready(()) => *listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    pub async fn wait(&self) {
        loop {
            if self.is_fired() {
                return;
            }
            let listener = self.event.listen();
            if self.is_fired() {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bound_hands_the_item_back() {
        let queue = Queue::new(2);
        assert!(queue.try_push(1).is_ok());
        assert!(queue.try_push(2).is_ok());
        assert_eq!(queue.try_push(3), Err(PushError::Full(3)));
        assert_eq!(queue.try_pop(), Some(1));
    }

    #[test]
    fn waiting_push_completes_when_room_appears() {
        let queue = Arc::new(Queue::new(1));
        queue.try_push(1).expect("room");
        let pusher = {
            let queue = queue.clone();
            std::thread::spawn(move || smol::block_on(queue.push(2)))
        };
        assert_eq!(smol::block_on(queue.pop()), Some(1));
        assert_eq!(pusher.join().expect("pusher"), Ok(()));
        assert_eq!(smol::block_on(queue.pop()), Some(2));
        assert!(queue.is_empty());
    }

    #[test]
    fn close_drains_then_ends_and_refuses_pushes() {
        let queue = Queue::new(4);
        queue.try_push("a").expect("room");
        queue.close();
        assert_eq!(queue.try_push("b"), Err(PushError::Closed("b")));
        assert_eq!(smol::block_on(queue.pop()), Some("a"));
        assert_eq!(smol::block_on(queue.pop()), None);
    }

    #[test]
    fn close_wakes_a_blocked_pusher_and_popper() {
        let full = Arc::new(Queue::new(1));
        full.try_push(0).expect("room");
        let pusher = {
            let full = full.clone();
            std::thread::spawn(move || smol::block_on(full.push(1)))
        };
        let empty: Arc<Queue<u8>> = Arc::new(Queue::new(1));
        let popper = {
            let empty = empty.clone();
            std::thread::spawn(move || smol::block_on(empty.pop()))
        };
        // Whether the threads are already waiting or not, close must release them.
        std::thread::sleep(std::time::Duration::from_millis(50));
        full.close();
        empty.close();
        assert_eq!(pusher.join().expect("pusher"), Err(1));
        assert_eq!(popper.join().expect("popper"), None);
    }

    #[test]
    fn drained_queue_gives_its_storage_back() {
        let queue = Queue::new(1000);
        for i in 0..500 {
            queue.try_push(i).expect("room");
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().items.capacity() <= RETAINED_SLOTS_MAX);
    }

    #[test]
    fn signal_wakes_waiters_fired_before_or_after() {
        let signal = Arc::new(Signal::default());
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || smol::block_on(signal.wait()))
        };
        signal.fire();
        waiter.join().expect("waiter");
        smol::block_on(signal.wait());
        assert!(signal.is_fired());
    }
}
