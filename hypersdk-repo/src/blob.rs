//! Blobs: how every chunk, index and snapshot is stored (format in the
//! [crate docs](crate#blobs)).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::digest::{Context, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use hypersdk_core::{Error, Result};

/// Magic of every blob.
pub const MAGIC: &[u8; 4] = b"HSRB";
/// Blob format version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER: usize = 20;
/// Flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Flag: the payload is encrypted with AES-256-GCM.
pub const FLAG_AES_GCM: u8 = 2;
/// Length of a digest, a chunk's name.
pub const DIGEST: usize = 32;
/// zstd level of chunks and indexes.
const ZSTD_LEVEL: i32 = 3;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chunk of disk data.
    Chunk = 1,
    /// A disk's index.
    Index = 2,
    /// A snapshot's description.
    Snapshot = 3,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Chunk => "chunk",
            Kind::Index => "index",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// The repository's secrets, when it is encrypted.
pub struct Keys {
    /// AES-256-GCM key of blob payloads.
    pub(crate) enc: Zeroizing<[u8; 32]>,
    /// HMAC-SHA256 key of chunk names.
    pub(crate) id: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// Encodes and decodes blobs of one repository.
#[derive(Debug)]
pub struct Codec {
    keys: Option<Keys>,
    aead: Option<LessSafeKey>,
    hmac: Option<hmac::Key>,
    rng: SystemRandom,
}

impl Codec {
    /// A codec; `keys` None for an unencrypted repository.
    pub fn new(keys: Option<Keys>) -> Result<Self> {
        let (aead, hmac) = match &keys {
            Some(k) => (
                Some(LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &k.enc[..])
                        .map_err(|_| Error::Crypto("bad repository key".into()))?,
                )),
                Some(hmac::Key::new(hmac::HMAC_SHA256, &k.id[..])),
            ),
            None => (None, None),
        };
        Ok(Codec {
            keys,
            aead,
            hmac,
            rng: SystemRandom::new(),
        })
    }

    /// Whether blobs are encrypted.
    pub fn encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// The digest naming content `data`: HMAC-SHA256 under the id key when
    /// encrypted (names leak nothing about the content), else SHA-256.
    pub fn digest(&self, data: &[u8]) -> [u8; DIGEST] {
        let mut out = [0u8; DIGEST];
        match &self.hmac {
            Some(k) => out.copy_from_slice(hmac::sign(k, data).as_ref()),
            None => out.copy_from_slice(ring::digest::digest(&SHA256, data).as_ref()),
        }
        out
    }

    /// `payload` as a blob of `kind` stored under `name`; compressed when
    /// that saves at least 3%.
    pub fn encode(&self, kind: Kind, name: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let compressed = zstd::bulk::compress(payload, ZSTD_LEVEL)
            .map_err(|e| Error::Internal(format!("zstd compression failed: {e}")))?;
        let (flags, body): (u8, &[u8]) = if compressed.len() < payload.len() - payload.len() / 32 {
            (FLAG_ZSTD, &compressed)
        } else {
            (0, payload)
        };
        let mut out = Vec::with_capacity(HEADER + body.len() + DIGEST);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.push(flags | if self.aead.is_some() { FLAG_AES_GCM } else { 0 });
        out.push(0);
        let mut nonce = [0u8; 12];
        if self.aead.is_some() {
            self.rng
                .fill(&mut nonce)
                .map_err(|_| Error::Crypto("no randomness for a nonce".into()))?;
        }
        out.extend_from_slice(&nonce);
        match &self.aead {
            Some(key) => {
                let mut aad = out.clone();
                aad.extend_from_slice(name.as_bytes());
                out.extend_from_slice(body);
                let mut sealed = out.split_off(HEADER);
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut sealed,
                )
                .map_err(|_| Error::Crypto("encryption failed".into()))?;
                out.extend_from_slice(&sealed);
            }
            None => {
                let mut ctx = Context::new(&SHA256);
                ctx.update(&out);
                ctx.update(name.as_bytes());
                ctx.update(body);
                out.extend_from_slice(body);
                out.extend_from_slice(ctx.finish().as_ref());
            }
        }
        Ok(out)
    }

    /// The payload of blob `data` stored under `name`, at most `max`
    /// bytes once decompressed; every check failing is an
    /// [`Error::Integrity`] naming `name`.
    pub fn decode(&self, kind: Kind, name: &str, mut data: Vec<u8>, max: usize) -> Result<Vec<u8>> {
        let bad = |detail: String| Error::Integrity {
            file: name.to_owned(),
            detail,
        };
        if data.len() < HEADER + 16 || &data[..4] != MAGIC {
            return Err(bad(format!(
                "not a repository blob ({} bytes, no HSRB header)",
                data.len()
            )));
        }
        if data[4] != VERSION {
            return Err(bad(format!(
                "blob format version {} (this hypersdk reads {VERSION})",
                data[4]
            )));
        }
        if data[5] != kind as u8 {
            return Err(bad(format!("holds a blob of kind {}, expected a {}", data[5], kind.label())));
        }
        let flags = data[6];
        if flags & !(FLAG_ZSTD | FLAG_AES_GCM) != 0 || data[7] != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let body: Vec<u8> = match (&self.aead, flags & FLAG_AES_GCM != 0) {
            (Some(key), true) => {
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(&data[8..20]);
                let mut aad = data[..HEADER].to_vec();
                aad.extend_from_slice(name.as_bytes());
                let mut sealed = data.split_off(HEADER);
                let plain = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), &mut sealed)
                    .map_err(|_| bad("authentication failed: the blob was altered or damaged".into()))?;
                let n = plain.len();
                sealed.truncate(n);
                sealed
            }
            (None, false) => {
                if data.len() < HEADER + DIGEST {
                    return Err(bad("truncated".into()));
                }
                let end = data.len() - DIGEST;
                let mut ctx = Context::new(&SHA256);
                ctx.update(&data[..HEADER]);
                ctx.update(name.as_bytes());
                ctx.update(&data[HEADER..end]);
                if ctx.finish().as_ref() != &data[end..] {
                    return Err(bad("checksum mismatch: the blob was altered or damaged".into()));
                }
                data.truncate(end);
                data.split_off(HEADER)
            }
            (Some(_), false) => return Err(bad("not encrypted, in an encrypted repository".into())),
            (None, true) => return Err(bad("encrypted, in a repository without a key".into())),
        };
        let payload = if flags & FLAG_ZSTD != 0 {
            zstd::bulk::decompress(&body, max).map_err(|e| bad(format!("zstd: {e}")))?
        } else {
            body
        };
        if payload.len() > max {
            return Err(bad(format!("holds {} bytes, more than {max}", payload.len())));
        }
        Ok(payload)
    }

    /// Decodes chunk `digest` and checks that its content has that digest.
    pub fn decode_chunk(&self, digest: &[u8; DIGEST], data: Vec<u8>, max: usize) -> Result<Vec<u8>> {
        let name = chunk_name(digest);
        let payload = self.decode(Kind::Chunk, &name, data, max)?;
        if &self.digest(&payload) != digest {
            return Err(Error::Integrity {
                file: name,
                detail: "its content does not have the digest it is named by".into(),
            });
        }
        Ok(payload)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower-case or upper-case hex `s`.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The object name of chunk `digest`.
pub fn chunk_name(digest: &[u8; DIGEST]) -> String {
    format!("chunk-{}", hex(digest))
}

/// The digest in a `chunk-…`/`index-…` name.
pub fn parse_digest(name: &str, prefix: &str) -> Option<[u8; DIGEST]> {
    let h = name.strip_prefix(prefix)?;
    if h.len() != 2 * DIGEST {
        return None;
    }
    unhex(h)?.try_into().ok()
}

/// Fresh random bytes.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Crypto("no randomness available".into()))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs() -> Vec<Codec> {
        let keys = Keys {
            enc: Zeroizing::new([7u8; 32]),
            id: Zeroizing::new([9u8; 32]),
        };
        vec![Codec::new(None).unwrap(), Codec::new(Some(keys)).unwrap()]
    }

    #[test]
    fn round_trip_and_tamper() {
        for c in codecs() {
            for payload in [vec![0u8; 4096], (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect()] {
                let blob = c.encode(Kind::Chunk, "n", &payload).unwrap();
                assert_eq!(c.decode(Kind::Chunk, "n", blob.clone(), 1 << 20).unwrap(), payload);
                // Another name, kind, a flipped byte, a short limit: refused.
                assert!(c.decode(Kind::Chunk, "m", blob.clone(), 1 << 20).is_err());
                assert!(c.decode(Kind::Index, "n", blob.clone(), 1 << 20).is_err());
                for at in [0, 9, HEADER, blob.len() - 1] {
                    let mut b = blob.clone();
                    b[at] ^= 1;
                    assert!(c.decode(Kind::Chunk, "n", b, 1 << 20).is_err(), "flip at {at}");
                }
                assert!(c.decode(Kind::Chunk, "n", blob, 100).is_err());
            }
        }
    }

    #[test]
    fn names_are_keyed() {
        let c = codecs();
        assert_ne!(c[0].digest(b"x"), c[1].digest(b"x"));
        let d = c[1].digest(b"x");
        assert_eq!(parse_digest(&chunk_name(&d), "chunk-"), Some(d));
    }
}
