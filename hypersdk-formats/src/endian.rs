//! Fixed-width integers at byte offsets of on-disk structures: big-endian
//! (qcow2, VHD) and little-endian (VMDK). The caller has checked that the
//! slice holds the bytes (headers are read whole before they are parsed).

/// The big-endian u16 at `b[at..at + 2]`.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u32 at `b[at..at + 4]`.
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian u64 at `b[at..at + 8]`.
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The little-endian u32 at `b[at..at + 4]`.
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian u64 at `b[at..at + 8]`.
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}
