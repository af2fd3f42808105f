//! Fuzzes the config parser: arbitrary text must yield a `Config` or a one-line `ConfigError`,
//! never a panic, whatever the TOML structure.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tinyedge_platform::Config;

fuzz_target!(|data: &[u8]| {
    // Config files are UTF-8 text; `Config::load` rejects anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_toml_str(text, Path::new("/fuzz")) {
        Ok(config) => {
            // Every accepted config satisfies the documented limits.
            assert!(config.hub.max_inflight >= 1 && config.hub.subscriber_queue_max >= 1);
            assert!(config.hub.tls_cert.is_some() == config.hub.tls_key.is_some());
        }
        Err(error) => assert!(!error.to_string().contains('\n'), "multi-line error: {error}"),
    }
});
