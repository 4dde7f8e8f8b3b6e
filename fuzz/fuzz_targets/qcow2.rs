//! Opens the input as a qcow2 image and reads it (see common::exercise),
//! then reads its first internal snapshot the same way.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut img) = hypersdk_formats::qcow2::Qcow2Reader::open(std::io::Cursor::new(data)) {
        common::exercise(&mut img);
        let first = img.snapshots().ok().and_then(|s| s.into_iter().next());
        if let Some(s) = first {
            if img.select_snapshot(&s.name).is_ok() {
                common::exercise(&mut img);
            }
        }
    }
});
