//! Small async primitives that allocate as they fill instead of up front.
//!
//! async-channel's bounded channel preallocates every slot and pads its state to cache lines:
//! about 1 KiB per channel before the first message, plus `max` slots (at 1000 slots of 64 bytes,
//! 64 KiB per connected module). A gateway holds a few of these per connection, so they are
//! replaced here by a `VecDeque` behind a mutex, and a one-shot [`Signal`].
//!
//! A queue has one consumer at a time (a connection's writer): its waker is kept in the
//! queue's state, so waiting for an item allocates nothing. Another consumer waiting at the
//! same time (an old connection not yet gone during a takeover) waits on an event-listener
//! `Event` instead, whose listener is allocated only then. Producers waiting for room use an
//! `Event` too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use event_listener::{Event, EventListener};

/// `event.listen()` for a notifier that uses [`notify_listened`]; the caller checks its
/// condition again after this, as with any listener.
pub fn listen(event: &Event) -> EventListener {
    let listener = event.listen();
    // Pairs with the fence in `notify_listened`: either the notifier sees this listener, or
    // the check that follows sees the notifier's change.
    std::sync::atomic::fence(Ordering::SeqCst);
    listener
}

/// `event.notify(n)` after a change its listeners check, except that an event nobody listens
/// to is not touched: event-listener allocates an event's state on its first notification,
/// and most events here (a slot's, a queue's, a signal's) are never listened to.
pub fn notify_listened(event: &Event, n: usize) {
    std::sync::atomic::fence(Ordering::SeqCst);
    if event.total_listeners() > 0 {
        event.notify(n);
    }
}

/// Capacity kept after a queue drains; above it the storage is given back, so a burst does
/// not pin its peak allocation to an idle connection.
const RETAINED_SLOTS_MAX: usize = 32;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The consumer waiting for an item, woken (and forgotten) by the next push or close.
    /// A consumer that stopped waiting is woken once for nothing at the next push.
    consumer: Option<Waker>,
}

/// A bounded FIFO. `try_push` hands the item back at the bound; `push` waits for room.
/// Closing wakes everyone: pushes fail, pops drain what is left and then return `None`.
pub struct Queue<T> {
    state: Mutex<State<T>>,
    max: usize,
    /// For consumers beyond the one whose waker `State::consumer` holds.
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
            state: Mutex::new(State { items: VecDeque::new(), closed: false, consumer: None }),
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
        let consumer = {
            let mut state = self.lock();
            if state.closed {
                return Err(PushError::Closed(item));
            }
            if state.items.len() >= self.max {
                return Err(PushError::Full(item));
            }
            state.items.push_back(item);
            state.consumer.take()
        };
        self.wake_consumers(consumer);
        Ok(())
    }

    /// Wakes the consumer whose waker was kept and any waiting on the event.
    fn wake_consumers(&self, consumer: Option<Waker>) {
        if let Some(waker) = consumer {
            waker.wake();
        }
        notify_listened(&self.has_items, usize::MAX);
    }

    /// Queues `item` even if the queue is at its bound (hands it back only if closed). For the
    /// one item a caller guards with its own flag, so the bound is exceeded by at most one.
    pub fn push_over_bound(&self, item: T) -> Result<(), T> {
        let consumer = {
            let mut state = self.lock();
            if state.closed {
                return Err(item);
            }
            state.items.push_back(item);
            state.consumer.take()
        };
        self.wake_consumers(consumer);
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
            let listener = listen(&self.has_room);
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
            notify_listened(&self.has_room, 1);
        }
        item
    }

    /// The oldest item, waiting for one; `None` once the queue is closed and drained.
    pub async fn pop(&self) -> Option<T> {
        let mut listener = None;
        std::future::poll_fn(|cx| self.poll_pop(cx, &mut listener)).await
    }

    /// [`Queue::pop`] as a poll, for a task that waits on several queues at once without a
    /// future per wait. `Ready(None)`: closed and drained. `listener` is the caller's, kept
    /// between polls (`None` to start); it is only used while another consumer's waker is
    /// the one kept.
    pub fn poll_pop(&self, cx: &mut Context<'_>, listener: &mut Option<EventListener>) -> Poll<Option<T>> {
        loop {
            if let Some(item) = self.try_pop() {
                *listener = None;
                return Poll::Ready(Some(item));
            }
            if let Some(waiting) = listener {
                match Pin::new(waiting).poll(cx) {
                    Poll::Ready(()) => *listener = None,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            match self.register(cx) {
                Registered::Empty => return Poll::Pending,
                Registered::Closed => return Poll::Ready(None),
                Registered::Items => {}
                Registered::Taken => *listener = Some(listen(&self.has_items)),
            }
        }
    }

    /// Ready once the queue holds an item or is closed, without taking it: for a task that
    /// waits for work before it sets up to do it. `listener` as for [`Queue::poll_pop`].
    pub fn poll_ready(&self, cx: &mut Context<'_>, listener: &mut Option<EventListener>) -> Poll<()> {
        loop {
            if let Some(waiting) = listener {
                // Registered on the event: items or a close since then are seen below.
                if Pin::new(waiting).poll(cx).is_ready() {
                    *listener = None;
                }
            }
            match self.register(cx) {
                Registered::Empty => return Poll::Pending,
                Registered::Items | Registered::Closed => {
                    *listener = None;
                    return Poll::Ready(());
                }
                Registered::Taken if listener.is_some() => return Poll::Pending,
                Registered::Taken => *listener = Some(listen(&self.has_items)),
            }
        }
    }

    /// Keeps `cx`'s waker as the consumer's unless another consumer's is kept.
    fn register(&self, cx: &mut Context<'_>) -> Registered {
        let mut state = self.lock();
        if !state.items.is_empty() {
            return Registered::Items;
        }
        if state.closed {
            return Registered::Closed;
        }
        match &mut state.consumer {
            Some(kept) if kept.will_wake(cx.waker()) => Registered::Empty,
            Some(_) => Registered::Taken,
            empty @ None => {
                *empty = Some(cx.waker().clone());
                Registered::Empty
            }
        }
    }

    /// Refuses further pushes and wakes every waiter.
    pub fn close(&self) {
        let consumer = {
            let mut state = self.lock();
            state.closed = true;
            state.consumer.take()
        };
        self.wake_consumers(consumer);
        notify_listened(&self.has_room, usize::MAX);
    }
}

/// What [`Queue::register`] found.
enum Registered {
    /// Nothing to take; the caller's waker is kept.
    Empty,
    Items,
    Closed,
    /// Nothing to take, and another consumer's waker is kept: wait on the event instead.
    Taken,
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
        notify_listened(&self.event, usize::MAX);
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
                None => *listener = Some(listen(&self.event)),
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
            let listener = listen(&self.event);
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
    fn two_consumers_waiting_at_once_both_get_an_item() {
        // The first keeps its waker in the queue; the second waits on the event.
        let queue: Arc<Queue<u32>> = Arc::new(Queue::new(4));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || smol::block_on(queue.pop()))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        queue.try_push(1).expect("room");
        std::thread::sleep(std::time::Duration::from_millis(20));
        queue.try_push(2).expect("room");
        let mut got: Vec<_> = consumers.into_iter().map(|c| c.join().expect("consumer")).collect();
        got.sort();
        assert_eq!(got, vec![Some(1), Some(2)]);
    }

    #[test]
    fn a_consumer_whose_waker_is_kept_is_woken_by_a_push() {
        let queue = Queue::new(4);
        let woke = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Count(woke.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut listener = None;
        assert_eq!(queue.poll_pop(&mut cx, &mut listener), Poll::Pending);
        assert!(listener.is_none(), "the only consumer needs no listener");
        assert_eq!(queue.poll_ready(&mut cx, &mut listener), Poll::Pending);
        queue.try_push(7).expect("room");
        assert_eq!(woke.load(Ordering::SeqCst), 1);
        assert_eq!(queue.poll_ready(&mut cx, &mut listener), Poll::Ready(()));
        assert_eq!(queue.poll_pop(&mut cx, &mut listener), Poll::Ready(Some(7)));
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
