//! Fuzz the workload API (what any process in a module's container can send): a request head
//! and body give an HTTP answer, never a panic.
#![no_main]

use tinyedge_agent::supervisor::{mgmt, workload};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    if let Ok(head) = mgmt::parse_head(head) {
        let w = workload::ModuleWorkload { module: "m".into(), key: vec![1; 32], trust_bundle: "/nonexistent".into() };
        let answer = workload::answer(&head, body, &w);
        assert!(answer.to_bytes().starts_with(b"HTTP/1.1 "));
    }
});
