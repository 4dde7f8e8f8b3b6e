//! The running digest of manifests ([`Hasher`]: SHA-1, SHA-256, SHA-512)
//! whose state can be saved and taken up again: a checkpoint records it, so
//! a resumed export goes on digesting where it stopped instead of reading
//! back what it already wrote.
//!
//! The block functions are the `sha1`/`sha2` crates' own (`compress`,
//! `compress256`, `compress512`, with their CPU-specific backends); this
//! module keeps the chaining state, the partial block and the length, and
//! does the final padding (FIPS 180-4, §5.1).

use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::U64;

use crate::manifest::{to_hex, DigestAlgorithm};

const H1: [u32; 5] = [
    0x6745_2301,
    0xefcd_ab89,
    0x98ba_dcfe,
    0x1032_5476,
    0xc3d2_e1f0,
];
const H256: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
const H512: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// Blocks handed to a block function at once.
const BATCH: usize = 16;

/// Hands whole 64-byte blocks to a block function up to [`BATCH`] at a
/// time: the SHA-NI backends load and store their state once per call, not
/// once per block.
fn in_batches(blocks: &[u8], mut f: impl FnMut(&[GenericArray<u8, U64>])) {
    let mut tmp = [GenericArray::default(); BATCH];
    for group in blocks.chunks(64 * BATCH) {
        let n = group.len() / 64;
        for (t, b) in tmp.iter_mut().zip(group.chunks_exact(64)) {
            t.copy_from_slice(b);
        }
        f(&tmp[..n]);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chain {
    Sha1([u32; 5]),
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

/// A running digest of one of the algorithms manifests use; `Write` feeds
/// it. [`state`](Self::state) and [`from_state`](Self::from_state) save and
/// take it up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hasher {
    chain: Chain,
    /// The partial block.
    block: [u8; 128],
    filled: usize,
    /// Bytes fed.
    len: u64,
}

impl Hasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Hasher {
        let chain = match algorithm {
            DigestAlgorithm::Sha1 => Chain::Sha1(H1),
            DigestAlgorithm::Sha256 => Chain::Sha256(H256),
            DigestAlgorithm::Sha512 => Chain::Sha512(H512),
        };
        Hasher {
            chain,
            block: [0; 128],
            filled: 0,
            len: 0,
        }
    }

    /// A hasher for a manifest algorithm name (`SHA1`, `SHA256`, `SHA512`,
    /// any case), or None if unknown.
    pub fn for_name(name: &str) -> Option<Hasher> {
        match name.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Hasher::new(DigestAlgorithm::Sha1)),
            "SHA256" => Some(Hasher::new(DigestAlgorithm::Sha256)),
            "SHA512" => Some(Hasher::new(DigestAlgorithm::Sha512)),
            _ => None,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.chain {
            Chain::Sha1(_) => DigestAlgorithm::Sha1,
            Chain::Sha256(_) => DigestAlgorithm::Sha256,
            Chain::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn block_size(&self) -> usize {
        match self.chain {
            Chain::Sha512(_) => 128,
            _ => 64,
        }
    }

    /// Runs the block function over `blocks` (whole blocks).
    fn compress(&mut self, blocks: &[u8]) {
        match &mut self.chain {
            Chain::Sha1(s) => in_batches(blocks, |b| sha1::compress(s, b)),
            Chain::Sha256(s) => in_batches(blocks, |b| sha2::compress256(s, b)),
            Chain::Sha512(s) => {
                for b in blocks.chunks_exact(128) {
                    sha2::compress512(s, std::slice::from_ref(GenericArray::from_slice(b)));
                }
            }
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.block_size();
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.filled > 0 {
            let n = (bs - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled < bs {
                return;
            }
            let block = self.block;
            self.compress(&block[..bs]);
            self.filled = 0;
        }
        let whole = data.len() / bs * bs;
        if whole > 0 {
            self.compress(&data[..whole]);
        }
        let rest = &data[whole..];
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The digest.
    pub fn finish(mut self) -> Vec<u8> {
        let bs = self.block_size();
        let bits = u128::from(self.len) * 8;
        let len_bytes = if bs == 128 { 16 } else { 8 };
        let mut pad = vec![0u8; bs * 2];
        pad[0] = 0x80;
        // 0x80, zeros, the length: ending on a block boundary.
        let zeros = (bs - (self.filled + 1 + len_bytes) % bs) % bs;
        let total = 1 + zeros + len_bytes;
        if bs == 128 {
            pad[1 + zeros..total].copy_from_slice(&bits.to_be_bytes());
        } else {
            pad[1 + zeros..total].copy_from_slice(&(bits as u64).to_be_bytes());
        }
        let len = self.len;
        self.update(&pad[..total]);
        debug_assert_eq!(self.filled, 0);
        self.len = len;
        match self.chain {
            Chain::Sha1(s) => s.iter().flat_map(|w| w.to_be_bytes()).collect(),
            Chain::Sha256(s) => s.iter().flat_map(|w| w.to_be_bytes()).collect(),
            Chain::Sha512(s) => s.iter().flat_map(|w| w.to_be_bytes()).collect(),
        }
    }

    /// The digest as lower-case hex.
    pub fn finish_hex(self) -> String {
        to_hex(&self.finish())
    }

    /// The state, to be taken up again by [`from_state`](Self::from_state):
    /// the algorithm, the chaining words, the length and the partial block
    /// (at most 128 bytes). It reveals no more of the data than the digest
    /// does, except the partial block — the last bytes fed.
    pub fn state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 64 + 8 + 1 + self.filled);
        match &self.chain {
            Chain::Sha1(s) => {
                out.push(1);
                s.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
            }
            Chain::Sha256(s) => {
                out.push(2);
                s.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
            }
            Chain::Sha512(s) => {
                out.push(3);
                s.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
            }
        }
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.block[..self.filled]);
        out
    }

    /// A hasher from a saved [`state`](Self::state); None if it is not one.
    pub fn from_state(bytes: &[u8]) -> Option<Hasher> {
        let (&tag, rest) = bytes.split_first()?;
        let (chain, rest) = match tag {
            1 => {
                let (w, rest) = split_words::<5, 4>(rest)?;
                (Chain::Sha1(w.map(u32::from_be_bytes)), rest)
            }
            2 => {
                let (w, rest) = split_words::<8, 4>(rest)?;
                (Chain::Sha256(w.map(u32::from_be_bytes)), rest)
            }
            3 => {
                let (w, rest) = split_words::<8, 8>(rest)?;
                (Chain::Sha512(w.map(u64::from_be_bytes)), rest)
            }
            _ => return None,
        };
        let (len, tail) = rest.split_first_chunk::<8>()?;
        let len = u64::from_be_bytes(*len);
        let mut h = Hasher {
            chain,
            block: [0; 128],
            filled: tail.len(),
            len,
        };
        if tail.len() >= h.block_size() || (len % h.block_size() as u64) as usize != tail.len() {
            return None;
        }
        h.block[..tail.len()].copy_from_slice(tail);
        Some(h)
    }
}

/// `N` words of `W` bytes from the front of `bytes`, and the rest.
fn split_words<const N: usize, const W: usize>(bytes: &[u8]) -> Option<([[u8; W]; N], &[u8])> {
    if bytes.len() < N * W {
        return None;
    }
    let mut words = [[0u8; W]; N];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(W)) {
        w.copy_from_slice(b);
    }
    Some((words, &bytes[N * W..]))
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn reference(algorithm: DigestAlgorithm, data: &[u8]) -> String {
        match algorithm {
            DigestAlgorithm::Sha1 => to_hex(&sha1::Sha1::digest(data)),
            DigestAlgorithm::Sha256 => to_hex(&sha2::Sha256::digest(data)),
            DigestAlgorithm::Sha512 => to_hex(&sha2::Sha512::digest(data)),
        }
    }

    #[test]
    fn agrees_with_the_sha_crates_at_every_length_and_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for algorithm in [
            DigestAlgorithm::Sha1,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha512,
        ] {
            for len in (0..300).chain([1023, 1024, 1025, 2048 + 17, 5000]) {
                let want = reference(algorithm, &data[..len]);
                let mut h = Hasher::new(algorithm);
                h.update(&data[..len]);
                assert_eq!(h.finish_hex(), want, "{algorithm:?} of {len}");
                // Fed in uneven pieces, saved and taken up again between them.
                let mut h = Hasher::new(algorithm);
                let mut at = 0;
                for piece in [1usize, 63, 64, 65, 127, 129, 1000].iter().cycle() {
                    if at >= len {
                        break;
                    }
                    let end = (at + piece).min(len);
                    h.update(&data[at..end]);
                    at = end;
                    h = Hasher::from_state(&h.state()).expect("a saved state");
                }
                assert_eq!(h.len(), len as u64);
                assert_eq!(h.finish_hex(), want, "{algorithm:?} of {len}, resumed");
            }
        }
    }

    #[test]
    fn bad_states_are_refused() {
        let mut h = Hasher::new(DigestAlgorithm::Sha256);
        h.update(b"abc");
        let s = h.state();
        assert!(Hasher::from_state(&s).is_some());
        assert!(
            Hasher::from_state(&s[..s.len() - 1]).is_none(),
            "partial block shorter than the length says"
        );
        assert!(Hasher::from_state(&[9]).is_none());
        assert!(Hasher::from_state(&[]).is_none());
        let mut long = s.clone();
        long.extend_from_slice(&[0; 64]);
        assert!(Hasher::from_state(&long).is_none());
    }
}

#[cfg(test)]
mod throughput {
    use super::*;

    /// `cargo test --release -p hypersdk-formats throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn against_the_sha_crates() {
        use sha2::Digest;
        let data: Vec<u8> = (0..(64u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for algorithm in [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha512,
            DigestAlgorithm::Sha1,
        ] {
            let mut best = (f64::MAX, f64::MAX);
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let mut h = Hasher::new(algorithm);
                for c in data.chunks(1 << 20) {
                    h.update(c);
                }
                let a = h.finish_hex();
                let ours = t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                let b = match algorithm {
                    DigestAlgorithm::Sha1 => {
                        let mut h = sha1::Sha1::new();
                        for c in data.chunks(1 << 20) {
                            h.update(c);
                        }
                        to_hex(&h.finalize())
                    }
                    DigestAlgorithm::Sha256 => {
                        let mut h = sha2::Sha256::new();
                        for c in data.chunks(1 << 20) {
                            h.update(c);
                        }
                        to_hex(&h.finalize())
                    }
                    DigestAlgorithm::Sha512 => {
                        let mut h = sha2::Sha512::new();
                        for c in data.chunks(1 << 20) {
                            h.update(c);
                        }
                        to_hex(&h.finalize())
                    }
                };
                let theirs = t.elapsed().as_secs_f64();
                assert_eq!(a, b);
                best = (best.0.min(ours), best.1.min(theirs));
            }
            let mb = data.len() as f64 / 1e6;
            println!(
                "{algorithm:?}: resumable {:.0} MB/s, sha crate {:.0} MB/s",
                mb / best.0,
                mb / best.1
            );
        }
    }
}
