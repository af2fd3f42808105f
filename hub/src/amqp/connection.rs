//! One AMQP connection: the protocol header (plain or SASL), open/begin/attach/flow/transfer/
//! disposition/detach/end/close, CBS put-token, and the telemetry links into [`ingest`].
//!
//! One task owns the socket and every session and link of the connection; it waits on the
//! socket, on the store making the oldest unsettled telemetry durable, and on one timer (the
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
use crate::broker::Broker;
use crate::ingest::{self, Ingested};
use crate::listeners::permit::Permit;
use crate::metrics::Metrics;

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

/// What a link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `$cbs`, client sends put-token requests.
    CbsRequests,
    /// `$cbs`, client receives the answers.
    CbsReplies,
    /// `…/messages/events`, client sends telemetry of `Identity`.
    Telemetry(Identity),
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
    backlog: VecDeque<Vec<u8>>,
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
            if conn.opened {
                frame::put_performative(&mut conn.out, 0, &Performative::Close(Close { error: Some(e) }), &[]);
            }
        }
    }
    let _ = stream.write_all(&conn.out).await;
    let _ = stream.flush().await;
    let _ = stream.close().await;
}

enum Wake {
    Read(std::io::Result<usize>),
    Durable,
    Timer,
}

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
        stream.write_all(&frame::HEADER_AMQP).await.map_err(|e| Ending::Closed(e.to_string()))
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
            if !self.out.is_empty() {
                if let Err(end) = self.flush(stream).await {
                    return end;
                }
                last_write = Instant::now();
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
                smol::future::or(read, smol::future::or(Box::pin(durable), timer)).await
            };
            match wake {
                Wake::Read(Ok(0)) => return Ending::Closed("closed by the client".into()),
                Wake::Read(Ok(_)) => last_read = Instant::now(),
                Wake::Read(Err(e)) => return Ending::Closed(format!("read error: {e}")),
                Wake::Durable => {}
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
                    if matches!(&link.kind, Kind::Telemetry(id) if *id == identity) {
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
        if let Some(session) = self.sessions.get_mut(&channel) {
            session.links.remove(&handle);
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
                self.sessions.remove(&channel);
                self.pending.retain(|p| p.channel != channel);
                frame::put_performative(&mut self.out, channel, &Performative::End(End { error: None }), &[]);
                Ok(())
            }
            Performative::Attach(attach) => {
                self.attach(channel, attach);
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
            // Dispositions of what the hub sends: its CBS answers are sent settled.
            Performative::Disposition(_) => Ok(()),
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
        let reply = Open {
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
        };
        frame::put_performative(&mut self.out, 0, &Performative::Open(reply), &[]);
        Ok(())
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
        match (address::parse(&address), client_sends) {
            (Some(Address::Cbs), true) => Ok(Kind::CbsRequests),
            (Some(Address::Cbs), false) => Ok(Kind::CbsReplies),
            (Some(Address::Events(id)), true) if self.authorized(&id) => Ok(Kind::Telemetry(id)),
            (Some(Address::Events(id)), true) => Err(unauthorized(&id)),
            _ => Err(not_found()),
        }
    }

    fn attach(&mut self, channel: u16, attach: Attach) {
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
                if let Some(session) = self.sessions.get_mut(&channel) {
                    session.links.insert(handle, link);
                }
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
        if matches!(link.kind, Kind::CbsReplies) {
            // AMQP 1.0 2.6.7: credit = the receiver's delivery-count + its credit - ours.
            let theirs = flow.delivery_count.unwrap_or(0);
            let credit = flow.link_credit.unwrap_or(0);
            link.credit = theirs.wrapping_add(credit).wrapping_sub(link.delivery_count).min(LINK_CREDIT);
            self.send_backlog(channel, handle);
        }
    }

    /// Sends what waits on a sending link, as far as its credit goes.
    fn send_backlog(&mut self, channel: u16, handle: u32) {
        let Some(session) = self.sessions.get_mut(&channel) else { return };
        let Some(link) = session.links.get_mut(&handle) else { return };
        while link.credit > 0 {
            let Some(bytes) = link.backlog.pop_front() else { break };
            let delivery_id = session.next_outgoing_id;
            session.next_outgoing_id = session.next_outgoing_id.wrapping_add(1);
            link.credit -= 1;
            link.delivery_count = link.delivery_count.wrapping_add(1);
            let transfer = Transfer {
                handle: handle.into(),
                delivery_id: Some(delivery_id),
                delivery_tag: Some(fe2o3_amqp_types::definitions::DeliveryTag::from(
                    delivery_id.to_be_bytes().to_vec(),
                )),
                message_format: Some(0),
                settled: Some(true),
                more: false,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: false,
            };
            frame::put_performative(&mut self.out, channel, &Performative::Transfer(transfer), &bytes);
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
        if !matches!(link.kind, Kind::CbsRequests | Kind::Telemetry(_)) {
            return Ok(());
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
            Kind::CbsReplies => {}
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
            link.backlog.push_back(reply);
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
