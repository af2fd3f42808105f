//! AMQP 1.0 as the Azure IoT SDKs speak it (cloud-reference.md §F1): a second adapter over
//! the protocol-neutral core ([`crate::broker`]), beside [`crate::mqtt`]. TLS on the socket
//! (`[hub] amqps`, the server certificate of `mqtts`), then a plain AMQP header (C#, Node) or
//! a SASL header (`MSSBCBS`, `ANONYMOUS`, `PLAIN`); identities authenticate with CBS put-token
//! (or SASL PLAIN) through the hub's one token check, and links carry telemetry into the same
//! [`crate::ingest`] as MQTT.
//!
//! The codec and the types are `serde_amqp` and `fe2o3-amqp-types` (runtime-free); the
//! connection, session and link state machine is ours, on smol.
//!
//! # Layout
//! - `frame`: protocol headers and frames (pure);
//! - `address`: link addresses and CBS audiences (pure);
//! - `message`: AMQP messages to and from the hub's properties, CBS requests (pure);
//! - `connection`: one connection's state machine and IO;
//! - this file: the named limits and the accept loop ([`serve`]).

mod address;
mod connection;
pub mod frame;
mod message;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyedge_platform::log_limited;
use tinyedge_platform::logger::{RateLimit, RATE_LIMIT_INTERVAL};
use tinyedge_platform::rt::TcpSocket;

use crate::broker::Broker;
use crate::listeners::permit::Permit;
use crate::metrics::Metrics;
use crate::tls::Acceptor;

/// The named limits of the AMQP endpoint.
pub mod limits {
    use std::time::Duration;

    /// The largest frame the hub accepts and announces in its open: 64 KiB keeps a
    /// connection's read buffer small; bigger messages come in several transfer frames.
    pub const FRAME_BYTES_MAX: usize = 64 * 1024;
    /// AMQP 1.0 2.7.1: every peer accepts frames of 512 bytes before the open.
    pub const FRAME_BYTES_MIN: usize = 512;
    /// A SASL frame holds a mechanism name and a SAS token (at most 4 KiB, auth.rs) or so.
    pub const SASL_FRAME_BYTES_MAX: usize = 8 * 1024;
    /// The largest message (all its transfer frames), as edgeHub: 1 MiB.
    pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
    /// Sessions per connection: the C# SDK opens one per identity it multiplexes.
    pub const SESSIONS_MAX: u16 = 32;
    /// Links per session: an identity uses at most 9 (CBS pair, telemetry, inputs, C2D, twin
    /// pair, methods pair).
    pub const LINKS_MAX: u32 = 16;
    /// Credit granted on a receiving link, and so the unsettled deliveries a client may have
    /// in flight on it while the store makes them durable.
    pub const LINK_CREDIT: u32 = 64;
    /// The session window announced both ways: link credit is the bound that matters.
    pub const SESSION_WINDOW: u32 = 1024;
    /// CBS answers waiting for credit on the `$cbs` receiving link.
    pub const CBS_BACKLOG_MAX: usize = 4;
    /// edgeHub's server idle timeout: a connection that sends nothing (not even a heartbeat)
    /// for this long is closed.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(240);
    /// Bytes asked of the socket per read.
    pub const READ_CHUNK_BYTES: usize = 4096;
    /// A bigger write buffer is given back after a burst.
    pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;
    /// The SASL mechanisms offered (cloud-reference.md §F1: edgeHub's three).
    pub const SASL_MECHANISMS: [&str; 3] = ["MSSBCBS", "ANONYMOUS", "PLAIN"];

    const _: () = assert!(FRAME_BYTES_MIN <= FRAME_BYTES_MAX && SASL_FRAME_BYTES_MAX <= FRAME_BYTES_MAX);
    const _: () = assert!(LINK_CREDIT <= SESSION_WINDOW);
}

/// The decoders a client's bytes reach, for the `amqp_frames` fuzz target (and a unit test over
/// random inputs where cargo-fuzz is not installed): any bytes give frames, performatives and
/// messages or a refusal, never a panic, never a frame over the limit.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::BytesMut;
    use fe2o3_amqp_types::performatives::Performative;

    use super::{address, frame, limits, message};

    pub fn frames(data: &[u8]) {
        let _ = frame::header(data);
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = address::parse(text);
            let _ = address::audience_identity(text);
        }
        let _ = message::decode(data);
        let mut buf = BytesMut::from(data);
        // Each call consumes a frame or stops: at most one frame per 8 bytes.
        for _ in 0..=data.len() / frame::FRAME_HEADER_BYTES {
            match frame::split(&mut buf, limits::FRAME_BYTES_MAX) {
                Ok(Some(f)) => {
                    assert!(f.body.len() <= limits::FRAME_BYTES_MAX);
                    if f.body.is_empty() || f.sasl {
                        continue;
                    }
                    if let Ok((Performative::Transfer(_), payload)) = frame::performative(&f.body) {
                        if let Ok(m) = message::decode(&payload) {
                            let _ = message::to_hub_properties(&m);
                            let _ = message::put_token(&m);
                            let _ = message::annotation_text(&m, "operation");
                            let _ = message::application_int(&m, message::METHOD_STATUS);
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use fe2o3_amqp_types::performatives::{Performative, Transfer};

        use super::super::{frame, message};

        /// Random bytes, random frames around real performatives and messages, and every
        /// truncation of a real transfer: no panic.
        #[test]
        fn random_and_truncated_frames_never_panic() {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut byte = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            };
            let bag = crate::message::Properties::parse("%24.mid=m1&k=v").expect("bag");
            let body = message::encode(&message::from_hub_properties(&bag, Some("in1"), b"{}"));
            let transfer = Transfer {
                handle: 0.into(),
                delivery_id: Some(1),
                delivery_tag: None,
                message_format: Some(0),
                settled: Some(false),
                more: false,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: false,
            };
            let mut real = bytes::BytesMut::new();
            frame::put_performative(&mut real, 0, &Performative::Transfer(transfer), &body);
            for cut in 0..real.len() {
                super::frames(&real[..cut]);
                let mut flipped = real.to_vec();
                flipped[cut] ^= byte() | 1;
                super::frames(&flipped);
            }
            for len in [0usize, 1, 7, 8, 9, 16, 64, 512, 4096] {
                for _ in 0..200 {
                    let mut bytes: Vec<u8> = (0..len).map(|_| byte()).collect();
                    if len >= 8 {
                        // A plausible frame header half of the time.
                        if byte() & 1 == 0 {
                            bytes[..4].copy_from_slice(&u32::try_from(len).unwrap_or(8).to_be_bytes());
                            bytes[4] = 2;
                            bytes[5] = 0;
                        }
                    }
                    super::frames(&bytes);
                }
            }
        }
    }
}

/// How long the accept loop waits after a failed accept() (out of descriptors, mostly).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
static REFUSED_AT_LIMIT: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);
static ACCEPT_FAILED: RateLimit = RateLimit::new(RATE_LIMIT_INTERVAL);

/// Accepts AMQP-over-TLS connections on `listener` for as long as the future runs. Sockets
/// count toward the hub's connection limits from accept, as MQTT's do.
pub async fn serve(broker: Arc<Broker>, listener: tinyedge_platform::rt::TcpListener, tls: Acceptor) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                Metrics::inc(&broker.metrics.accept_errors);
                log_limited!(ACCEPT_FAILED, log::Level::Warn, "AMQP accept: {e}; retrying");
                smol::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let deadline = Instant::now() + broker.limits.connect_timeout;
        let Ok(permit) = Permit::acquire(&broker.metrics, &broker.limits) else {
            drop(stream);
            Metrics::inc(&broker.metrics.connections_refused_limit);
            log_limited!(REFUSED_AT_LIMIT, log::Level::Warn, "{peer}: AMQP socket closed at accept: connection limit");
            continue;
        };
        let Some(stream) = crate::listeners::register(&broker, stream, &peer, "AMQP") else { continue };
        let (broker, tls) = (broker.clone(), tls.clone());
        tinyedge_platform::rt::spawn(
            async move { Box::pin(serve_tls(broker, stream, peer, tls, permit, deadline)).await },
        )
        .detach();
    }
}

async fn serve_tls(
    broker: Arc<Broker>,
    stream: TcpSocket,
    peer: SocketAddr,
    acceptor: Acceptor,
    permit: Permit,
    deadline: Instant,
) {
    let peer = peer.to_string();
    if let Some(tls) = crate::tls::handshake_within(&broker, &acceptor, stream, &peer, "AMQP ", deadline).await {
        connection::serve(broker, tls, peer, permit, deadline).await;
    }
}
