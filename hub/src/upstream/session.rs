//! One connection to the cloud, from TCP connect to its end: TLS, CONNECT/CONNACK, the
//! subscriptions, then a single loop that takes messages from the outbox into the window,
//! writes them, reads acknowledgements and inbound PUBLISHes, pings, and renews the token.
//!
//! One task does it all, waiting on whichever comes first — bytes from the hub, a deadline,
//! or the outbox — so no lock or channel sits between reading and writing. Writes go through
//! one buffer that is flushed once per turn, under a timeout: a hub that stops reading cannot
//! stall the link forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::mqtt::codec::packet_kind;
use bytes::BytesMut;
use mqttbytes::v4::{
    self, Connect, ConnectReturnCode, Disconnect, Packet, PingReq, PubAck, Publish, Subscribe, SubscribeReasonCode,
};
use mqttbytes::QoS;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tinyedge_platform::rt::TcpSocket;

use super::error::LinkError;
use super::token::{self, Credentials};
use super::window::{Released, Window, SUBSCRIBE_PKID};
use super::{Link, OnMessage};

/// Budget for TCP connect, TLS handshake and CONNACK together: the Azure IoT C SDK's CONNACK
/// timeout, and edgeHub's per-send timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A write (one turn's packets) must complete within this; longer means the path is dead.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// IoT Hub's largest cloud-to-device message (256 KiB) plus room for the topic with its
/// property bag and the MQTT headers; a bigger packet is refused before it is buffered.
pub const INBOUND_PACKET_BYTES_MAX: usize = 256 * 1024 + 16 * 1024;
/// IoT Hub's largest device-to-cloud message; a bigger one would get the link disconnected
/// on every attempt, so it is skipped (and counted) instead of blocking the queue forever.
pub const OUTBOUND_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Bytes asked of the socket per read: a few dozen PUBACKs or a small C2D message.
const READ_CHUNK_BYTES: usize = 4096;
/// A read or write buffer grown beyond this by a burst of large messages is given back once
/// empty instead of being held for the link's lifetime (a window of 256 KiB messages would
/// otherwise pin megabytes on a small gateway).
const BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// At token renewal, how long to wait for the PUBACKs of messages in flight before the clean
/// DISCONNECT (after it, they are simply sent again on the new connection).
const RENEW_DRAIN_MAX: Duration = Duration::from_secs(5);

/// Why a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The SAS token is due for renewal: the session disconnected cleanly.
    Renewal,
}

/// Why a session failed, and how long it had been connected (`None`: it never was).
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: LinkError,
    pub connected_for: Option<Duration>,
}

/// What the link keeps across sessions: the window, and how far the outbox has been read.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub window: Window,
    /// `(seq, enqueued unix ms)` of window entries not written yet, in order.
    pub enqueued: std::collections::VecDeque<(u64, u64)>,
    /// The last seq taken from the outbox (into the window or skipped).
    pub fetched_through: u64,
}

/// The link's CONNECT credentials with a token fresh from now.
fn credentials(link: &Link) -> token::Credentials {
    token::credentials(
        &link.config.iothub_hostname,
        &link.config.device_id,
        link.config.module_id.as_deref(),
        &link.config.device_key,
        unix_now(),
        link.config.token_ttl_secs,
    )
}

/// Connects, runs the session until it ends, and reports how.
pub(crate) async fn run(link: &Link, pipeline: &mut Pipeline) -> Result<Ended, Failure> {
    let credentials = credentials(link);
    let on_message = link.on_message();
    let connecting = async {
        let mut connection = connect(link).await?;
        connection.handshake(&credentials, link.config.keep_alive_secs).await?;
        Ok(connection)
    };
    let timeout = async {
        smol::Timer::after(CONNECT_TIMEOUT).await;
        Err(LinkError::ConnectTimeout(CONNECT_TIMEOUT))
    };
    let mut connection =
        smol::future::or(connecting, timeout).await.map_err(|error| Failure { error, connected_for: None })?;
    drop(credentials);
    link.mark_connected();
    connection.subscribe(&link.subscriptions());
    if let Some(callback) = link.connected_callback() {
        callback(link.connection());
    }
    let connected_at = Instant::now();
    let result = connection.serve(link, pipeline, on_message.as_deref(), connected_at).await;
    result.map_err(|error| Failure { error, connected_for: Some(connected_at.elapsed()) })
}

/// One connection as [`run`] makes it — TCP, TLS with the link's roots and, when
/// `authenticate`, CONNECT with a fresh SAS token up to an accepting CONNACK and a clean
/// DISCONNECT — all within `timeout`. Nothing is subscribed or published.
pub(crate) async fn probe(link: &Link, authenticate: bool, timeout: Duration) -> Result<(), LinkError> {
    let attempt = async {
        let mut connection = connect(link).await?;
        if authenticate {
            let credentials = credentials(link);
            connection.handshake(&credentials, link.config.keep_alive_secs).await?;
            let _ = Disconnect.write(&mut connection.wbuf);
            connection.flush().await?;
        }
        Ok(())
    };
    let limit = async {
        smol::Timer::after(timeout).await;
        Err(LinkError::ConnectTimeout(timeout))
    };
    smol::future::or(attempt, limit).await
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// TCP, then TLS when the URL asks for it.
async fn connect(link: &Link) -> Result<Connection, LinkError> {
    let target = &link.target;
    let address = target.to_string();
    let tcp = connect_tcp(&target.host, target.port).await.map_err(|error| LinkError::Connect { address, error })?;
    // Small packets (PUBACK, PINGREQ) must not wait for Nagle; publishes are batched per write.
    tcp.get_ref().set_nodelay(true).map_err(LinkError::Io)?;
    let stream = match &link.tls {
        None => Transport::Plain(tcp),
        Some((connector, server_name)) => {
            let tls = connector.connect(server_name.clone(), tcp).await.map_err(LinkError::Tls)?;
            Transport::Tls(Box::new(tls))
        }
    };
    Ok(Connection::new(stream))
}

/// The TCP connection, to the first of the host's addresses that accepts it (as
/// `std::net::TcpStream::connect` tries them), then moved onto the executor's own reactor: the
/// connect waits on async-io (once per session), the session's reads and writes do not.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpSocket> {
    let mut last = None;
    for addr in smol::net::resolve((host, port)).await? {
        match smol::Async::<std::net::TcpStream>::connect(addr).await {
            Ok(stream) => return TcpSocket::new(stream.into_inner()?),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))))
}

/// The socket of one session with its buffers and liveness clocks.
struct Connection {
    stream: Transport,
    /// Received bytes not yet decoded: at most one partial packet plus one read.
    rbuf: BytesMut,
    /// Encoded packets waiting for this turn's flush.
    wbuf: BytesMut,
    chunk: Box<[u8]>,
    last_received: Instant,
    last_sent: Instant,
    /// Filters subscribed (or asked for) on this connection.
    subscribed: usize,
    /// A SUBSCRIBE waits for its SUBACK (only one at a time: they share one packet id).
    suback_pending: bool,
    /// Confirmed publishes waiting for their PUBACK (ids from `CONFIRMED_PKIDS`).
    confirmed: Vec<(u16, smol::channel::Sender<()>)>,
}

/// What ended a wait.
enum Wake {
    Read(io::Result<usize>),
    Deadline,
    MoreMessages,
    Requests,
}

impl Connection {
    fn new(stream: Transport) -> Self {
        let now = Instant::now();
        Connection {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            last_received: now,
            last_sent: now,
            subscribed: 0,
            suback_pending: false,
            confirmed: Vec::new(),
        }
    }

    /// CONNECT, then wait for an accepting CONNACK.
    async fn handshake(&mut self, credentials: &Credentials, keep_alive_secs: u16) -> Result<(), LinkError> {
        let mut connect = Connect::new(credentials.client_id.as_str());
        connect.keep_alive = keep_alive_secs;
        // The link keeps its own retransmit window, so no broker-side session is needed.
        connect.clean_session = true;
        connect.set_login(credentials.username.as_str(), credentials.password.as_str());
        connect.write(&mut self.wbuf).map_err(|e| LinkError::Protocol(format!("cannot encode CONNECT: {e:?}")))?;
        self.flush().await?;
        loop {
            match self.next_packet()? {
                Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => return Ok(()),
                Some(Packet::ConnAck(ack)) => return Err(LinkError::Refused(ack.code as u8)),
                Some(other) => {
                    return Err(LinkError::Protocol(format!("expected CONNACK, got {}", packet_kind(&other))))
                }
                None => self.read_more().await?,
            }
        }
    }

    /// Subscribes to `filters` (QoS 1) in one SUBSCRIBE, unless one waits for its SUBACK.
    fn subscribe(&mut self, filters: &[String]) {
        if filters.is_empty() || self.suback_pending {
            return;
        }
        let mut subscribe = Subscribe::empty_subscribe();
        subscribe.pkid = SUBSCRIBE_PKID;
        for filter in filters {
            subscribe.add(filter.clone(), QoS::AtLeastOnce);
        }
        // Encoding a SUBSCRIBE with a non-zero id and short topics cannot fail.
        let _ = subscribe.write(&mut self.wbuf);
        self.subscribed += filters.len();
        self.suback_pending = true;
    }

    /// SUBSCRIBEs filters added meanwhile, then writes the requests queued on the link —
    /// only once no SUBACK is pending, so an answer never comes before its subscription.
    fn write_requests(&mut self, link: &Link) {
        if !self.suback_pending {
            let added = link.subscriptions_after(self.subscribed);
            self.subscribe(&added);
        }
        if self.suback_pending {
            return;
        }
        for item in link.take_outgoing() {
            match item {
                super::Outgoing::Publish { topic, payload } => {
                    let publish = Publish::from_bytes(topic.as_str(), QoS::AtMostOnce, payload);
                    if publish.write(&mut self.wbuf).is_err() {
                        log::warn!("upstream {}: a request on {topic:?} could not be encoded", link.client_id());
                    }
                }
                super::Outgoing::PubAck { connection, pkid } => {
                    if connection == link.connection() {
                        let _ = PubAck::new(pkid).write(&mut self.wbuf);
                    }
                }
                super::Outgoing::Confirmed { topic, payload, done } => {
                    // A free id of the confirmed range; none free: dropped (the caller retries).
                    let Some(pkid) = super::window::CONFIRMED_PKIDS
                        .clone()
                        .find(|id| self.confirmed.iter().all(|(used, _)| used != id))
                    else {
                        continue;
                    };
                    let mut publish = Publish::from_bytes(topic.as_str(), QoS::AtLeastOnce, payload);
                    publish.pkid = pkid;
                    if publish.write(&mut self.wbuf).is_ok() {
                        self.confirmed.push((pkid, done));
                    }
                }
            }
        }
    }

    /// The connected loop; returns only when the session ends.
    async fn serve(
        &mut self,
        link: &Link,
        pipeline: &mut Pipeline,
        on_message: Option<&OnMessage>,
        connected_at: Instant,
    ) -> Result<Ended, LinkError> {
        let keep_alive = Duration::from_secs(u64::from(link.config.keep_alive_secs));
        let dead_after = keep_alive * 3 / 2;
        let renew_at = connected_at + token::renewal_delay(link.config.token_ttl_secs);
        let mut drain_until: Option<Instant> = None;
        // The last seq written on this connection; `None` resends the whole window first.
        let mut written: Option<u64> = None;
        loop {
            // Listening before looking: a request queued from now on wakes the wait below.
            let requests = link.wake.listen();
            self.write_requests(link);
            if drain_until.is_none() {
                take_from_outbox(link, pipeline);
            }
            let enqueued = &mut pipeline.enqueued;
            let now_ms = super::unix_ms();
            let sent = pipeline.window.send_after(written, |entry, dup| {
                while enqueued.front().is_some_and(|(seq, _)| *seq < entry.seq) {
                    enqueued.pop_front();
                }
                if !dup && enqueued.front().is_some_and(|(seq, _)| *seq == entry.seq) {
                    if let Some((_, at)) = enqueued.pop_front() {
                        if at > 0 {
                            link.count_processed(now_ms.saturating_sub(at));
                        }
                    }
                }
                let mut publish = Publish::from_bytes(entry.topic.as_str(), QoS::AtLeastOnce, entry.payload.clone());
                publish.pkid = entry.pkid;
                publish.dup = dup;
                // The topic and size were checked when the message entered the window.
                let _ = publish.write(&mut self.wbuf);
            });
            written = sent.last_seq;
            link.count_published(sent.first_time);
            let now = Instant::now();
            if now >= self.last_sent + keep_alive {
                let _ = PingReq.write(&mut self.wbuf);
            }
            self.flush().await?;

            let now = Instant::now();
            match drain_until {
                Some(until) if pipeline.window.is_empty() || now >= until => {
                    let _ = Disconnect.write(&mut self.wbuf);
                    self.flush().await?;
                    return Ok(Ended::Renewal);
                }
                None if now >= renew_at => {
                    drain_until = Some(now + RENEW_DRAIN_MAX);
                    continue;
                }
                _ => {}
            }
            let silence = now.saturating_duration_since(self.last_received);
            if silence >= dead_after {
                return Err(LinkError::KeepAlive(silence));
            }

            let deadline =
                (self.last_sent + keep_alive).min(self.last_received + dead_after).min(drain_until.unwrap_or(renew_at));
            let take_more = drain_until.is_none() && pipeline.window.room() > 0;
            match self.wait(link, pipeline.fetched_through, deadline, take_more, requests).await {
                Wake::Read(Ok(0)) => return Err(LinkError::Closed),
                Wake::Read(Ok(n)) => {
                    self.received(n);
                    while let Some(packet) = self.next_packet()? {
                        self.handle(packet, link, pipeline, on_message)?;
                    }
                    if self.rbuf.is_empty() && self.rbuf.capacity() > BUFFER_KEEP_BYTES {
                        self.rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
                    }
                }
                Wake::Read(Err(error)) => return Err(LinkError::Io(error)),
                Wake::Deadline | Wake::MoreMessages | Wake::Requests => {}
            }
        }
    }

    /// Waits for bytes from the hub, the deadline, or (when `take_more`) new messages.
    async fn wait(
        &mut self,
        link: &Link,
        after: u64,
        deadline: Instant,
        take_more: bool,
        requests: event_listener::EventListener,
    ) -> Wake {
        let read = async { Wake::Read(self.stream.read(&mut self.chunk).await) };
        let timer = async {
            smol::Timer::at(deadline).await;
            Wake::Deadline
        };
        let more = async {
            if take_more {
                link.outbox.wait_for_more(after).await;
                Wake::MoreMessages
            } else {
                std::future::pending::<Wake>().await
            }
        };
        let requests = async {
            requests.await;
            Wake::Requests
        };
        // `or` polls its first future first: acknowledgements are handled before new sends.
        smol::future::or(read, smol::future::or(timer, smol::future::or(requests, more))).await
    }

    fn received(&mut self, n: usize) {
        self.rbuf.extend_from_slice(&self.chunk[..n]);
        self.last_received = Instant::now();
    }

    async fn read_more(&mut self) -> Result<(), LinkError> {
        match self.stream.read(&mut self.chunk).await {
            Ok(0) => Err(LinkError::Closed),
            Ok(n) => {
                self.received(n);
                Ok(())
            }
            Err(error) => Err(LinkError::Io(error)),
        }
    }

    /// The next whole packet in `rbuf`; `None` when more bytes are needed.
    fn next_packet(&mut self) -> Result<Option<Packet>, LinkError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        match v4::read(&mut self.rbuf, INBOUND_PACKET_BYTES_MAX) {
            Ok(packet) => Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(mqttbytes::Error::InvalidConnectReturnCode(code)) => Err(LinkError::Refused(code)),
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => Err(LinkError::Protocol(format!(
                "a packet of {size} bytes exceeds the limit of {INBOUND_PACKET_BYTES_MAX}"
            ))),
            Err(other) => Err(LinkError::Protocol(format!("malformed packet: {other:?}"))),
        }
    }

    fn handle(
        &mut self,
        packet: Packet,
        link: &Link,
        pipeline: &mut Pipeline,
        on_message: Option<&OnMessage>,
    ) -> Result<(), LinkError> {
        match packet {
            Packet::PubAck(ack) if super::window::CONFIRMED_PKIDS.contains(&ack.pkid) => {
                if let Some(at) = self.confirmed.iter().position(|(id, _)| *id == ack.pkid) {
                    let (_, done) = self.confirmed.swap_remove(at);
                    let _ = done.try_send(());
                }
            }
            Packet::PubAck(ack) => {
                if let Some(released) = pipeline.window.puback(ack.pkid) {
                    release(link, released);
                }
            }
            Packet::Publish(publish) => {
                if publish.qos == QoS::ExactlyOnce {
                    return Err(LinkError::Protocol("a QoS 2 PUBLISH (IoT Hub uses QoS 0 and 1 only)".into()));
                }
                let qos1 = publish.qos == QoS::AtLeastOnce;
                let pkid = publish.pkid;
                let ack = match on_message {
                    Some(callback) => callback(super::Inbound {
                        topic: publish.topic,
                        payload: publish.payload,
                        qos1,
                        pkid,
                        connection: link.connection(),
                    }),
                    None => {
                        log::debug!("upstream: no consumer for a message on {}", publish.topic);
                        super::Ack::Now
                    }
                };
                if qos1 && ack == super::Ack::Now {
                    let _ = PubAck::new(pkid).write(&mut self.wbuf);
                }
            }
            Packet::SubAck(suback) => {
                self.suback_pending = false;
                if suback.return_codes.iter().any(|code| matches!(code, SubscribeReasonCode::Failure)) {
                    log::warn!(
                        "upstream {}: the hub refused a subscription; inbound messages may not arrive",
                        link.client_id()
                    );
                }
            }
            Packet::PingResp => {}
            other => return Err(LinkError::Protocol(format!("unexpected {} from the hub", packet_kind(&other)))),
        }
        Ok(())
    }

    /// Writes and flushes `wbuf` within [`WRITE_TIMEOUT`].
    async fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        let timeout = async {
            smol::Timer::after(WRITE_TIMEOUT).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout"))
        };
        match smol::future::or(write, timeout).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                return Err(LinkError::WriteTimeout(WRITE_TIMEOUT))
            }
            Err(error) => return Err(LinkError::Io(error)),
        }
        self.wbuf.clear();
        if self.wbuf.capacity() > BUFFER_KEEP_BYTES {
            self.wbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// Moves waiting messages from the outbox into the window's free room. Messages that can
/// never be delivered are skipped (logged and counted) so they cannot block the queue.
fn take_from_outbox(link: &Link, pipeline: &mut Pipeline) {
    let room = pipeline.window.room();
    if room == 0 {
        return;
    }
    for message in link.outbox.next_batch(pipeline.fetched_through, room).into_iter().take(room) {
        if message.seq <= pipeline.fetched_through {
            log::error!(
                "upstream: the outbox returned seq {} after {}; ignored",
                message.seq,
                pipeline.fetched_through
            );
            continue;
        }
        pipeline.fetched_through = message.seq;
        if let Err(why) = check_message(&message.topic, message.payload.len()) {
            log::error!("upstream: message {} on {:?} dropped: {why}", message.seq, message.topic);
            link.count_dropped();
            if let Some(released) = pipeline.window.push_skipped(message.seq) {
                release(link, released);
            }
            continue;
        }
        if pipeline.enqueued.len() >= super::window::WINDOW_MAX * 2 {
            pipeline.enqueued.pop_front();
        }
        pipeline.enqueued.push_back((message.seq, message.enqueued_unix_ms));
        if message.maybe_sent {
            pipeline.window.push_resent(message.seq, message.topic, message.payload);
        } else {
            pipeline.window.push(message.seq, message.topic, message.payload);
        }
    }
}

/// Tells the outbox (and the status) how far the in-order acknowledgements reach.
fn release(link: &Link, released: Released) {
    link.outbox.acked(released.through_seq);
    link.count_acked(released.count - released.skipped);
}

/// Whether a message may be published: a concrete, non-empty topic (wildcards and NUL are
/// protocol errors that would get the link disconnected) and IoT Hub's size limit.
pub fn check_message(topic: &str, payload_bytes: usize) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("the topic is empty");
    }
    if topic.contains(['+', '#', '\0']) {
        return Err("the topic contains a wildcard or NUL");
    }
    if topic.len().saturating_add(payload_bytes) > OUTBOUND_MESSAGE_BYTES_MAX {
        return Err("larger than IoT Hub's 256 KiB message limit");
    }
    Ok(())
}

/// The session's byte stream: plain TCP or TLS over it.
enum Transport {
    Plain(TcpSocket),
    Tls(Box<futures_rustls::client::TlsStream<TcpSocket>>),
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_concrete_topics_within_the_size_limit_are_published() {
        assert!(check_message("devices/d/messages/events/", 10).is_ok());
        assert!(check_message("", 10).is_err());
        assert!(check_message("devices/+/messages/events/", 10).is_err());
        assert!(check_message("devices/d/#", 10).is_err());
        assert!(check_message("t", OUTBOUND_MESSAGE_BYTES_MAX - 1).is_ok());
        assert!(check_message("t", OUTBOUND_MESSAGE_BYTES_MAX).is_err());
    }
}
