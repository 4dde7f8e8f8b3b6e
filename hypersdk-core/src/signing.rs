//! Signed packages: a `.cert` file next to the manifest, as ovftool's
//! `--privateKey` writes it, and its verification.
//!
//! The file holds one line — `SHA256(NAME.mf)= HEX`, an RSA PKCS #1 v1.5
//! signature of the manifest's bytes — followed by the signer's X.509
//! certificate in PEM. The signature uses SHA-256 (SHA-512 with a SHA-512
//! manifest; a SHA-1 manifest is still signed with SHA-256, since SHA-1
//! signatures are no longer made). Keys are RSA, 2048 to 8192 bits, in PEM
//! (`PRIVATE KEY`, PKCS #8, or `RSA PRIVATE KEY`, PKCS #1); the certificate's
//! public key must be the key's. Signing and verifying use `ring`
//! (constant-time RSA).

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};

use hypersdk_formats::manifest::{to_hex, DigestAlgorithm};

use crate::error::{Error, Result};

/// Largest key or certificate file read, in bytes.
const MAX_PEM_BYTES: u64 = 64 << 10;

/// A private key and its certificate that sign manifests.
#[derive(Debug)]
pub struct ManifestSigner {
    key: RsaKeyPair,
    cert_pem: String,
}

fn bad(what: impl Into<String>) -> Error {
    Error::InvalidArgument(what.into())
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| bad(format!("{what} {}: cannot open: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("{what} {}: cannot read: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(bad(format!(
            "{what} {}: larger than {MAX_PEM_BYTES} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The DER of the first PEM item of `bytes` accepted by `want`.
fn pem_item<T>(bytes: &[u8], want: impl Fn(rustls_pemfile::Item) -> Option<T>) -> Option<T> {
    let mut r = std::io::BufReader::new(bytes);
    while let Ok(Some(item)) = rustls_pemfile::read_one(&mut r) {
        if let Some(t) = want(item) {
            return Some(t);
        }
    }
    None
}

impl ManifestSigner {
    /// The signer of the RSA key in PEM file `key` and the certificate in
    /// PEM file `cert`.
    pub fn from_files(key_file: &Path, cert: &Path) -> Result<ManifestSigner> {
        let key_pem = zeroize::Zeroizing::new(read_pem(key_file, "signing key")?);
        let cert_bytes = read_pem(cert, "signing certificate")?;
        let key = pem_item(&key_pem, |i| match i {
            rustls_pemfile::Item::Pkcs8Key(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok(),
            rustls_pemfile::Item::Pkcs1Key(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).ok(),
            _ => None,
        })
        .ok_or_else(|| {
            bad(format!(
                "signing key {}: no RSA private key (PEM \"PRIVATE KEY\" or \"RSA PRIVATE KEY\", 2048 to 8192 bits)",
                key_file.display()
            ))
        })?;
        let der = pem_item(&cert_bytes, |i| match i {
            rustls_pemfile::Item::X509Certificate(c) => Some(c.as_ref().to_vec()),
            _ => None,
        })
        .ok_or_else(|| {
            bad(format!(
                "signing certificate {}: no PEM \"CERTIFICATE\"",
                cert.display()
            ))
        })?;
        let public = rsa_public_key(&der).ok_or_else(|| {
            bad(format!(
                "signing certificate {}: not an X.509 certificate of an RSA key",
                cert.display()
            ))
        })?;
        if public != key.public().as_ref() {
            return Err(bad(format!(
                "signing certificate {} is not the certificate of signing key {}",
                cert.display(),
                key_file.display()
            )));
        }
        Ok(ManifestSigner {
            key,
            cert_pem: pem_certificate(&der),
        })
    }

    /// The hash the signature of a manifest digested with `manifest` uses.
    fn algorithm(manifest: DigestAlgorithm) -> (&'static str, &'static dyn signature::RsaEncoding) {
        match manifest {
            DigestAlgorithm::Sha512 => ("SHA512", &signature::RSA_PKCS1_SHA512),
            _ => ("SHA256", &signature::RSA_PKCS1_SHA256),
        }
    }

    /// The `.cert` file's bytes for manifest `manifest_name` with `bytes`.
    pub fn sign(
        &self,
        manifest_name: &str,
        bytes: &[u8],
        manifest: DigestAlgorithm,
    ) -> Result<String> {
        let (name, enc) = Self::algorithm(manifest);
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(enc, &SystemRandom::new(), bytes, &mut sig)
            .map_err(|_| Error::Internal("RSA signing failed".into()))?;
        Ok(format!(
            "{name}({manifest_name})= {}\n{}",
            to_hex(&sig),
            self.cert_pem
        ))
    }

    /// How long [`sign`](Self::sign)'s output is for `manifest_name`: the
    /// same whatever the manifest holds.
    pub fn cert_len(&self, manifest_name: &str) -> u64 {
        let line = "SHA256()= \n".len() + manifest_name.len() + 2 * self.key.public().modulus_len();
        (line + self.cert_pem.len()) as u64
    }
}

/// The PEM text of a certificate's DER.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What a `.cert` file says of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignatureCheck {
    /// The manifest it signs.
    pub manifest: String,
    /// The signature's hash, e.g. `SHA256`.
    pub algorithm: String,
    /// SHA-256 fingerprint of the signer's certificate (hex), which the
    /// user compares with the one they trust.
    pub certificate_sha256: String,
}

/// Checks `.cert` text `cert` against manifest `manifest_name` with
/// `bytes`: the signature must verify under the certificate's RSA key.
/// The certificate itself is not judged (no chain or dates): its
/// fingerprint is returned for the caller to trust or not.
pub fn verify_cert(cert: &str, manifest_name: &str, bytes: &[u8]) -> Result<SignatureCheck> {
    let fail = |detail: String| Error::Integrity {
        file: manifest_name.to_string(),
        detail,
    };
    let line = cert.lines().next().unwrap_or_default();
    let (head, sig_hex) = line
        .split_once(")= ")
        .ok_or_else(|| fail("the .cert file does not start with ALG(NAME)= SIGNATURE".into()))?;
    let (alg, name) = head
        .split_once('(')
        .ok_or_else(|| fail("the .cert file does not start with ALG(NAME)= SIGNATURE".into()))?;
    if name != manifest_name {
        return Err(fail(format!(
            "the .cert file signs {}, not {manifest_name}",
            hypersdk_formats::error::display_name(name)
        )));
    }
    let alg = alg.trim().to_ascii_uppercase();
    let params: &dyn signature::VerificationAlgorithm = match alg.as_str() {
        "SHA256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "SHA512" => &signature::RSA_PKCS1_2048_8192_SHA512,
        "SHA1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        other => {
            return Err(fail(format!(
                "the .cert file's algorithm {} is not SHA1, SHA256 or SHA512",
                hypersdk_formats::error::display_name(other)
            )))
        }
    };
    let sig = hypersdk_formats::manifest::from_hex(sig_hex.trim())
        .ok_or_else(|| fail("the .cert file's signature is not hex".into()))?;
    let der = pem_item(cert.as_bytes(), |i| match i {
        rustls_pemfile::Item::X509Certificate(c) => Some(c.as_ref().to_vec()),
        _ => None,
    })
    .ok_or_else(|| fail("the .cert file holds no PEM certificate".into()))?;
    let public = rsa_public_key(&der)
        .ok_or_else(|| fail("the .cert file's certificate is not of an RSA key".into()))?;
    UnparsedPublicKey::new(params, public)
        .verify(bytes, &sig)
        .map_err(|_| fail("its signature in the .cert file does not verify: the manifest or the signature was changed".into()))?;
    Ok(SignatureCheck {
        manifest: manifest_name.to_string(),
        algorithm: alg,
        certificate_sha256: to_hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref()),
    })
}

/// One DER element: (tag, content, the bytes after it).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The RSAPublicKey (PKCS #1 DER) of an X.509 certificate's
/// subjectPublicKeyInfo, if it is an RSA key (RFC 5280 §4.1).
fn rsa_public_key(cert: &[u8]) -> Option<&[u8]> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (0x30, cert, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for want in [0x02, 0x30, 0x30, 0x30, 0x30] {
        let (tag, _, after) = tlv(rest)?;
        if tag != want {
            return None;
        }
        rest = after;
    }
    let (0x30, spki, _) = tlv(rest)? else {
        return None;
    };
    let (0x30, alg, after) = tlv(spki)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (0x03, bits, _) = tlv(after)? else {
        return None;
    };
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_truncation() {
        assert_eq!(tlv(&[0x02, 0x01, 0x05]), Some((0x02, &[5u8][..], &[][..])));
        assert_eq!(
            tlv(&[0x04, 0x81, 0x01, 0xaa, 0xbb]).map(|t| t.1),
            Some(&[0xaa][..])
        );
        assert_eq!(tlv(&[0x04, 0x82, 0x01]), None);
        assert_eq!(tlv(&[0x04, 0x05, 0x00]), None);
        assert_eq!(tlv(&[0x04, 0x80]), None);
        assert_eq!(rsa_public_key(&[0x30, 0x00]), None);
    }
}
