//! The executor thread's epoll: sockets registered once, edge-triggered, for both directions;
//! an eventfd to wake the thread from another one.
//!
//! Readiness per direction is a counter of edges (`tick`) and the counter's value when an
//! operation last found the socket not ready (`seen`): the direction is ready while the two
//! differ. An operation loads `tick` before it runs, so an edge that comes while it runs is not
//! lost; a waiter stores its waker and then looks at `tick` again, so an edge that comes while
//! it registers is not lost either. Nothing is locked on the way of a read or write that
//! succeeds, and one uncontended lock is taken per wait.
//!
//! A read or write that moved fewer bytes than asked drained the socket's queue (or filled
//! its buffer) at that moment, so it also counts as "not ready": the next bytes bring a new
//! edge, and the read that would only have said `EAGAIN` is not made (tokio does the same). A
//! hang-up or error is sticky instead, since no edge follows it: once seen, the direction stays
//! ready and the next read finds the end.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};

use super::lock;

/// The key of the eventfd in the epoll set (sources use their slab index, far below).
const NOTIFY_KEY: u64 = u64::MAX;

/// A direction of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read = 0,
    Write = 1,
}

#[derive(Default)]
struct Readiness {
    tick: AtomicU64,
    seen: AtomicU64,
    /// A hang-up or error was reported: ready for good.
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Readiness {
    fn ready(&self) -> bool {
        self.tick.load(Ordering::SeqCst) != self.seen.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst)
    }

    fn edge(&self, closed: bool) {
        if closed {
            self.closed.store(true, Ordering::SeqCst);
        }
        self.tick.fetch_add(1, Ordering::SeqCst);
        let waker = lock(&self.waker).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A registered descriptor's readiness, shared by the socket and the reactor.
pub(crate) struct Source {
    key: usize,
    directions: [Readiness; 2],
}

/// For [`Source::try_io`]: a read or write of `len` bytes that moved some but fewer drained
/// the socket's queue (or filled its buffer).
pub(crate) fn short_of(len: usize) -> impl Fn(&usize) -> bool {
    move |&n| n > 0 && n < len
}

impl Source {
    /// Runs `op` (a non-blocking syscall on the source's descriptor); if it would block, or
    /// `drained` says its result left nothing more to do (a read or write that moved fewer bytes
    /// than asked), the direction counts as not ready until the next edge.
    pub(crate) fn try_io<T>(
        &self,
        direction: Direction,
        op: impl FnOnce() -> io::Result<T>,
        drained: impl Fn(&T) -> bool,
    ) -> io::Result<T> {
        let readiness = &self.directions[direction as usize];
        let tick = readiness.tick.load(Ordering::SeqCst);
        let result = op();
        let not_ready = match &result {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(value) => drained(value),
        };
        if not_ready {
            readiness.seen.store(tick, Ordering::SeqCst);
        }
        result
    }

    /// `Ready` unless an operation found the direction not ready since its last edge; else the
    /// task is woken by the next edge.
    pub(crate) fn poll_ready(&self, direction: Direction, cx: &mut Context<'_>) -> Poll<()> {
        let readiness = &self.directions[direction as usize];
        if readiness.ready() {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&readiness.waker);
            match &*slot {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        if readiness.ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Runs `op` until it does not block, waiting for the direction's edges in between
    /// (`drained` as for [`Source::try_io`]).
    pub(crate) fn poll_io<T>(
        &self,
        direction: Direction,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> io::Result<T>,
        drained: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        loop {
            std::task::ready!(self.poll_ready(direction, cx));
            match self.try_io(direction, &mut op, &drained) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return Poll::Ready(result),
            }
        }
    }
}

/// The epoll set, its eventfd and the registered sources.
pub(crate) struct Reactor {
    epoll: OwnedFd,
    notifier: OwnedFd,
    sources: Mutex<slab::Slab<Arc<Source>>>,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let notifier = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &notifier, epoll::EventData::new_u64(NOTIFY_KEY), epoll::EventFlags::IN)?;
        Ok(Reactor { epoll, notifier, sources: Mutex::new(slab::Slab::new()) })
    }

    /// Registers a non-blocking descriptor for both directions, edge-triggered.
    pub(crate) fn register(&self, fd: BorrowedFd<'_>) -> io::Result<Arc<Source>> {
        let mut sources = lock(&self.sources);
        let entry = sources.vacant_entry();
        let source = Arc::new(Source { key: entry.key(), directions: Default::default() });
        // Ready at first: the first operation tries the socket rather than wait for an edge.
        for readiness in &source.directions {
            readiness.seen.store(u64::MAX, Ordering::SeqCst);
        }
        let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(entry.key() as u64), flags)?;
        entry.insert(source.clone());
        Ok(source)
    }

    /// Removes a descriptor before it is closed (a duplicate of it would keep it in the set).
    pub(crate) fn deregister(&self, source: &Source, fd: BorrowedFd<'_>) {
        let mut sources = lock(&self.sources);
        let _ = epoll::delete(&self.epoll, fd);
        if sources.contains(source.key) {
            sources.remove(source.key);
        }
    }

    /// Wakes the executor thread from a wait (an eventfd write).
    pub(crate) fn notify(&self) {
        let _ = rustix::io::write(&self.notifier, &1u64.to_ne_bytes());
    }

    /// One wait: without a timeout when `sleep`, else a look without waiting. The events are
    /// left in `events` for [`Reactor::dispatch`].
    pub(crate) fn wait(&self, events: &mut Vec<epoll::Event>, sleep: bool) {
        events.clear();
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let timeout = if sleep { None } else { Some(&zero) };
        if let Err(e) = epoll::wait(self.epoll.as_fd(), rustix::buffer::spare_capacity(events), timeout) {
            if e != rustix::io::Errno::INTR {
                log::warn!("the runtime's epoll wait: {e}");
            }
        }
    }

    /// Wakes the tasks of the sources the last wait found ready.
    pub(crate) fn dispatch(&self, events: &[epoll::Event]) {
        if events.is_empty() {
            return;
        }
        let sources = lock(&self.sources);
        for event in events.iter() {
            let key = event.data.u64();
            if key == NOTIFY_KEY {
                let mut counter = [0u8; 8];
                let _ = rustix::io::read(&self.notifier, &mut counter);
                continue;
            }
            let Some(source) = usize::try_from(key).ok().and_then(|k| sources.get(k)) else { continue };
            let flags = event.flags;
            let failed = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
            let read_closed = failed || flags.contains(epoll::EventFlags::RDHUP);
            if read_closed || flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::PRI) {
                source.directions[Direction::Read as usize].edge(read_closed);
            }
            if failed || flags.contains(epoll::EventFlags::OUT) {
                source.directions[Direction::Write as usize].edge(failed);
            }
        }
    }
}
