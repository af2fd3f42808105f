//! Route priorities without starvation.
//!
//! Each endpoint keeps one store queue per route priority (0 most urgent … 9, and 10 for routes
//! without one), as IoT Edge does. IoT Edge always drains the most urgent queue first, so a
//! steady stream of priority-0 messages starves everything else. Here the most urgent queue
//! wins too, but after [`URGENT_STREAK_MAX`] records taken from it while other queues were
//! waiting, the oldest waiting record of the other queues goes next: less urgent traffic keeps
//! at least one slot in nine, whatever the load.

/// Records taken from the most urgent queue in a row while others wait, before the oldest
/// waiting record of the others goes out: urgent traffic keeps ~89 % of the endpoint.
pub const URGENT_STREAK_MAX: u32 = 8;

/// The choice of queue, with its memory of the current streak.
#[derive(Debug, Default)]
pub struct Fairness {
    streak: u32,
}

impl Fairness {
    /// `heads`: for each queue with a record waiting, its priority and that record's seq.
    /// Returns the index of the queue to take from.
    pub fn pick(&mut self, heads: &[(u8, u64)]) -> Option<usize> {
        let urgent = (0..heads.len()).min_by_key(|&i| (heads[i].0, heads[i].1))?;
        let urgent_priority = heads[urgent].0;
        let oldest_other = (0..heads.len()).filter(|&i| heads[i].0 != urgent_priority).min_by_key(|&i| heads[i].1);
        match oldest_other {
            Some(other) if self.streak >= URGENT_STREAK_MAX => {
                self.streak = 0;
                Some(other)
            }
            Some(_) => {
                self.streak += 1;
                Some(urgent)
            }
            None => {
                self.streak = 0;
                Some(urgent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates queues of (priority, seqs) drained through `Fairness`; returns the seqs in
    /// the order taken.
    fn drain(mut queues: Vec<(u8, Vec<u64>)>) -> Vec<u64> {
        let mut fairness = Fairness::default();
        let mut taken = Vec::new();
        loop {
            let heads: Vec<(usize, (u8, u64))> =
                queues.iter().enumerate().filter_map(|(i, (p, q))| q.first().map(|s| (i, (*p, *s)))).collect();
            let just: Vec<(u8, u64)> = heads.iter().map(|h| h.1).collect();
            let Some(pick) = fairness.pick(&just) else { return taken };
            let queue = heads[pick].0;
            taken.push(queues[queue].1.remove(0));
        }
    }

    #[test]
    fn most_urgent_queue_goes_first() {
        assert_eq!(drain(vec![(10, vec![1, 2, 3]), (0, vec![4, 5])]), vec![4, 5, 1, 2, 3]);
    }

    #[test]
    fn less_urgent_queues_get_one_slot_in_nine() {
        let urgent: Vec<u64> = (100..120).collect();
        let order = drain(vec![(0, urgent), (5, vec![1, 2, 3])]);
        assert_eq!(&order[..9], &[100, 101, 102, 103, 104, 105, 106, 107, 1]);
        assert_eq!(order[17], 2);
    }

    #[test]
    fn the_oldest_waiting_record_of_the_others_goes_when_the_streak_ends() {
        let urgent: Vec<u64> = (100..120).collect();
        // Priority 9 holds an older record than priority 5: it is the one served.
        let order = drain(vec![(0, urgent), (5, vec![50]), (9, vec![7])]);
        assert_eq!(order[8], 7);
        assert_eq!(order[17], 50);
    }

    #[test]
    fn nothing_waiting_is_none() {
        assert_eq!(Fairness::default().pick(&[]), None);
    }
}

/// One endpoint's priority queues read as one stream: the next record by [`Fairness`], and
/// the queue (store endpoint id) it came from, whose checkpoint its acknowledgement advances.
pub struct MergedReader {
    queues: Vec<PriorityQueue>,
    fairness: Fairness,
}

struct PriorityQueue {
    priority: u8,
    id: u16,
    reader: crate::store::EndpointReader,
    head: Option<std::sync::Arc<crate::store::StoredRecord>>,
}

impl MergedReader {
    /// `queues`: (priority, store endpoint id) of every queue of the endpoint.
    pub fn new(store: &crate::store::Store, queues: &[(u8, u16)]) -> MergedReader {
        let queues = queues
            .iter()
            .map(|&(priority, id)| PriorityQueue { priority, id, reader: store.reader(id), head: None })
            .collect();
        MergedReader { queues, fairness: Fairness::default() }
    }

    fn fill(&mut self, now_unix_ms: u64) -> Result<(), crate::store::StoreError> {
        for queue in &mut self.queues {
            if queue.head.is_none() {
                queue.head = queue.reader.next(now_unix_ms)?;
            }
        }
        Ok(())
    }

    /// Whether a record is waiting (reads ahead one record per queue).
    pub fn has_next(&mut self, now_unix_ms: u64) -> Result<bool, crate::store::StoreError> {
        self.fill(now_unix_ms)?;
        Ok(self.queues.iter().any(|q| q.head.is_some()))
    }

    /// The next record to send and the id of its queue; `None` when every queue is drained.
    pub fn next(
        &mut self,
        now_unix_ms: u64,
    ) -> Result<Option<(u16, std::sync::Arc<crate::store::StoredRecord>)>, crate::store::StoreError> {
        self.fill(now_unix_ms)?;
        let waiting: Vec<usize> = (0..self.queues.len()).filter(|&i| self.queues[i].head.is_some()).collect();
        let heads: Vec<(u8, u64)> = waiting
            .iter()
            .map(|&i| (self.queues[i].priority, self.queues[i].head.as_ref().map_or(0, |r| r.seq)))
            .collect();
        let Some(pick) = self.fairness.pick(&heads) else { return Ok(None) };
        let queue = &mut self.queues[waiting[pick]];
        Ok(queue.head.take().map(|record| (queue.id, record)))
    }
}
