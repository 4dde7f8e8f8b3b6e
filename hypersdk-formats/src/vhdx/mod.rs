//! VHDX: the Hyper-V virtual hard disk format (version 2), read per the
//! \[MS-VHDX\] specification (v20240423; sections cited in the code).
//!
//! Layout (all integers little-endian, GUIDs in their binary form):
//!
//! ```text
//! 0        file type identifier: "vhdxfile", creator (UTF-16)          §2.2.1
//! 64 KiB   header 1 ┐ "head", CRC-32C, sequence number, FileWriteGuid,  §2.2.2
//! 128 KiB  header 2 ┘ DataWriteGuid, LogGuid, log version/length/offset
//! 192 KiB  region table 1 ┐ "regi", CRC-32C, entries: GUID, offset,    §2.2.3
//! 256 KiB  region table 2 ┘ length, required — the BAT and the metadata
//! 1 MiB…   log (ring of 4 KiB-aligned entries), BAT, metadata region,  §2.3
//!          payload blocks and sector bitmap blocks, anywhere, 1 MiB-aligned
//!
//! metadata region: "metadata" table (64 KiB) of items: file parameters  §2.6
//!          (block size, has-parent), virtual disk size, disk id, logical
//!          and physical sector size, parent locator (key/value, UTF-16)
//! BAT:     one u64 per block: state (3 bits), file offset in MiB (44);  §2.5
//!          after every `chunk ratio` payload entries, one entry for the
//!          sector bitmap block of that chunk (differencing disks only)
//! ```
//!
//! [`VhdxReader`] reads fixed, dynamic and differencing disks (the last
//! with their parent, which the caller opens). A file whose log holds
//! entries to replay (not closed cleanly) is refused with a message saying
//! how to settle it, as \[MS-VHDX\] §2.3.3 requires of readers that do not
//! replay.

mod reader;

pub use reader::{ParentLocator, VhdxReader};

/// The file type identifier's signature (§2.2.1).
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";

/// A GUID in its binary (on-disk) form from its text form's fields:
/// `{d1-d2-d3-d4[0..2]-d4[2..8]}` (the first three little-endian).
pub(crate) const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// The text form of a binary GUID, lowercase without braces.
pub fn guid_text(g: &[u8; 16]) -> String {
    let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let d2 = u16::from_le_bytes([g[4], g[5]]);
    let d3 = u16::from_le_bytes([g[6], g[7]]);
    let mut s = format!("{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-", g[8], g[9]);
    for b in &g[10..] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Region: the block allocation table (§2.2.3.2, known regions).
pub(crate) const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// Region: the metadata region.
pub(crate) const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
/// Metadata item: file parameters (§2.6.2.1).
pub(crate) const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Metadata item: virtual disk size (§2.6.2.2).
pub(crate) const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Metadata item: virtual disk id (§2.6.2.3).
pub(crate) const VIRTUAL_DISK_ID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Metadata item: logical sector size (§2.6.2.4).
pub(crate) const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Metadata item: physical sector size (§2.6.2.5).
pub(crate) const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Metadata item: parent locator (§2.6.2.6).
pub(crate) const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// Parent locator type: a VHDX parent (§2.6.2.6.3).
pub(crate) const VHDX_PARENT_TYPE: [u8; 16] = guid(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `bytes`, as the
/// headers, region tables and log entries carry it (§2.2.2).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_update(!0, bytes) ^ !0
}

/// The CRC-32C register after `bytes`, from `crc` (not inverted).
pub(crate) fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The CRC-32C of a structure whose 4-byte checksum field at `at` counts
/// as zero (§2.2.2: "with the Checksum field taking the value of zero").
pub(crate) fn crc32c_without(bytes: &[u8], at: usize) -> u32 {
    let crc = crc32c_update(!0, &bytes[..at]);
    let crc = crc32c_update(crc, &[0; 4]);
    crc32c_update(crc, &bytes[at + 4..]) ^ !0
}

const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_and_guid_forms() {
        // The CRC-32C check value (RFC 3720 appendix B.4 lists the same
        // polynomial; "123456789" → 0xE3069283).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            BAT_REGION,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert_eq!(
            guid_text(&BAT_REGION),
            "2dc27766-f623-4200-9d64-115e9bfd4a08"
        );
        let mut b = *b"abcdXXXXefgh";
        let want = crc32c(b"abcd\0\0\0\0efgh");
        assert_eq!(crc32c_without(&b, 4), want);
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&b), want);
    }
}
