//! Fuzz the deployment manifest parser: any bytes must give a deployment or an error, never a
//! panic, and any error must render on one line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(error) = tinyedge_agent::manifest::parse_deployment(data) {
        assert!(
            !error.to_string().contains('\n'),
            "multi-line error: {error}"
        );
    }
});
