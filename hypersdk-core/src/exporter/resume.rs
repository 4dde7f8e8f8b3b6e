//! Continuing an interrupted disk without reading back what was stored: a
//! [`Tracker`] follows the VMDK bytes as they go out and gives each save
//! a [`ResumePoint`]; a resumed export takes the digest, the checker and
//! the writer state up from it ([`Recovered::from_point`]).

use super::*;
use crate::checkpoint::ResumePoint;
use hypersdk_formats::manifest::{from_hex, to_hex};

/// Bytes before a resume point whose digest is recorded: a platform that
/// serves the VMDK itself must serve them again the same.
const TAIL: usize = 64 * 1024;

/// Where an interrupted disk's VMDK goes on.
pub(super) struct Recovered {
    /// Bytes kept: up to a record boundary.
    pub(super) offset: u64,
    /// Digest state over them.
    pub(super) hasher: Hasher,
    /// A checker that has seen them.
    pub(super) checker: StreamChecker,
    /// The writer state after them, if the VMDK is in our layout.
    pub(super) writer: Option<WriterResume>,
    /// The point itself, recorded again for the continued object.
    pub(super) point: ResumePoint,
}

impl Recovered {
    /// Takes up the state `point` recorded for object `name`, digested
    /// with `algorithm`.
    pub(super) fn from_point(
        point: &ResumePoint,
        name: &str,
        algorithm: DigestAlgorithm,
    ) -> Result<Recovered> {
        let bad = |detail: String| Error::Integrity {
            file: name.to_string(),
            detail: format!("its checkpoint's resume point is damaged: {detail}"),
        };
        let hasher = from_hex(&point.digest)
            .and_then(|b| Hasher::from_state(&b))
            .filter(|h| h.algorithm() == algorithm && h.len() == point.offset)
            .ok_or_else(|| bad("the digest state does not fit".into()))?;
        if point.vmdk.pos != point.offset {
            return Err(bad("the VMDK state is of another offset".into()));
        }
        let checker =
            StreamChecker::from_state(point.vmdk.clone()).map_err(|e| bad(e.to_string()))?;
        let writer = checker.writer_resume();
        Ok(Recovered {
            offset: point.offset,
            hasher,
            checker,
            writer,
            point: point.clone(),
        })
    }
}

/// Follows the VMDK bytes an object stores — its record structure and the
/// last [`TAIL`] bytes — so that a save can record where the object can be
/// continued ([`ResumePoint`]). Memory: the checker's tables (a few bytes
/// per 32 MiB of disk) and 64 KiB.
pub(super) struct Tracker {
    checker: StreamChecker,
    /// The last (up to `TAIL`) bytes before the next chunk.
    tail: Vec<u8>,
}

impl Tracker {
    /// A tracker of a VMDK from its start, or from a recovered point.
    pub(super) fn new(from: Option<&Recovered>) -> Tracker {
        Tracker {
            checker: from.map_or_else(StreamChecker::new, |r| r.checker.clone()),
            tail: Vec::with_capacity(TAIL),
        }
    }

    /// Follows stored chunk `buf`, which starts at byte `at` of the VMDK.
    /// With `mark` (the digest state before `buf`), returns the resume
    /// point at the last record boundary inside `buf`, if there is one.
    /// Bytes that are not a VMDK in the checker's eyes are an error (the
    /// object is then no longer tracked).
    pub(super) fn push(
        &mut self,
        buf: &[u8],
        at: u64,
        mark: Option<&Hasher>,
    ) -> std::result::Result<Option<ResumePoint>, String> {
        let c = &mut self.checker;
        if c.position() != at {
            return Err(format!(
                "tracking is at byte {}, the chunk at {at}",
                c.position()
            ));
        }
        let mut point = None;
        match mark {
            None => c.push(buf).map_err(|e| e.to_string())?,
            Some(mark) => {
                // Record by record, noting the state at each boundary.
                let mut last = None;
                let mut off = 0usize;
                while off < buf.len() {
                    let n = c.to_boundary().min(buf.len() - off);
                    c.push(&buf[off..off + n]).map_err(|e| e.to_string())?;
                    off += n;
                    if let Some(s) = c.state() {
                        last = Some((off, s));
                    }
                }
                if let Some((cut, vmdk)) = last {
                    let mut digest = mark.clone();
                    digest.update(&buf[..cut]);
                    let from_buf = cut.min(TAIL);
                    let from_tail = (TAIL - from_buf).min(self.tail.len());
                    let mut tail = Hasher::new(mark.algorithm());
                    tail.update(&self.tail[self.tail.len() - from_tail..]);
                    tail.update(&buf[cut - from_buf..cut]);
                    point = Some(ResumePoint {
                        offset: at + cut as u64,
                        digest: to_hex(&digest.state()),
                        vmdk,
                        tail: (from_buf + from_tail) as u64,
                        tail_digest: tail.finish_hex(),
                    });
                }
            }
        }
        // Keep the last TAIL bytes.
        if buf.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[buf.len() - TAIL..]);
        } else {
            let over = (self.tail.len() + buf.len()).saturating_sub(TAIL);
            self.tail.drain(..over);
            self.tail.extend_from_slice(buf);
        }
        Ok(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypersdk_formats::vmdk::{StreamOptimizedWriter, VmdkWriterOptions};

    fn vmdk(len: usize) -> Vec<u8> {
        // Incompressible grains, every third one zero.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i >> 16) % 3 == 1 {
                    0
                } else {
                    x as u8
                }
            })
            .collect();
        let mut w =
            StreamOptimizedWriter::new(Vec::new(), len as u64, &VmdkWriterOptions::default())
                .unwrap();
        w.write(&data).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn points_agree_with_reading_the_bytes_back() {
        let v = vmdk(8 << 20);
        let alg = DigestAlgorithm::Sha256;
        let mut t = Tracker::new(None);
        let mut h = Hasher::new(alg);
        let mut at = 0u64;
        let mut points = 0;
        for (i, chunk) in v.chunks(100_000).enumerate() {
            let mark = h.clone();
            let p = t.push(chunk, at, (i % 3 == 1).then_some(&mark)).unwrap();
            h.update(chunk);
            at += chunk.len() as u64;
            let Some(p) = p else { continue };
            points += 1;
            let kept = &v[..p.offset as usize];
            // The digest, the checker and the tail are those of the bytes kept.
            let r = Recovered::from_point(&p, "d.vmdk", alg).unwrap();
            let mut whole = Hasher::new(alg);
            whole.update(kept);
            assert_eq!(r.hasher.clone().finish_hex(), whole.finish_hex());
            let mut c = StreamChecker::new();
            c.push(kept).unwrap();
            assert_eq!(c.state().unwrap(), p.vmdk);
            assert_eq!(r.writer, c.writer_resume());
            let from = kept.len() - p.tail as usize;
            assert_eq!(p.tail_digest, digest_hex(alg, &kept[from..]));
            assert!(p.offset > at - chunk.len() as u64 && p.offset <= at);
        }
        assert!(points > 10, "{points}");
    }

    #[test]
    fn a_damaged_point_is_refused() {
        let v = vmdk(2 << 20);
        let alg = DigestAlgorithm::Sha256;
        let mut t = Tracker::new(None);
        let p = t
            .push(&v[..300_000], 0, Some(&Hasher::new(alg)))
            .unwrap()
            .unwrap();
        assert!(Recovered::from_point(&p, "d", alg).is_ok());
        assert!(Recovered::from_point(&p, "d", DigestAlgorithm::Sha512).is_err());
        let mut bad = p.clone();
        bad.offset += 512;
        assert!(Recovered::from_point(&bad, "d", alg).is_err());
        bad = p.clone();
        bad.digest.truncate(7);
        assert!(Recovered::from_point(&bad, "d", alg).is_err());
    }
}
