//! Fuzzes the AMQP frame decoder: arbitrary bytes after a protocol header must split into
//! frames and performatives or a `FrameError`, never a panic, and never a frame over the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tinyedge_hub::amqp::frame;

/// The hub's frame limit (hub/src/amqp/mod.rs `limits::FRAME_BYTES_MAX`).
const MAX: usize = tinyedge_hub::amqp::limits::FRAME_BYTES_MAX;

fuzz_target!(|data: &[u8]| {
    let _ = frame::header(data);
    let mut buf = BytesMut::from(data);
    // Each call consumes a frame or stops: at most one frame per 8 bytes.
    for _ in 0..=data.len() / frame::FRAME_HEADER_BYTES {
        match frame::split(&mut buf, MAX) {
            Ok(Some(f)) => {
                assert!(f.body.len() <= MAX);
                if !f.body.is_empty() && !f.sasl {
                    let _ = frame::performative(&f.body);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
