//! Whole files and packages on a local disk: verify an OVA/OVF package
//! (plain, or wrapped by an export's compression and encryption), and
//! encrypt, decrypt or unwrap a file into place.
//!
//! Outputs are written under a hidden temporary name next to the target,
//! synced, and renamed into place only when complete: a failure (wrong key,
//! damaged data, full disk) leaves nothing that looks like a result. These
//! calls block; from async code run them on a blocking thread.
//!
//! ```no_run
//! use hypersdk_core::files;
//! let report = files::verify_package("out/web-01.ova".as_ref(), None)?;
//! assert!(report.verified(), "{:?}", report.failures());
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

pub use hypersdk_formats::package::PackageReport;
use hypersdk_formats::package::{inspect_ova_stream, inspect_package};

use crate::error::{Error, Result};
use crate::transforms::compress::{sniff, Layer};
use crate::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};
use crate::transforms::unwrap::unwrap_reader;

const BUF: usize = 1 << 20;

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// Whether `path` is a file wrapped by an export (encrypted, zstd or gzip),
/// judged by its magic bytes.
pub fn is_wrapped(path: &Path) -> bool {
    path.is_file()
        && std::fs::File::open(path)
            .map(BufReader::new)
            .and_then(|mut r| sniff(&mut r))
            .is_ok_and(|l| l != Layer::Plain)
}

/// The key of an optional key file / passphrase file pair (the key file
/// wins if both are given).
pub fn optional_key(
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Option<KeySource>> {
    Ok(match (key_file, passphrase_file) {
        (Some(k), _) => Some(KeySource::from_key_file(k)?),
        (None, Some(p)) => Some(KeySource::from_passphrase_file(p)?),
        (None, None) => None,
    })
}

/// The plain bytes of a possibly wrapped file: decrypted if encrypted (an
/// encrypted file without a key is one clear error naming it), decompressed
/// if compressed.
pub fn open_unwrapped(
    file: std::fs::File,
    key: Option<&KeySource>,
    path: &Path,
) -> Result<Box<dyn Read + Send>> {
    unwrap_reader(BufReader::with_capacity(BUF, file), key).map_err(|e| match e {
        Error::Crypto(m) if key.is_none() => Error::Crypto(format!(
            "{} is encrypted: a key file or passphrase file is needed ({m})",
            path.display()
        )),
        Error::Crypto(m) => Error::Crypto(format!("cannot decrypt {}: {m}", path.display())),
        e => e,
    })
}

/// Reads a package — an OVA, an OVF directory or descriptor, or an OVA
/// wrapped by an export's `--compress`/`--encrypt-*` (checked in one pass:
/// decrypt, decompress, walk the archive) — and checks every file against
/// its manifest. The report says what matched; see
/// [`PackageReport::verified`] and [`PackageReport::failures`].
pub fn verify_package(path: &Path, key: Option<&KeySource>) -> Result<PackageReport> {
    let format_err = |e: hypersdk_formats::Error| Error::Format {
        what: format!("cannot read package {}", path.display()),
        source: e,
    };
    let mut report = if is_wrapped(path) {
        let file =
            std::fs::File::open(path).map_err(|e| Error::sink("cannot open", show(path), e))?;
        let plain = open_unwrapped(file, key, path)?;
        inspect_ova_stream(plain, path).map_err(format_err)?
    } else {
        inspect_package(path).map_err(format_err)?
    };
    check_signature(&mut report);
    Ok(report)
}

/// [`verify_package`] of an OVA (plain or wrapped) read from `input` in one
/// pass — a published object read from a store — shown as `label`.
pub fn verify_ova_stream<R: Read + Send>(
    input: R,
    label: &str,
    key: Option<&KeySource>,
) -> Result<PackageReport> {
    let path = Path::new(label);
    let plain = unwrap_reader(input, key).map_err(|e| match e {
        Error::Crypto(m) => Error::Crypto(format!("{label}: {m}")),
        e => e,
    })?;
    let mut report = inspect_ova_stream(plain, path).map_err(|e| Error::Format {
        what: format!("cannot read package {label}"),
        source: e,
    })?;
    check_signature(&mut report);
    Ok(report)
}

/// Checks the package's `.cert` against its manifest
/// ([`crate::signing::verify_cert`]): who signed it, or a problem.
fn check_signature(report: &mut PackageReport) {
    let (Some((cert_name, cert)), Some(mf)) = (&report.certificate, &report.manifest) else {
        return;
    };
    let text = report.manifest_text.as_deref().unwrap_or_default();
    match crate::signing::verify_cert(cert, mf, text.as_bytes()) {
        Ok(c) => {
            report.signed_by = Some(format!(
                "{} signature, certificate SHA-256 {}",
                c.algorithm, c.certificate_sha256
            ))
        }
        Err(e) => report.problems.push(format!(
            "{}: {e}",
            hypersdk_formats::error::display_name(cert_name)
        )),
    }
}

/// The summary of a package report that tools print and bindings return:
/// kind, path, verified, failures, files (name, size), manifest, VM names.
pub fn package_summary(r: &PackageReport) -> serde_json::Value {
    serde_json::json!({
        "kind": r.kind,
        "path": r.path.display().to_string(),
        "verified": r.verified(),
        "failures": r.failures(),
        "files": r.files,
        "manifest": r.manifest,
        "signed_by": r.signed_by,
        "vms": r.envelope.systems.iter().map(|s| s.display_name().to_string()).collect::<Vec<_>>(),
    })
}

/// [`verify_package`], failing with [`Error::Integrity`] (naming every
/// mismatch) unless the package checks out.
pub fn verify_package_strict(path: &Path, key: Option<&KeySource>) -> Result<PackageReport> {
    let report = verify_package(path, key)?;
    if !report.verified() {
        return Err(Error::Integrity {
            file: show(path),
            detail: report.failures().join("; "),
        });
    }
    Ok(report)
}

/// Runs `f(input, partial output)` and renames the output into place only
/// if it succeeds (after an fsync); a failure leaves nothing behind.
fn publish<T>(
    input_path: &Path,
    output: &Path,
    overwrite: bool,
    f: impl FnOnce(std::fs::File, std::fs::File) -> Result<T>,
) -> Result<T> {
    if output.exists() && !overwrite {
        return Err(Error::AlreadyExists {
            target: show(output),
        });
    }
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = output.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let input = std::fs::File::open(input_path)
        .map_err(|e| Error::sink("cannot open", show(input_path), e))?;
    let out = std::fs::File::create(&partial)
        .map_err(|e| Error::sink("cannot create", show(&partial), e))?;
    let result = f(input, out).and_then(|v| {
        std::fs::rename(&partial, output)
            .map_err(|e| Error::sink("cannot publish", show(output), e))?;
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Copies `r` into `out` through a buffer, syncs it; bytes copied.
fn copy_synced(r: &mut dyn Read, out: std::fs::File, input: &Path, output: &Path) -> Result<u64> {
    let mut w = BufWriter::with_capacity(BUF, out);
    let n = std::io::copy(r, &mut w).map_err(|e| copy_error(e, input, output))?;
    w.flush()
        .map_err(|e| Error::sink("cannot write", show(output), e))?;
    let file = w
        .into_inner()
        .map_err(|e| Error::sink("cannot write", show(output), e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::sink("cannot sync", show(output), e))?;
    Ok(n)
}

/// A failed copy: damaged input (authentication, checksum) is an integrity
/// error of the input; anything else an I/O error.
fn copy_error(e: std::io::Error, input: &Path, output: &Path) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        Error::Integrity {
            file: show(input),
            detail: e.to_string(),
        }
    } else {
        Error::sink("cannot copy into", show(output), e)
    }
}

/// Encrypts `input` into `output` (AES-256-GCM STREAM); bytes read.
pub fn encrypt_file(input: &Path, output: &Path, key: &KeySource, overwrite: bool) -> Result<u64> {
    publish(input, output, overwrite, |inp, out| {
        let mut w = EncryptWriter::new(BufWriter::with_capacity(BUF, out), key)?;
        let n = std::io::copy(&mut BufReader::with_capacity(BUF, inp), &mut w)
            .map_err(|e| Error::sink("cannot encrypt", show(input), e))?;
        let buf = w.finish()?;
        let file = buf
            .into_inner()
            .map_err(|e| Error::sink("cannot write", show(output), e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::sink("cannot sync", show(output), e))?;
        Ok(n)
    })
}

/// Decrypts a file made by [`encrypt_file`] (or an export's encryption)
/// into `output`; any tampering or a wrong key fails without output. Bytes
/// written.
pub fn decrypt_file(input: &Path, output: &Path, key: &KeySource, overwrite: bool) -> Result<u64> {
    publish(input, output, overwrite, |inp, out| {
        let mut r =
            DecryptReader::new(BufReader::with_capacity(BUF, inp), key).map_err(|e| match e {
                Error::Crypto(m) => Error::Crypto(format!("cannot decrypt {}: {m}", show(input))),
                e => e,
            })?;
        copy_synced(&mut r, out, input, output)
    })
}

/// Decrypts (if encrypted) and decompresses (if compressed) `input` into
/// `output`; the plain size.
pub fn unwrap_file(
    input: &Path,
    output: &Path,
    key: Option<&KeySource>,
    overwrite: bool,
) -> Result<u64> {
    publish(input, output, overwrite, |inp, out| {
        let mut plain = open_unwrapped(inp, key, input)?;
        copy_synced(&mut plain, out, input, output)
    })
}

/// A file name without its wrapping suffixes (.enc, .zst, .gz).
pub fn unwrapped_name(name: &str) -> &str {
    let mut n = name;
    loop {
        match [".enc", ".zst", ".gz"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
        {
            Some(rest) if !rest.is_empty() => n = rest,
            _ => return n,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn strips_wrapping_suffixes() {
        assert_eq!(unwrapped_name("vm.ova.zst.enc"), "vm.ova");
        assert_eq!(unwrapped_name("vm-disk1.vmdk.gz"), "vm-disk1.vmdk");
        assert_eq!(unwrapped_name("vm.mf"), "vm.mf");
        assert_eq!(unwrapped_name(".enc"), ".enc");
    }

    #[test]
    fn a_wrong_key_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.bin");
        std::fs::write(&plain, vec![7u8; 100_000]).unwrap();
        let enc = dir.path().join("a.bin.enc");
        let good = KeySource::passphrase("right");
        assert_eq!(encrypt_file(&plain, &enc, &good, false).unwrap(), 100_000);
        let out = dir.path().join("back.bin");
        let err = decrypt_file(&enc, &out, &KeySource::passphrase("wrong"), false).unwrap_err();
        assert!(matches!(err, Error::Crypto(_)), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(decrypt_file(&enc, &out, &good, false).unwrap(), 100_000);
        assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 100_000]);
        let err = decrypt_file(&enc, &out, &good, false).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(is_wrapped(&enc) && !is_wrapped(&plain));
    }
}
