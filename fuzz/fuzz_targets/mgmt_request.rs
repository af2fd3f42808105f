//! Fuzz the management API's request head parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(head) = tinyedge_agent::supervisor::mgmt::parse_head(data) {
        assert!(head.content_length <= tinyedge_agent::manifest::DEPLOYMENT_BYTES_MAX);
    }
});
