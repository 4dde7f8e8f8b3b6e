//! Encryption at rest: AES-256-GCM in the STREAM construction.
//!
//! # File format (version 2; version 1 is read too)
//!
//! All integers big-endian. A 64-byte header, then the chunks.
//!
//! ```text
//! offset size  field
//!  0      8    magic "HSDKENC\0"
//!  8      1    version = 2
//!  9      1    key derivation: 0 = raw 32-byte key, 1 = argon2id from a passphrase
//! 10      1    log2 of the plaintext chunk size (16..=24; 20 = 1 MiB)
//! 11      1    header checksum, high byte (version 1: reserved, 0)
//! 12      4    argon2id memory cost in KiB (0 for raw keys; at most 256 MiB)
//! 16      4    argon2id iterations (0 for raw keys)
//! 20      4    argon2id parallelism (0 for raw keys)
//! 24     16    argon2id salt (random; zeros for raw keys)
//! 40      7    nonce prefix (random per file)
//! 47      1    header checksum, low byte (version 1: reserved, 0)
//! 48     16    key check: the AES-256-GCM tag of the empty message under
//!              nonce = prefix ‖ 0xFFFFFFFF ‖ 0x02, AAD = bytes 0..48
//! ```
//!
//! The header checksum is the CRC-16/CCITT-FALSE of bytes 0..48 with bytes 11
//! and 47 taken as zero. It is no defence (every chunk authenticates the
//! header): it tells a damaged or altered header ("damaged header") apart
//! from a wrong key or passphrase (the key check fails on an intact
//! header). A header asking argon2id for more than 256 MiB of memory is
//! refused before any key derivation, so a crafted file cannot make
//! decryption allocate without bound.
//!
//! Chunk `i` (counting from 0) is the AES-256-GCM encryption of the next
//! `chunk size` plaintext bytes (the last chunk may be shorter, even empty),
//! 16-byte tag appended, under
//!
//! ```text
//! nonce = prefix (7) ‖ i as u32 (4) ‖ last (1: 0x01 for the final chunk, else 0x00)
//! AAD   = header bytes 0..48
//! ```
//!
//! Binding the index and the final-chunk flag into the nonce makes
//! reordering, duplication, dropping and truncation (even at a chunk boundary)
//! fail authentication; the header is authenticated by every chunk. A wrong
//! key or passphrase is told apart from damage by the key check before any
//! chunk is read. [`DecryptReader`] authenticates each chunk whole before it
//! releases a byte of it. Files are limited to 2^32 chunks (4 PiB at 1 MiB).
//!
//! Keys: a key file holds 32 raw bytes, 64 hex digits or base64 of 32 bytes
//! (surrounding whitespace ignored). A passphrase file's first line is the
//! passphrase; argon2id (64 MiB, 3 iterations, 1 lane) with a random salt
//! turns it into the key. Keys and passphrases are zeroed on drop and never
//! logged.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// The file magic.
pub const MAGIC: &[u8; 8] = b"HSDKENC\0";
/// The format version written.
pub const VERSION: u8 = 2;
/// Header length in bytes.
pub const HEADER_LEN: usize = 64;
/// Authenticated part of the header.
const AAD_LEN: usize = 48;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Default plaintext chunk size: 1 MiB.
pub const DEFAULT_CHUNK_LOG2: u8 = 20;

/// argon2id parameters used for new files: 64 MiB, 3 passes, 1 lane.
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;
/// Largest argon2id memory cost accepted from a header (256 MiB, four
/// times what this crate writes), so a hostile header cannot make
/// decryption allocate without bound.
pub const ARGON2_MAX_M_KIB: u32 = 256 * 1024;

/// Where the key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// A 32-byte key.
    Key(Zeroizing<[u8; 32]>),
    /// A passphrase, stretched with argon2id (see [`KeySource::passphrase`]).
    Passphrase(Passphrase),
}

/// A passphrase and the key last derived from it.
///
/// argon2id is slow and memory-hard on purpose (64 MiB, 3 passes), so a
/// passphrase is stretched once per `KeySource` (shared by its clones), not
/// once per file: every file it encrypts carries the same random salt and
/// gets the same key, each file with its own random nonce prefix — the same
/// arrangement as a key file used for many files. Decryption reuses the key
/// when a file's salt and parameters match. The text and the key are zeroed
/// on drop.
#[derive(Clone)]
pub struct Passphrase {
    text: Zeroizing<String>,
    derived: Arc<Mutex<Option<Derived>>>,
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// A key derived from a passphrase with these argon2id inputs.
struct Derived {
    salt: [u8; 16],
    params: (u32, u32, u32),
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            KeySource::Key(_) => "KeySource::Key(<redacted>)",
            KeySource::Passphrase(_) => "KeySource::Passphrase(<redacted>)",
        })
    }
}

impl KeySource {
    /// A passphrase key source (the text is zeroed on drop).
    pub fn passphrase(text: impl Into<String>) -> Self {
        KeySource::Passphrase(Passphrase {
            text: Zeroizing::new(text.into()),
            derived: Arc::new(Mutex::new(None)),
        })
    }
}

impl Passphrase {
    fn cache(&self) -> std::sync::MutexGuard<'_, Option<Derived>> {
        self.derived.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key for `salt` and `params`, derived now or reused.
    fn key_for(&self, salt: &[u8; 16], params: (u32, u32, u32)) -> Result<Zeroizing<[u8; 32]>> {
        if let Some(d) = self.cache().as_ref() {
            if &d.salt == salt && d.params == params {
                return Ok(d.key.clone());
            }
        }
        let (m, t, p) = params;
        let mut key = Zeroizing::new([0u8; 32]);
        let argon = argon2::Params::new(m, t, p, Some(32))
            .map_err(|e| Error::Crypto(format!("argon2id parameters: {e}")))?;
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon)
            .hash_password_into(self.text.as_bytes(), salt, &mut key[..])
            .map_err(|e| Error::Crypto(format!("argon2id: {e}")))?;
        *self.cache() = Some(Derived {
            salt: *salt,
            params,
            key: key.clone(),
        });
        Ok(key)
    }

    /// The salt of the key derived for new files, or a fresh random one.
    fn salt_for_new_files(&self, rng: &SystemRandom) -> Result<[u8; 16]> {
        let params = (ARGON2_M_KIB, ARGON2_T, ARGON2_P);
        if let Some(d) = self.cache().as_ref() {
            if d.params == params {
                return Ok(d.salt);
            }
        }
        let mut salt = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| crypto("no system randomness"))?;
        Ok(salt)
    }
}

fn crypto(what: impl Into<String>) -> Error {
    Error::Crypto(what.into())
}

impl KeySource {
    /// Reads a key file: 32 raw bytes, 64 hex digits, or base64 of 32 bytes.
    pub fn from_key_file(path: &Path) -> Result<Self> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::InvalidArgument(format!("cannot read key file {}: {e}", path.display()))
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
            return Ok(KeySource::Key(key));
        }
        let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, k) in key.iter_mut().enumerate() {
                *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                    .map_err(|_| crypto("bad hex key"))?;
            }
            return Ok(KeySource::Key(key));
        }
        use base64::Engine as _;
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) {
            let bytes = Zeroizing::new(bytes);
            if bytes.len() == 32 {
                key.copy_from_slice(&bytes);
                return Ok(KeySource::Key(key));
            }
        }
        Err(Error::InvalidArgument(format!(
            "key file {} holds neither 32 raw bytes, 64 hex digits nor base64 of 32 bytes",
            path.display()
        )))
    }

    /// Reads a passphrase file (its first line; must not be empty).
    pub fn from_passphrase_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot read passphrase file {}: {e}",
                path.display()
            ))
        })?);
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "passphrase file {} is empty",
                path.display()
            )));
        }
        Ok(KeySource::passphrase(line))
    }
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    kdf: u8,
    chunk_log2: u8,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: [u8; 16],
    prefix: [u8; 7],
}

impl Header {
    fn encode(&self) -> [u8; AAD_LEN] {
        let mut h = [0u8; AAD_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8] = VERSION;
        h[9] = self.kdf;
        h[10] = self.chunk_log2;
        h[12..16].copy_from_slice(&self.m_kib.to_be_bytes());
        h[16..20].copy_from_slice(&self.t.to_be_bytes());
        h[20..24].copy_from_slice(&self.p.to_be_bytes());
        h[24..40].copy_from_slice(&self.salt);
        h[40..47].copy_from_slice(&self.prefix);
        let [hi, lo] = header_crc(&h).to_be_bytes();
        h[11] = hi;
        h[47] = lo;
        h
    }

    fn decode(h: &[u8; HEADER_LEN]) -> Result<Self> {
        if &h[0..8] != MAGIC {
            return Err(crypto("not a hypersdk encrypted file (bad magic)"));
        }
        match h[8] {
            1 => {}
            2 => {
                let stored = u16::from_be_bytes([h[11], h[47]]);
                if stored != header_crc(h) {
                    return Err(crypto(
                        "damaged header: its checksum does not match (the file was altered or corrupted; the key was not tried)",
                    ));
                }
            }
            v => {
                return Err(Error::Crypto(format!(
                    "unsupported encrypted file version {v} (this build reads 1 and {VERSION})"
                )))
            }
        }
        let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let header = Header {
            kdf: h[9],
            chunk_log2: h[10],
            m_kib: be32(12),
            t: be32(16),
            p: be32(20),
            salt: h[24..40].try_into().map_err(|_| crypto("header"))?,
            prefix: h[40..47].try_into().map_err(|_| crypto("header"))?,
        };
        if !(16..=24).contains(&header.chunk_log2) {
            return Err(Error::Crypto(format!(
                "chunk size 2^{} is outside 2^16..=2^24",
                header.chunk_log2
            )));
        }
        match header.kdf {
            0 => {}
            1 if header.m_kib > ARGON2_MAX_M_KIB => {
                return Err(Error::Crypto(format!(
                    "refused: the header asks argon2id for {} MiB of memory, more than the {} MiB accepted",
                    header.m_kib / 1024,
                    ARGON2_MAX_M_KIB / 1024
                )))
            }
            1 if (1..=16).contains(&header.t) && (1..=16).contains(&header.p) => {}
            1 => {
                return Err(crypto(
                    "argon2id parameters in the header are out of the accepted range",
                ))
            }
            k => return Err(Error::Crypto(format!("unknown key derivation {k}"))),
        }
        Ok(header)
    }

    #[cfg(test)]
    fn encode_v1(&self) -> [u8; AAD_LEN] {
        let mut h = self.encode();
        h[8] = 1;
        h[11] = 0;
        h[47] = 0;
        h
    }

    fn nonce(&self, index: u32, flag: u8) -> Nonce {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = flag;
        Nonce::assume_unique_for_key(n)
    }
}

/// CRC-16/CCITT-FALSE of header bytes 0..48, bytes 11 and 47 (where it is
/// kept) taken as zero.
fn header_crc(h: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for (i, &b) in h[..AAD_LEN].iter().enumerate() {
        let b = if i == 11 || i == 47 { 0 } else { b };
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn derive_key(source: &KeySource, header: &Header) -> Result<LessSafeKey> {
    let mut key = Zeroizing::new([0u8; 32]);
    match (source, header.kdf) {
        (KeySource::Key(k), 0) => key.copy_from_slice(&k[..]),
        (KeySource::Passphrase(p), 1) => {
            key = p.key_for(&header.salt, (header.m_kib, header.t, header.p))?;
        }
        (KeySource::Key(_), _) => {
            return Err(crypto(
                "the file was encrypted with a passphrase, not a key file",
            ))
        }
        (KeySource::Passphrase(_), _) => {
            return Err(crypto(
                "the file was encrypted with a key file, not a passphrase",
            ))
        }
    }
    let unbound = UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| crypto("bad key length"))?;
    Ok(LessSafeKey::new(unbound))
}

fn key_check(key: &LessSafeKey, header: &Header, aad: &[u8; AAD_LEN]) -> Result<[u8; TAG_LEN]> {
    let tag = key
        .seal_in_place_separate_tag(header.nonce(u32::MAX, 2), Aad::from(aad), &mut [])
        .map_err(|_| crypto("sealing the key check"))?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Encrypts everything written to it into `out` (header first). Call
/// [`finish`](Self::finish): dropping it without finishing leaves a file that
/// fails authentication as truncated.
///
/// Memory: one chunk of plaintext plus its tag (1 MiB + 16 B by default).
pub struct EncryptWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header: Header,
    aad: [u8; AAD_LEN],
    /// Plaintext of the chunk being filled, zeroed on drop.
    buf: Zeroizing<Vec<u8>>,
    chunk: usize,
    index: u32,
}

impl<W: Write> std::fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptWriter")
            .field("chunk", &self.chunk)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> EncryptWriter<W> {
    /// Starts an encrypted file with 1 MiB chunks; writes the header at once.
    pub fn new(out: W, key: &KeySource) -> Result<Self> {
        Self::with_chunk_log2(out, key, DEFAULT_CHUNK_LOG2)
    }

    /// Starts an encrypted file with 2^`chunk_log2`-byte chunks (16..=24).
    pub fn with_chunk_log2(mut out: W, source: &KeySource, chunk_log2: u8) -> Result<Self> {
        if !(16..=24).contains(&chunk_log2) {
            return Err(Error::InvalidArgument(format!(
                "chunk size 2^{chunk_log2} is outside 2^16..=2^24"
            )));
        }
        let rng = SystemRandom::new();
        let mut header = Header {
            kdf: 0,
            chunk_log2,
            m_kib: 0,
            t: 0,
            p: 0,
            salt: [0; 16],
            prefix: [0; 7],
        };
        rng.fill(&mut header.prefix)
            .map_err(|_| crypto("no system randomness"))?;
        if let KeySource::Passphrase(p) = source {
            header.kdf = 1;
            header.m_kib = ARGON2_M_KIB;
            header.t = ARGON2_T;
            header.p = ARGON2_P;
            header.salt = p.salt_for_new_files(&rng)?;
        }
        let key = derive_key(source, &header)?;
        let aad = header.encode();
        let check = key_check(&key, &header, &aad)?;
        out.write_all(&aad)
            .and_then(|_| out.write_all(&check))
            .map_err(|e| Error::sink("cannot write", "encrypted file header", e))?;
        let chunk = 1usize << chunk_log2;
        Ok(EncryptWriter {
            out,
            key,
            header,
            aad,
            buf: Zeroizing::new(Vec::with_capacity(chunk + TAG_LEN)),
            chunk,
            index: 0,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let nonce = self.header.nonce(self.index, u8::from(last));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&self.aad), &mut self.buf[..])
            .map_err(|_| io::Error::other("AES-GCM sealing failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.index = self.index.checked_add(1).ok_or_else(|| {
            io::Error::other("more than 2^32 chunks: file too large for this chunk size")
        })?;
        Ok(())
    }

    /// Seals the final chunk and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.seal_chunk(true)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::sink("cannot write", "encrypted file", e))?;
        Ok(self.out)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.buf.len() == self.chunk {
                // A full chunk followed by more data is not the last one.
                self.seal_chunk(false)?;
            }
            let take = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts a file written by [`EncryptWriter`]; reading yields the plaintext.
/// Each chunk is authenticated whole before any of its bytes are returned; a
/// failure is an `io::Error` of kind `InvalidData` wrapping
/// [`Error::Crypto`] that names the chunk.
///
/// Memory: two chunks (the one being returned and the one read ahead to know
/// which is last).
pub struct DecryptReader<R: Read> {
    input: R,
    key: LessSafeKey,
    header: Header,
    aad: [u8; AAD_LEN],
    chunk: usize,
    index: u32,
    /// Decrypted bytes being handed out, and how many were.
    plain: Vec<u8>,
    pos: usize,
    /// The next ciphertext chunk, read ahead.
    next: Vec<u8>,
    /// A buffer to reuse.
    spare: Vec<u8>,
    done: bool,
}

impl<R: Read> std::fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptReader")
            .field("chunk", &self.chunk)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> DecryptReader<R> {
    /// Reads and checks the header and the key.
    pub fn new(mut input: R, source: &KeySource) -> Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut h)
            .map_err(|e| Error::sink("cannot read", "encrypted file header", e))?;
        if n < HEADER_LEN {
            if n < 8 || &h[..8] == MAGIC {
                return Err(Error::Crypto(format!(
                    "encrypted file is truncated inside its header ({n} of {HEADER_LEN} bytes)"
                )));
            }
            return Err(crypto("not a hypersdk encrypted file (bad magic)"));
        }
        let header = Header::decode(&h)?;
        let key = derive_key(source, &header)?;
        // The header as read (version 1 files differ from what encode() writes).
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&h[..AAD_LEN]);
        let expected = key_check(&key, &header, &aad)?;
        if !ring_constant_time_eq(&expected, &h[AAD_LEN..]) {
            return Err(crypto(if h[8] == 1 {
                "wrong key or passphrase, or a damaged header (the key check in the header does not match; files of format 1 cannot tell these apart)"
            } else {
                "wrong key or passphrase (the key check in the header does not match)"
            }));
        }
        let chunk = 1usize << header.chunk_log2;
        let mut r = DecryptReader {
            input,
            key,
            header,
            aad,
            chunk,
            index: 0,
            plain: Vec::new(),
            pos: 0,
            next: Vec::with_capacity(chunk + TAG_LEN),
            spare: Vec::new(),
            done: false,
        };
        r.fill_next()
            .map_err(|e| Error::sink("cannot read", "encrypted file", e))?;
        Ok(r)
    }

    /// Reads the next ciphertext chunk (up to chunk + tag bytes) into `next`.
    fn fill_next(&mut self) -> io::Result<()> {
        self.next.resize(self.chunk + TAG_LEN, 0);
        let n = read_full(&mut self.input, &mut self.next)?;
        self.next.truncate(n);
        Ok(())
    }

    /// Decrypts the read-ahead chunk into `plain`.
    fn open_next(&mut self) -> io::Result<()> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, Error::Crypto(what));
        if self.next.len() < TAG_LEN {
            return Err(bad(format!(
                "encrypted file is truncated: chunk {} is missing or cut short",
                self.index
            )));
        }
        // Three buffers rotate (read-ahead, being returned, spare): no
        // allocation per chunk.
        let mut ct = std::mem::replace(&mut self.next, std::mem::take(&mut self.spare));
        // A full chunk is the last one only if nothing follows it.
        let last = if ct.len() == self.chunk + TAG_LEN {
            self.fill_next()?;
            self.next.is_empty()
        } else {
            true
        };
        let nonce = self.header.nonce(self.index, u8::from(last));
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.aad), &mut ct)
            .map_err(|_| {
                bad(format!(
                    "chunk {} failed authentication: the file was altered, reordered or truncated",
                    self.index
                ))
            })?
            .len();
        ct.truncate(plain_len);
        // Plaintext buffers are reused, not zeroed per chunk: they hold the
        // data being written out anyway; key material is what gets zeroed.
        self.spare = std::mem::replace(&mut self.plain, ct);
        self.pos = 0;
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| bad("more than 2^32 chunks".into()))?;
        self.done = last;
        Ok(())
    }
}

fn ring_constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.open_next()?;
        }
        let n = (self.plain.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Drop for DecryptReader<R> {
    fn drop(&mut self) {
        // The last plaintext chunk is cleared once, when the reader goes away.
        self.plain.zeroize();
        self.spare.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeySource {
        KeySource::Key(Zeroizing::new([7u8; 32]))
    }

    fn encrypt(data: &[u8], source: &KeySource) -> Vec<u8> {
        let mut w = EncryptWriter::with_chunk_log2(Vec::new(), source, 16).unwrap();
        for part in data.chunks(10_000) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn decrypt(ct: &[u8], source: &KeySource) -> io::Result<Vec<u8>> {
        let mut r = DecryptReader::new(ct, source).map_err(io::Error::other)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn reads_format_1_files() {
        let header = Header {
            kdf: 0,
            chunk_log2: 16,
            m_kib: 0,
            t: 0,
            p: 0,
            salt: [0; 16],
            prefix: [9; 7],
        };
        let k = derive_key(&key(), &header).unwrap();
        let aad = header.encode_v1();
        let mut file = aad.to_vec();
        file.extend_from_slice(&key_check(&k, &header, &aad).unwrap());
        let mut chunk = b"format one".to_vec();
        k.seal_in_place_append_tag(header.nonce(0, 1), Aad::from(&aad), &mut chunk)
            .unwrap();
        file.extend_from_slice(&chunk);
        assert_eq!(decrypt(&file, &key()).unwrap(), b"format one");
        let mut damaged = file.clone();
        damaged[45] ^= 1;
        let e = DecryptReader::new(&damaged[..], &key())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wrong key or passphrase, or a damaged header"),
            "{e}"
        );
    }

    #[test]
    fn argon2_memory_above_the_cap_is_refused_before_any_work() {
        let header = Header {
            kdf: 1,
            chunk_log2: 20,
            m_kib: 4 * 1024 * 1024,
            t: 3,
            p: 1,
            salt: [1; 16],
            prefix: [2; 7],
        };
        let mut file = header.encode().to_vec();
        file.extend_from_slice(&[0; TAG_LEN]);
        let pass = KeySource::passphrase("x");
        let e = DecryptReader::new(&file[..], &pass)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4096 MiB") && e.contains("256 MiB"), "{e}");
        // No key was derived (a 4 GiB argon2id pass would have run first).
        let KeySource::Passphrase(p) = &pass else {
            unreachable!()
        };
        assert!(p.cache().is_none());
    }

    #[test]
    fn round_trips_all_lengths() {
        for len in [0usize, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ct = encrypt(&data, &key());
            assert_eq!(
                ct.len(),
                HEADER_LEN + len + TAG_LEN * len.div_ceil(65536).max(1)
            );
            assert_eq!(decrypt(&ct, &key()).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn detects_every_kind_of_tampering() {
        let data = vec![0x5au8; 3 * 65536 + 100];
        let ct = encrypt(&data, &key());
        let c = 65536 + TAG_LEN;
        let body = &ct[HEADER_LEN..];
        let err = |v: &[u8]| decrypt(v, &key()).unwrap_err().to_string();
        // truncated at a chunk boundary
        assert!(err(&ct[..HEADER_LEN + 3 * c]).contains("chunk 2 failed"));
        // truncated inside a chunk
        assert!(err(&ct[..ct.len() - 5]).contains("failed authentication"));
        // reordered chunks
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&body[c..2 * c]);
        swapped.extend_from_slice(&body[..c]);
        swapped.extend_from_slice(&body[2 * c..]);
        assert!(err(&swapped).contains("chunk 0 failed"));
        // duplicated chunk
        let mut dup = ct[..HEADER_LEN + c].to_vec();
        dup.extend_from_slice(body);
        assert!(err(&dup).contains("chunk 1 failed"));
        // one bit flipped in the data
        let mut flipped = ct.clone();
        flipped[HEADER_LEN + 70_000] ^= 1;
        assert!(err(&flipped).contains("chunk 1 failed"));
        // header altered, anywhere: a damaged header, not a wrong key
        for at in [9, 10, 12, 30, 45, 47, 11] {
            let mut h = ct.clone();
            h[at] ^= 0x10;
            let e = DecryptReader::new(&h[..], &key()).unwrap_err().to_string();
            assert!(e.contains("damaged header"), "byte {at}: {e}");
        }
        // the key check altered: the key does not match
        let mut h = ct.clone();
        h[50] ^= 1;
        assert!(DecryptReader::new(&h[..], &key())
            .unwrap_err()
            .to_string()
            .contains("wrong key"));
        // unknown version
        let mut v = ct.clone();
        v[8] = 9;
        assert!(DecryptReader::new(&v[..], &key())
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        // wrong key
        let other = KeySource::Key(Zeroizing::new([8u8; 32]));
        assert!(DecryptReader::new(&ct[..], &other)
            .unwrap_err()
            .to_string()
            .contains("wrong key"));
        // nothing of a failing chunk is released
        let mut r = DecryptReader::new(&flipped[..], &key()).unwrap();
        let mut buf = vec![0u8; 65536];
        assert_eq!(r.read(&mut buf).unwrap(), 65536); // chunk 0 is intact
        assert!(r.read(&mut buf).is_err());
    }

    #[test]
    fn passphrases_and_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("pass");
        std::fs::write(&pf, "correct horse battery staple\n").unwrap();
        let pass = KeySource::from_passphrase_file(&pf).unwrap();
        let ct = encrypt(b"secret", &pass);
        assert_eq!(decrypt(&ct, &pass).unwrap(), b"secret");
        std::fs::write(&pf, "wrong\n").unwrap();
        let wrong = KeySource::from_passphrase_file(&pf).unwrap();
        assert!(DecryptReader::new(&ct[..], &wrong)
            .unwrap_err()
            .to_string()
            .contains("wrong key or passphrase"));
        assert!(DecryptReader::new(&ct[..], &key())
            .unwrap_err()
            .to_string()
            .contains("passphrase, not a key file"));
        assert_eq!(format!("{pass:?}"), "KeySource::Passphrase(<redacted>)");

        // One stretch per key source: files share the salt, not the nonce prefix;
        // a fresh key source with the same passphrase still decrypts them.
        let ct2 = encrypt(b"other", &pass.clone());
        assert_eq!(ct[24..40], ct2[24..40], "same salt");
        assert_ne!(ct[40..47], ct2[40..47], "own nonce prefix");
        let fresh = KeySource::passphrase("correct horse battery staple");
        assert_eq!(decrypt(&ct2, &fresh).unwrap(), b"other");
        assert_ne!(
            encrypt(b"x", &fresh)[24..40],
            encrypt(b"x", &KeySource::passphrase("correct horse battery staple"))[24..40],
            "each key source draws its own salt"
        );

        let kf = dir.path().join("key");
        for content in [
            vec![7u8; 32],
            "07".repeat(32).into_bytes(),
            b"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n".to_vec(),
        ] {
            std::fs::write(&kf, &content).unwrap();
            let k = KeySource::from_key_file(&kf).unwrap();
            assert_eq!(decrypt(&encrypt(b"x", &key()), &k).unwrap(), b"x");
        }
        std::fs::write(&kf, b"too short").unwrap();
        assert!(KeySource::from_key_file(&kf).is_err());
    }
}
