//! TLS for the management endpoints of platforms whose servers often carry
//! self-signed certificates (vCenter/ESXi, Proxmox VE): verified against
//! the system's trust store (plus an optional CA file) by default; or pinned
//! to a certificate thumbprint (SHA-1 as vSphere and govc show it, or
//! SHA-256 as Proxmox VE shows it); or, when asked, not verified at all.
//!
//! A failed verification is reported with the server certificate's
//! thumbprint ([`Seen`]), so the provider can tell the user what to check
//! and pin.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use hypersdk_formats::manifest::{DigestAlgorithm, Hasher};

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Against the system trust store and `ca_file`, if given.
    #[default]
    Verify,
    /// Accept exactly the certificate with this SHA-1 or SHA-256 thumbprint
    /// (hex, colons and case ignored), whoever signed it.
    Thumbprint(String),
    /// Accept any certificate (the handshake signature is still checked).
    Insecure,
}

impl TlsMode {
    /// The mode of the usual settings: a pinned thumbprint wins over
    /// `insecure`, which wins over verification.
    pub fn from_settings(thumbprint: Option<String>, insecure: bool) -> TlsMode {
        match (thumbprint, insecure) {
            (Some(t), _) => TlsMode::Thumbprint(t),
            (None, true) => TlsMode::Insecure,
            (None, false) => TlsMode::Verify,
        }
    }
}

/// Hex thumbprint with colons, upper case: `AB:CD:…`.
pub fn thumbprint_sha1(der: &[u8]) -> String {
    thumbprint(DigestAlgorithm::Sha1, der)
}

/// The `AB:CD:…` thumbprint of `der` with `algorithm`.
fn thumbprint(algorithm: DigestAlgorithm, der: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(der);
    colon_hex(&h.finish_hex())
}

/// `ab01…` → `AB:01:…`.
fn colon_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

fn normalize(t: &str) -> String {
    t.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// What the verifier saw of a certificate it refused.
#[derive(Debug, Default)]
pub struct Seen {
    /// The SHA-1 thumbprint of the certificate refused.
    pub thumbprint: Option<String>,
    /// The SHA-256 thumbprint of the certificate refused.
    pub thumbprint_sha256: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
}

#[derive(Debug)]
struct Verifier {
    mode: TlsMode,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let sha1 = thumbprint_sha1(end_entity);
        let refuse = |reason: String, err: rustls::Error| {
            if let Ok(mut s) = self.seen.lock() {
                s.thumbprint = Some(sha1.clone());
                s.thumbprint_sha256 = Some(thumbprint(DigestAlgorithm::Sha256, end_entity));
                s.reason = Some(reason);
            }
            Err(err)
        };
        match &self.mode {
            TlsMode::Insecure => Ok(ServerCertVerified::assertion()),
            TlsMode::Thumbprint(want) => {
                let want = normalize(want);
                if want == normalize(&sha1)
                    || want == normalize(&thumbprint(DigestAlgorithm::Sha256, end_entity))
                {
                    Ok(ServerCertVerified::assertion())
                } else {
                    refuse(
                        "its thumbprint is not the pinned one".into(),
                        rustls::Error::General("certificate thumbprint mismatch".into()),
                    )
                }
            }
            TlsMode::Verify => {
                let Some(v) = &self.webpki else {
                    return refuse(
                        "no trusted certificate authorities".into(),
                        rustls::Error::General("no trust anchors".into()),
                    );
                };
                match v.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Ok(ok) => Ok(ok),
                    Err(e) => refuse(e.to_string(), e),
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds the client TLS configuration for `mode`. `ca_pem` adds trusted
/// certificates (PEM) to the system's. Returns the config and where a refused
/// certificate is described.
pub fn client_config(
    mode: &TlsMode,
    ca_pem: Option<&[u8]>,
) -> Result<(rustls::ClientConfig, Arc<Mutex<Seen>>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = if *mode == TlsMode::Verify {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = ca_pem {
            let mut reader = pem;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| format!("bad certificate in the CA file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable certificate in the CA file: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("the CA file holds no PEM certificate".into());
            }
        }
        if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot build the certificate verifier: {e}"))?,
            )
        }
    } else {
        None
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let verifier = Verifier {
        mode: mode.clone(),
        webpki,
        provider: provider.clone(),
        seen: seen.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((config, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_compare_loosely() {
        assert_eq!(normalize("ab:cd:EF"), "ABCDEF");
        assert_eq!(colon_hex("ab01"), "AB:01");
        assert_eq!(thumbprint_sha1(b"").len(), 20 * 3 - 1);
    }
}
