//! A disk's index: the digest of each of its chunks, in order.

use crate::blob::DIGEST;

/// Magic of an index's plaintext.
pub const INDEX_MAGIC: &[u8; 8] = b"HSRIDX01";
/// Header length of an index's plaintext.
const INDEX_HEADER: usize = 32;
/// Largest index read: 64 MiB of digests, a disk of 8 TiB in 4 MiB chunks.
pub const MAX_INDEX: usize = INDEX_HEADER + (64 << 20);
/// The entry of a chunk of zeros, which is not stored.
pub const ZERO: [u8; DIGEST] = [0; DIGEST];

/// The chunks of one disk of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIndex {
    /// Guest size in bytes.
    pub capacity: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Digest of each chunk; [`ZERO`] for a chunk of zeros.
    pub chunks: Vec<[u8; DIGEST]>,
}

impl DiskIndex {
    /// An index of a disk of zeros.
    pub fn zeros(capacity: u64, chunk_size: u32) -> Self {
        let n = capacity.div_ceil(u64::from(chunk_size));
        DiskIndex {
            capacity,
            chunk_size,
            chunks: vec![ZERO; n as usize],
        }
    }

    /// The byte range of chunk `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<u64> {
        let cs = u64::from(self.chunk_size);
        let start = i as u64 * cs;
        start..(start + cs).min(self.capacity)
    }

    /// The plaintext ([crate docs](crate#indexes)).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER + self.chunks.len() * DIGEST);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&self.capacity.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(self.chunks.len() as u64).to_be_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }

    /// Parses a plaintext; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < INDEX_HEADER || &b[..8] != INDEX_MAGIC {
            return Err("not a disk index (no HSRIDX01 header)".into());
        }
        let be64 = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let capacity = be64(8);
        let chunk_size = u32::from_be_bytes(b[16..20].try_into().unwrap_or_default());
        let count = be64(24);
        if !chunk_size.is_power_of_two() || chunk_size < 1 << 20 {
            return Err(format!("bad chunk size {chunk_size}"));
        }
        if count != capacity.div_ceil(u64::from(chunk_size)) {
            return Err(format!("{count} chunks do not cover {capacity} bytes"));
        }
        if (b.len() - INDEX_HEADER) as u64 != count.saturating_mul(DIGEST as u64) {
            return Err(format!("{} bytes of digests for {count} chunks", b.len() - INDEX_HEADER));
        }
        let chunks = b[INDEX_HEADER..]
            .chunks_exact(DIGEST)
            .map(|c| c.try_into().unwrap_or(ZERO))
            .collect();
        Ok(DiskIndex {
            capacity,
            chunk_size,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut ix = DiskIndex::zeros((9 << 20) + 5, 4 << 20);
        assert_eq!(ix.chunks.len(), 3);
        assert_eq!(ix.range(2), (8 << 20)..(9 << 20) + 5);
        ix.chunks[1] = [7; DIGEST];
        let b = ix.encode();
        assert_eq!(DiskIndex::decode(&b).unwrap(), ix);
        assert!(DiskIndex::decode(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[31] = 9;
        assert!(DiskIndex::decode(&bad).is_err());
    }
}
