//! deflate-bench: which deflate implementation to use for VMDK grains.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin deflate-bench -- [SIZE_MIB]
//! ```
//!
//! Compresses SIZE_MIB (default 512) of mixed disk-like data as 64 KiB grains
//! in zlib format at levels 1 and 6 — exactly what the streamOptimized VMDK
//! writer does per grain — on one thread, with flate2 on zlib-rs (what
//! hypersdk uses) and with libdeflate (libdeflater), then inflates the
//! results. Zero grains are left out, as the writer skips them. Every output
//! is checked to inflate back to its input.

use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use hypersdk_testsupport::mixed_content;

const GRAIN: usize = 64 * 1024;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let data = mixed_content(mib << 20);
    let grains: Vec<&[u8]> = data
        .chunks(GRAIN)
        .filter(|g| g.iter().any(|&b| b != 0))
        .collect();
    let bytes: usize = grains.iter().map(|g| g.len()).sum();
    println!(
        "deflate-bench: {} non-zero 64 KiB grains ({} MiB) of mixed data, one thread",
        grains.len(),
        bytes >> 20
    );
    println!(
        "{:<28} {:>14} {:>14} {:>8}",
        "implementation, level", "deflate MB/s", "inflate MB/s", "ratio"
    );
    for level in [1u32, 2, 3, 6] {
        // flate2 + zlib-rs
        let mut c = Compress::new(Compression::new(level), true);
        let t = Instant::now();
        let out: Vec<Vec<u8>> = grains
            .iter()
            .map(|g| {
                c.reset();
                let mut o = Vec::with_capacity(GRAIN + 1024);
                loop {
                    let done = c.total_in() as usize;
                    match c
                        .compress_vec(&g[done..], &mut o, FlushCompress::Finish)
                        .expect("deflate")
                    {
                        flate2::Status::StreamEnd => break,
                        _ => o.reserve(GRAIN),
                    }
                }
                o
            })
            .collect();
        let ct = t.elapsed().as_secs_f64();
        let mut d = Decompress::new(true);
        let mut buf = vec![0u8; GRAIN];
        let t = Instant::now();
        for (o, g) in out.iter().zip(&grains) {
            d.reset(true);
            d.decompress(o, &mut buf, FlushDecompress::Finish)
                .expect("inflate");
            assert!(&buf[..g.len()] == *g, "flate2 round trip");
        }
        let dt = t.elapsed().as_secs_f64();
        let csize: usize = out.iter().map(Vec::len).sum();
        row(
            &format!("flate2/zlib-rs, level {level}"),
            bytes,
            ct,
            dt,
            csize,
        );

        // libdeflate
        let mut c = libdeflater::Compressor::new(
            libdeflater::CompressionLvl::new(level as i32).expect("level"),
        );
        let t = Instant::now();
        let out: Vec<Vec<u8>> = grains
            .iter()
            .map(|g| {
                let mut o = vec![0u8; c.zlib_compress_bound(g.len())];
                let n = c.zlib_compress(g, &mut o).expect("libdeflate compress");
                o.truncate(n);
                o
            })
            .collect();
        let ct = t.elapsed().as_secs_f64();
        let mut d = libdeflater::Decompressor::new();
        let t = Instant::now();
        for (o, g) in out.iter().zip(&grains) {
            let n = d.zlib_decompress(o, &mut buf).expect("libdeflate inflate");
            assert!(&buf[..n] == *g, "libdeflate round trip");
        }
        let dt = t.elapsed().as_secs_f64();
        let csize: usize = out.iter().map(Vec::len).sum();
        row(&format!("libdeflate, level {level}"), bytes, ct, dt, csize);
    }
}

fn row(label: &str, bytes: usize, ct: f64, dt: f64, csize: usize) {
    println!(
        "{label:<28} {:>14.1} {:>14.1} {:>8.2}",
        bytes as f64 / ct / 1e6,
        bytes as f64 / dt / 1e6,
        bytes as f64 / csize as f64
    );
}
