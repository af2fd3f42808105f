//! Fuzzes the AMQP frame decoder: arbitrary bytes after a protocol header must split into
//! frames, performatives and messages or a `FrameError`, never a panic, and never a frame over
//! the limit. The body is `tinyedge_hub::amqp::fuzzing::frames`, which a unit test also runs
//! over random and truncated inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tinyedge_hub::amqp::fuzzing::frames(data);
});
