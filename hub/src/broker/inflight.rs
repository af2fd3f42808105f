//! Deliveries sent to a client and not yet acknowledged, and the in-order rule every protocol
//! needs: an acknowledged delivery advances its endpoint's checkpoint in the store only when
//! every earlier delivery of that endpoint in flight has been acknowledged too. The adapter
//! names each delivery with its own identifier (MQTT: the packet id) and reports what the
//! client settled; nothing here knows the wire.

use std::collections::VecDeque;
use std::sync::Arc;

use super::session::{Completion, Origin};

/// Advances an endpoint's checkpoint: `(endpoint, seq)` and everything before it is done.
pub type Commit = Arc<dyn Fn(u16, u64) + Send + Sync>;

/// Endpoints whose acknowledgements one call commits without allocating.
const READY_INLINE: usize = 4;

/// Deliveries written and not yet acknowledged, and acknowledgements waiting for an earlier
/// delivery of the same endpoint before they may advance its checkpoint.
#[derive(Debug)]
pub struct InFlight {
    list: VecDeque<(u16, Option<Origin>)>,
    next_id: u16,
    acked_early: Vec<Origin>,
    /// At-most-once deliveries written to the connection's buffer, settled (committed) once
    /// the buffer reached the socket: one checkpoint write per batch, not per message.
    written: Vec<Origin>,
    /// Deliveries that are not store records (C2D messages), settled by a callback.
    completions: Vec<(u16, Completion)>,
}

impl Default for InFlight {
    fn default() -> InFlight {
        InFlight {
            list: VecDeque::new(),
            next_id: 1,
            acked_early: Vec::new(),
            written: Vec::new(),
            completions: Vec::new(),
        }
    }
}

impl InFlight {
    /// Deliveries waiting for their acknowledgement.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Nothing in flight, held back or waiting to be settled: dropping this loses nothing.
    pub fn is_settled(&self) -> bool {
        self.list.is_empty() && self.acked_early.is_empty() && self.written.is_empty() && self.completions.is_empty()
    }

    /// A free identifier for the next delivery: non-zero, not in flight (MQTT packet ids).
    pub fn next_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.list.iter().any(|(p, _)| *p == id) && !self.completions.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    /// An at-most-once delivery was written to the buffer: settled by [`InFlight::flush_written`]
    /// once the buffer is on the socket.
    pub fn written(&mut self, origin: Origin) {
        match self.written.iter_mut().find(|o| o.endpoint == origin.endpoint) {
            Some(entry) if entry.seq < origin.seq => *entry = origin,
            Some(_) => {}
            None => self.written.push(origin),
        }
    }

    /// The buffer holding the written at-most-once deliveries reached the socket: settles them,
    /// one commit per endpoint (still held back by earlier deliveries of the endpoint in flight).
    pub fn flush_written(&mut self, commit: &Commit) {
        let written = std::mem::take(&mut self.written);
        for origin in &written {
            self.acknowledge(*origin, commit);
        }
        self.written = written;
        self.written.clear();
    }

    /// A delivery was written under `id` and waits for its acknowledgement.
    pub fn sent(&mut self, id: u16, origin: Option<Origin>) {
        self.list.push_back((id, origin));
    }

    /// A delivery settled by `done` (not a store record) was written under `id`.
    pub fn sent_completion(&mut self, id: u16, done: Completion) {
        self.completions.push((id, done));
    }

    /// Deliveries settled by a callback still waiting for their acknowledgement.
    pub fn completions_waiting(&self) -> usize {
        self.completions.len()
    }

    /// The client acknowledged `id`: commits what that frees. An unknown id is ignored.
    pub fn acked(&mut self, id: u16, commit: &Commit) {
        if let Some(pos) = self.completions.iter().position(|(p, _)| *p == id) {
            let (_, done) = self.completions.swap_remove(pos);
            (done.0)();
            return;
        }
        if let Some(pos) = self.list.iter().position(|(p, _)| *p == id) {
            if let Some((_, Some(origin))) = self.list.remove(pos) {
                self.acknowledge(origin, commit);
            }
        }
    }

    /// Records that `done` is acknowledged (or settled at once, at most once) and commits every
    /// acknowledgement no earlier in-flight delivery of the same endpoint holds back.
    pub fn acknowledge(&mut self, done: Origin, commit: &Commit) {
        self.acked_early.push(done);
        let list = &self.list;
        // The highest ready seq per endpoint: a connection's deliveries come from few endpoints,
        // so the first few fit here without an allocation per acknowledgement.
        let mut ready = [(0u16, 0u64); READY_INLINE];
        let mut ready_len = 0;
        let mut more: Vec<(u16, u64)> = Vec::new();
        self.acked_early.retain(|origin| {
            let held_back =
                list.iter().any(|(_, o)| o.is_some_and(|o| o.endpoint == origin.endpoint && o.seq < origin.seq));
            if held_back {
                return true;
            }
            match ready[..ready_len].iter_mut().chain(more.iter_mut()).find(|(e, _)| *e == origin.endpoint) {
                Some(entry) => entry.1 = entry.1.max(origin.seq),
                None if ready_len < READY_INLINE => {
                    ready[ready_len] = (origin.endpoint, origin.seq);
                    ready_len += 1;
                }
                None => more.push((origin.endpoint, origin.seq)),
            }
            false
        });
        for &(endpoint, seq) in ready[..ready_len].iter().chain(more.iter()) {
            commit(endpoint, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A commit function and the (endpoint, seq) pairs it was called with.
    fn recorder() -> (Arc<Mutex<Vec<(u16, u64)>>>, Commit) {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let sink = commits.clone();
        let commit: Commit = Arc::new(move |e, s| sink.lock().expect("lock").push((e, s)));
        (commits, commit)
    }

    fn origin(endpoint: u16, seq: u64) -> Option<Origin> {
        Some(Origin { endpoint, seq, generation: 0 })
    }

    #[test]
    fn at_most_once_deliveries_are_settled_once_per_endpoint_when_the_buffer_is_written() {
        let (commits, commit) = recorder();
        let mut inflight = InFlight::default();
        for (endpoint, seq) in [(7, 1), (7, 2), (8, 3), (7, 4)] {
            inflight.written(origin(endpoint, seq).expect("origin"));
        }
        assert!(commits.lock().expect("lock").is_empty(), "nothing settles before the socket write");
        inflight.flush_written(&commit);
        assert_eq!(*commits.lock().expect("lock"), vec![(7, 4), (8, 3)]);
        inflight.flush_written(&commit);
        assert_eq!(commits.lock().expect("lock").len(), 2, "settled once");
    }

    #[test]
    fn checkpoint_waits_for_earlier_deliveries_of_the_same_endpoint() {
        let (commits, commit) = recorder();
        let mut inflight = InFlight::default();
        for (pkid, (e, s)) in [(1, (7, 10)), (2, (7, 11)), (3, (8, 12)), (4, (7, 13))] {
            inflight.sent(pkid, origin(e, s));
        }
        let ack = |inflight: &mut InFlight, pkid: u16| {
            assert!(inflight.list.iter().any(|(p, _)| *p == pkid), "in flight");
            inflight.acked(pkid, &commit);
        };
        ack(&mut inflight, 2); // 11 waits for 10
        ack(&mut inflight, 3); // endpoint 8 is free
        assert_eq!(*commits.lock().expect("lock"), vec![(8, 12)]);
        ack(&mut inflight, 1); // 10 and 11 both done
        assert_eq!(*commits.lock().expect("lock"), vec![(8, 12), (7, 11)]);
        ack(&mut inflight, 4);
        assert_eq!(commits.lock().expect("lock").last(), Some(&(7, 13)));
        assert!(inflight.acked_early.is_empty());
    }

    #[test]
    fn acknowledgements_held_back_on_more_endpoints_than_fit_inline_are_all_committed() {
        let (commits, commit) = recorder();
        let mut inflight = InFlight::default();
        // Each endpoint has an early delivery and a later one; the later ones are acknowledged
        // first and wait (more endpoints waiting than fit inline), then each early one frees
        // its endpoint.
        let endpoints: Vec<u16> = (1..=READY_INLINE as u16 + 2).collect();
        let mut pkid = 0;
        for &e in &endpoints {
            for seq in [1, 2] {
                pkid += 1;
                inflight.sent(pkid, origin(e, u64::from(e) * 10 + seq));
            }
        }
        // Every later delivery first: all held back.
        for i in 0..endpoints.len() as u16 {
            inflight.acked(i * 2 + 2, &commit);
        }
        assert!(commits.lock().expect("lock").is_empty());
        assert_eq!(inflight.acked_early.len(), endpoints.len());
        // The early ones: each frees its endpoint up to the later seq.
        for i in 0..endpoints.len() as u16 {
            inflight.acked(i * 2 + 1, &commit);
        }
        let mut got = commits.lock().expect("lock").clone();
        got.sort();
        let want: Vec<(u16, u64)> = endpoints.iter().map(|&e| (e, u64::from(e) * 10 + 2)).collect();
        assert_eq!(got, want);
        assert!(inflight.is_settled());
    }
}
