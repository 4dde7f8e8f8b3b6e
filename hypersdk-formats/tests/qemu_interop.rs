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

/// Converts `src` into a new file at `out` with default options.
fn convert_to(
    src: &mut dyn hypersdk_formats::DiskImage,
    to: hypersdk_formats::convert::TargetFormat,
    out: &Path,
) -> hypersdk_formats::convert::ConvertStats {
    hypersdk_formats::convert::convert(
        src,
        to,
        fs::File::create(out).unwrap(),
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap()
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

#[test]
fn qcow2_with_a_backing_image_given_reads_the_chain() {
    use hypersdk_formats::DiskImage;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", p(&base), "4M"]);
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 4M", p(&base)],
    );
    // the overlay is larger than its base and overrides parts of it
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            p(&base),
            p(&top),
            "6M",
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x22 1M 64k",
            "-c",
            "write -z 2M 64k",
            "-c",
            "write -P 0x33 5M 4k",
            p(&top),
        ],
    );
    let expected = dir.path().join("flat.raw");
    qemu("qemu-img", &["convert", "-O", "raw", p(&top), p(&expected)]);
    let backing = hypersdk_formats::open_image(&base).unwrap();
    let mut r = Qcow2Reader::open_with_backing(fs::File::open(&top).unwrap(), backing).unwrap();
    let mut got = vec![0u8; 6 << 20];
    DiskImage::read_at(&mut r, 0, &mut got).unwrap();
    assert!(
        got == fs::read(&expected).unwrap(),
        "chain decoded differently from qemu-img"
    );
}

#[test]
fn vmdk_reader_reads_qemu_img_layouts() {
    use hypersdk_formats::DiskImage;
    let dir = tempfile::tempdir().unwrap();
    let len = (36 << 20) + 4096;
    let data = mixed_content(len);
    let raw = dir.path().join("src.raw");
    fs::write(&raw, &data).unwrap();
    for sub in ["streamOptimized", "monolithicSparse"] {
        let vmdk = dir.path().join(format!("{sub}.vmdk"));
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                p(&raw),
                p(&vmdk),
            ],
        );
        let mut r =
            hypersdk_formats::vmdk::SparseExtentReader::open(fs::File::open(&vmdk).unwrap())
                .unwrap();
        // qemu-img rounds the capacity up to whole sectors
        assert_eq!(r.virtual_size(), len as u64, "{sub}");
        let mut got = vec![0u8; len];
        r.read_at(0, &mut got).unwrap();
        assert!(got == data, "{sub} decoded differently from the raw source");
    }
}

#[test]
fn convert_between_formats_matches_qemu_img() {
    use hypersdk_formats::convert::TargetFormat;
    let dir = tempfile::tempdir().unwrap();
    let len = 20 << 20;
    let raw = dir.path().join("src.raw");
    fs::write(&raw, mixed_content(len)).unwrap();
    let qcow2 = dir.path().join("src.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", p(&qcow2), "3G"]);
    // data at the start, in the middle and at the end of a mostly empty 3 GiB disk
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 2M",
            "-c",
            "write -P 0x22 1G 1M",
            "-c",
            "write -P 0x33 3071M 1M",
            p(&qcow2),
        ],
    );

    // qcow2 -> VMDK: only the 4 MiB of data is read
    let vmdk = dir.path().join("out.vmdk");
    let mut src = hypersdk_formats::open_image(&qcow2).unwrap();
    let stats = convert_to(src.as_mut(), TargetFormat::VmdkStreamOptimized, &vmdk);
    assert_eq!(stats.data_read, 4 << 20);
    assert_eq!(stats.zero_skipped, (3 << 30) - (4 << 20));
    qemu("qemu-img", &["check", p(&vmdk)]);
    qemu(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "vmdk", p(&qcow2), p(&vmdk)],
    );

    // VMDK (ours) -> raw, sparse
    let back = dir.path().join("back.raw");
    let mut src = hypersdk_formats::open_image(&vmdk).unwrap();
    let stats = convert_to(src.as_mut(), TargetFormat::Raw, &back);
    assert_eq!(stats.output_size, 3 << 30);
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", p(&back), p(&qcow2)],
    );
    {
        use std::os::unix::fs::MetadataExt;
        let allocated = fs::metadata(&back).unwrap().blocks() * 512;
        assert!(
            allocated < 64 << 20,
            "raw output is sparse, {allocated} bytes allocated"
        );
    }

    // raw (odd size) -> VMDK pads to a whole sector
    let odd = dir.path().join("odd.raw");
    fs::write(&odd, &mixed_content(len)[..len - 100]).unwrap();
    let vmdk2 = dir.path().join("odd.vmdk");
    let mut src = hypersdk_formats::open_image(&odd).unwrap();
    convert_to(src.as_mut(), TargetFormat::VmdkStreamOptimized, &vmdk2);
    qemu("qemu-img", &["check", p(&vmdk2)]);
    let raw_src = dir.path().join("odd-expected.raw");
    let mut padded = mixed_content(len);
    padded[len - 100..].fill(0);
    fs::write(&raw_src, padded).unwrap();
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vmdk", p(&raw_src), p(&vmdk2)],
    );
}

#[test]
fn qcow2_writer_output_passes_qemu_img_check() {
    use hypersdk_formats::convert::TargetFormat;
    let dir = tempfile::tempdir().unwrap();
    // 1.1 GiB virtual: data in the first, second and third L2 ranges (512 MiB each),
    // plus an odd tail.
    let raw = dir.path().join("src.raw");
    {
        let f = fs::File::create(&raw).unwrap();
        f.set_len((1100 << 20) - 1024).unwrap();
    }
    let block = mixed_content(6 << 20);
    qemu(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 0 3M", p(&raw)],
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for at in [700u64 << 20, (1100 << 20) - (7 << 20)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&block).unwrap();
        }
    }
    for (to, name) in [
        (TargetFormat::Qcow2, "plain.qcow2"),
        (TargetFormat::Qcow2Compressed, "comp.qcow2"),
    ] {
        let out = dir.path().join(name);
        let mut src = hypersdk_formats::open_image(&raw).unwrap();
        convert_to(src.as_mut(), to, &out);
        qemu("qemu-img", &["check", p(&out)]);
        qemu(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", p(&raw), p(&out)],
        );
        let info = qemu("qemu-img", &["info", "--output=json", p(&out)]);
        assert!(info.contains("\"virtual-size\": 1153432576"), "{info}");
        // and our own reader agrees
        let mut back = hypersdk_formats::open_image(&out).unwrap();
        let mut buf = vec![0u8; block.len()];
        back.read_at(700 << 20, &mut buf).unwrap();
        assert!(buf == block);
    }
    let plain = fs::metadata(dir.path().join("plain.qcow2")).unwrap().len();
    let comp = fs::metadata(dir.path().join("comp.qcow2")).unwrap().len();
    assert!(comp < plain, "compressed {comp} < plain {plain}");
}

#[test]
fn vhd_read_and_write_agree_with_qemu_img() {
    use hypersdk_formats::convert::TargetFormat;
    let dir = tempfile::tempdir().unwrap();
    let len: usize = 48 << 20;
    let raw = dir.path().join("src.raw");
    let mut data = mixed_content(len);
    data[(40 << 20)..(44 << 20)].fill(0);
    fs::write(&raw, &data).unwrap();
    // qemu-written dynamic and fixed VHDs (force_size keeps the exact size)
    for sub in ["dynamic", "fixed"] {
        let vhd = dir.path().join(format!("{sub}.vhd"));
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &format!("subformat={sub},force_size=on"),
                p(&raw),
                p(&vhd),
            ],
        );
        let mut img = hypersdk_formats::open_image(&vhd).unwrap();
        assert_eq!(img.format_name(), "vhd", "{sub}");
        assert_eq!(img.virtual_size(), len as u64, "{sub}");
        let mut got = vec![0u8; len];
        img.read_at(0, &mut got).unwrap();
        assert!(got == data, "{sub} VHD decoded differently");
    }
    // our fixed VHD, read by qemu-img
    let ours = dir.path().join("ours.vhd");
    let mut src = hypersdk_formats::open_image(&raw).unwrap();
    convert_to(src.as_mut(), TargetFormat::VhdFixed, &ours);
    assert_eq!(fs::metadata(&ours).unwrap().len(), len as u64 + 512);
    let info = qemu(
        "qemu-img",
        &["info", "--output=json", "-f", "vpc", p(&ours)],
    );
    assert!(info.contains(&format!("\"virtual-size\": {len}")), "{info}");
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vpc", p(&raw), p(&ours)],
    );
}

#[test]
fn multi_extent_vmdks_read_like_qemu_img_and_deltas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let vmdk = dir.path().join(format!("{sub}.vmdk"));
        qemu(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                p(&vmdk),
                "4100M",
            ],
        );
        // data on both sides of the 2 GiB extent boundaries
        qemu(
            "qemu-io",
            &[
                "-f",
                "vmdk",
                "-c",
                "write -P 0x11 0 1M",
                "-c",
                "write -P 0x22 2047M 2M",
                "-c",
                "write -P 0x33 4095M 5M",
                p(&vmdk),
            ],
        );
        let mut img = hypersdk_formats::open_image(&vmdk).unwrap();
        assert_eq!(img.virtual_size(), 4100 << 20, "{sub}");
        // read around the extent boundaries and check the patterns qemu-io wrote
        for (at, len, pattern) in [
            (0u64, 1u64 << 20, 0x11u8),
            (2047 << 20, 2 << 20, 0x22),
            (4095 << 20, 5 << 20, 0x33),
            (1 << 30, 1 << 20, 0),
        ] {
            let mut buf = vec![0xffu8; len as usize];
            img.read_at(at, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == pattern), "{sub} at {at:#x}");
        }
        // the region map skips what is unallocated in sparse extents
        if sub == "twoGbMaxExtentSparse" {
            assert!(matches!(
                img.region(1 << 30).unwrap(),
                hypersdk_formats::Region::Zero(_)
            ));
        }
    }
    let base = dir.path().join("base.vmdk");
    let delta = dir.path().join("delta.vmdk");
    qemu("qemu-img", &["create", "-q", "-f", "vmdk", p(&base), "1M"]);
    qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            p(&base),
            "-F",
            "vmdk",
            p(&delta),
        ],
    );
    let err = hypersdk_formats::open_image(&delta).unwrap_err();
    assert!(err.to_string().contains("delta disk"), "{err}");
}

#[test]
fn vmdk_inside_an_ova_is_read_in_place() {
    use hypersdk_formats::ova::{OvaReader, OvaWriter};
    use hypersdk_formats::vmdk::SparseExtentReader;
    use hypersdk_formats::DiskImage;
    let dir = tempfile::tempdir().unwrap();
    let len = 5 << 20;
    let raw = dir.path().join("src.raw");
    let data = mixed_content(len);
    fs::write(&raw, &data).unwrap();
    let vmdk = dir.path().join("d.vmdk");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            p(&raw),
            p(&vmdk),
        ],
    );
    let ova = dir.path().join("x.ova");
    let mut w = OvaWriter::new(fs::File::create(&ova).unwrap(), 0);
    w.append("x.ovf", 11, &mut &b"<Envelope/>"[..]).unwrap();
    w.append(
        "x-disk1.vmdk",
        fs::metadata(&vmdk).unwrap().len(),
        &mut fs::File::open(&vmdk).unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    let member = OvaReader::open(fs::File::open(&ova).unwrap())
        .unwrap()
        .member("x-disk1.vmdk")
        .unwrap();
    let mut disk = SparseExtentReader::open(member).unwrap();
    let mut got = vec![0u8; len];
    disk.read_at(0, &mut got).unwrap();
    assert!(got == data, "disk read in place from the OVA differs");
}

#[test]
fn qcow2_internal_snapshots_read_as_qemu_img_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let len = 20 << 20;
    let raw = dir.path().join("src.raw");
    fs::write(&raw, mixed_content(len)).unwrap();
    let img = dir.path().join("vm.qcow2");
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&img)],
    );
    // s1, then writes over it (copied on write), a resize, and s2.
    qemu("qemu-img", &["snapshot", "-c", "s1", p(&img)]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -z 8M 1M",
            "-c",
            "discard 12M 2M",
            p(&img),
        ],
    );
    qemu("qemu-img", &["resize", "-f", "qcow2", p(&img), "+4M"]);
    qemu("qemu-img", &["snapshot", "-c", "s2", p(&img)]);
    qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x77 0 64k", p(&img)],
    );
    let expect = |snapshot: Option<&str>| {
        let out = dir
            .path()
            .join(format!("{}.raw", snapshot.unwrap_or("now")));
        let mut args = vec!["convert", "-f", "qcow2", "-O", "raw"];
        let opt;
        if let Some(s) = snapshot {
            opt = format!("snapshot.name={s}");
            args.extend(["-l", opt.as_str()]);
        }
        args.extend([p(&img), p(&out)]);
        qemu("qemu-img", &args);
        fs::read(&out).unwrap()
    };
    let read = |r: &mut Qcow2Reader<fs::File>| {
        let mut got = vec![0u8; r.virtual_size() as usize];
        hypersdk_formats::DiskImage::read_at(r, 0, &mut got).unwrap();
        got
    };
    let mut r = Qcow2Reader::open(fs::File::open(&img).unwrap()).unwrap();
    let snaps = r.snapshots().unwrap();
    let names: Vec<_> = snaps
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(names, [("1", "s1"), ("2", "s2")]);
    assert_eq!(snaps[0].disk_size, Some(len as u64));
    assert_eq!(snaps[1].disk_size, Some(len as u64 + (4 << 20)));
    assert!(read(&mut r) == expect(None), "the active layer");
    let s = r.select_snapshot("s1").unwrap();
    assert_eq!(s.name, "s1");
    assert_eq!(r.virtual_size(), len as u64);
    // The disk had its snapshot-time size (qemu-img's temporary load of a
    // snapshot keeps today's size and reads zeros past the old one; applying
    // it, `qemu-img snapshot -a`, restores the old size as we read it).
    let (got, want) = (read(&mut r), expect(Some("s1")));
    assert!(got[..] == want[..len], "snapshot s1");
    assert!(want[len..].iter().all(|&b| b == 0));
    r.select_snapshot("2").unwrap();
    assert!(read(&mut r) == expect(Some("s2")), "snapshot s2 by id");
    let err = r.select_snapshot("nope").unwrap_err().to_string();
    assert!(
        err.contains("no internal snapshot nope") && err.contains("s1, s2"),
        "{err}"
    );
}
