//! Reads an OVF descriptor summary from arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hypersdk_formats::ovf::read_summary(text);
    }
});
