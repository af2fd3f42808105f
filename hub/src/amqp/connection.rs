//! One AMQP connection: the protocol header (plain or SASL), open/begin/attach/flow/transfer/
//! disposition/detach/end/close, CBS put-token, the telemetry links into [`ingest`], and the
//! links on which the hub sends (module inputs, C2D, twin answers and desired patches, method
//! calls) from the identity's slot, which the connection owns while such a link is attached
//! (taking it over from any other connection of the identity, as MQTT does).
//!
//! One task owns the socket and every session and link of the connection; it waits on the
//! socket, on the store making the oldest unsettled telemetry durable, on the mailbox and the
//! control lane of every slot it owns (and on their takeover signals), and on one timer (the
//! earliest of the open deadline, token expiries, heartbeat and idle timeout).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{
    AmqpError, ConnectionError, Error, ErrorCondition, LinkError, ReceiverSettleMode, Role, SessionError,
};
use fe2o3_amqp_types::messaging::{Accepted, DeliveryState, Rejected};
use fe2o3_amqp_types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{AuthError, Identity};
use crate::broker::inflight::InFlight;
use crate::broker::requests;
use crate::broker::session::{Claim, Completion, Control, Delivery, Kick, Origin, Settle, Slot, Subscriptions};
use crate::broker::Broker;
use crate::ingest::{self, Ingested};
use crate::listeners::permit::Permit;
use crate::message::Properties as HubProperties;
use crate::metrics::Metrics;
use crate::topic::IotHubRequest;

use super::address::{self, Address};
use super::frame::{self, FrameError, Header};
use super::limits::*;
use super::message::{self as amqp_message, AmqpMessage};

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn error(condition: ErrorCondition, description: impl Into<String>) -> Error {
    Error { condition, description: Some(description.into()), info: None }
}

/// One transfer frame of a message the hub sends (`first`: the frame that opens the delivery).
#[allow(clippy::too_many_arguments)]
fn put_transfer(
    out: &mut BytesMut,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    settled: bool,
    more: bool,
    first: bool,
    payload: &[u8],
) {
    let transfer = Transfer {
        handle: handle.into(),
        delivery_id: first.then_some(delivery_id),
        delivery_tag: first
            .then(|| fe2o3_amqp_types::definitions::DeliveryTag::from(delivery_id.to_be_bytes().to_vec())),
        message_format: first.then_some(0),
        settled: Some(settled),
        more,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    frame::put_performative(out, channel, &Performative::Transfer(transfer), payload);
}

/// Matches links of the same kind as `kind` (any identity).
fn kind_matcher(kind: &Kind) -> fn(&Kind) -> bool {
    match kind {
        Kind::Inputs(_) => |k| matches!(k, Kind::Inputs(_)),
        Kind::DeviceBound(_) => |k| matches!(k, Kind::DeviceBound(_)),
        Kind::TwinReplies(_) => |k| matches!(k, Kind::TwinReplies(_)),
        Kind::MethodCalls(_) => |k| matches!(k, Kind::MethodCalls(_)),
        Kind::TwinRequests(_) => |k| matches!(k, Kind::TwinRequests(_)),
        Kind::MethodReplies(_) => |k| matches!(k, Kind::MethodReplies(_)),
        Kind::Telemetry(_) => |k| matches!(k, Kind::Telemetry(_)),
        Kind::CbsRequests => |k| matches!(k, Kind::CbsRequests),
        Kind::CbsReplies => |k| matches!(k, Kind::CbsReplies),
    }
}

/// What a link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `$cbs`, client sends put-token requests.
    CbsRequests,
    /// `$cbs`, client receives the answers.
    CbsReplies,
    /// `…/messages/events`, client sends telemetry of `Identity`.
    Telemetry(Identity),
    /// `/devices/{d}/modules/{m}/messages/events`, client receives the module's inputs.
    Inputs(Identity),
    /// `…/messages/deviceBound`, a leaf device receives C2D messages.
    DeviceBound(Identity),
    /// `…/twin`, client sends twin requests.
    TwinRequests(Identity),
    /// `…/twin`, client receives twin answers and desired patches.
    TwinReplies(Identity),
    /// `…/methods/deviceBound`, client sends method answers.
    MethodReplies(Identity),
    /// `…/methods/deviceBound`, client receives method calls.
    MethodCalls(Identity),
}

impl Kind {
    fn identity(&self) -> Option<&Identity> {
        match self {
            Kind::CbsRequests | Kind::CbsReplies => None,
            Kind::Telemetry(id)
            | Kind::Inputs(id)
            | Kind::DeviceBound(id)
            | Kind::TwinRequests(id)
            | Kind::TwinReplies(id)
            | Kind::MethodReplies(id)
            | Kind::MethodCalls(id) => Some(id),
        }
    }

    /// The hub sends on this link from the identity's slot: attaching it takes the slot over.
    fn takes_slot(&self) -> bool {
        matches!(self, Kind::Inputs(_) | Kind::DeviceBound(_) | Kind::TwinReplies(_) | Kind::MethodCalls(_))
    }

    /// The hub is the sender on this link.
    fn hub_sends(&self) -> bool {
        self.takes_slot() || matches!(self, Kind::CbsReplies)
    }
}

/// How a message the hub sends is settled.
enum Track {
    /// Sent settled (CBS answers, twin and method links: at most once, as edgeHub).
    Settled,
    /// A module input: its store record is committed once the client accepts it, in order.
    Input(Option<Origin>),
    /// A C2D message: completed in the cloud once the client accepts it.
    Completion(Completion),
}

/// A message waiting for credit on a sending link.
struct Out {
    bytes: Vec<u8>,
    track: Track,
}

/// A slot the connection owns (it sends on links of that identity).
struct Owned {
    slot: Arc<Slot>,
    connection_id: u64,
    kick: Arc<Kick>,
    /// Unsettled module inputs and C2D messages, by the id [`InFlight`] gave them.
    inflight: InFlight,
}

/// A message arriving in several transfer frames.
struct Partial {
    delivery_id: u32,
    settled: bool,
    bytes: BytesMut,
}

struct Link {
    kind: Kind,
    /// Receiving links: deliveries counted (the sender's delivery-count as we know it) and
    /// credit left; sending links: our delivery-count and the credit the client gave.
    delivery_count: u32,
    credit: u32,
    /// Receiving links: deliveries not yet settled by us.
    unsettled: usize,
    partial: Option<Partial>,
    /// Sending links: encoded messages waiting for credit.
    backlog: VecDeque<Out>,
}

struct Session {
    next_incoming_id: u32,
    next_outgoing_id: u32,
    links: HashMap<u32, Link>,
}

/// A telemetry delivery settled once the store made record `seq` durable.
struct Pending {
    channel: u16,
    handle: u32,
    delivery_id: u32,
    seq: u64,
}

/// Why a connection ends: logged once, and sent in a close frame when there is an error.
enum Ending {
    Closed(String),
    Error(Error),
}

struct Conn {
    broker: Arc<Broker>,
    peer: String,
    out: BytesMut,
    opened: bool,
    peer_max_frame: usize,
    peer_idle: Option<Duration>,
    sessions: HashMap<u16, Session>,
    /// Identities authenticated on this connection (CBS or SASL PLAIN), with token expiry.
    tokens: HashMap<Identity, u64>,
    pending: VecDeque<Pending>,
    authenticated: bool,
    /// The AMQP header was exchanged (after SASL, if any): frames are AMQP frames now.
    amqp_started: bool,
    /// Slots taken over for the links the hub sends on.
    owned: HashMap<Identity, Owned>,
    /// Unsettled deliveries the hub sent: (channel, delivery id) → identity and in-flight id.
    outgoing: HashMap<(u16, u32), (Identity, u16)>,
    /// Desired `$version`s in `out` (patches and GET answers), recorded as delivered once
    /// `out` is on the socket.
    desired_written: Vec<(String, u64)>,
}

/// Serves one connection on `stream` (TLS already done) until it closes.
pub(super) async fn serve<S>(broker: Arc<Broker>, mut stream: S, peer: String, mut permit: Permit, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        broker,
        peer,
        out: BytesMut::new(),
        opened: false,
        peer_max_frame: FRAME_BYTES_MIN,
        peer_idle: None,
        sessions: HashMap::new(),
        tokens: HashMap::new(),
        pending: VecDeque::new(),
        authenticated: false,
        amqp_started: false,
        owned: HashMap::new(),
        outgoing: HashMap::new(),
        desired_written: Vec::new(),
    };
    let mut buf = BytesMut::new();
    let end = match Box::pin(conn.handshake(&mut stream, &mut buf, deadline)).await {
        Ok(()) => {
            if conn.authenticated {
                permit.authenticated();
            }
            conn.run(&mut stream, &mut buf, &mut permit, deadline).await
        }
        Err(end) => end,
    };
    match end {
        Ending::Closed(why) => log::info!("{}: AMQP connection closed: {why}", conn.peer),
        Ending::Error(e) => {
            log::warn!("{}: AMQP connection closed: {}", conn.peer, e);
            if !conn.opened && conn.amqp_started {
                // AMQP 1.0 2.4.1: a close before the peer's open follows an open of ours.
                let open = conn.open_reply();
                frame::put_performative(&mut conn.out, 0, &Performative::Open(open), &[]);
            }
            if conn.opened || conn.amqp_started {
                frame::put_performative(&mut conn.out, 0, &Performative::Close(Close { error: Some(e) }), &[]);
            }
        }
    }
    let _ = stream.write_all(&conn.out).await;
    let _ = stream.flush().await;
    let _ = stream.close().await;
    conn.release_all();
}

enum Wake {
    Read(std::io::Result<usize>),
    Durable,
    Timer,
    Slot(Identity, SlotEvent),
}

/// Something from a slot the connection owns.
enum SlotEvent {
    Delivery(Delivery),
    Control(Control),
    /// Another connection of the identity took the slot over.
    Kicked,
}

type SlotWait = std::pin::Pin<Box<dyn std::future::Future<Output = Wake> + Send>>;

/// Items taken from a slot's lanes per loop turn before the buffer goes to the socket.
const SLOT_BATCH_MAX: usize = 64;
/// Twin answers, desired patches, method calls and C2D messages waiting for credit on one link.
const CONTROL_BACKLOG_MAX: usize = 16;
/// Room kept in a transfer frame for its performative.
const TRANSFER_OVERHEAD_BYTES: usize = 128;

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(start + READ_CHUNK_BYTES, 0);
    let read = stream.read(&mut buf[start..]).await;
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

impl Conn {
    /// Protocol header, SASL if asked for, and the AMQP header back.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> Result<(), Ending> {
        let header = self.read_header(stream, buf, deadline).await?;
        if header == Header::Sasl {
            stream.write_all(&frame::HEADER_SASL).await.map_err(|e| Ending::Closed(e.to_string()))?;
            let mechanisms = SaslMechanisms {
                sasl_server_mechanisms: Array(SASL_MECHANISMS.iter().map(|m| Symbol::from(*m)).collect()),
            };
            let body = serde_amqp::to_vec(&mechanisms).unwrap_or_default();
            frame::put_frame(&mut self.out, true, 0, &body, &[]);
            self.flush(stream).await?;
            let init = loop {
                match frame::split(buf, SASL_FRAME_BYTES_MAX) {
                    Ok(Some(f)) if f.sasl && !f.body.is_empty() => {
                        break serde_amqp::from_slice::<SaslInit>(&f.body)
                            .map_err(|e| Ending::Closed(format!("undecodable sasl-init: {e}")))?;
                    }
                    Ok(Some(_)) => return Err(Ending::Closed("expected sasl-init".into())),
                    Ok(None) => self.fill(stream, buf, deadline).await?,
                    Err(e) => return Err(self.malformed(e)),
                }
            };
            let code = self.sasl(&init);
            let ok = code == SaslCode::Ok;
            let outcome = SaslOutcome { code, additional_data: None };
            frame::put_frame(&mut self.out, true, 0, &serde_amqp::to_vec(&outcome).unwrap_or_default(), &[]);
            self.flush(stream).await?;
            if !ok {
                return Err(Ending::Closed("SASL authentication refused".into()));
            }
            if self.read_header(stream, buf, deadline).await? != Header::Amqp {
                return Err(Ending::Closed("a second SASL header after SASL".into()));
            }
        }
        stream.write_all(&frame::HEADER_AMQP).await.map_err(|e| Ending::Closed(e.to_string()))?;
        self.amqp_started = true;
        Ok(())
    }

    async fn read_header<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> Result<Header, Ending> {
        loop {
            match frame::header(buf) {
                Ok(Some(h)) => {
                    let _ = buf.split_to(8);
                    return Ok(h);
                }
                Ok(None) => self.fill(stream, buf, deadline).await?,
                Err(e) => {
                    // AMQP 1.0 2.2: answer a header we do not speak with the one we do.
                    self.out.extend_from_slice(&frame::HEADER_AMQP);
                    return Err(self.malformed(e));
                }
            }
        }
    }

    fn malformed(&self, e: FrameError) -> Ending {
        Metrics::inc(&self.broker.metrics.malformed_packets);
        let condition = match e {
            FrameError::TooLarge { .. } | FrameError::BadFrame(_) | FrameError::UnknownType(_) => {
                ErrorCondition::ConnectionError(ConnectionError::FramingError)
            }
            FrameError::BadHeader(_) => return Ending::Closed(e.to_string()),
            FrameError::Decode(_) => ErrorCondition::AmqpError(AmqpError::DecodeError),
        };
        Ending::Error(error(condition, e.to_string()))
    }

    async fn fill<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> Result<(), Ending> {
        let read = async { Some(read_some(stream, buf).await) };
        let timer = async {
            smol::Timer::at(deadline).await;
            None
        };
        match smol::future::or(read, timer).await {
            Some(Ok(0)) => Err(Ending::Closed("closed by the client before open".into())),
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(Ending::Closed(format!("read error: {e}"))),
            None => {
                Metrics::inc(&self.broker.metrics.connect_timeouts);
                Err(Ending::Closed(format!(
                    "no open within {} s (hub.connect_timeout_secs)",
                    self.broker.limits.connect_timeout.as_secs()
                )))
            }
        }
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = stream.write_all(&self.out).await.and(stream.flush().await);
        self.out.clear();
        if self.out.capacity() > WRITE_BUFFER_BYTES {
            self.out = BytesMut::new();
        }
        written.map_err(|e| Ending::Closed(format!("write error: {e}")))
    }

    /// SASL: ANONYMOUS and MSSBCBS defer to CBS; PLAIN carries `{identity}@sas.{hub}` and a
    /// SAS token.
    fn sasl(&mut self, init: &SaslInit) -> SaslCode {
        match init.mechanism.as_str() {
            "ANONYMOUS" | "MSSBCBS" => SaslCode::Ok,
            "PLAIN" => {
                let response = init.initial_response.as_ref().map(|b| b.to_vec()).unwrap_or_default();
                let parts: Vec<&[u8]> = response.split(|b| *b == 0).collect();
                let (user, password) = match parts.as_slice() {
                    [_, user, password] => (*user, *password),
                    _ => return SaslCode::Auth,
                };
                let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password)) else {
                    return SaslCode::Auth;
                };
                let identity = user.split_once("@sas.").map_or(user, |(id, _)| id);
                let identity = match identity.split_once("/modules/") {
                    Some((d, m)) => Identity::module(d, m),
                    None => Identity::device(identity),
                };
                match self.broker.authenticator().authenticate_token(&identity, password, unix_now()) {
                    Ok(auth) => {
                        self.authenticated = true;
                        self.tokens.insert(auth.identity, auth.token_expiry);
                        SaslCode::Ok
                    }
                    Err(e) => {
                        Metrics::inc(&self.broker.metrics.connections_refused);
                        log::warn!("{}: SASL PLAIN of {identity} refused: {e}", self.peer);
                        SaslCode::Auth
                    }
                }
            }
            other => {
                log::warn!("{}: SASL mechanism {other:?} not offered", self.peer);
                SaslCode::Auth
            }
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
        permit: &mut Permit,
        deadline: Instant,
    ) -> Ending {
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        loop {
            loop {
                match frame::split(buf, FRAME_BYTES_MAX) {
                    Ok(Some(f)) => {
                        if let Err(end) = self.frame(f).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.malformed(e),
                }
            }
            if self.authenticated {
                permit.authenticated();
            }
            self.release_durable();
            self.pump_slots();
            if !self.out.is_empty() {
                if let Err(end) = self.flush(stream).await {
                    return end;
                }
                last_write = Instant::now();
                self.record_desired_delivered();
            }
            if buf.is_empty() && buf.capacity() > 0 {
                *buf = BytesMut::new();
            }
            let now = Instant::now();
            let mut wake_at = last_read + IDLE_TIMEOUT;
            if !self.authenticated || !self.opened {
                wake_at = wake_at.min(deadline);
            }
            if let Some(idle) = self.peer_idle {
                wake_at = wake_at.min(last_write + idle / 2);
            }
            if let Some(expiry) = self.tokens.values().min() {
                let left = Duration::from_secs(expiry.saturating_sub(unix_now()));
                wake_at = wake_at.min(now + left);
            }
            let store = self.broker.router.store().clone();
            let front = self.pending.front().map(|p| p.seq);
            let mut slot_waits = self.slot_waits();
            // The read grows `buf` for its bytes; when another wake-up wins, it is cut back.
            let filled = buf.len();
            let wake = {
                let read = async { Wake::Read(read_some(stream, buf).await) };
                let durable = async {
                    match front {
                        Some(seq) => {
                            let _ = store.durable(seq).await;
                            Wake::Durable
                        }
                        None => smol::future::pending().await,
                    }
                };
                let timer = async {
                    smol::Timer::at(wake_at).await;
                    Wake::Timer
                };
                let slots = smol::future::poll_fn(|cx| {
                    for wait in slot_waits.iter_mut() {
                        if let std::task::Poll::Ready(wake) = wait.as_mut().poll(cx) {
                            return std::task::Poll::Ready(wake);
                        }
                    }
                    std::task::Poll::Pending
                });
                smol::future::or(read, smol::future::or(Box::pin(durable), smol::future::or(slots, timer))).await
            };
            drop(slot_waits);
            if !matches!(wake, Wake::Read(_)) {
                buf.truncate(filled);
            }
            match wake {
                Wake::Read(Ok(0)) => return Ending::Closed("closed by the client".into()),
                Wake::Read(Ok(_)) => last_read = Instant::now(),
                Wake::Read(Err(e)) => return Ending::Closed(format!("read error: {e}")),
                Wake::Durable => {}
                Wake::Slot(identity, event) => self.slot_event(&identity, event).await,
                Wake::Timer => {
                    let now = Instant::now();
                    if now >= last_read + IDLE_TIMEOUT {
                        return Ending::Error(error(
                            ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                            "idle timeout",
                        ));
                    }
                    if (!self.authenticated || !self.opened) && now >= deadline {
                        Metrics::inc(&self.broker.metrics.connect_timeouts);
                        return Ending::Error(error(
                            ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                            "no token put within hub.connect_timeout_secs",
                        ));
                    }
                    self.expire_tokens();
                    if self.peer_idle.is_some_and(|idle| now >= last_write + idle / 2) {
                        frame::put_heartbeat(&mut self.out);
                    }
                }
            }
        }
    }

    /// Links of identities whose token expired are detached with `unauthorized-access`.
    fn expire_tokens(&mut self) {
        let now = unix_now();
        let expired: Vec<Identity> = self.tokens.iter().filter(|(_, e)| **e <= now).map(|(i, _)| i.clone()).collect();
        for identity in expired {
            self.tokens.remove(&identity);
            log::info!("{}: SAS token of {identity} expired; its links are closed", self.peer);
            let mut detach = Vec::new();
            for (channel, session) in &self.sessions {
                for (handle, link) in &session.links {
                    if link.kind.identity() == Some(&identity) {
                        detach.push((*channel, *handle));
                    }
                }
            }
            for (channel, handle) in detach {
                let e = error(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), "SAS token expired");
                self.detach(channel, handle, Some(e));
            }
        }
    }

    fn detach(&mut self, channel: u16, handle: u32, error: Option<Error>) {
        if let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.remove(&handle)) {
            self.link_gone(&link);
        }
        self.pending.retain(|p| !(p.channel == channel && p.handle == handle));
        let detach = Detach { handle: handle.into(), closed: true, error };
        frame::put_performative(&mut self.out, channel, &Performative::Detach(detach), &[]);
    }

    /// Settles, in order, every telemetry delivery whose record is durable now.
    fn release_durable(&mut self) {
        let store = self.broker.router.store().clone();
        while let Some(p) = self.pending.front() {
            let state = match store.durable_outcome(p.seq) {
                None => break,
                Some(Ok(())) => DeliveryState::Accepted(Accepted {}),
                Some(Err(e)) => {
                    Metrics::inc(&self.broker.metrics.store_errors);
                    DeliveryState::Rejected(Rejected {
                        error: Some(error(ErrorCondition::AmqpError(AmqpError::InternalError), e.to_string())),
                    })
                }
            };
            let Some(p) = self.pending.pop_front() else { break };
            self.settle(p.channel, p.handle, p.delivery_id, state);
        }
    }

    /// Sends the disposition of a received delivery and gives its credit back.
    fn settle(&mut self, channel: u16, handle: u32, delivery_id: u32, state: DeliveryState) {
        let disposition = Disposition {
            role: Role::Receiver,
            first: delivery_id,
            last: None,
            settled: true,
            state: Some(state),
            batchable: false,
        };
        frame::put_performative(&mut self.out, channel, &Performative::Disposition(disposition), &[]);
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        let Some(link) = session.links.get_mut(&handle) else { return };
        link.unsettled = link.unsettled.saturating_sub(1);
        // Credit comes back in halves, so a client streaming at full window gets one flow
        // per few deliveries instead of one per delivery.
        if link.credit <= LINK_CREDIT / 2 {
            link.credit = LINK_CREDIT.saturating_sub(u32::try_from(link.unsettled).unwrap_or(LINK_CREDIT));
            let flow = self.link_flow(channel, handle);
            if let Some(flow) = flow {
                frame::put_performative(&mut self.out, channel, &Performative::Flow(flow), &[]);
            }
        }
    }

    fn link_flow(&self, channel: u16, handle: u32) -> Option<Flow> {
        let session = self.sessions.get(&channel)?;
        let link = session.links.get(&handle)?;
        Some(Flow {
            next_incoming_id: Some(session.next_incoming_id),
            incoming_window: SESSION_WINDOW,
            next_outgoing_id: session.next_outgoing_id,
            outgoing_window: SESSION_WINDOW,
            handle: Some(handle.into()),
            delivery_count: Some(link.delivery_count),
            link_credit: Some(link.credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
    }

    /// Handles one frame; `Err` ends the connection.
    async fn frame(&mut self, f: frame::RawFrame) -> Result<(), Ending> {
        if f.body.is_empty() {
            return Ok(());
        }
        if f.sasl {
            return Err(Ending::Error(error(
                ErrorCondition::AmqpError(AmqpError::NotAllowed),
                "SASL frame after SASL",
            )));
        }
        let (performative, payload) = frame::performative(&f.body).map_err(|e| self.malformed(e))?;
        let channel = f.channel;
        match performative {
            Performative::Open(open) => self.open(open),
            _ if !self.opened => {
                Err(Ending::Error(error(ErrorCondition::AmqpError(AmqpError::IllegalState), "first frame is no open")))
            }
            Performative::Close(_) => {
                frame::put_performative(&mut self.out, 0, &Performative::Close(Close { error: None }), &[]);
                Err(Ending::Closed("closed by the client".into()))
            }
            Performative::Begin(begin) => self.begin(channel, begin),
            _ if !self.sessions.contains_key(&channel) => Err(Ending::Error(error(
                ErrorCondition::ConnectionError(ConnectionError::FramingError),
                format!("frame on channel {channel}, which has no session"),
            ))),
            Performative::End(_) => {
                if let Some(session) = self.sessions.remove(&channel) {
                    for link in session.links.values() {
                        self.link_gone(link);
                    }
                }
                // A new session on this channel numbers its deliveries from 0 again.
                self.outgoing.retain(|(c, _), _| *c != channel);
                self.pending.retain(|p| p.channel != channel);
                frame::put_performative(&mut self.out, channel, &Performative::End(End { error: None }), &[]);
                Ok(())
            }
            Performative::Attach(attach) => {
                Box::pin(self.attach(channel, attach)).await;
                Ok(())
            }
            Performative::Detach(detach) => {
                let handle = detach.handle.0;
                if self.sessions.get(&channel).is_some_and(|s| s.links.contains_key(&handle)) {
                    self.detach(channel, handle, None);
                }
                Ok(())
            }
            Performative::Flow(flow) => {
                self.flow(channel, flow);
                Ok(())
            }
            Performative::Transfer(transfer) => Box::pin(self.transfer(channel, transfer, payload)).await,
            Performative::Disposition(disposition) => {
                self.disposition(channel, disposition);
                Ok(())
            }
        }
    }

    fn open(&mut self, open: Open) -> Result<(), Ending> {
        if self.opened {
            return Err(Ending::Error(error(ErrorCondition::AmqpError(AmqpError::IllegalState), "second open")));
        }
        self.opened = true;
        let peer_max = usize::try_from(open.max_frame_size.0).unwrap_or(usize::MAX);
        self.peer_max_frame = peer_max.clamp(FRAME_BYTES_MIN, FRAME_BYTES_MAX);
        self.peer_idle = open.idle_time_out.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(u64::from(ms)));
        let reply = self.open_reply();
        frame::put_performative(&mut self.out, 0, &Performative::Open(reply), &[]);
        Ok(())
    }

    /// The hub's open: its frame size, channels and idle timeout.
    fn open_reply(&self) -> Open {
        Open {
            container_id: format!("tinyedge-{}", self.broker.device_id()),
            hostname: None,
            max_frame_size: u32::try_from(FRAME_BYTES_MAX).unwrap_or(u32::MAX).into(),
            channel_max: (SESSIONS_MAX - 1).into(),
            idle_time_out: Some(u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX)),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }

    fn begin(&mut self, channel: u16, begin: Begin) -> Result<(), Ending> {
        if self.sessions.contains_key(&channel) {
            return Err(Ending::Error(error(
                ErrorCondition::AmqpError(AmqpError::IllegalState),
                format!("second begin on channel {channel}"),
            )));
        }
        if self.sessions.len() >= usize::from(SESSIONS_MAX) || channel >= SESSIONS_MAX {
            let e = error(
                ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                format!("at most {SESSIONS_MAX} sessions per connection"),
            );
            return Err(Ending::Error(e));
        }
        self.sessions.insert(
            channel,
            Session { next_incoming_id: begin.next_outgoing_id, next_outgoing_id: 0, links: HashMap::new() },
        );
        let reply = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: SESSION_WINDOW,
            outgoing_window: SESSION_WINDOW,
            handle_max: (LINKS_MAX - 1).into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        frame::put_performative(&mut self.out, channel, &Performative::Begin(reply), &[]);
        Ok(())
    }

    fn authorized(&self, identity: &Identity) -> bool {
        self.tokens.get(identity).is_some_and(|expiry| *expiry > unix_now())
    }

    /// What an attach asks for, or the error it is refused with.
    fn link_kind(&self, attach: &Attach) -> Result<Kind, Error> {
        let client_sends = attach.role == Role::Sender;
        let address = if client_sends {
            attach.target.as_ref().and_then(|t| match t.as_ref() {
                fe2o3_amqp_types::messaging::TargetArchetype::Target(t) => t.address.clone(),
            })
        } else {
            attach.source.as_ref().and_then(|s| s.address.clone())
        };
        let address = address.unwrap_or_default();
        let not_found = || error(ErrorCondition::AmqpError(AmqpError::NotFound), format!("no node {address:?}"));
        let unauthorized = |id: &Identity| {
            error(
                ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
                format!("no valid token for {id} on this connection (put one on $cbs)"),
            )
        };
        let kind = match (address::parse(&address), client_sends) {
            (Some(Address::Cbs), true) => return Ok(Kind::CbsRequests),
            (Some(Address::Cbs), false) => return Ok(Kind::CbsReplies),
            (Some(Address::Events(id)), true) => Kind::Telemetry(id),
            (Some(Address::Events(id)), false) if id.module_id.is_some() => Kind::Inputs(id),
            // IoT Hub sends C2D messages to devices only.
            (Some(Address::DeviceBound(id)), false) if id.module_id.is_none() => Kind::DeviceBound(id),
            (Some(Address::Twin(id)), true) => Kind::TwinRequests(id),
            (Some(Address::Twin(id)), false) => Kind::TwinReplies(id),
            (Some(Address::Methods(id)), true) => Kind::MethodReplies(id),
            (Some(Address::Methods(id)), false) => Kind::MethodCalls(id),
            _ => return Err(not_found()),
        };
        match kind.identity() {
            Some(id) if !self.authorized(id) => Err(unauthorized(id)),
            _ => Ok(kind),
        }
    }

    async fn attach(&mut self, channel: u16, attach: Attach) {
        let handle = attach.handle.0;
        let links = self.sessions.get(&channel).map_or(0, |s| s.links.len());
        let kind = if self.sessions.get(&channel).is_some_and(|s| s.links.contains_key(&handle)) {
            Err(error(ErrorCondition::SessionError(SessionError::HandleInUse), format!("handle {handle} in use")))
        } else if links >= LINKS_MAX as usize || handle >= LINKS_MAX {
            Err(error(
                ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                format!("at most {LINKS_MAX} links per session"),
            ))
        } else {
            self.link_kind(&attach)
        };
        let client_sends = attach.role == Role::Sender;
        let mut reply = attach.clone();
        reply.role = if client_sends { Role::Receiver } else { Role::Sender };
        reply.unsettled = None;
        reply.incomplete_unsettled = false;
        reply.initial_delivery_count = if client_sends { None } else { Some(0) };
        reply.max_message_size = Some(MESSAGE_BYTES_MAX as u64);
        reply.offered_capabilities = None;
        reply.desired_capabilities = None;
        reply.properties = None;
        reply.rcv_settle_mode = ReceiverSettleMode::First;
        match kind {
            Ok(kind) => {
                if let (true, Some(id)) = (kind.takes_slot(), kind.identity()) {
                    Box::pin(self.take_slot(id)).await;
                }
                frame::put_performative(&mut self.out, channel, &Performative::Attach(reply), &[]);
                let delivery_count = attach.initial_delivery_count.unwrap_or(0);
                let link = Link {
                    kind,
                    delivery_count: if client_sends { delivery_count } else { 0 },
                    credit: if client_sends { LINK_CREDIT } else { 0 },
                    unsettled: 0,
                    partial: None,
                    backlog: VecDeque::new(),
                };
                let kind = link.kind.clone();
                if let Some(session) = self.sessions.get_mut(&channel) {
                    session.links.insert(handle, link);
                }
                self.set_subscription(&kind, true);
                if client_sends {
                    if let Some(flow) = self.link_flow(channel, handle) {
                        frame::put_performative(&mut self.out, channel, &Performative::Flow(flow), &[]);
                    }
                }
            }
            Err(e) => {
                log::warn!("{}: attach of {:?} refused: {}", self.peer, attach.name, e);
                Metrics::inc(&self.broker.metrics.unauthorized_topics);
                // AMQP 1.0 2.6.3: a refused link is attached without its terminus, then detached.
                if client_sends {
                    reply.target = None;
                } else {
                    reply.source = None;
                }
                frame::put_performative(&mut self.out, channel, &Performative::Attach(reply), &[]);
                let detach = Detach { handle: handle.into(), closed: true, error: Some(e) };
                frame::put_performative(&mut self.out, channel, &Performative::Detach(detach), &[]);
            }
        }
    }

    fn flow(&mut self, channel: u16, flow: Flow) {
        let Some(handle) = flow.handle.map(|h| h.0) else { return };
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        let Some(link) = session.links.get_mut(&handle) else { return };
        if link.kind.hub_sends() {
            // AMQP 1.0 2.6.7: credit = the receiver's delivery-count + its credit - ours.
            let theirs = flow.delivery_count.unwrap_or(0);
            let credit = flow.link_credit.unwrap_or(0);
            link.credit = theirs.wrapping_add(credit).wrapping_sub(link.delivery_count).min(LINK_CREDIT);
            self.send_backlog(channel, handle);
            if flow.drain {
                // Nothing more to send now: the rest of the credit is used up (2.6.7).
                self.drain(channel, handle);
            }
        }
    }

    /// Sends what waits on a sending link, as far as its credit goes; each message in
    /// transfers of at most the client's frame size. Unsettled ones are tracked until the
    /// client's disposition.
    fn send_backlog(&mut self, channel: u16, handle: u32) {
        let chunk = self.peer_max_frame.saturating_sub(TRANSFER_OVERHEAD_BYTES).max(FRAME_BYTES_MIN / 2);
        let mut tracked = Vec::new();
        let identity = {
            let Some(session) = self.sessions.get_mut(&channel) else { return };
            let Some(link) = session.links.get_mut(&handle) else { return };
            while link.credit > 0 {
                let Some(out) = link.backlog.pop_front() else { break };
                let delivery_id = session.next_outgoing_id;
                session.next_outgoing_id = session.next_outgoing_id.wrapping_add(1);
                link.credit -= 1;
                link.delivery_count = link.delivery_count.wrapping_add(1);
                let settled = matches!(out.track, Track::Settled);
                let mut parts = out.bytes.chunks(chunk).peekable();
                let mut first = true;
                // An empty message still needs one transfer.
                let empty: &[u8] = &[];
                if parts.peek().is_none() {
                    put_transfer(&mut self.out, channel, handle, delivery_id, settled, false, true, empty);
                }
                while let Some(part) = parts.next() {
                    let more = parts.peek().is_some();
                    put_transfer(&mut self.out, channel, handle, delivery_id, settled, more, first, part);
                    first = false;
                }
                if !settled {
                    tracked.push((delivery_id, out.track));
                }
            }
            session.links.get(&handle).and_then(|l| l.kind.identity().cloned())
        };
        let Some(identity) = identity else { return };
        for (delivery_id, track) in tracked {
            let Some(owned) = self.owned.get_mut(&identity) else { return };
            let id = owned.inflight.next_id();
            match track {
                Track::Input(origin) => owned.inflight.sent(id, origin),
                Track::Completion(done) => owned.inflight.sent_completion(id, done),
                Track::Settled => continue,
            }
            self.outgoing.insert((channel, delivery_id), (identity.clone(), id));
        }
    }

    /// The client asked to drain a sending link: its remaining credit is used up.
    fn drain(&mut self, channel: u16, handle: u32) {
        let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.get_mut(&handle)) else { return };
        link.delivery_count = link.delivery_count.wrapping_add(link.credit);
        link.credit = 0;
        if let Some(flow) = self.link_flow(channel, handle) {
            frame::put_performative(&mut self.out, channel, &Performative::Flow(flow), &[]);
        }
    }

    /// A message for `identity`'s link of `kind` (the first one attached): queued for credit
    /// and sent as far as credit goes. False when no such link is attached or its backlog is
    /// full.
    fn queue_out(&mut self, identity: &Identity, kind: fn(&Kind) -> bool, out: Out) -> bool {
        let Some((channel, handle)) = self.find_link(identity, kind) else { return false };
        let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.get_mut(&handle)) else { return false };
        if link.backlog.len() >= CONTROL_BACKLOG_MAX {
            return false;
        }
        link.backlog.push_back(out);
        self.send_backlog(channel, handle);
        true
    }

    /// The first link of `identity` whose kind matches.
    fn find_link(&self, identity: &Identity, kind: fn(&Kind) -> bool) -> Option<(u16, u32)> {
        let mut found: Option<(u16, u32)> = None;
        for (channel, session) in &self.sessions {
            for (handle, link) in &session.links {
                if kind(&link.kind) && link.kind.identity() == Some(identity) {
                    let here = (*channel, *handle);
                    found = Some(found.map_or(here, |f| f.min(here)));
                }
            }
        }
        found
    }

    /// Takes the slot of `identity` over (once per connection): any other connection of the
    /// identity is told to end and given a moment to hand it over; what the slot subscribed
    /// to starts afresh (an AMQP client attaches its links again on every connection).
    async fn take_slot(&mut self, identity: &Identity) {
        if self.owned.contains_key(identity) {
            return;
        }
        let Claim { slot, connection_id, kick } = self.broker.take_slot(identity, Kick::new(None), &self.peer).await;
        {
            let mut state = slot.state();
            state.inputs = None;
            state.subscriptions = Subscriptions::default();
            state.persistent = false;
        }
        slot.bump();
        self.owned.insert(identity.clone(), Owned { slot, connection_id, kick, inflight: InFlight::default() });
    }

    /// What a link of `kind` being attached (`on`) or gone means for its identity's slot:
    /// inputs subscribed (a new generation: the pumps start again from the checkpoints), and
    /// the twin, method and C2D subscriptions, which the cloud side hears of.
    fn set_subscription(&mut self, kind: &Kind, on: bool) {
        let Some(identity) = kind.identity() else { return };
        let Some(owned) = self.owned.get_mut(identity) else { return };
        let slot = owned.slot.clone();
        if !slot.state().owner.as_ref().is_some_and(|o| o.connection_id == owned.connection_id) {
            return;
        }
        if let Kind::Inputs(_) = kind {
            slot.state().inputs = on.then_some(Settle::AtLeastOnce);
            if !on {
                // What was sent and not settled comes again from the checkpoint.
                owned.inflight = InFlight::default();
                self.outgoing.retain(|_, (id, _)| id != identity);
            }
            slot.bump();
            return;
        }
        let subscriptions = {
            let mut state = slot.state();
            let s = &mut state.subscriptions;
            match kind {
                Kind::DeviceBound(_) => s.device_bound = on,
                Kind::TwinReplies(_) => {
                    // Attaching the twin receiver subscribes to desired patches (edgeHub's
                    // TwinSendingLinkHandler); the client may turn them off with DELETE.
                    s.twin_responses = on;
                    s.desired = on;
                }
                Kind::MethodCalls(_) => s.methods = on,
                _ => return,
            }
            state.subscriptions
        };
        let id = identity.client_id();
        if let Some(cloud) = self.broker.cloud() {
            cloud.subscriptions(&id, subscriptions);
            if on && matches!(kind, Kind::TwinReplies(_)) {
                cloud.twin_used(&id, false);
            }
        }
        if on && matches!(kind, Kind::TwinReplies(_)) {
            slot.desired_changed();
        }
        // Method callers waiting for this client to subscribe look again.
        crate::broker::queue::notify_listened(&slot.changed, usize::MAX);
    }

    /// A link was detached or its session ended.
    fn link_gone(&mut self, link: &Link) {
        if link.kind.takes_slot() {
            let kind = link.kind.clone();
            // Another link of the same kind and identity keeps the subscription.
            let still = kind.identity().and_then(|id| self.find_link(id, kind_matcher(&kind))).is_some();
            if !still {
                self.set_subscription(&kind, false);
            }
        }
    }

    /// Futures that wake the connection for its slots: the control lane always, the mailbox
    /// while the inputs link has credit, the takeover signal.
    fn slot_waits(&self) -> Vec<SlotWait> {
        let mut waits: Vec<SlotWait> = Vec::new();
        for (identity, owned) in &self.owned {
            let (slot, id) = (owned.slot.clone(), identity.clone());
            waits.push(Box::pin(async move {
                match slot.control.pop().await {
                    Some(c) => Wake::Slot(id, SlotEvent::Control(c)),
                    None => smol::future::pending().await,
                }
            }));
            let (kick, id) = (owned.kick.clone(), identity.clone());
            waits.push(Box::pin(async move {
                match kick.signal() {
                    Some(signal) => signal.wait().await,
                    None => smol::future::pending().await,
                }
                Wake::Slot(id, SlotEvent::Kicked)
            }));
            if self.input_room(identity).is_some() {
                let (slot, id) = (owned.slot.clone(), identity.clone());
                waits.push(Box::pin(async move {
                    match slot.mailbox.pop().await {
                        Some(d) => Wake::Slot(id, SlotEvent::Delivery(d)),
                        None => smol::future::pending().await,
                    }
                }));
            }
        }
        waits
    }

    /// The inputs link of `identity` if it can take one more delivery now.
    fn input_room(&self, identity: &Identity) -> Option<(u16, u32)> {
        let owned = self.owned.get(identity)?;
        let (channel, handle) = self.find_link(identity, |k| matches!(k, Kind::Inputs(_)))?;
        let link = self.sessions.get(&channel)?.links.get(&handle)?;
        (link.credit > 0 && link.backlog.is_empty() && owned.inflight.len() < LINK_CREDIT as usize)
            .then_some((channel, handle))
    }

    /// Takes what is ready on the owned slots' lanes, without waiting.
    fn pump_slots(&mut self) {
        let identities: Vec<Identity> = self.owned.keys().cloned().collect();
        for identity in identities {
            for _ in 0..SLOT_BATCH_MAX {
                let Some(control) = self.owned.get(&identity).and_then(|o| o.slot.control.try_pop()) else { break };
                self.send_control(&identity, control);
            }
            for _ in 0..SLOT_BATCH_MAX {
                if self.input_room(&identity).is_none() {
                    break;
                }
                let Some(delivery) = self.owned.get(&identity).and_then(|o| o.slot.mailbox.try_pop()) else { break };
                self.send_input(&identity, delivery);
            }
        }
    }

    async fn slot_event(&mut self, identity: &Identity, event: SlotEvent) {
        match event {
            SlotEvent::Delivery(delivery) => self.send_input(identity, delivery),
            SlotEvent::Control(control) => self.send_control(identity, control),
            SlotEvent::Kicked => self.kicked(identity),
        }
    }

    /// Another connection took `identity`'s slot: the links the hub sent on are detached
    /// with `amqp:link:stolen`; telemetry links stay.
    fn kicked(&mut self, identity: &Identity) {
        let Some(owned) = self.owned.remove(identity) else { return };
        log::info!("{}: {identity} taken over by a new connection; its receiving links are closed", self.peer);
        self.outgoing.retain(|_, (id, _)| id != identity);
        let mut detach = Vec::new();
        for (channel, session) in &self.sessions {
            for (handle, link) in &session.links {
                if link.kind.takes_slot() && link.kind.identity() == Some(identity) {
                    detach.push((*channel, *handle));
                }
            }
        }
        for (channel, handle) in detach {
            let e = error(ErrorCondition::LinkError(LinkError::Stolen), "taken over by a new connection");
            self.detach(channel, handle, Some(e));
        }
        owned.kick.done.fire();
    }

    /// The connection ended: the slots it owns are given up.
    fn release_all(&mut self) {
        for (identity, owned) in self.owned.drain() {
            let ours = {
                let mut state = owned.slot.state();
                let ours = state.owner.as_ref().is_some_and(|o| o.connection_id == owned.connection_id);
                if ours {
                    state.owner = None;
                    state.inputs = None;
                    state.subscriptions = Subscriptions::default();
                }
                ours
            };
            if ours {
                owned.slot.bump();
                if let Some(cloud) = self.broker.cloud() {
                    cloud.disconnected(&identity.client_id());
                }
            }
            owned.kick.done.fire();
        }
    }

    /// One module-input delivery from the mailbox onto the inputs link, unsettled: its
    /// record is committed when the client accepts it. A delivery made for an earlier
    /// generation is dropped (the pump starts again from the checkpoint).
    fn send_input(&mut self, identity: &Identity, delivery: Delivery) {
        let Some(owned) = self.owned.get(identity) else { return };
        if delivery.origin.is_some_and(|o| o.generation != owned.slot.generation()) {
            return;
        }
        let Some((channel, handle)) = self.find_link(identity, |k| matches!(k, Kind::Inputs(_))) else { return };
        let metrics = &self.broker.metrics;
        Metrics::inc(&metrics.deliveries_sent);
        if !delivery.dup && delivery.enqueued_unix_ms > 0 {
            let now = tinyedge_platform::rt::now_unix_ms();
            Metrics::inc(&metrics.process_modules_count);
            Metrics::add(&metrics.process_modules_ms, now.saturating_sub(delivery.enqueued_unix_ms));
        }
        if let Some(origin) = delivery.origin {
            owned.slot.note_sent(origin.endpoint, origin.seq);
        }
        let mut bag = HubProperties::parse(delivery.properties()).unwrap_or_default();
        bag.remove_system("$.on");
        let message = amqp_message::from_hub_properties(&bag, Some(&delivery.input), delivery.payload());
        let out = Out { bytes: amqp_message::encode(&message), track: Track::Input(delivery.origin) };
        if let Some(link) = self.sessions.get_mut(&channel).and_then(|s| s.links.get_mut(&handle)) {
            link.backlog.push_back(out);
        }
        self.send_backlog(channel, handle);
    }

    /// One control-lane item onto the identity's link for it; counted and dropped when the
    /// client has no such link (as MQTT drops what a client did not subscribe to).
    fn send_control(&mut self, identity: &Identity, control: Control) {
        let Some(slot) = self.owned.get(identity).map(|o| o.slot.clone()) else { return };
        if matches!(control, Control::DesiredChanged) {
            // Before reading the subscriptions: a subscription made meanwhile queues a new
            // notice instead of finding this one still pending.
            slot.desired_taken();
        }
        let subscriptions = slot.state().subscriptions;
        let client_id = identity.client_id();
        let twin = |k: &Kind| matches!(k, Kind::TwinReplies(_));
        let sent = match control {
            Control::TwinResponse { status, rid, version, body, desired_version } => {
                self.twin_answer(identity, &rid, status, version, &body, desired_version)
            }
            Control::DesiredChanged => {
                if !subscriptions.desired {
                    return;
                }
                let Some((version, body)) = self.broker.twins.pending_desired(&client_id).and_then(|patch| {
                    let version = patch.get("$version").and_then(serde_json::Value::as_u64)?;
                    Some((version, serde_json::to_vec(&patch).ok()?))
                }) else {
                    return;
                };
                let message = amqp_message::twin_message(None, None, Some(version), &body);
                let sent = self.queue_out(
                    identity,
                    twin,
                    Out { bytes: amqp_message::encode(&message), track: Track::Settled },
                );
                if sent {
                    Metrics::inc(&self.broker.metrics.twin_desired_patches);
                    self.desired_written.push((client_id, version));
                }
                sent
            }
            Control::MethodRequest { name, rid, payload } => {
                let message = amqp_message::method_request(&rid, &name, &payload);
                let out = Out { bytes: amqp_message::encode(&message), track: Track::Settled };
                subscriptions.methods && self.queue_out(identity, |k| matches!(k, Kind::MethodCalls(_)), out)
            }
            Control::DeviceBound { bag, payload, done } => {
                let bag = HubProperties::parse(&bag).unwrap_or_default();
                let message = amqp_message::from_hub_properties(&bag, None, &payload);
                // Not completed when it is not sent: the cloud delivers it again.
                let out = Out { bytes: amqp_message::encode(&message), track: Track::Completion(done) };
                subscriptions.device_bound && self.queue_out(identity, |k| matches!(k, Kind::DeviceBound(_)), out)
            }
        };
        if !sent {
            Metrics::inc(&self.broker.metrics.control_unsubscribed);
        }
    }

    /// A twin answer on the identity's twin receiving link: correlation id = the request's,
    /// annotations `status` and `version`.
    fn twin_answer(
        &mut self,
        identity: &Identity,
        rid: &str,
        status: u16,
        version: Option<u64>,
        body: &[u8],
        desired_version: Option<u64>,
    ) -> bool {
        let message = amqp_message::twin_message(Some(rid), Some(status), version, body);
        let out = Out { bytes: amqp_message::encode(&message), track: Track::Settled };
        let sent = self.queue_out(identity, |k| matches!(k, Kind::TwinReplies(_)), out);
        if let (true, Some(desired)) = (sent, desired_version) {
            self.desired_written.push((identity.client_id(), desired));
        }
        sent
    }

    /// The desired versions just written reached the client: remember them (the twin file is
    /// written off the executor thread).
    fn record_desired_delivered(&mut self) {
        for (id, version) in self.desired_written.drain(..) {
            let twins = self.broker.twins.clone();
            tinyedge_platform::rt::spawn(smol::unblock(move || {
                if let Err(error) = twins.mark_delivered(&id, version) {
                    log::debug!("twin of {id}: {error}");
                }
            }))
            .detach();
        }
    }

    /// The client settled deliveries the hub sent: `accepted` commits a module input (in
    /// order per endpoint) or completes a C2D message; `rejected` drops a module input (as
    /// edgeHub does); `released` and `modified` leave it for the next connection.
    fn disposition(&mut self, channel: u16, disposition: Disposition) {
        if disposition.role != Role::Receiver {
            return;
        }
        let last = disposition.last.unwrap_or(disposition.first);
        if last.wrapping_sub(disposition.first) > LINK_CREDIT * u32::from(SESSIONS_MAX) {
            return;
        }
        let accepted = matches!(disposition.state, Some(DeliveryState::Accepted(_)));
        let rejected = matches!(disposition.state, Some(DeliveryState::Rejected(_)));
        let commit = self.broker.commit.clone();
        let mut id = disposition.first;
        loop {
            if let Some((identity, iid)) = self.outgoing.remove(&(channel, id)) {
                if let Some(owned) = self.owned.get_mut(&identity) {
                    if accepted || rejected {
                        owned.inflight.acked(iid, &commit);
                    }
                }
            }
            if id == last {
                break;
            }
            id = id.wrapping_add(1);
        }
        if !disposition.settled {
            // rcv-settle-mode second: the sender settles once the receiver has.
            let reply = Disposition { role: Role::Sender, settled: true, batchable: false, ..disposition };
            frame::put_performative(&mut self.out, channel, &Performative::Disposition(reply), &[]);
        }
    }

    /// Serves a twin request (annotations `operation` and `resource`): GET and PATCH of the
    /// reported properties through the hub's request handler, PUT and DELETE of
    /// `/notifications/twin/properties/desired` (subscribe, unsubscribe) here; answered on
    /// the twin receiving link, errors included.
    async fn twin_request(&mut self, identity: &Identity, message: &AmqpMessage) {
        let operation = amqp_message::annotation_text(message, "operation").unwrap_or_default();
        let resource = amqp_message::annotation_text(message, "resource").unwrap_or_default();
        let rid = amqp_message::correlation_text(message).unwrap_or_default();
        let body = amqp_message::body_bytes(message);
        const DESIRED: &str = "/notifications/twin/properties/desired";
        let request = match (operation.as_str(), resource.trim_end_matches('/')) {
            ("GET", "") => Ok(IotHubRequest::TwinGet { rid: &rid }),
            ("PATCH", "/properties/reported") => Ok(IotHubRequest::TwinPatchReported { rid: Some(&rid) }),
            ("PUT" | "DELETE", DESIRED) => {
                let on = operation == "PUT";
                if let Some(owned) = self.owned.get(identity) {
                    let slot = owned.slot.clone();
                    let subscriptions = {
                        let mut state = slot.state();
                        state.subscriptions.desired = on;
                        state.subscriptions
                    };
                    if let Some(cloud) = self.broker.cloud() {
                        cloud.subscriptions(&identity.client_id(), subscriptions);
                    }
                    if on {
                        slot.desired_changed();
                    }
                }
                self.twin_answer(identity, &rid, 200, None, &[], None);
                return;
            }
            _ => Err(crate::topic::RequestError {
                rid: Some(&rid),
                status: 400,
                reason: format!("twin operation {operation:?} on {resource:?} is not served"),
            }),
        };
        let broker = self.broker.clone();
        let served = requests::serve(&broker, identity, request, body).await;
        if let Some(note) = &served.note {
            log::warn!("{}: twin request of {identity}: {note}", self.peer);
        }
        if let Some(Control::TwinResponse { status, rid, version, body, desired_version }) = served.answer {
            if !self.twin_answer(identity, &rid, status, version, &body, desired_version) {
                Metrics::inc(&broker.metrics.control_unsubscribed);
            }
        }
    }

    /// A method answer: correlation id = the call's request id, `IoThub-status`, the JSON body.
    async fn method_answer(&mut self, identity: &Identity, message: &AmqpMessage) {
        let rid = amqp_message::correlation_text(message).unwrap_or_default();
        // edgeHub's status for an answer without a valid one.
        let status = amqp_message::application_int(message, amqp_message::METHOD_STATUS).unwrap_or(400_000);
        let body = amqp_message::body_bytes(message);
        let broker = self.broker.clone();
        let request = Ok(IotHubRequest::MethodResponse { status, rid: &rid });
        let served = requests::serve(&broker, identity, request, body).await;
        if let Some(note) = &served.note {
            log::warn!("{}: method answer of {identity}: {note}", self.peer);
        }
    }

    async fn transfer(&mut self, channel: u16, transfer: Transfer, payload: Bytes) -> Result<(), Ending> {
        let handle = transfer.handle.0;
        let Some(session) = self.sessions.get_mut(&channel) else { return Ok(()) };
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        let Some(link) = session.links.get_mut(&handle) else {
            return Err(Ending::Error(error(
                ErrorCondition::SessionError(SessionError::UnattachedHandle),
                format!("transfer on handle {handle}, which is not attached"),
            )));
        };
        if link.kind.hub_sends() {
            return Err(Ending::Error(error(
                ErrorCondition::AmqpError(AmqpError::NotAllowed),
                format!("transfer on handle {handle}, on which the hub is the sender"),
            )));
        }
        let partial = match link.partial.take() {
            Some(partial) => partial,
            None => {
                if link.credit == 0 {
                    let e =
                        error(ErrorCondition::LinkError(LinkError::TransferLimitExceeded), "transfer without credit");
                    self.detach(channel, handle, Some(e));
                    return Ok(());
                }
                link.credit -= 1;
                link.delivery_count = link.delivery_count.wrapping_add(1);
                Partial {
                    delivery_id: transfer.delivery_id.unwrap_or(0),
                    settled: transfer.settled.unwrap_or(false),
                    bytes: BytesMut::new(),
                }
            }
        };
        let mut partial = partial;
        if partial.bytes.len() + payload.len() > MESSAGE_BYTES_MAX {
            let e = error(
                ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
                format!("message over {MESSAGE_BYTES_MAX} bytes"),
            );
            self.detach(channel, handle, Some(e));
            return Ok(());
        }
        partial.bytes.extend_from_slice(&payload);
        if transfer.aborted {
            return Ok(());
        }
        if transfer.more {
            link.partial = Some(partial);
            return Ok(());
        }
        if !partial.settled {
            link.unsettled += 1;
        }
        let kind = link.kind.clone();
        let message = match amqp_message::decode(&partial.bytes) {
            Ok(m) => m,
            Err(e) => {
                Metrics::inc(&self.broker.metrics.malformed_packets);
                let state = DeliveryState::Rejected(Rejected {
                    error: Some(error(ErrorCondition::AmqpError(AmqpError::DecodeError), e)),
                });
                if !partial.settled {
                    self.settle(channel, handle, partial.delivery_id, state);
                }
                return Ok(());
            }
        };
        match kind {
            Kind::CbsRequests => {
                Box::pin(self.put_token(channel, &message)).await;
                if !partial.settled {
                    self.settle(channel, handle, partial.delivery_id, DeliveryState::Accepted(Accepted {}));
                }
            }
            Kind::Telemetry(identity) => {
                let properties = amqp_message::to_hub_properties(&message);
                let body = amqp_message::body_bytes(&message);
                let broker = self.broker.clone();
                match ingest::ingest(&broker.router, &broker.metrics, &identity, properties, body) {
                    Ingested::Accepted(seq) if !partial.settled && seq > 0 => {
                        Metrics::inc(&broker.clients.of(&identity.client_id()).messages_received);
                        self.pending.push_back(Pending { channel, handle, delivery_id: partial.delivery_id, seq });
                    }
                    Ingested::Accepted(_) => {
                        if !partial.settled {
                            self.settle(channel, handle, partial.delivery_id, DeliveryState::Accepted(Accepted {}));
                        }
                    }
                    Ingested::Refused(why) => {
                        log::warn!("{}: message from {identity} not accepted: {why}", self.peer);
                        if !partial.settled {
                            let state = DeliveryState::Rejected(Rejected {
                                error: Some(error(ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded), why)),
                            });
                            self.settle(channel, handle, partial.delivery_id, state);
                        }
                    }
                }
            }
            Kind::TwinRequests(identity) => {
                if !partial.settled {
                    self.settle(channel, handle, partial.delivery_id, DeliveryState::Accepted(Accepted {}));
                }
                Box::pin(self.twin_request(&identity, &message)).await;
            }
            Kind::MethodReplies(identity) => {
                Box::pin(self.method_answer(&identity, &message)).await;
                if !partial.settled {
                    self.settle(channel, handle, partial.delivery_id, DeliveryState::Accepted(Accepted {}));
                }
            }
            Kind::CbsReplies | Kind::Inputs(_) | Kind::DeviceBound(_) | Kind::TwinReplies(_) | Kind::MethodCalls(_) => {
            }
        }
        Ok(())
    }

    /// Serves a CBS request: the token is checked with the hub's one check (the device scope
    /// asked for identities the hub does not know), the answer queued on this session's
    /// `$cbs` receiving link.
    async fn put_token(&mut self, channel: u16, request: &AmqpMessage) {
        let (status, description) = match amqp_message::put_token(request) {
            Err(why) => (400, why),
            Ok(put) => match address::audience_identity(&put.audience) {
                None => (404, format!("audience {:?} names no device or module", put.audience)),
                Some(identity) => match self.check_token(&identity, &put.token).await {
                    Ok(expiry) => {
                        self.authenticated = true;
                        self.tokens.insert(identity.clone(), expiry);
                        log::info!("{}: {identity} authenticated over AMQP (CBS)", self.peer);
                        (200, "OK".to_string())
                    }
                    Err(e) => {
                        Metrics::inc(&self.broker.metrics.connections_refused);
                        log::warn!("{}: put-token for {identity} refused: {e}", self.peer);
                        (401, e.to_string())
                    }
                },
            },
        };
        let reply = amqp_message::encode(&amqp_message::cbs_reply(request, status, &description));
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        let Some((&handle, link)) = session.links.iter_mut().find(|(_, l)| l.kind == Kind::CbsReplies) else {
            log::debug!("{}: CBS answer dropped: no $cbs receiving link", self.peer);
            return;
        };
        if link.backlog.len() < CBS_BACKLOG_MAX {
            link.backlog.push_back(Out { bytes: reply, track: Track::Settled });
        }
        self.send_backlog(channel, handle);
    }

    async fn check_token(&self, identity: &Identity, token: &str) -> Result<u64, AuthError> {
        let verdict = self.broker.authenticator().authenticate_token(identity, token, unix_now());
        match (verdict, self.broker.scope()) {
            (Err(refused @ (AuthError::UnknownIdentity(_) | AuthError::Token(_))), Some(scope)) => {
                let keys = scope.lookup(identity).await;
                if keys.is_empty() {
                    return Err(refused);
                }
                self.broker.authenticator().authenticate_with_keys(identity, token, &keys, unix_now())
            }
            (verdict, _) => verdict,
        }
        .map(|auth| auth.token_expiry)
    }
}
