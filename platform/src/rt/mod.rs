//! The runtime's executor: one thread that runs every task spawned with [`spawn`] and, between
//! tasks, waits on its own epoll for the sockets of [`TcpSocket`] and [`TcpListener`].
//!
//! Why not smol's executor: async-io drives its reactor from whichever thread gets to it first,
//! and its helper thread ("async-io") takes the reactor whenever the executor thread has been
//! busy for more than 50 µs. A client that sends one message and waits for its PUBACK (what the
//! Azure SDKs do) then had every socket event reach the executor through the helper thread and
//! a futex wake-up: two context switches per message. Here the executor thread owns its epoll
//! for good: a socket's readiness wakes its task on the thread that runs it, and a wait is one
//! `epoll_pwait`, as in mosquitto's loop.
//!
//! Everything else async-io drives (timers, the few sockets still on `smol::Async`, Unix
//! sockets, pipes) keeps working: async-io's helper thread waits on those, and its wake-ups
//! reach this executor through [`Reactor::notify`], an eventfd write, only when the executor is
//! asleep.
//!
//! Tasks are `async_task` tasks (the same `Task` type smol returns): `detach()` to let them run
//! on, drop to cancel, `.await` for the output. A panic in a task is caught and re-raised where
//! its `Task` is awaited, as with smol; the executor thread goes on.
//!
//! Limits: the run queue holds each task at most once (a task is queued only when woken and not
//! queued already), so it is bounded by the number of tasks; its memory is given back beyond
//! [`QUEUE_KEEP`] entries once it empties. At most [`TASKS_PER_TURN`] tasks run between two
//! looks at the sockets; one wait reports at most [`EVENTS_PER_WAIT`] sockets.

mod net;
mod reactor;

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub use async_task::Task;
pub use net::{TcpListener, TcpSocket};
use reactor::Reactor;

/// Tasks run between two looks at the sockets while tasks are waiting: enough that a busy
/// executor makes one syscall per batch, few enough that a socket waits at most a batch.
pub const TASKS_PER_TURN: usize = 64;

/// Sockets one wait reports at most (the rest are reported by the next wait).
pub const EVENTS_PER_WAIT: usize = 256;

/// Run-queue slots kept allocated when it empties (a burst of wake-ups, say 10 000 connections
/// at once, would otherwise keep its peak allocated).
pub const QUEUE_KEEP: usize = 1024;

struct Executor {
    queue: Mutex<VecDeque<async_task::Runnable>>,
    /// The executor thread is in (or about to enter) a wait with no timeout: a task woken now
    /// must wake it through the reactor.
    sleeping: AtomicBool,
    reactor: Reactor,
}

static EXECUTOR: OnceLock<&'static Executor> = OnceLock::new();

fn executor() -> &'static Executor {
    EXECUTOR.get_or_init(|| {
        let reactor = match Reactor::new() {
            Ok(reactor) => reactor,
            // No epoll or eventfd: nothing of the runtime could run.
            Err(e) => panic!("the runtime's reactor (epoll, eventfd): {e}"),
        };
        let executor: &'static Executor = Box::leak(Box::new(Executor {
            queue: Mutex::new(VecDeque::new()),
            sleeping: AtomicBool::new(false),
            reactor,
        }));
        if let Err(e) = std::thread::Builder::new().name("tinyedge-rt".into()).spawn(move || executor.run()) {
            panic!("the runtime's executor thread: {e}");
        }
        executor
    })
}

/// The reactor the executor thread waits on (sockets register there).
pub(crate) fn reactor() -> &'static Reactor {
    &executor().reactor
}

/// Spawns `future` on the runtime's executor thread (started on first use).
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    let (runnable, task) = async_task::Builder::new().propagate_panic(true).spawn(|()| future, schedule);
    runnable.schedule();
    task
}

fn schedule(runnable: async_task::Runnable) {
    let executor = executor();
    lock(&executor.queue).push_back(runnable);
    // After the push: the executor either sees the task in its last look at the queue, or has
    // set `sleeping` before that look and is woken here (both sides SeqCst).
    if executor.sleeping.load(Ordering::SeqCst) && executor.sleeping.swap(false, Ordering::SeqCst) {
        executor.reactor.notify();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A task's panic is caught inside the task (propagate_panic), so no lock is poisoned by one;
    // a poisoned lock's data (a queue, a waker slot) is still consistent.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

thread_local! {
    /// The executor thread's clock of this turn (unix ms; 0: not the executor thread).
    static TURN_CLOCK: Cell<u64> = const { Cell::new(0) };
}

fn read_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock time in unix milliseconds. On the executor thread it is read once per turn (after
/// each wait for the sockets) and shared by every task the turn runs: what the message path
/// stamps and compares (a record's enqueued time, TTL checks, the processing-time metric) costs
/// one clock read per turn rather than one per message, and is behind the true time by at most
/// one turn (at most [`TASKS_PER_TURN`] tasks). Elsewhere it reads the clock.
pub fn now_unix_ms() -> u64 {
    match TURN_CLOCK.with(Cell::get) {
        0 => read_unix_ms(),
        now => now,
    }
}

impl Executor {
    fn run(&self) -> ! {
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        loop {
            TURN_CLOCK.with(|clock| clock.set(read_unix_ms().max(1)));
            let mut ran = 0;
            while ran < TASKS_PER_TURN {
                let next = lock(&self.queue).pop_front();
                let Some(runnable) = next else { break };
                runnable.run();
                ran += 1;
            }
            let more = {
                let mut queue = lock(&self.queue);
                if queue.is_empty() {
                    if queue.capacity() > QUEUE_KEEP {
                        queue.shrink_to(QUEUE_KEEP);
                    }
                    self.sleeping.store(true, Ordering::SeqCst);
                    false
                } else {
                    true
                }
            };
            // With tasks waiting: a look at the sockets without waiting. Without: wait for a
            // socket, or for a task woken from another thread (which clears `sleeping`).
            let sleep = !more && self.sleeping.load(Ordering::SeqCst);
            self.reactor.wait(&mut events, sleep);
            // Awake before the wake-ups below: a task they schedule is found in the queue by
            // the next turn, without an eventfd write to this very thread.
            self.sleeping.store(false, Ordering::SeqCst);
            self.reactor.dispatch(&events);
        }
    }
}

#[cfg(test)]
mod tests;
