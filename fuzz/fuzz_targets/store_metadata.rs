//! Fuzz the decoders of the offline store's metadata files — the two-copy slot file of the
//! endpoint registry, the registry content, the checkpoint cells and the checkpoint format
//! before cells: any bytes give a value or a refusal, never a panic; a registry that decodes
//! re-encodes to the same names.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tinyedge_hub::store::fuzzing::metadata(data);
});
