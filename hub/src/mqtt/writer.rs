//! The writing half of a connection: acknowledgements from the reader, deliveries from the
//! identity's mailbox (at most `max_inflight` unacknowledged at a time), and the identity's
//! control lane (twin responses, desired patches, method calls), turned into MQTT here.
//!
//! It runs beside the reading half in the connection's one task (joined, not spawned), each
//! polled whenever the task wakes, so a publisher waiting on the store never stops its own
//! connection from receiving. A delivery's topic is built here from what the core hands over
//! (input name and property bag, [`crate::topic::input_topic_parts`]); an acknowledged delivery
//! advances its endpoint's checkpoint in order through the core's [`InFlight`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use mqttbytes::QoS;
use smol::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;
use crate::topic;

use crate::broker::inflight::InFlight;
use crate::broker::queue::Queue;
use crate::broker::session::{Control, Delivery, Settle, Slot};
use crate::broker::Broker;

use super::codec;

/// Items written per wake-up before the buffer goes to the socket: enough to fill a TCP
/// segment train under load, small enough that acknowledgements are not delayed.
const WRITE_BATCH_MAX: usize = 64;
/// Bytes gathered before a socket write. A bigger write buffer than this is given back after
/// a burst, so an idle connection does not keep a burst-sized allocation.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Delivery payloads at least this large are not copied into the write buffer: the socket
/// write takes them from the store's shared buffer (header and payloads in one `writev`).
const SPLICE_MIN_BYTES: usize = 4096;
/// Shared payloads gathered per socket write (at the bound the buffer goes to the socket).
const SPLICED_MAX: usize = 16;

/// One "delivered without its properties" line per interval.
static TOPIC_TOO_LONG: tinyedge_platform::logger::RateLimit =
    tinyedge_platform::logger::RateLimit::new(tinyedge_platform::logger::RATE_LIMIT_INTERVAL);

/// PUBACKs waiting for the store to make their message durable. The client's own in-flight
/// window keeps this small; at the bound the writer stops taking requests from the reader, which
/// then stops reading the client (back-pressure) until the disk catches up.
const PENDING_PUBACKS_MAX: usize = 64;

/// One half of a connection (reader or writer) as the connection's task sees it: whether it
/// waits with nothing in progress, and how many times it stopped waiting. Both halves run in
/// one task; the atomics only make the state shareable within it.
#[derive(Debug, Default)]
pub struct HalfIdle(AtomicU32);

impl HalfIdle {
    /// Notes the outcome of a poll of the half's wait: `waiting` (pending) or woken.
    pub fn note(&self, waiting: bool) {
        let value = self.0.load(Ordering::Relaxed);
        let was_waiting = value & 1 == 1;
        if waiting && !was_waiting {
            self.0.store(value | 1, Ordering::Relaxed);
        } else if !waiting && was_waiting {
            self.0.store((value & !1).wrapping_add(2), Ordering::Relaxed);
        }
    }

    pub fn waiting(&self) -> bool {
        self.0.load(Ordering::Relaxed) & 1 == 1
    }

    /// Changes whenever the half stops or starts waiting.
    pub fn stamp(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the reader asks the writer to do.
#[derive(Debug)]
pub enum Ctrl {
    /// PUBACK `pkid` once the store's record `seq` is durable (0: nothing to wait for). In
    /// order: MQTT wants PUBACKs in the order of the PUBLISHes.
    PubAckAfter(u16, u64),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16),
    PingResp,
    /// The client acknowledged delivery `pkid`.
    Acked(u16),
    /// Inputs subscription granted (with how it settles), or removed (`None`).
    Inputs(Option<Settle>),
}

/// Everything the writer keeps between wake-ups. It lives in the connection's task and is
/// lent to [`Writer::run`] while the connection is busy (see `mqtt::connection`, where an idle
/// connection drops the future that reads and writes and keeps only this).
pub struct Writer<W> {
    pub sink: W,
    /// Limits, metrics, the store (durability of accepted messages, checkpoints of deliveries)
    /// and the twins (where desired patches come from).
    pub broker: Arc<Broker>,
    pub slot: Arc<Slot>,
    pub inputs: Option<Settle>,
    /// The identity's client id (`d` or `d/m`): its twin's name.
    pub client_id: Box<str>,
    /// Bytes to write first (the CONNACK).
    pub out: BytesMut,
    /// Payloads written from their shared buffers, each after `out`'s first `.0` bytes (at
    /// most [`SPLICED_MAX`]; given back after the write that sent them).
    pub spliced: Vec<(usize, Bytes)>,
    /// The newest desired `$version` in `out` (a desired patch or a GET answer): recorded as
    /// delivered to the client once `out` is on the socket.
    pub desired_written: Option<u64>,
}

enum Event {
    Ctrl(Option<Ctrl>),
    Delivery(Delivery),
    Control(Control),
    /// The oldest pending PUBACK's record is durable (or could not be made so).
    Durable(bool),
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Runs until the reader closes `ctrl` or the socket fails. Whatever was not acknowledged
    /// stays in the store and comes again on the next connection.
    ///
    /// `idle` is set while the writer waits with nothing in progress (no PUBACK waiting for
    /// the disk, nothing unwritten): dropping the future then loses nothing, as everything
    /// that outlives a wait is in `self` and `inflight`.
    pub fn run<'a>(
        &'a mut self,
        ctrl: &'a Queue<Ctrl>,
        inflight: &'a mut InFlight,
        idle: &'a HalfIdle,
    ) -> impl std::future::Future<Output = ()> + Send + 'a
    where
        W: Send,
    {
        async move {
            let mut pubacks: VecDeque<(u16, u64)> = VecDeque::new();
            // The ctrl queue's, the control lane's and the mailbox's.
            let mut listeners: [Option<event_listener::EventListener>; 3] = [None, None, None];
            loop {
                self.release_pubacks(&mut pubacks);
                if !self.out.is_empty() {
                    let written = if self.spliced.is_empty() {
                        self.sink.write_all(&self.out).await
                    } else {
                        write_spliced(&mut self.sink, &self.out, &self.spliced).await
                    };
                    if written.is_err() || self.sink.flush().await.is_err() {
                        break;
                    }
                    if !self.spliced.is_empty() {
                        self.spliced = Vec::new();
                    }
                    inflight.flush_written(&self.broker.commit);
                    self.record_desired_delivered();
                    self.out.clear();
                    if self.out.capacity() > WRITE_BUFFER_BYTES {
                        self.out = BytesMut::new();
                    }
                }
                // Boxed, and only while a PUBACK waits: the store's wait future is large, and an
                // idle connection's task should not be sized for it.
                let mut durable: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> =
                    pubacks.front().map(|&(_, seq)| {
                        let store = self.broker.router.store();
                        Box::pin(async move { store.durable(seq).await.is_ok() })
                            as std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>
                    });
                let take_ctrl = pubacks.len() < PENDING_PUBACKS_MAX;
                let take_delivery = self.can_take(inflight);
                // One poll over every source, in this order, with nothing kept across waits but
                // the queues' hold of this task's waker: no future per source.
                let slot = &self.slot;
                let waits_for_disk = durable.is_some();
                let event = std::future::poll_fn(|cx| {
                    let polled = 'polled: {
                        if let Some(wait) = durable.as_mut() {
                            if let Poll::Ready(ok) = wait.as_mut().poll(cx) {
                                break 'polled Poll::Ready(Event::Durable(ok));
                            }
                        }
                        if take_ctrl {
                            if let Poll::Ready(item) = ctrl.poll_pop(cx, &mut listeners[0]) {
                                break 'polled Poll::Ready(Event::Ctrl(item));
                            }
                        }
                        // Lanes and mailboxes are never closed (`Ready(None)`): such a source is
                        // left out.
                        if let Poll::Ready(Some(control)) = slot.control.poll_pop(cx, &mut listeners[1]) {
                            break 'polled Poll::Ready(Event::Control(control));
                        }
                        if take_delivery {
                            if let Poll::Ready(Some(delivery)) = slot.mailbox.poll_pop(cx, &mut listeners[2]) {
                                break 'polled Poll::Ready(Event::Delivery(delivery));
                            }
                        }
                        Poll::Pending
                    };
                    // Idle: waiting, and nothing waits for the disk (nothing pending in `ctrl`
                    // either: it was just polled).
                    idle.note(polled.is_pending() && !waits_for_disk);
                    polled
                })
                .await;
                drop(durable);
                if let Event::Durable(ok) = event {
                    if !ok {
                        // The disk could not make it durable: no PUBACK, the client sends it again.
                        if let Some((pkid, seq)) = pubacks.pop_front() {
                            log::warn!(
                                "message {seq} (packet {pkid}) not acknowledged: the store could not make it durable"
                            );
                            Metrics::inc(&self.broker.metrics.store_errors);
                        }
                    }
                    continue;
                }
                if let Event::Ctrl(Some(Ctrl::PubAckAfter(pkid, seq))) = event {
                    pubacks.push_back((pkid, seq));
                    continue;
                }
                if !self.handle(event, inflight) {
                    break;
                }
                // Batch whatever else is ready, without waiting.
                for _ in 0..WRITE_BATCH_MAX {
                    if pubacks.len() < PENDING_PUBACKS_MAX {
                        if let Some(c) = ctrl.try_pop() {
                            if let Ctrl::PubAckAfter(pkid, seq) = c {
                                pubacks.push_back((pkid, seq));
                            } else if !self.handle(Event::Ctrl(Some(c)), inflight) {
                                break;
                            }
                            continue;
                        }
                    }
                    if self.pending_bytes() >= WRITE_BUFFER_BYTES || self.spliced.len() >= SPLICED_MAX {
                        break;
                    }
                    if let Some(control) = self.slot.control.try_pop() {
                        self.send_control(control, inflight);
                        continue;
                    }
                    if !self.can_take(inflight) {
                        break;
                    }
                    match self.slot.mailbox.try_pop() {
                        Some(d) => {
                            self.handle(Event::Delivery(d), inflight);
                        }
                        None => break,
                    }
                }
            }
            // Tell the reader, if it is still reading, that nothing more gets written.
            idle.note(false);
            ctrl.close();
        }
    }

    /// Bytes waiting for the socket: the buffer and the payloads spliced into it.
    fn pending_bytes(&self) -> usize {
        self.out.len() + self.spliced.iter().map(|(_, payload)| payload.len()).sum::<usize>()
    }

    /// Writes every pending PUBACK whose record is already durable, in order.
    /// A message whose fsync failed gets no PUBACK (the client sends it again).
    fn release_pubacks(&mut self, pubacks: &mut VecDeque<(u16, u64)>) {
        while let Some(&(pkid, seq)) = pubacks.front() {
            match self.broker.router.store().durable_outcome(seq) {
                None => break,
                Some(Ok(())) => codec::put_puback(&mut self.out, pkid),
                Some(Err(error)) => {
                    log::warn!("message {seq} (packet {pkid}) not acknowledged: {error}");
                    Metrics::inc(&self.broker.metrics.store_errors);
                }
            }
            pubacks.pop_front();
        }
    }

    pub(super) fn can_take(&self, inflight: &InFlight) -> bool {
        self.inputs.is_some() && inflight.len() < self.broker.limits.max_inflight
    }

    /// Applies one event; false when the writer must stop.
    fn handle(&mut self, event: Event, inflight: &mut InFlight) -> bool {
        match event {
            Event::Ctrl(None) => return false,
            Event::Durable(_) => {}
            Event::Ctrl(Some(ctrl)) => match ctrl {
                // Normally queued in `run`; here only if nothing waits for the disk.
                Ctrl::PubAckAfter(pkid, _) => codec::put_puback(&mut self.out, pkid),
                Ctrl::SubAck(pkid, codes) => codec::put_suback(&mut self.out, pkid, &codes),
                Ctrl::UnsubAck(pkid) => codec::put_unsuback(&mut self.out, pkid),
                Ctrl::PingResp => codec::put_pingresp(&mut self.out),
                Ctrl::Acked(pkid) => inflight.acked(pkid, &self.broker.commit),
                Ctrl::Inputs(qos) => self.inputs = qos,
            },
            Event::Delivery(d) => self.send(d, inflight),
            Event::Control(control) => self.send_control(control, inflight),
        }
        true
    }

    /// The desired version in the buffer just written reached the client: remember it (the
    /// twin file is written and fsynced off the executor thread; an older version than one
    /// already recorded is ignored, so order does not matter).
    fn record_desired_delivered(&mut self) {
        if let Some(version) = self.desired_written.take() {
            let (twins, id) = (self.broker.twins.clone(), self.client_id.clone());
            tinyedge_platform::rt::spawn(smol::unblock(move || {
                if let Err(error) = twins.mark_delivered(&id, version) {
                    log::debug!("twin of {id}: {error}");
                }
            }))
            .detach();
        }
    }

    fn desired_in_buffer(&mut self, version: u64) {
        self.desired_written = Some(self.desired_written.map_or(version, |v| v.max(version)));
    }

    /// Writes one control-lane item as a QoS 0 PUBLISH (as IoT Hub sends twin responses and
    /// method calls), if the client subscribed to its topic; counted and dropped otherwise.
    fn send_control(&mut self, control: Control, inflight: &mut InFlight) {
        if matches!(control, Control::DesiredChanged) {
            // Before reading the subscriptions: a subscription made meanwhile queues a new
            // notice instead of finding this one still pending.
            self.slot.desired_taken();
        }
        let subscriptions = self.slot.state().subscriptions;
        let mut topic = String::new();
        let (subscribed, body) = match control {
            Control::TwinResponse { status, rid, version, body, desired_version } => {
                topic::twin_response_topic_into(status, &rid, version, &mut topic);
                if let (true, Some(desired)) = (subscriptions.twin_responses, desired_version) {
                    self.desired_in_buffer(desired);
                }
                (subscriptions.twin_responses, body)
            }
            Control::DesiredChanged => {
                if !subscriptions.desired {
                    return;
                }
                let Some((version, body)) = self.broker.twins.pending_desired(&self.client_id).and_then(|patch| {
                    let version = patch.get("$version").and_then(serde_json::Value::as_u64)?;
                    Some((version, serde_json::to_vec(&patch).ok()?))
                }) else {
                    return;
                };
                topic::desired_patch_topic_into(version, &mut topic);
                self.desired_in_buffer(version);
                Metrics::inc(&self.broker.metrics.twin_desired_patches);
                (true, bytes::Bytes::from(body))
            }
            Control::MethodRequest { name, rid, payload } => {
                topic::method_request_topic_into(&name, &rid, &mut topic);
                (subscriptions.methods, payload)
            }
            Control::DeviceBound { bag, payload, done } => {
                if !subscriptions.device_bound {
                    // Not completed: the cloud delivers it again once the device subscribes.
                    Metrics::inc(&self.broker.metrics.control_unsubscribed);
                    return;
                }
                topic::device_bound_topic_into(&self.client_id, &bag, &mut topic);
                let pkid = inflight.next_id();
                codec::put_publish(&mut self.out, &topic, QoS::AtLeastOnce, pkid, false, &payload);
                inflight.sent_completion(pkid, done);
                return;
            }
        };
        if !subscribed {
            Metrics::inc(&self.broker.metrics.control_unsubscribed);
            return;
        }
        codec::put_publish(&mut self.out, &topic, QoS::AtMostOnce, 0, false, &body);
    }

    fn send(&mut self, delivery: Delivery, inflight: &mut InFlight) {
        // Made for an earlier connection or subscription: the pump starts over from the
        // checkpoint for this one, so sending it would duplicate it.
        if delivery.origin.is_some_and(|o| o.generation != self.slot.generation()) {
            return;
        }
        let settle = self.inputs.unwrap_or(Settle::AtMostOnce);
        Metrics::inc(&self.broker.metrics.deliveries_sent);
        if !delivery.dup && delivery.enqueued_unix_ms > 0 {
            let now = tinyedge_platform::rt::now_unix_ms();
            Metrics::inc(&self.broker.metrics.process_modules_count);
            Metrics::add(&self.broker.metrics.process_modules_ms, now.saturating_sub(delivery.enqueued_unix_ms));
        }
        if let Some(origin) = delivery.origin {
            self.slot.note_sent(origin.endpoint, origin.seq);
        }
        // Deliveries go to modules: the client id is `d/m`. The topic is written into the
        // buffer piece by piece (`devices/{d}/modules/{m}/inputs/{input}/{bag}`).
        let (device, module) = self.client_id.split_once('/').unwrap_or((&self.client_id, ""));
        let (topic, bag_left_out) =
            topic::input_topic_parts(device, module, &delivery.input, delivery.properties(), codec::TOPIC_BYTES_MAX);
        if bag_left_out {
            if let Some(held_back) = TOPIC_TOO_LONG.check() {
                log::warn!(
                    "message {} to {}/{}: its properties ({} bytes) do not fit an MQTT topic beside the input's name; delivered without them ({held_back} more since the last such line)",
                    delivery.record.seq,
                    self.client_id,
                    delivery.input,
                    delivery.properties().len()
                );
            }
        }
        let (qos, pkid, dup) = match settle {
            Settle::AtMostOnce => (QoS::AtMostOnce, 0, false),
            Settle::AtLeastOnce => (QoS::AtLeastOnce, inflight.next_id(), delivery.dup),
        };
        let payload = delivery.payload();
        if payload.len() >= SPLICE_MIN_BYTES && self.spliced.len() < SPLICED_MAX {
            codec::put_publish_head(&mut self.out, &topic, qos, pkid, dup, payload.len(), 0);
            self.spliced.push((self.out.len(), payload.clone()));
        } else {
            codec::put_publish_parts(&mut self.out, &topic, qos, pkid, dup, payload);
        }
        match settle {
            // At most once: done once the buffer holding it is on the socket.
            Settle::AtMostOnce => {
                if let Some(origin) = delivery.origin {
                    inflight.written(origin);
                }
            }
            Settle::AtLeastOnce => inflight.sent(pkid, delivery.origin),
        }
    }
}

/// Writes `out` with the `spliced` payloads in place (a `writev` of up to `2 × SPLICED_MAX + 1`
/// pieces at a time, resumed after a partial write).
async fn write_spliced<W: AsyncWrite + Unpin>(
    sink: &mut W,
    out: &[u8],
    spliced: &[(usize, Bytes)],
) -> std::io::Result<()> {
    let total = out.len() + spliced.iter().map(|(_, payload)| payload.len()).sum::<usize>();
    let mut done = 0;
    while done < total {
        let n = std::future::poll_fn(|cx| {
            let mut slices = [std::io::IoSlice::new(&[]); 2 * SPLICED_MAX + 1];
            let count = pieces_from(out, spliced, done, &mut slices);
            std::pin::Pin::new(&mut *sink).poll_write_vectored(cx, &slices[..count])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// The non-empty pieces of `out` with `spliced` payloads in place, from byte `skip` of the
/// whole on, into `slices` (which holds `2 × spliced.len() + 1`); returns how many.
fn pieces_from<'a>(
    out: &'a [u8],
    spliced: &'a [(usize, Bytes)],
    mut skip: usize,
    slices: &mut [std::io::IoSlice<'a>],
) -> usize {
    let mut count = 0;
    let mut push = |piece: &'a [u8], skip: &mut usize| {
        if *skip >= piece.len() {
            *skip -= piece.len();
        } else {
            slices[count] = std::io::IoSlice::new(&piece[*skip..]);
            *skip = 0;
            count += 1;
        }
    };
    let mut start = 0;
    for (at, payload) in spliced {
        push(&out[start..*at], &mut skip);
        push(payload, &mut skip);
        start = *at;
    }
    push(&out[start..], &mut skip);
    count
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    #[test]
    fn the_pieces_from_any_offset_are_the_stream_with_the_payloads_in_place() {
        let out = b"HEAD1head2tail".to_vec();
        let spliced = vec![(5, Bytes::from_static(b"<payload one>")), (10, Bytes::from_static(b"<two>"))];
        let whole: Vec<u8> = [&out[..5], b"<payload one>", &out[5..10], b"<two>", &out[10..]].concat();
        for skip in 0..=whole.len() {
            let mut slices = [std::io::IoSlice::new(&[]); 2 * SPLICED_MAX + 1];
            let count = pieces_from(&out, &spliced, skip, &mut slices);
            let joined: Vec<u8> = slices[..count].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(joined, whole[skip..], "from byte {skip}");
            assert!(slices[..count].iter().all(|s| !s.is_empty()), "no empty piece from byte {skip}");
        }
    }

    #[test]
    fn a_partial_vectored_write_is_resumed_where_it_stopped() {
        // A sink that takes at most 3 bytes of its first buffer per call.
        struct Trickle(Vec<u8>);
        impl AsyncWrite for Trickle {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let out = b"ab|cd|ef".to_vec();
        let spliced = vec![(3, Bytes::from_static(b"PAYLOAD-1")), (6, Bytes::from_static(b"PAYLOAD-2"))];
        let mut sink = Trickle(Vec::new());
        smol::block_on(write_spliced(&mut sink, &out, &spliced)).expect("written");
        assert_eq!(sink.0, b"ab|PAYLOAD-1cd|PAYLOAD-2ef");
    }
}
