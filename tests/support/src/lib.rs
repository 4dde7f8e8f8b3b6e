//! Helpers shared by the integration tests of every crate: running the real
//! peers (`qemu-img`, `qemu-io`, the vCenter simulator in [`vcsim`]), a TCP
//! [`faultproxy`] that cuts, stalls and resets connections, and
//! deterministic disk-like data.
//!
//! The peers are installed by `tests/peers/install.sh` (run by `.ci/run`). A
//! missing peer fails the test with a message saying so; tests never skip.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::Command;

pub mod azure_compute;
pub mod azurite;
pub mod faultproxy;
pub mod gce;
pub mod gcs;
pub mod hyperv;
pub mod kube;
mod peers;
pub use peers::playwright_dir;
pub mod postgres;
pub mod proxmox;
pub mod python;
pub mod s3;
pub mod vcsim;

/// Runs `tool args…`, panics with its output unless it succeeds, returns stdout.
pub fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool}: {e} (install the test peers: bash tests/peers/install.sh)")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img args…`.
pub fn qemu_img(args: &[&str]) -> String {
    run_tool("qemu-img", args)
}

/// `qemu-io args…`.
pub fn qemu_io(args: &[&str]) -> String {
    run_tool("qemu-io", args)
}

/// Asserts `qemu-img check` passes on `image`.
pub fn assert_image_ok(image: &Path) {
    qemu_img(&["check", path_str(image)]);
}

/// Asserts `qemu-img compare` finds the guest data of `a` and `b` identical
/// (formats are probed unless given as `Some("raw")` etc.).
pub fn assert_same_guest_data(a: &Path, a_fmt: Option<&str>, b: &Path, b_fmt: Option<&str>) {
    let mut args = vec!["compare"];
    if let Some(f) = a_fmt {
        args.extend(["-f", f]);
    }
    if let Some(f) = b_fmt {
        args.extend(["-F", f]);
    }
    args.extend([path_str(a), path_str(b)]);
    qemu_img(&args);
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Deterministic disk-like content in 256 KiB stripes: text, pseudo-random
/// bytes, zeros, and a mostly-zero stripe with a 4 KiB pattern.
pub fn mixed_content(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let text = b"the quick brown fox jumps over the lazy dog\n";
    for (i, chunk) in v.chunks_mut(256 * 1024).enumerate() {
        match i % 4 {
            0 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = text[j % text.len()]),
            1 => {
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            2 => {}
            _ => {
                let n = chunk.len().min(4096);
                chunk[..n].fill(0xee)
            }
        }
    }
    v
}

/// Harder disk-like content in 256 KiB stripes: words of a 2,000-word
/// vocabulary (like text and logs), bytes of 6 random bits (like binaries and
/// tables), pseudo-random bytes (like already-compressed files) and zeros.
/// zstd -1 compresses it about 1.9:1 at a few hundred MB/s per core, where
/// [`mixed_content`] (half zeros) goes 4:1 at several GB/s.
pub fn disk_like_content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let vocab: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let n = 2 + (next() % 9) as usize;
            (0..n).map(|_| b'a' + (next() % 26) as u8).collect()
        })
        .collect();
    let mut v = Vec::with_capacity(len);
    let mut stripe = 0usize;
    while v.len() < len {
        let end = (v.len() + 256 * 1024).min(len);
        match stripe % 4 {
            0 => {
                while v.len() < end {
                    let w = &vocab[(next() % 2000) as usize];
                    let take = w.len().min(end - v.len());
                    v.extend_from_slice(&w[..take]);
                    if v.len() < end {
                        v.push(b' ');
                    }
                }
            }
            1 => {
                while v.len() < end {
                    v.push((next() & 0x3f) as u8);
                }
            }
            2 => {
                while v.len() < end {
                    v.push(next() as u8);
                }
            }
            _ => v.resize(end, 0),
        }
        stripe += 1;
    }
    v
}

/// The workspace root (for the bundled example VM).
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes `bytes` of [`mixed_content`] to `path`, in 64 MiB blocks.
pub fn write_mixed_file(path: &Path, bytes: u64) -> std::io::Result<()> {
    write_repeated(path, &mixed_content(64 << 20), bytes)
}

/// Writes `bytes` to `path`: `block` over and over (the last time cut short).
pub fn write_repeated(path: &Path, block: &[u8], bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// This process's peak resident set size in KiB (VmHWM from /proc/self/status).
pub fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every file directly in `dir`, by name, with its bytes, sorted by name
/// (to compare two exports byte for byte).
pub fn dir_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("directory entry");
            let bytes = std::fs::read(e.path()).expect("read an exported file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

/// A libvirt domain XML for VM `name` (512 MiB, 1 vCPU) whose disks are the
/// given files with their formats (`raw`, `qcow2`), on virtio `vda`, `vdb`, …
pub fn domain_xml(name: &str, disks: &[(&Path, &str)]) -> String {
    let devices: String = disks
        .iter()
        .enumerate()
        .map(|(i, (file, fmt))| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}'/>\
                 <target dev='vd{}' bus='virtio'/></disk>",
                file.display(),
                (b'a' + i as u8) as char
            )
        })
        .collect();
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
         <devices>{devices}</devices></domain>"
    )
}
