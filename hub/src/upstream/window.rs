//! The in-flight window: QoS 1 messages handed to the cloud and not yet released, with the
//! in-order acknowledgement rule.
//!
//! PUBACKs may arrive in any order (MQTT only promises ordering per topic on some brokers, and
//! a reconnect reshuffles everything), but the outbox keeps one checkpoint: "everything up to
//! `seq` is done". So an entry stays here, marked acknowledged, until every entry before it is
//! acknowledged too; only then is the checkpoint moved. The window is kept across reconnects:
//! what it still holds unacknowledged is exactly what must be sent again. Pure: no IO, no clock.

use std::collections::VecDeque;

use bytes::Bytes;

/// Largest window a configuration may ask for. The window holds up to this many messages of up
/// to 256 KiB in memory for retransmission (32 MiB worst case, kilobytes for typical telemetry),
/// and it must stay far below the 65,535 MQTT packet ids so an id is never in use twice.
pub const WINDOW_MAX: usize = 128;
const _: () = assert!(WINDOW_MAX < PKID_MAX as usize / 2);

/// Window entries are numbered 1..=`PKID_MAX`; the ids above are left for confirmed
/// publishes outside the window ([`CONFIRMED_PKIDS`]) and for SUBSCRIBE, so neither ever shares
/// an id with a message in flight.
const PKID_MAX: u16 = u16::MAX - 17;
/// Packet ids of publishes sent outside the window and confirmed by their PUBACK (the agent's
/// diagnostics), one connection at a time: at most 16 in flight.
pub const CONFIRMED_PKIDS: std::ops::RangeInclusive<u16> = (u16::MAX - 16)..=(u16::MAX - 1);
/// The packet id of the link's SUBSCRIBE.
pub const SUBSCRIBE_PKID: u16 = u16::MAX;

/// One message in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// The MQTT packet id it was (or will be) sent with; never 0.
    pub pkid: u16,
    pub topic: String,
    pub payload: Bytes,
    /// Written to a connection at least once: a resend carries the DUP flag.
    pub sent: bool,
    /// PUBACKed (or skipped): waiting only for the entries before it.
    pub acked: bool,
    /// Never sent because it cannot be delivered (see [`Window::push_skipped`]).
    pub skipped: bool,
}

/// Messages released from the front of the window by one acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The new checkpoint: this seq and everything before it is done.
    pub through_seq: u64,
    /// How many entries left the window …
    pub count: usize,
    /// … of which this many were skipped rather than acknowledged.
    pub skipped: usize,
}

/// At most `capacity` entries, in seq order.
#[derive(Debug)]
pub struct Window {
    entries: VecDeque<Entry>,
    capacity: usize,
    /// The id the next entry gets; cycles through 1..=65535.
    next_pkid: u16,
}

impl Window {
    /// `capacity` is clamped to 1..=[`WINDOW_MAX`] (the config check reports bad values first).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, WINDOW_MAX);
        Window { entries: VecDeque::with_capacity(capacity), capacity, next_pkid: 1 }
    }

    /// How many more messages may be taken in.
    pub fn room(&self) -> usize {
        self.capacity - self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes a message in, unsent, and returns its packet id.
    ///
    /// Panics if the window is full or `seq` does not follow the last entry: both are the
    /// caller's bugs (it asks the outbox for at most [`Window::room`] messages after the last).
    pub fn push(&mut self, seq: u64, topic: String, payload: Bytes) -> u16 {
        self.push_entry(seq, topic, payload, false)
    }

    /// [`Window::push`] for a message that may have been sent before a restart: its first
    /// write already carries the DUP flag.
    pub fn push_resent(&mut self, seq: u64, topic: String, payload: Bytes) -> u16 {
        let pkid = self.push_entry(seq, topic, payload, false);
        if let Some(entry) = self.entries.back_mut() {
            entry.sent = true;
        }
        pkid
    }

    /// Takes in a message that will never be sent (it cannot be delivered), already counted as
    /// acknowledged so it does not hold the checkpoint back. Returns what that released.
    pub fn push_skipped(&mut self, seq: u64) -> Option<Released> {
        self.push_entry(seq, String::new(), Bytes::new(), true);
        self.release()
    }

    fn push_entry(&mut self, seq: u64, topic: String, payload: Bytes, acked: bool) -> u16 {
        assert!(self.room() > 0, "window overfilled");
        assert!(!matches!(self.entries.back(), Some(last) if last.seq >= seq), "window seq {seq} out of order");
        let pkid = self.next_pkid;
        self.next_pkid = if self.next_pkid >= PKID_MAX { 1 } else { self.next_pkid + 1 };
        // While an entry lives, fewer than WINDOW_MAX others are numbered: ids cannot collide.
        debug_assert!(self.entries.iter().all(|e| e.pkid != pkid));
        self.entries.push_back(Entry { seq, pkid, topic, payload, sent: false, acked, skipped: acked });
        pkid
    }

    /// A PUBACK for `pkid`. Returns what it released, if it completed the front of the
    /// window; `None` for an unknown or repeated id (ignored: the cloud's acks are not trusted
    /// to be unique) or an ack that leaves an earlier entry still waiting.
    pub fn puback(&mut self, pkid: u16) -> Option<Released> {
        let entry = self.entries.iter_mut().find(|e| e.pkid == pkid && !e.acked)?;
        entry.acked = true;
        self.release()
    }

    /// Pops acknowledged entries off the front.
    fn release(&mut self) -> Option<Released> {
        let mut released: Option<Released> = None;
        while let Some(front) = self.entries.front() {
            if !front.acked {
                break;
            }
            let (count, skipped) = released.map_or((0, 0), |r| (r.count, r.skipped));
            released = Some(Released {
                through_seq: front.seq,
                count: count + 1,
                skipped: skipped + usize::from(front.skipped),
            });
            self.entries.pop_front();
        }
        released
    }

    /// Writes (through `write`) every entry still waiting for a PUBACK whose seq is after
    /// `after` (`None`: all of them — a fresh connection), in order, and marks them sent.
    /// `write` gets the entry and its DUP flag: set when it was written before, on this or an
    /// earlier connection.
    pub fn send_after(&mut self, after: Option<u64>, mut write: impl FnMut(&Entry, bool)) -> Sent {
        let mut sent = Sent { last_seq: after, first_time: 0 };
        for entry in self.entries.iter_mut().filter(|e| !matches!(after, Some(a) if e.seq <= a)) {
            sent.last_seq = Some(entry.seq);
            if entry.acked {
                continue;
            }
            write(entry, entry.sent);
            if !entry.sent {
                sent.first_time += 1;
                entry.sent = true;
            }
        }
        sent
    }
}

/// What [`Window::send_after`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The last seq now covered on this connection (pass it as `after` next time).
    pub last_seq: Option<u64>,
    /// Entries written for the first time ever (not resends).
    pub first_time: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_with(seqs: &[u64], capacity: usize) -> (Window, Vec<u16>) {
        let mut window = Window::new(capacity);
        let pkids = seqs.iter().map(|&s| window.push(s, format!("t/{s}"), Bytes::new())).collect();
        (window, pkids)
    }

    #[test]
    fn out_of_order_pubacks_release_only_a_complete_prefix() {
        let (mut window, pkids) = window_with(&[10, 11, 12, 13], 4);
        assert_eq!(window.puback(pkids[2]), None, "12 waits for 10 and 11");
        assert_eq!(window.puback(pkids[1]), None, "11 waits for 10");
        assert_eq!(window.puback(pkids[0]), Some(Released { through_seq: 12, count: 3, skipped: 0 }));
        assert_eq!(window.len(), 1);
        assert_eq!(window.puback(pkids[3]), Some(Released { through_seq: 13, count: 1, skipped: 0 }));
        assert!(window.is_empty());
    }

    #[test]
    fn repeated_and_unknown_pubacks_are_ignored() {
        let (mut window, pkids) = window_with(&[1, 2], 2);
        assert_eq!(window.puback(pkids[1]), None);
        assert_eq!(window.puback(pkids[1]), None, "a repeated ack changes nothing");
        assert_eq!(window.puback(999), None);
        assert_eq!(window.len(), 2);
        assert_eq!(window.puback(pkids[0]), Some(Released { through_seq: 2, count: 2, skipped: 0 }));
    }

    #[test]
    fn seqs_may_have_gaps_and_the_checkpoint_follows_them() {
        let (mut window, pkids) = window_with(&[5, 9, 40], 3);
        assert_eq!(window.puback(pkids[0]), Some(Released { through_seq: 5, count: 1, skipped: 0 }));
        assert_eq!(window.puback(pkids[2]), None);
        assert_eq!(window.puback(pkids[1]), Some(Released { through_seq: 40, count: 2, skipped: 0 }));
    }

    #[test]
    fn room_is_bounded_by_capacity_including_acked_entries_behind_a_gap() {
        let (mut window, pkids) = window_with(&[1, 2, 3], 3);
        assert_eq!(window.room(), 0);
        window.puback(pkids[2]);
        assert_eq!(window.room(), 0, "3 is acked but still held behind 1 and 2");
        window.puback(pkids[0]);
        assert_eq!(window.room(), 1);
        assert_eq!(Window::new(0).room(), 1);
        assert_eq!(Window::new(usize::MAX).room(), WINDOW_MAX);
    }

    #[test]
    fn skipped_messages_do_not_hold_the_checkpoint_back() {
        let mut window = Window::new(4);
        assert_eq!(window.push_skipped(1), Some(Released { through_seq: 1, count: 1, skipped: 1 }));
        let pkid = window.push(2, "t".into(), Bytes::new());
        assert_eq!(window.push_skipped(3), None, "3 waits behind 2");
        assert_eq!(window.puback(pkid), Some(Released { through_seq: 3, count: 2, skipped: 1 }));
    }

    #[test]
    fn packet_ids_wrap_without_zero_or_the_subscribe_id() {
        let mut window = Window::new(2);
        let mut last = 0;
        for seq in 1..=140_000u64 {
            let pkid = window.push(seq, String::new(), Bytes::new());
            assert!(pkid != 0 && pkid != SUBSCRIBE_PKID && pkid != last, "pkid {pkid}");
            window.puback(pkid);
            last = pkid;
        }
        assert!(window.is_empty());
    }

    #[test]
    fn a_new_connection_resends_only_unacked_entries_with_dup() {
        let (mut window, pkids) = window_with(&[1, 2, 3], 4);
        let mut written = Vec::new();
        let sent = window.send_after(None, |e, dup| written.push((e.seq, dup)));
        assert_eq!(written, [(1, false), (2, false), (3, false)]);
        assert_eq!(sent, Sent { last_seq: Some(3), first_time: 3 });
        window.puback(pkids[1]);
        window.push(4, "t/4".into(), Bytes::new());
        written.clear();
        let sent = window.send_after(sent.last_seq, |e, dup| written.push((e.seq, dup)));
        assert_eq!(written, [(4, false)], "only the new entry on the same connection");
        assert_eq!(sent.last_seq, Some(4));
        written.clear();
        let sent = window.send_after(None, |e, dup| written.push((e.seq, dup)));
        assert_eq!(written, [(1, true), (3, true), (4, true)], "2 was acked: not resent");
        assert_eq!(sent, Sent { last_seq: Some(4), first_time: 0 });
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn pushing_an_older_seq_is_a_bug() {
        let (mut window, _) = window_with(&[5], 2);
        window.push(5, String::new(), Bytes::new());
    }
}
