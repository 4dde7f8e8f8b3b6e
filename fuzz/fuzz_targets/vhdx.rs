//! Opens the input as a vhdx image and reads it (see common::exercise).
//!
//! A VHDX has at least 1 MiB of headers and checksums over its headers and
//! region table, which random mutation would almost never get past. So the
//! input is cut into 4 KiB slots placed where the structures are in a file
//! qemu-img writes (seeds.sh extracts them from one), and the header and
//! region table checksums are recomputed:
//!
//! | slot | placed at | holds |
//! |---|---|---|
//! | 0 | 64 KiB | header (CRC-32C recomputed) |
//! | 1 | 192 KiB | region table (CRC-32C over its 64 KiB recomputed) |
//! | 2 | 1 MiB | log |
//! | 3 | 2 MiB | BAT |
//! | 4 | 3 MiB | metadata table |
//! | 5 | 3 MiB + 64 KiB | metadata items |
//! | 6… | 4 MiB + 4 KiB × n | payload and sector bitmap blocks |
#![no_main]

#[path = "common/mod.rs"]
mod common;

use hypersdk_formats::vhdx::crc32c;
use libfuzzer_sys::fuzz_target;

const SLOT: usize = 4096;
const AT: [usize; 6] = [64 << 10, 192 << 10, 1 << 20, 2 << 20, 3 << 20, (3 << 20) + (64 << 10)];

fn reseal(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let slots: Vec<&[u8]> = data.chunks(SLOT).take(64).collect();
    let data_slots = slots.len().saturating_sub(AT.len());
    let mut file = vec![0u8; (4 << 20) + data_slots.max(1) * SLOT];
    file[..8].copy_from_slice(b"vhdxfile");
    for (i, s) in slots.iter().enumerate() {
        let at = AT.get(i).copied().unwrap_or_else(|| (4 << 20) + (i - AT.len()) * SLOT);
        file[at..at + s.len()].copy_from_slice(s);
    }
    if data.len() >= 8 {
        reseal(&mut file, AT[0], 4096);
        reseal(&mut file, AT[1], 64 << 10);
    }
    if let Ok(mut img) = hypersdk_formats::vhdx::VhdxReader::open(std::io::Cursor::new(file)) {
        common::exercise(&mut img);
    }
});
