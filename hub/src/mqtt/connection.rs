//! One client connection: CONNECT and authentication, then one task that runs the reading
//! half (packets in, routing, acknowledgements handed to the writer) and the writing half
//! together while the connection is busy, and waits with only their kept state while it is
//! idle (see [`Session::run`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mqttbytes::v4::{Connect, LastWill, Packet, Publish, Subscribe, Unsubscribe};
use mqttbytes::{Protocol, QoS};

use smol::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tinyedge_platform::log_limited;
use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};

use crate::auth::{AuthError, Authenticated, Identity};
use crate::ingest::{self, Ingested};
use crate::message::Properties;
use crate::metrics::Metrics;
use crate::topic::{self, Inbound, SubscriptionKind};

use crate::broker::inflight::InFlight;
use crate::broker::queue::{Queue, Signal};
use crate::broker::requests;
use crate::broker::session::{Claim, Kick, Settle, Slot, Subscriptions};
use crate::broker::Broker;
use crate::listeners::permit::Permit;

use super::codec::{self, ConnectStart, DecodeError};
use super::transport::Reader;
use super::writer::{Ctrl, HalfIdle, Writer};

/// Bytes asked of the socket per read at first. Small, because the buffer stays allocated
/// while a connection is idle; a bigger packet grows it only for as long as it takes to read.
const READ_CHUNK_BYTES: usize = 2048;
/// A busy connection's reads grow (doubling each time a read fills its chunk) up to this, so a
/// stream of messages takes few reads; the buffer is given back when the client goes quiet.
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Acknowledgements the reader may queue ahead of the writer before it waits for it. The
/// channel preallocates its slots (about 40 bytes each), so this is kept small: the writer
/// drains it on every wake-up anyway.
const CTRL_QUEUE_MAX: usize = 16;
/// How long a client's own twin answer waits for room on its control lane: the writer drains it
/// continuously, so only a connection whose writer is gone waits this long.
const OWN_LANE_WAIT: Duration = Duration::from_secs(5);
/// Telemetry PUBLISHes of one socket read routed together (one store write for the batch).
/// A read of `READ_CHUNK_BYTES` holds at most about 60 small ones; the client's window bounds
/// them too.
const PUBLISH_BATCH_MAX: usize = 64;
/// Stands for "never" where a deadline cannot be represented (a token valid for centuries).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Messages the store did not take: every publisher's retries would repeat the line. (Bad input
/// is logged once per connection, unlimited: each line names its peer and what it sent, and
/// `max_unauthenticated` with `connect_timeout` bounds how many sockets can be at it at once.)
static NOT_ACCEPTED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);

/// A socket accepted under the connection limits, on its way to a CONNECT.
pub(super) struct Accepted {
    pub peer: String,
    /// Its place under the limits, given back when the connection ends.
    pub permit: Permit,
    /// When the CONNECT must be complete (accept + `connect_timeout`, TLS handshake included).
    pub deadline: Instant,
}

/// How the core settles deliveries of an inputs subscription granted with `qos` (0 or 1).
fn settle_of(qos: QoS) -> Settle {
    match qos {
        QoS::AtMostOnce => Settle::AtMostOnce,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Settle::AtLeastOnce,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The read loop's next move after decoding (see `Session::step`).
enum Step {
    /// Decode on (the packet joined the batch).
    Next,
    /// No whole packet in the buffer: read more.
    Fill,
    Ctrl(Ctrl),
    /// Handled on its own, boxed: rare, and its handling is the largest state a connection has.
    Packet(Box<Packet>),
    End(End),
}

/// Why the reading loop ended. Every kind but `Graceful` publishes the will (if any).
#[derive(Debug)]
enum End {
    /// DISCONNECT received: no will.
    Graceful,
    /// The network, the client or a takeover ended it (logged at info).
    Abnormal(String),
    /// The client broke the protocol or the hub's rules (one warning line).
    Refused(String),
    /// Ended for a reason already logged, rate-limited, where it happened (debug only).
    Logged(String),
}

enum Wake {
    Read(std::io::Result<usize>),
    KeepAliveExpired,
    TokenExpired,
    Kicked,
}

/// The deadlines of a connection's reads, with the one timer they share (a timer per deadline
/// would cost every idle connection another reactor entry). Kept across reads: a read only
/// notes the time, and the timer is moved when it fires early, so a busy connection does not
/// register and cancel a timer per read.
struct Deadlines {
    timer: smol::Timer,
    /// How long the client may stay silent, in ms (0: no keep-alive). At most 1.5 × 65535 s.
    keep_alive_ms: u32,
    /// When the SAS token expires (or, before CONNECT, the connect deadline).
    token_at: Instant,
    last_read: Instant,
}

impl Deadlines {
    fn new(keep_alive: Option<Duration>, token_at: Instant) -> Deadlines {
        let now = Instant::now();
        let keep_alive_ms = keep_alive.map_or(0, |k| u32::try_from(k.as_millis()).unwrap_or(u32::MAX).max(1));
        let mut deadlines = Deadlines { timer: smol::Timer::never(), keep_alive_ms, token_at, last_read: now };
        deadlines.timer.set_at(deadlines.next());
        deadlines
    }

    fn next(&self) -> Instant {
        match self.keep_alive() {
            Some(k) => (self.last_read + k).min(self.token_at),
            None => self.token_at,
        }
    }

    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    /// The timer fired: which deadline passed, or `None` after moving it to the next one.
    fn fired(&mut self) -> Option<Wake> {
        let now = Instant::now();
        if self.token_at <= now {
            return Some(Wake::TokenExpired);
        }
        if self.keep_alive().is_some_and(|k| self.last_read + k <= now) {
            return Some(Wake::KeepAliveExpired);
        }
        self.timer.set_at(self.next());
        None
    }
}

/// Polls the socket, the kick and the deadlines' timer once: `Ready` when `buf` holds at least
/// one more byte (after its first `start`), or something else ends the wait. The buffer is
/// grown for the read and shrunk back on every path, so no zeroes leak into it; an empty
/// buffer is only allocated once the socket is readable, so an idle connection holds none.
/// `kick_listener` is the caller's, kept between polls.
#[allow(clippy::too_many_arguments)]
fn poll_fill<R: AsyncRead + Unpin>(
    cx: &mut std::task::Context<'_>,
    reader: &mut Reader<R>,
    buf: &mut BytesMut,
    deadlines: &mut Deadlines,
    kicked: Option<&Signal>,
    kick_listener: &mut Option<event_listener::EventListener>,
    start: usize,
    chunk: usize,
) -> Poll<Wake> {
    let wake = 'woke: {
        if let Some(signal) = kicked {
            if signal.poll_wait(cx, kick_listener).is_ready() {
                break 'woke Wake::Kicked;
            }
        }
        if let Poll::Ready(read) = reader.poll_read_into(cx, buf, start, chunk) {
            break 'woke Wake::Read(read);
        }
        while Pin::new(&mut deadlines.timer).poll(cx).is_ready() {
            if let Some(expired) = deadlines.fired() {
                break 'woke expired;
            }
        }
        return Poll::Pending;
    };
    let filled = match &wake {
        Wake::Read(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(start + filled);
    if filled > 0 {
        deadlines.last_read = Instant::now();
    }
    Poll::Ready(wake)
}

/// Waits for [`poll_fill`]. `idle` (the reader's flag, after CONNECT) is set while it waits.
///
/// A function returning a `poll_fn` rather than an `async fn`: the wait is part of every
/// connection's task, and this keeps it to the references it needs.
fn fill<'a, R: AsyncRead + Unpin>(
    reader: &'a mut Reader<R>,
    buf: &'a mut BytesMut,
    deadlines: &'a mut Deadlines,
    kicked: Option<&'a Signal>,
    chunk: usize,
    idle: Option<&'a HalfIdle>,
) -> impl Future<Output = Wake> + 'a {
    let start = buf.len();
    let mut kick_listener = None;
    // One poll over the three sources, with no future for each: the wait is the socket's
    // registration, the timer and (TLS only) a listener.
    std::future::poll_fn(move |cx| {
        let polled = poll_fill(cx, reader, buf, deadlines, kicked, &mut kick_listener, start, chunk);
        if let Some(idle) = idle {
            idle.note(polled.is_pending());
        }
        polled
    })
}

/// What the reading half keeps between wake-ups (see [`Session::run`]).
struct ReadState<R> {
    reader: Reader<R>,
    /// Bytes read and not yet decoded: empty, and unallocated, while the client is quiet.
    buf: BytesMut,
    deadlines: Deadlines,
    /// Bytes asked of the next read (grows while the client is busy).
    read_chunk: usize,
    /// What ended an idle wait on the socket, the timer or the kick, for the reader to act on
    /// (bytes that came are in `buf` already).
    woke: Option<Wake>,
}

impl<R> ReadState<R> {
    /// How much the next read asks for: the rest of a packet begun in the buffer at once,
    /// however large.
    fn chunk(&self, max_packet_bytes: usize) -> usize {
        self.read_chunk.max(codec::shortfall(&self.buf).min(max_packet_bytes))
    }
}

/// How long both halves of a connection must have waited with nothing in progress, without
/// waking, before the connection drops its busy state (checked every `QUIET_BEFORE_IDLE`, so a
/// connection goes idle after one to two of these). A client that sends or receives more often
/// keeps its busy state and pays nothing per message.
const QUIET_BEFORE_IDLE: Duration = Duration::from_millis(200);

/// Whether each half of a busy connection waits with nothing in progress, and since when; the
/// connection is idle once both have waited, unwoken, for `QUIET_BEFORE_IDLE` (see
/// [`Session::run`]).
#[derive(Default)]
struct Idle {
    reader: HalfIdle,
    writer: HalfIdle,
    /// The halves' stamps when they were last found quiet for `QUIET_BEFORE_IDLE`
    /// (`u64::MAX`: not yet).
    quiet_at: AtomicU64,
}

impl Idle {
    fn reset(&self) {
        self.reader.note(false);
        self.writer.note(false);
        self.quiet_at.store(u64::MAX, Ordering::Relaxed);
    }

    fn both(&self) -> bool {
        self.reader.waiting() && self.writer.waiting()
    }

    fn stamp(&self) -> u64 {
        (u64::from(self.reader.stamp()) << 32) | u64::from(self.writer.stamp())
    }

    /// Both halves wait, and neither has woken since they were found quiet.
    fn quiet(&self) -> bool {
        self.both() && self.quiet_at.load(Ordering::Relaxed) == self.stamp()
    }

    /// Wakes every `QUIET_BEFORE_IDLE` while the connection is busy and notes when both halves
    /// have waited through a whole period unwoken. Never ends.
    async fn watch(&self) {
        let mut timer = smol::Timer::after(QUIET_BEFORE_IDLE);
        let mut last = u64::MAX;
        loop {
            (&mut timer).await;
            let stamp = self.stamp();
            if self.both() && stamp == last {
                self.quiet_at.store(stamp, Ordering::Relaxed);
            }
            last = stamp;
            timer.set_after(QUIET_BEFORE_IDLE);
        }
    }
}

/// An idle connection's wait: for bytes, the timer or the kick (noted in `rs.woke`), or for
/// work for the writer (a control-lane item, or a delivery if it may take one). Nothing is taken
/// from the queues here: the busy connection takes it.
fn idle_wait<'a, R: AsyncRead + Unpin>(
    rs: &'a mut ReadState<R>,
    slot: &'a Slot,
    take_delivery: bool,
    kicked: Option<&'a Signal>,
    max_packet_bytes: usize,
) -> impl Future<Output = ()> + 'a {
    let mut kick_listener = None;
    // Used only while another consumer's waker is the one a queue keeps (a takeover).
    let mut listeners: [Option<event_listener::EventListener>; 2] = [None, None];
    std::future::poll_fn(move |cx| {
        // The buffer is as it was after every `Pending`.
        let chunk = rs.chunk(max_packet_bytes);
        let ReadState { reader, buf, deadlines, woke, .. } = &mut *rs;
        let start = buf.len();
        if let Poll::Ready(wake) = poll_fill(cx, reader, buf, deadlines, kicked, &mut kick_listener, start, chunk) {
            *woke = Some(wake);
            return Poll::Ready(());
        }
        if slot.control.poll_ready(cx, &mut listeners[0]).is_ready() {
            return Poll::Ready(());
        }
        if take_delivery && slot.mailbox.poll_ready(cx, &mut listeners[1]).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
}

/// Takes one client through CONNECT and authentication, then spawns its session task
/// ([`Session::run`]), which serves it until it disconnects or misbehaves.
pub(super) async fn serve<R, W>(broker: Arc<Broker>, mut reader: Reader<R>, mut writer: W, accepted: Accepted)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { peer, mut permit, deadline } = accepted;
    let mut buf = BytesMut::new();
    let limits = broker.limits.clone();
    // Before authentication a packet is at most a CONNECT's size, not max_packet_bytes.
    let connect_max = limits.max_packet_bytes.min(codec::CONNECT_BYTES_MAX);

    // The first packet must be a CONNECT, complete by the deadline; its start is checked on
    // every read, so bytes that cannot be one are refused as they arrive.
    // Its timer is dropped with the loop: only the reads after CONNECT keep one.
    let mut connect_deadline = Deadlines::new(None, deadline);
    let connect = loop {
        let refusal = match codec::connect_start(&buf, connect_max) {
            Ok(ConnectStart::Unsupported(version)) => {
                log::warn!("{peer}: CONNECT refused: {version}");
                Metrics::inc(&broker.metrics.connections_refused);
                let mut out = BytesMut::new();
                codec::put_connack(&mut out, false, 1);
                let _ = writer.write_all(&out).await;
                let _ = writer.flush().await;
                return;
            }
            Ok(ConnectStart::Mqtt311) => match codec::decode(&mut buf, connect_max) {
                Ok(Some(Packet::Connect(c))) => break c,
                // connect_start saw a CONNECT; kept for completeness, naming only the type.
                Ok(Some(other)) => Some(DecodeError::NotConnect(codec::packet_kind(&other))),
                Ok(None) => None,
                Err(e) => Some(e),
            },
            Ok(ConnectStart::Pending) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = refusal {
            Metrics::inc(&broker.metrics.malformed_packets);
            log::warn!("{peer}: {e}; closed before CONNECT");
            return;
        }
        match fill(&mut reader, &mut buf, &mut connect_deadline, None, READ_CHUNK_BYTES, None).await {
            Wake::Read(Ok(n)) if n > 0 => {}
            Wake::Read(Ok(_)) if buf.is_empty() => {
                // Port probes and health checks do this; nothing to report.
                log::debug!("{peer}: closed before sending anything");
                return;
            }
            Wake::Read(Ok(_)) => {
                log::warn!("{peer}: closed after {} bytes, before a complete CONNECT", buf.len());
                return;
            }
            Wake::Read(Err(e)) => {
                log::warn!("{peer}: read error after {} bytes, before a complete CONNECT: {e}", buf.len());
                return;
            }
            _ => {
                Metrics::inc(&broker.metrics.connect_timeouts);
                log::info!(
                    "{peer}: no complete CONNECT within {} s (hub.connect_timeout_secs; {} bytes received); closing",
                    limits.connect_timeout.as_secs(),
                    buf.len()
                );
                return;
            }
        }
    };
    drop(connect_deadline);
    // Boxed (here and below) so the connection's long-lived task is sized for reading, not for
    // the one-off steps of connecting.
    let Some(auth) = Box::pin(accept(&broker, &connect, &peer, &mut writer)).await else {
        return;
    };
    permit.authenticated();
    let token_expiry = auth.token_expiry;
    let session = Box::pin(Session::open(&broker, auth, &connect, peer, reader.probe.clone())).await;
    // Keep only what outlives CONNECT: the block drops credentials and client id now, not when
    // the connection ends (a partial move would keep the rest alive until then).
    let (will, keep_alive) = {
        let connect = connect;
        // Boxed: most clients have none, and it is kept for the whole connection.
        (connect.last_will.map(Box::new), connect.keep_alive)
    };
    // MQTT 3.1.1 §3.1.2.10: the server allows one and a half keep-alive periods.
    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    // A token may claim an expiry far beyond what an Instant can hold: then a century is as
    // good as never.
    let now = Instant::now();
    let token_left = Duration::from_secs(token_expiry.saturating_sub(unix_now()));
    let token_at = now.checked_add(token_left).unwrap_or_else(|| now + FAR_FUTURE);
    let rs = ReadState {
        reader,
        buf,
        deadlines: Deadlines::new(keep_alive, token_at),
        read_chunk: READ_CHUNK_BYTES,
        woke: None,
    };
    let ws = session.writer(&broker, writer);
    tinyedge_platform::rt::spawn(session.run(broker, will, rs, ws, permit)).detach();
}

/// Checks protocol and credentials; answers refusals itself.
async fn accept<W: AsyncWrite + Unpin>(
    broker: &Broker,
    connect: &Connect,
    peer: &str,
    writer: &mut W,
) -> Option<Authenticated> {
    let refuse = |code: u8| {
        let mut out = BytesMut::new();
        codec::put_connack(&mut out, false, code);
        out
    };
    let verdict = if connect.protocol != Protocol::V4 {
        Err((1, "MQTT 5 is not supported (IoT Hub speaks MQTT 3.1.1)".to_string()))
    } else if connect.client_id.is_empty() {
        Err((2, "empty client id (IoT Hub needs the device or module id)".to_string()))
    } else if connect.last_will.as_ref().is_some_and(|w| w.qos == QoS::ExactlyOnce) {
        Err((5, "will with QoS 2 (IoT Hub supports QoS 0 and 1)".to_string()))
    } else {
        let login = connect.login.as_ref();
        let (username, password) = (login.map(|l| l.username.as_str()), login.map(|l| l.password.as_str()));
        let verdict = broker.authenticator().authenticate(&connect.client_id, username, password, unix_now());
        let identity = username.and_then(|u| crate::auth::parse_username(u).ok());
        match (verdict, broker.scope(), identity, password) {
            // Not an identity of the config or the deployment, or not its key: the cloud's
            // device scope may know it (a leaf device nobody configured here).
            (
                Err(refused @ (AuthError::UnknownIdentity(_) | AuthError::Token(_))),
                Some(scope),
                Some(identity),
                Some(password),
            ) => {
                let keys = scope.lookup(&identity).await;
                if keys.is_empty() {
                    Err(refused)
                } else {
                    broker.authenticator().authenticate_with_keys(&identity, password, &keys, unix_now())
                }
            }
            (verdict, ..) => verdict,
        }
        .map_err(|e| (5, e.to_string()))
    };
    match verdict {
        Ok(auth) => Some(auth),
        Err((code, why)) => {
            log::warn!("{peer}: CONNECT of {:?} refused: {why}", connect.client_id);
            Metrics::inc(&broker.metrics.connections_refused);
            let _ = writer.write_all(&refuse(code)).await;
            let _ = writer.flush().await;
            None
        }
    }
}

/// What became of a PUBLISH the client was allowed to send.
enum Published {
    /// Accepted once record `seq` is durable (0: nothing stored to wait for).
    Accepted(u64),
    /// The store did not take it (full under `reject_new`, or failing): why.
    NotStored(String),
}

/// An accepted connection and the slot it owns.
struct Session {
    identity: Identity,
    slot: Arc<Slot>,
    connection_id: u64,
    kicked: Arc<Kick>,
    session_present: bool,
    clean: bool,
    peer: Box<str>,
    /// This identity's counters (metrics with an `id` label).
    counters: Arc<crate::metrics::ClientCounters>,
}

impl Session {
    /// Takes the identity's slot over from any earlier connection (MQTT client-id takeover).
    /// `socket`: the plain TCP socket, so a takeover can shut it down (`None` for TLS).
    async fn open(
        broker: &Broker,
        auth: Authenticated,
        connect: &Connect,
        peer: String,
        socket: Option<Arc<tinyedge_platform::rt::TcpSocket>>,
    ) -> Session {
        let Claim { slot, connection_id, kick: kicked } =
            broker.take_slot(&auth.identity, Kick::new(socket), &peer).await;
        let clean = connect.clean_session;
        let session_present = {
            let mut state = slot.state();
            let present = !clean && state.persistent;
            if !present {
                state.inputs = None;
                state.subscriptions = Subscriptions::default();
            }
            state.persistent = !clean;
            present
        };
        // A new owner: pumps restart from the checkpoints for this connection.
        slot.bump();
        // A persistent session keeps its subscriptions: the cloud side hears of them again.
        let kept = slot.state().subscriptions;
        if let (Some(cloud), true) = (broker.cloud(), kept != Subscriptions::default()) {
            cloud.subscriptions(&auth.identity.client_id(), kept);
        }
        log::info!("{peer}: {} connected (clean session: {clean}, keep-alive {} s)", auth.identity, connect.keep_alive);
        let counters = broker.clients.of(&auth.identity.client_id());
        Session {
            identity: auth.identity,
            slot,
            connection_id,
            kicked,
            session_present,
            clean,
            peer: peer.into_boxed_str(),
            counters,
        }
    }

    /// The connection after CONNECT, as its own task: `serve` spawns it and ends, so what
    /// connecting needed is freed. A function returning an `async move` block (not an `async
    /// fn`) so that its arguments are kept once, where they were captured, rather than twice.
    /// `permit`: the socket's place under `max_connections`, given back at the end.
    ///
    /// A busy connection runs its reading and writing halves together ([`Session::busy`], in a
    /// box). When both have waited with nothing in progress for `QUIET_BEFORE_IDLE` (or, right
    /// after CONNECT, as soon as both wait), the box is dropped and the task waits
    /// in [`idle_wait`] with only what outlives a wait (`rs`, `ws`, and `inflight` while a
    /// delivery waits for its acknowledgement or settlement): an idle
    /// connection's task is sized for that, not for reading and writing. The next byte, timer,
    /// kick or item for the writer makes it busy again (one allocation per busy spell, none
    /// per message while it stays busy).
    #[allow(clippy::manual_async_fn)]
    fn run<R, W>(
        self,
        broker: Arc<Broker>,
        mut will: Option<Box<LastWill>>,
        mut rs: ReadState<R>,
        mut ws: Writer<W>,
        permit: Permit,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        async move {
            // Boxed, and only kept across an idle wait while it holds something.
            let mut inflight: Option<Box<InFlight>> = None;
            let idle = Idle::default();
            // The first spell (CONNACK written, nothing asked yet) ends as soon as both halves
            // wait: a crowd of clients connecting at once does not hold a busy state each for
            // the quiet period (the heap would keep the high-water mark).
            let mut first = true;
            loop {
                idle.reset();
                let flight = inflight.get_or_insert_with(Box::default);
                let mut busy = Box::pin(self.busy(&broker, &mut rs, &mut ws, flight, &idle, &mut will));
                // Both halves waiting with nothing in progress: everything they need later is
                // in rs, ws and inflight, so the box can go.
                let idled = std::future::poll_fn(|cx| match busy.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(false),
                    Poll::Pending if idle.quiet() || (first && idle.both()) => Poll::Ready(true),
                    Poll::Pending => Poll::Pending,
                })
                .await;
                drop(busy);
                first = false;
                if !idled {
                    break;
                }
                // Written and flushed before the writer waited: no buffer is kept while idle.
                ws.out = BytesMut::new();
                let take_delivery = ws.can_take(inflight.as_deref().unwrap_or(&InFlight::default()));
                if inflight.as_ref().is_some_and(|flight| flight.is_settled()) {
                    // Packet ids are free for reuse once every delivery is settled.
                    inflight = None;
                }
                idle_wait(&mut rs, &self.slot, take_delivery, self.kicked.signal(), broker.limits.max_packet_bytes)
                    .await;
            }
            let released = {
                let mut state = self.slot.state();
                let ours = state.owner.as_ref().is_some_and(|o| o.connection_id == self.connection_id);
                if ours {
                    state.owner = None;
                    if self.clean {
                        state.inputs = None;
                        state.subscriptions = Subscriptions::default();
                        state.persistent = false;
                    }
                }
                ours
            };
            if released {
                self.slot.bump();
                if let Some(cloud) = broker.cloud() {
                    cloud.disconnected(&self.identity.client_id());
                }
            }
            self.kicked.done.fire();
            // The socket is closed by now; its place under max_connections is free again.
            drop(permit);
        }
    }

    /// The reading and writing halves of a busy connection, joined: the reader hands the
    /// writer acknowledgements through `ctrl`, whose wake-ups reach this same task. Ends when
    /// the connection does (the will, if due, published); dropped by [`Session::run`] when
    /// both halves are idle.
    #[allow(clippy::manual_async_fn)]
    fn busy<'a, R, W>(
        &'a self,
        broker: &'a Broker,
        rs: &'a mut ReadState<R>,
        ws: &'a mut Writer<W>,
        inflight: &'a mut InFlight,
        idle: &'a Idle,
        will: &'a mut Option<Box<LastWill>>,
    ) -> impl Future<Output = ()> + Send + 'a
    where
        R: AsyncRead + Unpin + Send + 'a,
        W: AsyncWrite + Unpin + Send + 'a,
    {
        async move {
            // Empty whenever both halves are idle: the writer drains it before it waits.
            let ctrl = Queue::new(CTRL_QUEUE_MAX);
            let writing = ws.run(&ctrl, inflight, &idle.writer);
            let reading = async {
                let end = self.read_loop(broker, rs, &ctrl, &idle.reader).await;
                match &end {
                    End::Graceful => log::info!("{}: {} disconnected", self.peer, self.identity),
                    End::Abnormal(why) => log::info!("{}: {} connection closed: {why}", self.peer, self.identity),
                    End::Refused(why) => log::warn!("{}: {} connection closed: {why}", self.peer, self.identity),
                    End::Logged(why) => log::debug!("{}: {} connection closed: {why}", self.peer, self.identity),
                }
                if let (false, Some(will)) = (matches!(end, End::Graceful), will.take().map(|will| *will)) {
                    let publish = Publish {
                        dup: false,
                        qos: will.qos,
                        retain: will.retain,
                        topic: will.topic,
                        pkid: 1,
                        payload: will.message,
                    };
                    match Box::pin(self.publish(broker, publish)).await {
                        Ok(Published::Accepted(_)) => {}
                        Ok(Published::NotStored(why)) => {
                            log_limited!(
                                NOT_ACCEPTED,
                                log::Level::Warn,
                                "{}: will of {} not accepted: {why}",
                                self.peer,
                                self.identity
                            )
                        }
                        Err(why) => log::warn!("{}: will of {} not published: {why}", self.peer, self.identity),
                    }
                }
                ctrl.close();
            };
            // The watch never ends: `or` ends with the connection.
            smol::future::or(smol::future::zip(reading, writing), async {
                idle.watch().await;
                ((), ())
            })
            .await;
        }
    }

    /// The connection's writer, with the CONNACK to write first.
    fn writer<W>(&self, broker: &Arc<Broker>, writer: W) -> Writer<W>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut out = BytesMut::new();
        codec::put_connack(&mut out, self.session_present, 0);
        let inputs = self.slot.state().inputs;
        Writer {
            sink: writer,
            broker: broker.clone(),
            slot: self.slot.clone(),
            inputs,
            client_id: self.identity.client_id().into_boxed_str(),
            out,
            spliced: Vec::new(),
            desired_written: None,
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        broker: &Broker,
        rs: &mut ReadState<R>,
        ctrl: &Queue<Ctrl>,
        idle: &HalfIdle,
    ) -> End {
        // Telemetry PUBLISHes decoded from the buffer and not yet routed: routed together when
        // the buffer holds no more, when another packet comes, or at the batch bound, so their
        // order and that of their PUBACKs stays the order they came in.
        let mut batch: Vec<(QoS, u16, Properties, Bytes)> = Vec::new();
        loop {
            // Decided without waiting, so no packet is held across a wait: only what the step
            // needs afterwards (a small control item, or a rare packet in a box).
            let step = match codec::decode(&mut rs.buf, broker.limits.max_packet_bytes) {
                Ok(Some(packet)) => self.step(broker, packet, &mut batch),
                Ok(None) => Step::Fill,
                Err(e) => {
                    Metrics::inc(&broker.metrics.malformed_packets);
                    Step::End(End::Refused(e.to_string()))
                }
            };
            let flush = match step {
                Step::Next => batch.len() >= PUBLISH_BATCH_MAX,
                _ => !batch.is_empty(),
            };
            if flush {
                if let Some(end) = Box::pin(self.route_batch(broker, &mut batch, ctrl)).await {
                    return end;
                }
                batch = Vec::new();
            }
            match step {
                Step::Next => {}
                Step::Ctrl(item) => {
                    if ctrl.push(item).await.is_err() {
                        return End::Abnormal("connection lost while writing".into());
                    }
                }
                Step::Packet(packet) => {
                    if let Some(end) = Box::pin(self.handle(broker, *packet, ctrl)).await {
                        return end;
                    }
                }
                Step::End(end) => return end,
                Step::Fill => {
                    // Nothing partial left: give the buffer back while the client is idle
                    // (frames still referenced by deliveries keep their own share).
                    if rs.buf.is_empty() && rs.buf.capacity() > 0 {
                        rs.buf = BytesMut::new();
                        rs.read_chunk = READ_CHUNK_BYTES;
                    }
                    let chunk = rs.chunk(broker.limits.max_packet_bytes);
                    let wake = match rs.woke.take() {
                        // What ended the idle wait (its bytes, if any, were decoded above).
                        Some(woke) => woke,
                        None => {
                            fill(
                                &mut rs.reader,
                                &mut rs.buf,
                                &mut rs.deadlines,
                                self.kicked.signal(),
                                chunk,
                                Some(idle),
                            )
                            .await
                        }
                    };
                    match wake {
                        Wake::Read(_) if self.kicked.taken_over() => {
                            return End::Abnormal("taken over by a new connection".into())
                        }
                        Wake::Read(Ok(0)) => return End::Abnormal("closed by the client".into()),
                        Wake::Read(Ok(n)) => {
                            if n == chunk {
                                rs.read_chunk = (rs.read_chunk * 2).min(READ_CHUNK_MAX);
                            }
                        }
                        Wake::Read(Err(e)) => return End::Abnormal(format!("read error: {e}")),
                        Wake::KeepAliveExpired => return End::Abnormal("keep-alive expired".into()),
                        Wake::TokenExpired => return End::Abnormal("SAS token expired".into()),
                        Wake::Kicked => return End::Abnormal("taken over by a new connection".into()),
                    }
                }
            }
        }
    }

    /// What to do with a decoded packet: telemetry joins `batch`; acknowledgements and pings
    /// become an item for the writer; the rest is handled on its own.
    fn step(&self, broker: &Broker, packet: Packet, batch: &mut Vec<(QoS, u16, Properties, Bytes)>) -> Step {
        match packet {
            Packet::Publish(p) if p.qos != QoS::ExactlyOnce => match self.telemetry(broker, &p) {
                Some(Ok(properties)) => {
                    batch.push((p.qos, p.pkid, properties, p.payload));
                    Step::Next
                }
                Some(Err(why)) => Step::End(End::Refused(why)),
                None => Step::Packet(Box::new(Packet::Publish(p))),
            },
            Packet::PubAck(ack) => Step::Ctrl(Ctrl::Acked(ack.pkid)),
            Packet::PingReq => Step::Ctrl(Ctrl::PingResp),
            Packet::Disconnect => Step::End(End::Graceful),
            other => Step::Packet(Box::new(other)),
        }
    }

    /// Handles one packet; `Some` ends the connection.
    async fn handle(&self, broker: &Broker, packet: Packet, ctrl: &Queue<Ctrl>) -> Option<End> {
        let sent = match packet {
            Packet::Publish(p) => {
                let qos = p.qos;
                let pkid = p.pkid;
                // Boxed: routing is the largest future of a connection; inline it would size every
                // idle connection's task for it.
                let published = match Box::pin(self.publish(broker, p)).await {
                    Ok(published) => published,
                    Err(why) => return Some(End::Refused(why)),
                };
                return self.settle(broker, qos, pkid, published, ctrl).await;
            }
            Packet::PubAck(ack) => ctrl.push(Ctrl::Acked(ack.pkid)).await,
            // MQTT-2.3.1-1: SUBSCRIBE and UNSUBSCRIBE carry a non-zero packet identifier.
            Packet::Subscribe(s) if s.pkid == 0 || s.filters.is_empty() => {
                return Some(End::Refused("SUBSCRIBE with packet id 0 or no filter".into()))
            }
            Packet::Unsubscribe(u) if u.pkid == 0 || u.topics.is_empty() => {
                return Some(End::Refused("UNSUBSCRIBE with packet id 0 or no filter".into()))
            }
            Packet::Subscribe(s) => Box::pin(self.subscribe(broker, s, ctrl)).await,
            Packet::Unsubscribe(u) => self.unsubscribe(broker, u, ctrl).await,
            Packet::PingReq => ctrl.push(Ctrl::PingResp).await,
            Packet::Disconnect => return Some(End::Graceful),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                return Some(End::Refused("QoS 2 is not supported (IoT Hub supports QoS 0 and 1)".into()))
            }
            // A second CONNECT (MQTT-3.1.0-2) or a server's packet. Only the type is named: a
            // CONNECT's fields include its SAS token.
            other => return Some(End::Refused(format!("unexpected {} packet", codec::packet_kind(&other)))),
        };
        // The writer is gone: the socket failed.
        sent.err().map(|_| End::Abnormal("connection lost while writing".into()))
    }

    /// Answers a PUBLISH the store took or refused; `Some` ends the connection.
    async fn settle(
        &self,
        broker: &Broker,
        qos: QoS,
        pkid: u16,
        published: Published,
        ctrl: &Queue<Ctrl>,
    ) -> Option<End> {
        let sent = match published {
            // The writer sends the PUBACK once the store has made the record durable.
            Published::Accepted(seq) if qos == QoS::AtLeastOnce => ctrl.push(Ctrl::PubAckAfter(pkid, seq)).await,
            Published::Accepted(_) => Ok(()),
            // Store full (reject_new) or failing. A QoS 1 message without a PUBACK
            // would stall a standard MQTT 3.1.1 client's window until it reconnects,
            // so the connection is closed now: the client reconnects and sends the
            // unacknowledged message again, with DUP. A QoS 0 message is dropped
            // (counted by the router as store_rejected or store_errors).
            Published::NotStored(why) if qos == QoS::AtLeastOnce => {
                Metrics::inc(&broker.metrics.store_refused_disconnects);
                log_limited!(
                    NOT_ACCEPTED,
                    log::Level::Warn,
                    "{}: message from {} not accepted: {why}; connection closed so the client sends it again",
                    self.peer,
                    self.identity
                );
                return Some(End::Logged(format!("QoS 1 message not accepted: {why}")));
            }
            Published::NotStored(why) => {
                log_limited!(
                    NOT_ACCEPTED,
                    log::Level::Warn,
                    "{}: message from {} not accepted: {why}; dropped (QoS 0)",
                    self.peer,
                    self.identity
                );
                Ok(())
            }
        };
        // The writer is gone: the socket failed.
        sent.err().map(|_| End::Abnormal("connection lost while writing".into()))
    }

    /// For a PUBLISH to the identity's telemetry topic: its properties, or why it breaks a rule
    /// (the connection is closed). `None`: not telemetry (a `$iothub` request).
    fn telemetry(&self, broker: &Broker, p: &Publish) -> Option<Result<Properties, String>> {
        match topic::classify_publish(&p.topic, &self.identity) {
            Ok(Inbound::Telemetry { bag }) => {
                Some(Properties::parse(bag).map_err(|e| format!("PUBLISH to {:?}: {e}", p.topic)))
            }
            Ok(Inbound::IotHub { .. }) => None,
            Err(e) => {
                Metrics::inc(&broker.metrics.unauthorized_topics);
                Some(Err(format!("may not publish to {:?}: {e}", p.topic)))
            }
        }
    }

    /// Routes the telemetry PUBLISHes gathered from one read as one batch, then answers each in
    /// order (PUBACK after durability, or the connection closed for a QoS 1 message refused).
    async fn route_batch(
        &self,
        broker: &Broker,
        batch: &mut Vec<(QoS, u16, Properties, Bytes)>,
        ctrl: &Queue<Ctrl>,
    ) -> Option<End> {
        let mut answers = Vec::with_capacity(batch.len());
        let mut outcomes = Vec::with_capacity(batch.len());
        let messages = batch.drain(..).map(|(qos, pkid, properties, payload)| {
            answers.push((qos, pkid));
            (properties, payload)
        });
        ingest::ingest_many(&broker.router, &broker.metrics, &self.identity, messages, &mut outcomes);
        for ((qos, pkid), outcome) in answers.into_iter().zip(outcomes) {
            let published = match outcome {
                Ingested::Accepted(seq) => {
                    Metrics::inc(&self.counters.messages_received);
                    Published::Accepted(seq)
                }
                Ingested::Refused(why) => Published::NotStored(why),
            };
            if let Some(end) = self.settle(broker, qos, pkid, published, ctrl).await {
                return Some(end);
            }
        }
        None
    }

    /// Accepts one PUBLISH: authorization, properties, routing into the store. `Err`: the
    /// client broke a rule; close the connection with that reason.
    async fn publish(&self, broker: &Broker, p: Publish) -> Result<Published, String> {
        if p.qos == QoS::ExactlyOnce {
            return Err("QoS 2 is not supported (IoT Hub supports QoS 0 and 1)".into());
        }
        let bag = match topic::classify_publish(&p.topic, &self.identity) {
            Ok(Inbound::Telemetry { bag }) => bag,
            Ok(Inbound::IotHub { rest }) => {
                // Answered on the client's control lane; the PUBACK needs nothing from the store.
                self.iothub(broker, rest, p.payload.clone()).await;
                return Ok(Published::Accepted(0));
            }
            Err(e) => {
                Metrics::inc(&broker.metrics.unauthorized_topics);
                return Err(format!("may not publish to {:?}: {e}", p.topic));
            }
        };
        let properties = Properties::parse(bag).map_err(|e| format!("PUBLISH to {:?}: {e}", p.topic))?;
        Ok(match ingest::ingest(&broker.router, &broker.metrics, &self.identity, properties, p.payload) {
            Ingested::Accepted(seq) => {
                Metrics::inc(&self.counters.messages_received);
                Published::Accepted(seq)
            }
            Ingested::Refused(why) => Published::NotStored(why),
        })
    }

    async fn subscribe(&self, broker: &Broker, s: Subscribe, ctrl: &Queue<Ctrl>) -> Result<(), Ctrl> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut inputs = None;
        let mut iothub = Vec::new();
        for filter in &s.filters {
            // IoT Hub grants at most QoS 1.
            let granted = if filter.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            match topic::classify_subscription(&filter.path, &self.identity) {
                Ok(kind) => {
                    match kind {
                        SubscriptionKind::ModuleInputs => inputs = Some(granted),
                        other => iothub.push(other),
                    }
                    codes.push(granted as u8);
                }
                Err(e) => {
                    Metrics::inc(&broker.metrics.unauthorized_topics);
                    log::warn!("{}: {} may not subscribe to {:?}: {e}", self.peer, self.identity, filter.path);
                    codes.push(0x80);
                }
            }
        }
        ctrl.push(Ctrl::SubAck(s.pkid, codes)).await?;
        if !iothub.is_empty() {
            self.set_subscriptions(broker, &iothub, true);
        }
        if let Some(qos) = inputs {
            let settle = settle_of(qos);
            // Subscribing again to what a persistent session already holds changes nothing: a
            // new generation would restart the pump from the checkpoint and send everything
            // in flight a second time.
            let changed = self.slot.state().inputs.replace(settle) != Some(settle);
            if changed {
                ctrl.push(Ctrl::Inputs(Some(settle))).await?;
                self.slot.bump();
            }
        }
        Ok(())
    }

    /// Records `$iothub` and C2D subscriptions (no new generation: the store pumps are not
    /// concerned). A new desired-patch subscription gets the one patch that brings the client
    /// up to date, whether or not it ever did a GET (edgeHub needs a GET first, #2757).
    fn set_subscriptions(&self, broker: &Broker, kinds: &[SubscriptionKind], on: bool) {
        let subscriptions = {
            let mut state = self.slot.state();
            for kind in kinds {
                let flag = match kind {
                    SubscriptionKind::TwinResponses => &mut state.subscriptions.twin_responses,
                    SubscriptionKind::DesiredPatches => &mut state.subscriptions.desired,
                    SubscriptionKind::Methods => &mut state.subscriptions.methods,
                    SubscriptionKind::DeviceBound => &mut state.subscriptions.device_bound,
                    SubscriptionKind::ModuleInputs => continue,
                };
                *flag = on;
            }
            state.subscriptions
        };
        // Outside the slot's lock: the cloud side takes its own.
        if let Some(cloud) = broker.cloud() {
            let id = self.identity.client_id();
            cloud.subscriptions(&id, subscriptions);
            if on && kinds.contains(&SubscriptionKind::DesiredPatches) {
                cloud.twin_used(&id, false);
            }
        }
        if on && kinds.contains(&SubscriptionKind::DesiredPatches) {
            self.slot.desired_changed();
        }
        // Method callers waiting for this client to subscribe look again.
        crate::broker::queue::notify_listened(&self.slot.changed, usize::MAX);
    }

    /// Serves a `$iothub/…` request (twin GET and reported PATCH, method responses) through
    /// the core's request handler; every request gets an answer on `$iothub/twin/res/…`,
    /// errors included, except method responses and patches without a `$rid`.
    async fn iothub(&self, broker: &Broker, rest: &str, payload: Bytes) {
        static NOTED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
        let served = requests::serve(broker, &self.identity, topic::parse_iothub_request(rest), payload).await;
        if let Some(note) = &served.note {
            log_limited!(NOTED, log::Level::Warn, "{}: {} sent $iothub/{rest}: {note}", self.peer, self.identity);
        }
        if let Some(answer) = served.answer {
            // The client drains its own lane: waiting for room holds back only its own reads, and
            // only for so long — a writer that is gone (socket failed) never makes room.
            let queued = smol::future::or(async { self.slot.control.push(answer).await.is_ok() }, async {
                smol::Timer::after(OWN_LANE_WAIT).await;
                false
            })
            .await;
            if !queued {
                Metrics::inc(&broker.metrics.control_unsubscribed);
                log::info!("{}: twin answer to {} dropped: its lane stayed full", self.peer, self.identity);
            }
        }
    }

    async fn unsubscribe(&self, broker: &Broker, u: Unsubscribe, ctrl: &Queue<Ctrl>) -> Result<(), Ctrl> {
        let iothub: Vec<SubscriptionKind> = u
            .topics
            .iter()
            .filter_map(|t| topic::classify_subscription(t, &self.identity).ok())
            .filter(|kind| *kind != SubscriptionKind::ModuleInputs)
            .collect();
        if !iothub.is_empty() {
            self.set_subscriptions(broker, &iothub, false);
        }
        if u.topics
            .iter()
            .any(|t| topic::classify_subscription(t, &self.identity) == Ok(SubscriptionKind::ModuleInputs))
        {
            self.slot.state().inputs = None;
            ctrl.push(Ctrl::Inputs(None)).await?;
            self.slot.bump();
        }
        ctrl.push(Ctrl::UnsubAck(u.pkid)).await
    }
}
