//! Fuzz the registry document readers (index, manifest, image config) and the platform choice:
//! whatever a registry sends gives a value or an error, never a panic.
#![no_main]

use tinyedge_agent::image::oci;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(oci::Manifest::Index(entries)) = oci::parse_manifest(data, "") {
        let _ = oci::select_platform(&entries, &oci::host_platform());
    }
    if let Ok(config) = oci::parse_config(data) {
        let _ = oci::chain_ids(&config.diff_ids);
    }
});
