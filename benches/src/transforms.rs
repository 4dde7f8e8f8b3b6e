//! transforms-bench: the transforms stage by stage against the matching
//! command-line tools, the whole pipeline against the 2-core bound, and the
//! rate limiter on the real clock — all measured in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin transforms-bench -- [SIZE_MIB]
//! ```
//!
//! Two inputs of SIZE_MIB (default 2048), each produced from a 64 MiB block
//! so memory stays bounded (see hypersdk-testsupport):
//! - "mixed": half zeros or nearly zero, a quarter text, a quarter random —
//!   zstd is fast on it and SHA-256 is the heaviest stage;
//! - "disk-like": words, 6-bit bytes, random bytes and zeros — zstd -1 is the
//!   heaviest stage, as on real disks.
//!
//! For each, one thread per stage, median of 3 runs:
//! - SHA-256 (sha2 crate) vs `sha256sum` on the same bytes from a file;
//! - zstd level 1 in 1 MiB frames (zstd crate) vs `zstd -1 -T1` (and `-T2`);
//! - AES-256-GCM STREAM (`EncryptWriter`, ring) vs `openssl speed -evp
//!   aes-256-gcm` (1 MiB blocks; the same for both inputs).
//!
//! Then the whole pipeline (digest SHA-256 + zstd -1 on 2 threads + encrypt,
//! [`hypersdk_core::transforms::pipeline`]) in a child process, so its peak RSS
//! is its own: from memory (median of 5), at a quarter of the size, and from
//! the cached file; against the 2-core bound `2 / (1/sha + 1/zstd + 1/aes)`
//! of the single-stage figures above. Environment overrides for experiments:
//! HSDK_WORKERS, HSDK_CHUNK, HSDK_DEPTH.
//!
//! Last, the rate limiter: 1 MiB acquisitions at 50 MiB/s for 10 s (the
//! average against the limit), then 20 MiB/s changed to 80 MiB/s (the rate
//! over the 1–4 s after the change); and AES-256-GCM decryption.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Instant;

use hypersdk_core::transforms::compress::Compression;
use hypersdk_core::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};
use hypersdk_core::transforms::pipeline::{self, TransformSpec};
use hypersdk_testsupport::{
    disk_like_content, mixed_content, path_str, peak_rss_kib, write_repeated,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The bench's fixed key (it protects nothing).
fn key() -> KeySource {
    KeySource::Key(Zeroizing::new([0x42; 32]))
}

/// A 64 MiB block of the named content.
fn block(kind: &str, len: usize) -> Vec<u8> {
    if kind == "disk-like" {
        disk_like_content(len)
    } else {
        mixed_content(len)
    }
}

/// The median of three timings.
fn median3(f: &mut dyn FnMut() -> f64) -> f64 {
    let mut v = [f(), f(), f()];
    v.sort_by(f64::total_cmp);
    v[1]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--pipeline-child") {
        return pipeline_child(&args[2..]);
    }
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let bytes = mib << 20;
    println!("transforms-bench: {mib} MiB per input (MB = 10^6 B)");
    let openssl = openssl_aes()?;
    for kind in ["mixed", "disk-like"] {
        suite(kind, bytes, openssl)?;
    }
    decrypt()?;
    ratelimit()?;
    Ok(())
}

/// `openssl speed -evp aes-256-gcm` at 1 MiB blocks, MB/s.
fn openssl_aes() -> anyhow::Result<f64> {
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
    Ok(text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .map(|k| k * 1000.0 / 1e6)
        .unwrap_or(f64::NAN))
}

fn suite(kind: &str, bytes: u64, openssl: f64) -> anyhow::Result<()> {
    let block = block(kind, 64 << 20);
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
    println!("\n[{kind}] one thread per stage, median of 3");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("data");
    write_repeated(&file, &block, bytes)?;
    let _ = Command::new("cat").arg(path_str(&file)).output(); // warm the page cache

    // SHA-256
    let sha = mb(median3(&mut || {
        let t = Instant::now();
        let mut h = Sha256::new();
        feed(&mut |p| h.update(p));
        let _ = h.finalize();
        t.elapsed().as_secs_f64()
    }));
    let t = Instant::now();
    let o = Command::new("sha256sum").arg(path_str(&file)).output()?;
    anyhow::ensure!(o.status.success(), "sha256sum failed");
    println!(
        "{:<44} {:>10.1}   baseline sha256sum (cached file)      {:>10.1}",
        "SHA-256 (sha2)",
        sha,
        mb(t.elapsed().as_secs_f64())
    );

    // zstd -1, 1 MiB frames, one thread
    let mut enc = Compression::ZSTD.frame_encoder()?;
    let mut frame = Vec::with_capacity(2 << 20);
    let mut packed: u64 = 0;
    let zstd = mb(median3(&mut || {
        packed = 0;
        let t = Instant::now();
        feed(&mut |p| {
            frame.clear();
            enc.encode(p, &mut frame).expect("zstd");
            packed += frame.len() as u64;
        });
        t.elapsed().as_secs_f64()
    }));
    let zstd_cli = |threads: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        let o = Command::new("zstd")
            .args(["-1", threads, "-q", "-c", path_str(&file)])
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(o.success(), "zstd failed");
        Ok(mb(t.elapsed().as_secs_f64()))
    };
    let (t1, t2) = (zstd_cli("-T1")?, zstd_cli("-T2")?);
    println!(
        "{:<44} {:>10.1}   baseline zstd -1 -T1 (cached file)    {:>10.1}   (-T2 {:.1}; ratio {:.2})",
        "zstd -1, 1 MiB frames (zstd crate)",
        zstd,
        t1,
        t2,
        bytes as f64 / packed as f64
    );

    // AES-256-GCM STREAM
    let mut sink = std::io::sink();
    let aes = mb(median3(&mut || {
        let t = Instant::now();
        let mut w = EncryptWriter::new(&mut sink, &key()).expect("encrypt");
        feed(&mut |p| w.write_all(p).expect("encrypt"));
        w.finish().expect("encrypt");
        t.elapsed().as_secs_f64()
    }));
    println!(
        "{:<44} {:>10.1}   baseline openssl speed aes-256-gcm    {:>10.1}",
        "AES-256-GCM STREAM encrypt (ring)", aes, openssl
    );
    drop(block);

    // The whole pipeline, in a child process per run.
    let bound = 2.0 / (1.0 / sha + 1.0 / zstd + 1.0 / aes);
    let ceiling = sha.min(2.0 * zstd).min(aes);
    println!(
        "2-core bound 2/(1/sha + 1/zstd + 1/aes) = {bound:.1} MB/s; no single stage above {ceiling:.1}"
    );
    let child = |source: &str, size: u64| -> anyhow::Result<(f64, u64)> {
        let o = Command::new(std::env::current_exe()?)
            .args(["--pipeline-child", kind, source, &size.to_string()])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "pipeline child failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let mut fields = text.split_whitespace();
        let rate: f64 = fields.next().unwrap_or("nan").parse()?;
        let rss: u64 = fields.next().unwrap_or("0").parse()?;
        Ok((rate, rss))
    };
    let show = |what: &str, rate: f64, rss: u64, size: u64| {
        println!(
            "{:<44} {:>10.1}   {:.0}% of the bound, peak RSS {:.1} MiB ({} MiB input)",
            what,
            rate,
            rate / bound * 100.0,
            rss as f64 / 1024.0,
            size >> 20
        );
    };
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(child("-", bytes)?);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, rss) = runs[runs.len() / 2];
    show("pipeline from memory, median of 5", rate, rss, bytes);
    let (rate, rss) = child("-", bytes / 4)?;
    show("pipeline from memory", rate, rss, bytes / 4);
    let (rate, rss) = child(path_str(&file), bytes)?;
    show("pipeline from the cached file (read(2))", rate, rss, bytes);
    Ok(())
}

/// AES-256-GCM decryption of 256 MiB kept in memory (the ciphertext must be
/// held to be read back).
fn decrypt() -> anyhow::Result<()> {
    let block = mixed_content(64 << 20);
    let small = 256u64 << 20;
    let mut ct = Vec::with_capacity(small as usize + (small as usize >> 16));
    let mut w = EncryptWriter::new(&mut ct, &key())?;
    for _ in 0..4 {
        w.write_all(&block)?;
    }
    w.finish()?;
    let t = Instant::now();
    let mut r = DecryptReader::new(&ct[..], &key())?;
    let mut buf = vec![0u8; 1 << 20];
    while r.read(&mut buf)? > 0 {}
    println!(
        "\n{:<44} {:>10.1}",
        "AES-256-GCM STREAM decrypt (ring, 256 MiB)",
        small as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    Ok(())
}

/// The token bucket against the wall clock.
fn ratelimit() -> anyhow::Result<()> {
    use hypersdk_core::transforms::ratelimit::RateLimiter;
    use std::time::Duration;
    const MIB: u64 = 1 << 20;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Steady rate over 10 s.
        let limit = 50 * MIB;
        let l = RateLimiter::new(Some(limit), limit / 10);
        let start = std::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            l.acquire(MIB).await;
            n += MIB;
        }
        let got = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<44} {:>10.2}   limit {:.2} MiB/s, {:+.2}% over 10 s",
            "rate limiter, 1 MiB acquisitions (MiB/s)",
            got / MIB as f64,
            limit as f64 / MIB as f64,
            (got / limit as f64 - 1.0) * 100.0
        );
        // A change while running.
        let l = RateLimiter::new(Some(20 * MIB), 2 * MIB);
        let start = std::time::Instant::now();
        let mut log = Vec::new();
        let mut n = 0u64;
        let mut changed = false;
        while start.elapsed() < Duration::from_secs(7) {
            if !changed && start.elapsed() >= Duration::from_secs(3) {
                l.set_rate(Some(80 * MIB));
                changed = true;
            }
            l.acquire(MIB).await;
            n += MIB;
            log.push((start.elapsed().as_secs_f64(), n));
        }
        let at = |t: f64| log.iter().take_while(|e| e.0 <= t).last().map_or(0, |e| e.1);
        let before = (at(3.0) - at(1.0)) as f64 / 2.0 / MIB as f64;
        let after = (at(7.0) - at(4.0)) as f64 / 3.0 / MIB as f64;
        println!(
            "{:<44} {:>10.2}   before the change {before:.2} MiB/s (limit 20), 1-4 s after it {after:.2} (limit 80)",
            "rate limiter, 20 → 80 MiB/s at t = 3 s",
            after
        );
    });
    Ok(())
}

/// Runs the pipeline over SIZE bytes of KIND content, from memory ("-": a
/// 4 MiB block repeated) or from FILE (1 MiB reads); drains the output on a
/// thread; prints "MB/s peak_rss_kib".
fn pipeline_child(args: &[String]) -> anyhow::Result<()> {
    let [kind, path, size] = args else {
        anyhow::bail!("usage: --pipeline-child KIND FILE|- SIZE")
    };
    let size: u64 = size.parse()?;
    let knob = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let spec = TransformSpec {
        compression: Some(Compression::ZSTD),
        encryption: Some(key()),
        workers: knob("HSDK_WORKERS", 2),
        chunk_size: knob("HSDK_CHUNK", 1 << 20),
        queue_depth: knob("HSDK_DEPTH", 4),
        ..Default::default()
    };
    let block = (path == "-").then(|| block(kind, 4 << 20));
    let mut f = match block {
        Some(_) => None,
        None => Some(std::fs::File::open(path)?),
    };
    let t = Instant::now();
    let (mut input, mut output) = pipeline::start(&spec)?;
    let drain = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Some(b) = output.blocking_recv() {
            n += b.len() as u64;
            output.recycle(b);
        }
        (n, output.finish_blocking())
    });
    let mut left = size;
    let mut at = 0usize;
    while left > 0 {
        let want = left.min(input.chunk_size() as u64) as usize;
        let mut buf = input.buffer();
        match (&mut f, &block) {
            (Some(f), _) => {
                Read::by_ref(f).take(want as u64).read_to_end(&mut buf)?;
                anyhow::ensure!(buf.len() == want, "{path} is shorter than {size} bytes");
            }
            (None, Some(b)) => {
                while buf.len() < want {
                    let n = (want - buf.len()).min(b.len() - at);
                    buf.extend_from_slice(&b[at..at + n]);
                    at = (at + n) % b.len();
                }
            }
            (None, None) => unreachable!(),
        }
        input.write_owned_blocking(buf)?;
        left -= want as u64;
    }
    input.close_blocking()?;
    let (_, summary) = drain
        .join()
        .map_err(|_| anyhow::anyhow!("drain panicked"))?;
    let summary = summary?;
    anyhow::ensure!(summary.input_bytes == size, "pipeline lost bytes");
    let rate = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("{rate:.1} {}", peak_rss_kib().unwrap_or(0));
    Ok(())
}
