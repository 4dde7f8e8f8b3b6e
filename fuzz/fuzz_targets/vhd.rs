//! Opens the input as a vhd image and reads it region by region, with a
//! bounded budget: no input may panic, hang or allocate without bound.
#![no_main]

use hypersdk_formats::{DiskImage, Region};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut img) = hypersdk_formats::vhd::VhdReader::open(std::io::Cursor::new(data)) else { return };
    let size = img.virtual_size();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    // At most 64 regions and 4 MiB of reads per input.
    let mut budget = 4u64 << 20;
    for _ in 0..64 {
        if offset >= size || budget == 0 {
            break;
        }
        let Ok(region) = img.region(offset) else { return };
        let len = match region {
            Region::Data(n) | Region::Zero(n) => n,
        };
        assert!(len >= 1 && offset + len <= size, "region out of range");
        let n = len.min(buf.len() as u64).min(budget) as usize;
        if img.read_at(offset, &mut buf[..n]).is_err() {
            return;
        }
        budget -= n as u64;
        offset += len;
    }
    // A read near the end too, to cross the last tables.
    if size > 4096 {
        let _ = img.read_at(size - 4096, &mut buf[..4096]);
    }
});
