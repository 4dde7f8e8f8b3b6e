//! Parses and verifies manifests from arbitrary text; what parses must
//! re-verify consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hypersdk_formats::manifest::parse_manifest(text);
        let _ = hypersdk_formats::manifest::verify_manifest(text, |name, h| {
            h.update(name.as_bytes());
            Ok(true)
        });
    }
});
