//! Walks bytes as an OVA read front to back (no seeking), as `hyperctl
//! verify` does for a wrapped OVA: hostile archives must be refused, never
//! panic; accepted member names are safe.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) =
        hypersdk_formats::package::inspect_ova_stream(data, std::path::Path::new("fuzz.ova"))
    {
        for (name, _) in &report.files {
            assert!(hypersdk_formats::ova::safe_member_name(name).is_ok());
        }
    }
});
