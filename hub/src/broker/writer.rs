//! The writing half of a connection: acknowledgements from the reader, and deliveries from the
//! identity's input queue, at most `max_inflight` unacknowledged at a time.
//!
//! It runs as its own task so that a publisher held back by a full queue elsewhere never stops
//! its own connection from receiving.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use mqttbytes::QoS;
use smol::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;

use super::codec;
use super::queue::Queue;
use super::session::{Delivery, Slot};

/// Items written per wake-up before the buffer goes to the socket: enough to fill a TCP
/// segment train under load, small enough that acknowledgements are not delayed.
const WRITE_BATCH_MAX: usize = 64;
/// Bytes gathered before a socket write. A bigger write buffer than this is given back after
/// a burst, so an idle connection does not keep a burst-sized allocation.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// What the reader asks the writer to do.
#[derive(Debug)]
pub enum Ctrl {
    PubAck(u16),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16),
    PingResp,
    /// The client acknowledged delivery `pkid`.
    Acked(u16),
    /// Inputs subscription granted with this QoS, or removed (`None`).
    Inputs(Option<QoS>),
}

/// Everything the writer needs.
pub struct Writer<W> {
    pub sink: W,
    /// Closed by the reader when the connection ends; closed here when the socket fails.
    pub ctrl: Arc<Queue<Ctrl>>,
    pub slot: Arc<Slot>,
    pub inputs: Option<QoS>,
    pub max_inflight: usize,
    pub metrics: Arc<Metrics>,
    /// Bytes to write first (the CONNACK).
    pub out: BytesMut,
}

enum Event {
    Ctrl(Option<Ctrl>),
    Delivery(Delivery),
}

struct InFlight {
    list: VecDeque<(u16, Delivery)>,
    next_pkid: u16,
}

impl InFlight {
    fn pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.list.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Runs until the reader closes the control channel or the socket fails; then gives the
    /// unacknowledged deliveries back to the slot.
    pub async fn run(mut self) {
        let mut inflight = InFlight { list: VecDeque::new(), next_pkid: 1 };
        let mut redeliver: VecDeque<Delivery> = std::mem::take(&mut self.slot.state().unacked);
        loop {
            if !self.out.is_empty() {
                if self.sink.write_all(&self.out).await.is_err() || self.sink.flush().await.is_err() {
                    break;
                }
                self.out.clear();
                if self.out.capacity() > WRITE_BUFFER_BYTES {
                    self.out = BytesMut::new();
                }
            }
            let can_take = |inputs: Option<QoS>, inflight: &InFlight, max: usize| inputs.is_some() && inflight.list.len() < max;
            if can_take(self.inputs, &inflight, self.max_inflight) {
                if let Some(d) = redeliver.pop_front() {
                    self.send(d, true, &mut inflight);
                    continue;
                }
            }
            let event = if can_take(self.inputs, &inflight, self.max_inflight) {
                let ctrl = async { Event::Ctrl(self.ctrl.pop().await) };
                let slot = self.slot.clone();
                let delivery = async move {
                    match slot.mailbox.pop().await {
                        Some(d) => Event::Delivery(d),
                        // Mailboxes are never closed; park if one ever were.
                        None => smol::future::pending().await,
                    }
                };
                smol::future::or(ctrl, delivery).await
            } else {
                Event::Ctrl(self.ctrl.pop().await)
            };
            if !self.handle(event, &mut inflight) {
                break;
            }
            // Batch whatever else is ready, without waiting.
            for _ in 0..WRITE_BATCH_MAX {
                if let Some(c) = self.ctrl.try_pop() {
                    if !self.handle(Event::Ctrl(Some(c)), &mut inflight) {
                        break;
                    }
                    continue;
                }
                if !can_take(self.inputs, &inflight, self.max_inflight) || self.out.len() >= WRITE_BUFFER_BYTES {
                    break;
                }
                match self.slot.mailbox.try_pop() {
                    Some(d) => {
                        self.handle(Event::Delivery(d), &mut inflight);
                    }
                    None => break,
                }
            }
        }
        // Tell the reader, if it is still reading, that nothing more gets written.
        self.ctrl.close();
        // Give back what the client never acknowledged, ahead of anything queued since.
        let mut state = self.slot.state();
        let mut back: VecDeque<Delivery> = inflight.list.into_iter().map(|(_, d)| d).collect();
        back.extend(redeliver);
        back.extend(std::mem::take(&mut state.unacked));
        state.unacked = back;
    }

    /// Applies one event; false when the writer must stop.
    fn handle(&mut self, event: Event, inflight: &mut InFlight) -> bool {
        match event {
            Event::Ctrl(None) => return false,
            Event::Ctrl(Some(ctrl)) => match ctrl {
                Ctrl::PubAck(pkid) => codec::put_puback(&mut self.out, pkid),
                Ctrl::SubAck(pkid, codes) => codec::put_suback(&mut self.out, pkid, &codes),
                Ctrl::UnsubAck(pkid) => codec::put_unsuback(&mut self.out, pkid),
                Ctrl::PingResp => codec::put_pingresp(&mut self.out),
                Ctrl::Acked(pkid) => {
                    if let Some(pos) = inflight.list.iter().position(|(p, _)| *p == pkid) {
                        inflight.list.remove(pos);
                    }
                }
                Ctrl::Inputs(qos) => self.inputs = qos,
            },
            Event::Delivery(d) => self.send(d, false, inflight),
        }
        true
    }

    fn send(&mut self, delivery: Delivery, dup: bool, inflight: &mut InFlight) {
        let qos = self.inputs.unwrap_or(QoS::AtMostOnce);
        Metrics::inc(&self.metrics.deliveries_sent);
        if qos == QoS::AtMostOnce {
            codec::put_publish(&mut self.out, &delivery.topic, qos, 0, false, &delivery.payload);
        } else {
            let pkid = inflight.pkid();
            codec::put_publish(&mut self.out, &delivery.topic, qos, pkid, dup, &delivery.payload);
            inflight.list.push_back((pkid, delivery));
        }
    }
}
