//! Parses arbitrary text as a VMDK descriptor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = hypersdk_formats::vmdk::parse_descriptor(text) {
            let _ = d.capacity();
            let _ = d.has_parent();
        }
    }
});
