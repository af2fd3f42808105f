//! Fuzz image reference parsing: any text gives a normalized reference or a one-line error;
//! a parsed reference's name parses again to the same reference.
#![no_main]

use tinyedge_agent::image::reference::Reference;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Reference::parse(text) {
        Ok(reference) => {
            let again = Reference::parse(&reference.name()).expect("a normalized name parses");
            assert_eq!(again, reference);
        }
        Err(error) => assert!(!error.to_string().contains('\n') || text.contains('\n')),
    }
});
