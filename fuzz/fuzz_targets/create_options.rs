//! Fuzz createOptions: translation and the OCI spec built from it must give a value or an
//! error naming the path, never a panic.
#![no_main]

use std::path::Path;

use tinyedge_agent::containerd::spec::{runtime_spec, SpecInputs};
use tinyedge_agent::image::oci::ImageConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = tinyedge_agent::container::translate(text, &[], &[], Path::new("/v")) {
        let image = ImageConfig { cmd: vec!["sh".into()], ..ImageConfig::default() };
        let inputs = SpecInputs { module: "m", namespace: "n", image: &image, devices: &[], host_files: &[] };
        let _ = runtime_spec(&config, &inputs);
    }
});
