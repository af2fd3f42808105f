//! Fuzz what the cloud sends the hub: any topic parses as one of IoT Hub's downlink topics or
//! is refused, never a panic, and a parsed topic names parts of itself; any bytes as a
//! device-scope page (IoT Hub's `devicesAndModulesInDeviceScope` answer) or as the scope cache
//! file parse or give a one-line error.
//!
//! Input: the first byte chooses the parser, the rest is its input.
#![no_main]

use tinyedge_hub::cloud::scope::{decode_cache, parse_page};
use tinyedge_hub::topic::{parse_from_cloud, FromCloud};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    match choice % 3 {
        0 => {
            let Ok(topic) = std::str::from_utf8(rest) else { return };
            match parse_from_cloud(topic) {
                Some(FromCloud::TwinResponse { rid, .. }) | Some(FromCloud::MethodRequest { rid, .. }) => {
                    assert!(topic.contains(rid), "{rid:?} not in {topic:?}")
                }
                Some(FromCloud::DeviceBound { device, bag }) => {
                    assert!(topic.contains(device) && topic.contains(bag), "{topic:?}")
                }
                Some(FromCloud::DesiredPatch { .. }) | None => {}
            }
        }
        1 => {
            if let Err(error) = parse_page(rest) {
                assert!(!error.contains('\n'), "multi-line error: {error}");
            }
        }
        _ => {
            if let Err(error) = decode_cache(rest, "gw") {
                assert!(!error.contains('\n'), "multi-line error: {error}");
            }
        }
    }
});
