//! A socket's place under the connection limits (`max_connections`, and `max_unauthenticated`
//! until the client has authenticated), whatever protocol it speaks: taken at accept, given back
//! when the connection ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::broker::Limits;
use crate::metrics::Metrics;

/// Which bound a socket met at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtLimit {
    Connections,
    Unauthenticated,
}

/// A socket's place under `max_connections` and, until its CONNECT is accepted, under
/// `max_unauthenticated`: taken at accept, given back on drop, whichever way the connection
/// ends.
#[derive(Debug)]
pub(crate) struct Permit {
    metrics: Arc<Metrics>,
    authenticated: bool,
}

/// Adds one to `counter` unless it is at `max` already.
fn increment_below(counter: &AtomicU64, max: usize) -> bool {
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

impl Permit {
    pub(crate) fn acquire(metrics: &Arc<Metrics>, limits: &Limits) -> Result<Permit, AtLimit> {
        if !increment_below(&metrics.connections_open, limits.max_connections) {
            return Err(AtLimit::Connections);
        }
        if !increment_below(&metrics.connections_unauthenticated, limits.max_unauthenticated) {
            Metrics::dec(&metrics.connections_open);
            return Err(AtLimit::Unauthenticated);
        }
        Ok(Permit { metrics: metrics.clone(), authenticated: false })
    }

    /// The CONNECT is accepted: the socket leaves the unauthenticated count.
    pub(crate) fn authenticated(&mut self) {
        if !self.authenticated {
            self.authenticated = true;
            Metrics::dec(&self.metrics.connections_unauthenticated);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.authenticated {
            Metrics::dec(&self.metrics.connections_unauthenticated);
        }
        Metrics::dec(&self.metrics.connections_open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_sockets_from_accept_and_give_them_back_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let limits = Limits { max_connections: 3, max_unauthenticated: 2, ..Limits::default() };
        let mut a = Permit::acquire(&metrics, &limits).expect("first");
        let b = Permit::acquire(&metrics, &limits).expect("second");
        assert_eq!(Permit::acquire(&metrics, &limits).map(|_| ()), Err(AtLimit::Unauthenticated));
        a.authenticated();
        a.authenticated();
        let c = Permit::acquire(&metrics, &limits).expect("a slot before CONNECT is free again");
        assert_eq!(Permit::acquire(&metrics, &limits).map(|_| ()), Err(AtLimit::Connections));
        let gauges = |m: &Metrics| {
            (m.connections_open.load(Ordering::Relaxed), m.connections_unauthenticated.load(Ordering::Relaxed))
        };
        assert_eq!(gauges(&metrics), (3, 2));
        drop((a, b, c));
        assert_eq!(gauges(&metrics), (0, 0));
    }
}
