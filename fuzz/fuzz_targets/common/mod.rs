//! What every disk-image fuzz target does with an image that opened.

use hypersdk_formats::{DiskImage, Region};

/// Reads `img` region by region with a bounded budget (at most 64 regions and
/// 4 MiB of reads) and near its end, asserting that regions stay in range:
/// no input may panic, hang or allocate without bound.
pub fn exercise(img: &mut dyn DiskImage) {
    let size = img.virtual_size();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 16];
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
}
