//! Fuzz the route parser: any text must give a route or an error, never a panic, and any
//! error must render on one line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = tinyedge_hub::route::Route::parse("fuzz", text, None, 0) {
            assert!(!error.to_string().contains('\n'), "multi-line error: {error}");
        }
    }
});
