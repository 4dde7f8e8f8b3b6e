//! Opens the input as a vmdk image and reads it (see common::exercise).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut img) = hypersdk_formats::vmdk::SparseExtentReader::open(std::io::Cursor::new(data)) {
        common::exercise(&mut img);
    }
});
