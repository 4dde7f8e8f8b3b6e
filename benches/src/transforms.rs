//! transforms-bench: single-stage throughput of the transforms against the
//! matching command-line tools, measured in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin transforms-bench -- [SIZE_MIB]
//! ```
//!
//! Input: SIZE_MIB (default 2048) of mixed disk-like content, produced from a
//! 64 MiB block (memory stays bounded). Stages, one thread each:
//! - SHA-256 (sha2 crate) vs `sha256sum` on the same bytes from a file;
//! - AES-256-GCM STREAM (`EncryptWriter`, ring) vs `openssl speed -evp aes-256-gcm`
//!   (1 MiB blocks), and decryption (`DecryptReader`).

use std::io::{Read, Write};
use std::process::Command;
use std::time::Instant;

use hypersdk_core::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};
use hypersdk_testsupport::{mixed_content, path_str, write_mixed_file};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let bytes = mib << 20;
    let block = mixed_content(64 << 20);
    let feed = |f: &mut dyn FnMut(&[u8])| {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            for piece in block[..n].chunks(1 << 20) {
                f(piece);
            }
            left -= n as u64;
        }
    };
    let mb = |secs: f64| bytes as f64 / secs / 1e6;
    println!("transforms-bench: {mib} MiB of mixed data, one thread per stage (MB = 10^6 B)");

    // SHA-256
    let t = Instant::now();
    let mut h = Sha256::new();
    feed(&mut |p| h.update(p));
    let _ = h.finalize();
    let ours = t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("data");
    write_mixed_file(&file, bytes)?;
    let _ = Command::new("cat").arg(path_str(&file)).output(); // warm the page cache
    let t = Instant::now();
    let o = Command::new("sha256sum").arg(path_str(&file)).output()?;
    anyhow::ensure!(o.status.success(), "sha256sum failed");
    let theirs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&file)?;
    println!(
        "{:<44} {:>10.1}   baseline sha256sum (cached file) {:>10.1}",
        "SHA-256 (sha2)",
        mb(ours),
        mb(theirs)
    );

    // AES-256-GCM STREAM
    let key = KeySource::Key(Zeroizing::new([0x42; 32]));
    let mut sink = std::io::sink();
    let t = Instant::now();
    let mut w = EncryptWriter::new(&mut sink, &key)?;
    feed(&mut |p| w.write_all(p).expect("encrypt"));
    w.finish()?;
    let enc = t.elapsed().as_secs_f64();
    // decryption of 256 MiB kept in memory (the ciphertext must be held to be read back)
    let small = 256u64 << 20;
    let mut ct = Vec::with_capacity(small as usize + (small as usize >> 16));
    let mut w = EncryptWriter::new(&mut ct, &key)?;
    w.write_all(&block)?;
    w.write_all(&block)?;
    w.write_all(&block)?;
    w.write_all(&block)?;
    w.finish()?;
    let t = Instant::now();
    let mut r = DecryptReader::new(&ct[..], &key)?;
    let mut buf = vec![0u8; 1 << 20];
    while r.read(&mut buf)? > 0 {}
    let dec = small as f64 / t.elapsed().as_secs_f64() / 1e6;
    let o = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            "1048576",
            "-seconds",
            "3",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    // last line: "AES-256-GCM  <k/s at 1048576 bytes>k"
    let openssl = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .map(|k| k * 1000.0 / 1e6)
        .unwrap_or(f64::NAN);
    println!(
        "{:<44} {:>10.1}   baseline openssl speed aes-256-gcm  {:>10.1}",
        "AES-256-GCM STREAM encrypt (ring)",
        mb(enc),
        openssl
    );
    println!(
        "{:<44} {:>10.1}",
        "AES-256-GCM STREAM decrypt (ring, 256 MiB)", dec
    );
    Ok(())
}
