//! Taking up an interrupted disk: its durable bytes are read back to
//! rebuild the digest and the encoder's or checker's state.

use super::*;

/// What the durable bytes of an interrupted disk's VMDK allow.
pub(super) struct Recovered {
    /// Bytes kept: up to the last whole record.
    pub(super) offset: u64,
    /// Digest state over them.
    pub(super) hasher: Hasher,
    /// A checker that has seen them.
    pub(super) checker: StreamChecker,
    /// The writer state after them, if the VMDK is in our layout.
    pub(super) writer: Option<WriterResume>,
    /// Their last (up to 64 KiB) bytes.
    pub(super) tail: Vec<u8>,
}

/// Reads the VMDK at byte `at` of object `name` back up to `durable` bytes:
/// finds the last whole VMDK record, then digests and checks the bytes up
/// to it.
pub(super) async fn recover(
    staging: &dyn Staging,
    name: &str,
    at: u64,
    durable: u64,
    algorithm: DigestAlgorithm,
) -> Result<Recovered> {
    const TAIL: usize = 64 * 1024;
    let bad = |e: hypersdk_formats::Error| Error::Integrity {
        file: name.to_string(),
        detail: format!("the kept part is not a sound VMDK: {e}"),
    };
    // Pass 1: where the last whole record ends.
    let mut first = StreamChecker::new();
    read_back(staging, name, at, durable, |b| first.push(b).map_err(bad)).await?;
    let offset = first.boundary();
    if offset == 0 {
        return Err(Error::Integrity {
            file: name.to_string(),
            detail: "not even its VMDK header is durable".into(),
        });
    }
    // Pass 2: digest and check exactly that much.
    let mut checker = StreamChecker::new();
    let mut hasher = Hasher::new(algorithm);
    let mut tail: Vec<u8> = Vec::with_capacity(TAIL);
    let got = read_back(staging, name, at, offset, |b| {
        checker.push(b).map_err(bad)?;
        hasher.update(b);
        let keep = b.len().min(TAIL);
        tail.extend_from_slice(&b[b.len() - keep..]);
        if tail.len() > TAIL {
            tail.drain(..tail.len() - TAIL);
        }
        Ok(())
    })
    .await?;
    if got != offset {
        return Err(Error::Integrity {
            file: name.to_string(),
            detail: format!("read back {got} of its {offset} kept bytes"),
        });
    }
    let writer = checker.writer_resume();
    Ok(Recovered {
        offset,
        hasher,
        checker,
        writer,
        tail,
    })
}

/// Reads `limit` bytes of staged object `name` from byte `at` in 1 MiB
/// pieces, handing each to `f`; returns how many there were.
pub(super) async fn read_back(
    staging: &dyn Staging,
    name: &str,
    at: u64,
    limit: u64,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut r = staging.open(name, at).await?.take(limit);
    let mut total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| Error::sink("cannot read back", name, e))?;
        if n == 0 {
            return Ok(total);
        }
        f(&buf[..n])?;
        total += n as u64;
    }
}
