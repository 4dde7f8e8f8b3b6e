//! Interoperability with QEMU: every image we write is checked by `qemu-img`,
//! every image we read is produced by it. Needs `qemu-img` and `qemu-io`
//! (apt package qemu-utils; `tests/peers/install.sh` installs it).

#![allow(clippy::unwrap_used)]

use hypersdk_testsupport::mixed_content;
use std::fs;
use std::path::Path;

use hypersdk_formats::qcow2::Qcow2Reader;
use hypersdk_formats::vmdk::{StreamOptimizedWriter, VmdkWriterOptions};

fn qemu(tool: &str, args: &[&str]) -> String {
    hypersdk_testsupport::run_tool(tool, args)
}

fn p(path: &Path) -> &str {
    hypersdk_testsupport::path_str(path)
}

#[test]
fn stream_optimized_vmdk_is_accepted_by_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB + 3 sectors: two grain tables and a partial last grain.
    let len = (40 << 20) + 1536;
    let data = mixed_content(len);
    let raw = dir.path().join("disk.raw");
    fs::write(&raw, &data).unwrap();
    let vmdk = dir.path().join("disk.vmdk");
    let file = fs::File::create(&vmdk).unwrap();
    let mut w = StreamOptimizedWriter::new(
        std::io::BufWriter::new(file),
        len as u64,
        &VmdkWriterOptions::default(),
    )
    .unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write(chunk).unwrap();
    }
    let (_, stats) = w.finish().unwrap();
    assert_eq!(fs::metadata(&vmdk).unwrap().len(), stats.file_size);

    let info = qemu("qemu-img", &["info", "--output=json", p(&vmdk)]);
    assert!(info.contains("\"format\": \"vmdk\""), "{info}");
    assert!(info.contains("streamOptimized"), "{info}");
    assert!(info.contains(&format!("\"virtual-size\": {len}")), "{info}");
    qemu("qemu-img", &["check", p(&vmdk)]);
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", p(&raw), p(&vmdk)],
    );
}

#[test]
fn qcow2_reader_matches_qemu_for_plain_and_compressed_images() {
    let dir = tempfile::tempdir().unwrap();
    let len = 24 << 20;
    let raw = dir.path().join("src.raw");
    fs::write(&raw, mixed_content(len)).unwrap();
    let plain = dir.path().join("plain.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&plain)],
    );
    // punch a zero cluster (v3 zero flag) and write a pattern over unallocated space
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -z 0 1M",
            "-c",
            "write -P 0xab 9M 300k",
            p(&plain),
        ],
    );
    let compressed = dir.path().join("comp.qcow2");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            p(&plain),
            p(&compressed),
        ],
    );
    let expected = dir.path().join("expected.raw");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            p(&plain),
            p(&expected),
        ],
    );
    let expected = fs::read(&expected).unwrap();
    for img in [&plain, &compressed] {
        let mut r = Qcow2Reader::open(fs::File::open(img).unwrap()).unwrap();
        assert_eq!(r.virtual_size(), len as u64);
        let mut got = vec![0u8; len];
        // read in odd-sized pieces to cross cluster boundaries
        let mut off = 0;
        while off < len {
            let n = (len - off).min(777_777);
            r.read_at(off as u64, &mut got[off..off + n]).unwrap();
            off += n;
        }
        assert!(
            got == expected,
            "{} decoded differently from qemu-img",
            img.display()
        );
    }
}

#[test]
fn qcow2_with_backing_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", p(&base), "1M"]);
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            p(&base),
            p(&top),
        ],
    );
    let err = Qcow2Reader::open(fs::File::open(&top).unwrap()).unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
}
