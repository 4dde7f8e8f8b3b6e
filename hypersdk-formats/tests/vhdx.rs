//! The VHDX reader against files `qemu-img` wrote (fixed and dynamic, with
//! qemu's own reading as the oracle), damaged copies of them, and
//! differencing disks built here from \[MS-VHDX\] over a qemu-written parent
//! (qemu-img cannot write differencing VHDX). Needs `qemu-img` and
//! `qemu-io` (apt package qemu-utils; `tests/peers/install.sh` installs it).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Cursor;
use std::path::Path;

use hypersdk_formats::vhdx::{crc32c, VhdxReader};
use hypersdk_formats::{DiskImage, Region};
use hypersdk_testsupport::mixed_content;

fn qemu(tool: &str, args: &[&str]) -> String {
    hypersdk_testsupport::run_tool(tool, args)
}

fn p(path: &Path) -> &str {
    hypersdk_testsupport::path_str(path)
}

fn read_all(img: &mut dyn DiskImage) -> Vec<u8> {
    let mut got = vec![0u8; img.virtual_size() as usize];
    for (i, c) in got.chunks_mut(3 << 20).enumerate() {
        img.read_at((i * (3 << 20)) as u64, c).unwrap();
    }
    got
}

/// Every region the reader reports, as (zero?, length).
fn regions(img: &mut dyn DiskImage) -> Vec<(bool, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < img.virtual_size() {
        let r = img.region(at).unwrap();
        let (zero, len) = match r {
            Region::Zero(n) => (true, n),
            Region::Data(n) => (false, n),
        };
        out.push((zero, len));
        at += len;
    }
    out
}

#[test]
fn qemu_written_fixed_and_dynamic_disks_read_as_qemu_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB + 3 sectors: a partial last block in every block size below.
    let len = (40 << 20) + 1536;
    let mut data = mixed_content(len);
    data[(8 << 20)..(20 << 20)].fill(0);
    let raw = dir.path().join("src.raw");
    fs::write(&raw, &data).unwrap();
    for (sub, block) in [("dynamic", "1M"), ("dynamic", "32M"), ("fixed", "8M")] {
        let vhdx = dir.path().join(format!("{sub}-{block}.vhdx"));
        qemu(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vhdx",
                "-o",
                &format!("subformat={sub},block_size={block}"),
                p(&raw),
                p(&vhdx),
            ],
        );
        let mut img = hypersdk_formats::open_image(&vhdx).unwrap();
        assert_eq!(img.format_name(), "vhdx");
        assert_eq!(img.virtual_size(), len as u64, "{sub} {block}");
        assert!(
            read_all(img.as_mut()) == data,
            "{sub} {block} decoded differently"
        );
        let r = regions(img.as_mut());
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), len as u64);
        if sub == "dynamic" && block == "1M" {
            // The 12 zero MiB were never allocated: reported as zeros.
            assert!(r.iter().any(|&(z, n)| z && n >= 12 << 20), "{r:?}");
        }
        let mut reader = VhdxReader::open(fs::File::open(&vhdx).unwrap()).unwrap();
        assert_eq!(reader.is_fixed(), sub == "fixed");
        assert_eq!(reader.logical_sector_size(), 512);
        assert!(reader.parent_locator().is_none());
        // A read across blocks, from an odd offset, matches too.
        let mut part = vec![0u8; 3 << 20];
        reader.read_at((7 << 20) + 4097, &mut part).unwrap();
        assert!(part == data[(7 << 20) + 4097..(10 << 20) + 4097]);
    }
}

#[test]
fn blocks_qemu_io_zeroed_discarded_and_wrote_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let len = 16 << 20;
    let raw = dir.path().join("src.raw");
    fs::write(&raw, mixed_content(len)).unwrap();
    let vhdx = dir.path().join("d.vhdx");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M",
            p(&raw),
            p(&vhdx),
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -z 2M 1M",
            "-c",
            "discard 5M 2M",
            "-c",
            "write -P 0x5c 9M 70k",
            p(&vhdx),
        ],
    );
    let expected = dir.path().join("expected.raw");
    qemu(
        "qemu-img",
        &["convert", "-f", "vhdx", "-O", "raw", p(&vhdx), p(&expected)],
    );
    let mut img = hypersdk_formats::open_image(&vhdx).unwrap();
    assert!(read_all(img.as_mut()) == fs::read(&expected).unwrap());
    // And what we convert it to, qemu-img finds identical.
    let out = dir.path().join("out.qcow2");
    hypersdk_formats::convert::convert(
        img.as_mut(),
        hypersdk_formats::convert::TargetFormat::Qcow2,
        fs::File::create(&out).unwrap(),
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    qemu(
        "qemu-img",
        &["compare", "-f", "vhdx", "-F", "qcow2", p(&vhdx), p(&out)],
    );
}

/// A qemu-written 8 MiB dynamic VHDX in 1 MiB blocks, and its contents.
fn small_vhdx(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let data = mixed_content(8 << 20);
    let raw = dir.join("small.raw");
    fs::write(&raw, &data).unwrap();
    let vhdx = dir.join("small.vhdx");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M",
            p(&raw),
            p(&vhdx),
        ],
    );
    (fs::read(&vhdx).unwrap(), data)
}

fn open(bytes: &[u8]) -> Result<VhdxReader<Cursor<Vec<u8>>>, String> {
    VhdxReader::open(Cursor::new(bytes.to_vec())).map_err(|e| e.to_string())
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the CRC-32C of the structure of `len` bytes at `at`.
fn reseal(b: &mut [u8], at: usize, len: usize) {
    b[at + 4..at + 8].fill(0);
    let c = crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

/// The BAT's file offset, from the first region table.
fn bat_offset(b: &[u8]) -> usize {
    let t = 192 << 10;
    for i in 0..le32(b, t + 8) as usize {
        let e = t + 16 + i * 32;
        if b[e..e + 4] == [0x66, 0x77, 0xC2, 0x2D] {
            return le64(b, e + 16) as usize;
        }
    }
    panic!("no BAT region");
}

#[test]
fn damaged_files_fall_back_to_the_second_copy_or_fail_naming_the_structure() {
    let dir = tempfile::tempdir().unwrap();
    let (good, data) = small_vhdx(dir.path());
    let mut img = open(&good).unwrap();
    assert!(read_all(&mut img) == data);

    // One header or one region table damaged: the other copy serves.
    for at in [(64 << 10) + 100, (128 << 10) + 100, (192 << 10) + 20] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        let mut img = open(&b).unwrap_or_else(|e| panic!("damage at {at:#x}: {e}"));
        assert!(read_all(&mut img) == data);
    }
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Damage, &str)> = vec![
        (Box::new(|b| b[3] = b'X'), "vhdxfile"),
        (
            Box::new(|b| {
                b[(64 << 10) + 100] ^= 1;
                b[(128 << 10) + 100] ^= 1;
            }),
            "neither header",
        ),
        (
            Box::new(|b| {
                b[(192 << 10) + 20] ^= 1;
                b[(256 << 10) + 20] ^= 1;
            }),
            "region table CRC-32C",
        ),
        (Box::new(|b| b.truncate(1 << 19)), "too short"),
        (
            // The first payload block's entry points past the end of the file.
            Box::new(|b| {
                let bat = bat_offset(b);
                let e = (le64(b, bat) & 7) | (1 << 40);
                b[bat..bat + 8].copy_from_slice(&e.to_le_bytes());
            }),
            "runs past the end",
        ),
        (
            Box::new(|b| {
                let bat = bat_offset(b);
                b[bat..bat + 8].copy_from_slice(&4u64.to_le_bytes());
            }),
            "reserved state 4",
        ),
        (
            Box::new(|b| {
                let bat = bat_offset(b);
                let e = (le64(b, bat) & !0xfffff) | 7;
                b[bat..bat + 8].copy_from_slice(&e.to_le_bytes());
            }),
            "partially present in a disk that has no parent",
        ),
    ];
    for (damage, want) in cases {
        let mut b = good.clone();
        damage(&mut b);
        let err = match open(&b) {
            Err(e) => e,
            Ok(mut img) => {
                let mut buf = vec![0u8; 1 << 20];
                img.read_at(0, &mut buf).unwrap_err().to_string()
            }
        };
        assert!(err.contains(want), "want {want:?}, got: {err}");
        assert!(err.contains("VHDX"), "{err}");
    }
}

/// The current header's offset (the valid one with the greater sequence).
fn current_header(b: &[u8]) -> usize {
    let seq = |at: usize| le64(b, at + 8);
    if seq(128 << 10) > seq(64 << 10) {
        128 << 10
    } else {
        64 << 10
    }
}

#[test]
fn a_log_with_entries_to_replay_is_refused_and_an_empty_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (good, data) = small_vhdx(dir.path());
    let h = current_header(&good);
    let (log_len, log_at) = (le32(&good, h + 68) as usize, le64(&good, h + 72) as usize);
    assert!(log_len >= 1 << 20 && log_at >= 1 << 20);
    let log_guid = [7u8; 16];

    // LogGuid set, nothing valid in the log: an empty log (§2.2.2), read on.
    let mut b = good.clone();
    b[h + 48..h + 64].copy_from_slice(&log_guid);
    reseal(&mut b, h, 4096);
    let mut img = open(&b).unwrap();
    assert!(read_all(&mut img) == data);

    // A valid entry (§2.3.1.1: header, no descriptors, one 4 KiB sector).
    let e = log_at + 8192;
    b[e..e + 4096].fill(0);
    b[e..e + 4].copy_from_slice(b"loge");
    b[e + 8..e + 12].copy_from_slice(&4096u32.to_le_bytes());
    b[e + 12..e + 16].copy_from_slice(&8192u32.to_le_bytes());
    b[e + 16..e + 24].copy_from_slice(&1u64.to_le_bytes());
    b[e + 32..e + 48].copy_from_slice(&log_guid);
    let file_len = (b.len() as u64).to_le_bytes();
    b[e + 48..e + 56].copy_from_slice(&file_len);
    b[e + 56..e + 64].copy_from_slice(&file_len);
    reseal(&mut b, e, 4096);
    let err = open(&b).unwrap_err();
    assert!(err.contains("not closed cleanly"), "{err}");
    assert!(err.contains("qemu-img check -r all"), "{err}");

    // The same entry under another LogGuid is stale: not replayed (§2.3.1.1).
    let mut stale = b.clone();
    stale[e + 32] ^= 1;
    reseal(&mut stale, e, 4096);
    assert!(open(&stale).is_ok());
}

// ---- differencing disks, built here per [MS-VHDX] ----

const MIB: usize = 1 << 20;

fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&d1.to_le_bytes());
    g[4..6].copy_from_slice(&d2.to_le_bytes());
    g[6..8].copy_from_slice(&d3.to_le_bytes());
    g[8..].copy_from_slice(&d4);
    g
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// A payload block of a built disk.
enum Block {
    NotPresent,
    Zero,
    Full(Vec<u8>),
    /// Data for the whole block, and which 512-byte sectors are present.
    Partial(Vec<u8>, Vec<bool>),
}

/// A differencing VHDX of `size` bytes in 1 MiB blocks with 512-byte
/// sectors, whose parent locator names `linkage` and `parent.vhdx`.
fn differencing(size: u64, linkage: &str, blocks: &[Block]) -> Vec<u8> {
    let (bat_at, meta_at, data_at) = (MIB, 2 * MIB, 3 * MIB);
    let mut f = vec![0u8; data_at];
    f[..8].copy_from_slice(b"vhdxfile");
    // Headers (§2.2.2), the second one current.
    for (at, seq) in [(64 << 10, 1u64), (128 << 10, 2)] {
        f[at..at + 4].copy_from_slice(b"head");
        f[at + 8..at + 16].copy_from_slice(&seq.to_le_bytes());
        f[at + 32..at + 48].copy_from_slice(&[0xd1; 16]);
        f[at + 66..at + 68].copy_from_slice(&1u16.to_le_bytes());
        reseal(&mut f, at, 4096);
    }
    // Region tables (§2.2.3): BAT and metadata, required.
    let bat_guid = guid(
        0x2DC27766,
        0xF623,
        0x4200,
        [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
    );
    let meta_guid = guid(
        0x8B7CA206,
        0x4790,
        0x4B9A,
        [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
    );
    for t in [192 << 10, 256 << 10] {
        f[t..t + 4].copy_from_slice(b"regi");
        f[t + 8..t + 12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (g, at)) in [(bat_guid, bat_at), (meta_guid, meta_at)]
            .iter()
            .enumerate()
        {
            let e = t + 16 + i * 32;
            f[e..e + 16].copy_from_slice(g);
            f[e + 16..e + 24].copy_from_slice(&(*at as u64).to_le_bytes());
            f[e + 24..e + 28].copy_from_slice(&(MIB as u32).to_le_bytes());
            f[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
        }
        reseal(&mut f, t, 64 << 10);
    }
    // Metadata (§2.6): table, then the items from 64 KiB on.
    let mut locator = Vec::new();
    let pairs = [
        ("parent_linkage", linkage.to_string()),
        ("relative_path", "parent.vhdx".into()),
    ];
    locator.extend_from_slice(&guid(
        0xB04AEFB7,
        0xD19E,
        0x4A81,
        [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
    ));
    locator.extend_from_slice(&0u16.to_le_bytes());
    locator.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + pairs.len() * 12;
    for (k, v) in &pairs {
        let (k, v) = (utf16(k), utf16(v));
        let ko = base + strings.len();
        strings.extend_from_slice(&k);
        let vo = base + strings.len();
        strings.extend_from_slice(&v);
        locator.extend_from_slice(&(ko as u32).to_le_bytes());
        locator.extend_from_slice(&(vo as u32).to_le_bytes());
        locator.extend_from_slice(&(k.len() as u16).to_le_bytes());
        locator.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    locator.extend_from_slice(&strings);
    let mut params = (MIB as u32).to_le_bytes().to_vec();
    params.extend_from_slice(&2u32.to_le_bytes()); // HasParent
    let items: Vec<([u8; 16], Vec<u8>)> = vec![
        (
            guid(
                0xCAA16737,
                0xFA36,
                0x4D43,
                [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
            ),
            params,
        ),
        (
            guid(
                0x2FA54224,
                0xCD1B,
                0x4876,
                [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
            ),
            size.to_le_bytes().to_vec(),
        ),
        (
            guid(
                0xBECA12AB,
                0xB2E6,
                0x4523,
                [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
            ),
            vec![0x42; 16],
        ),
        (
            guid(
                0x8141BF1D,
                0xA96F,
                0x4709,
                [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
            ),
            512u32.to_le_bytes().to_vec(),
        ),
        (
            guid(
                0xCDA348C7,
                0x445D,
                0x4471,
                [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
            ),
            4096u32.to_le_bytes().to_vec(),
        ),
        (
            guid(
                0xA8D35F2D,
                0xB30B,
                0x454D,
                [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
            ),
            locator,
        ),
    ];
    f[meta_at..meta_at + 8].copy_from_slice(b"metadata");
    f[meta_at + 10..meta_at + 12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut item_at = 64 << 10;
    for (i, (g, bytes)) in items.iter().enumerate() {
        let e = meta_at + 32 + i * 32;
        f[e..e + 16].copy_from_slice(g);
        f[e + 16..e + 20].copy_from_slice(&(item_at as u32).to_le_bytes());
        f[e + 20..e + 24].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        f[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes()); // IsRequired
        f[meta_at + item_at..meta_at + item_at + bytes.len()].copy_from_slice(bytes);
        item_at += bytes.len().next_multiple_of(8);
    }
    // Payload blocks, then one sector bitmap block (chunk ratio 4096 with
    // 1 MiB blocks and 512-byte sectors: every block is in chunk 0).
    let chunk_ratio = 4096;
    let mut bitmap = vec![0u8; MIB];
    let entry = |i: usize, state: u64, at: usize, f: &mut Vec<u8>| {
        let e = bat_at + (i + i / chunk_ratio) * 8;
        f[e..e + 8].copy_from_slice(&(state | at as u64).to_le_bytes());
    };
    for (i, b) in blocks.iter().enumerate() {
        match b {
            Block::NotPresent => entry(i, 0, 0, &mut f),
            Block::Zero => entry(i, 2, 0, &mut f),
            Block::Full(d) | Block::Partial(d, _) => {
                let at = f.len();
                f.extend_from_slice(d);
                f.resize(at + MIB, 0);
                let state = if let Block::Partial(_, present) = b {
                    for (s, &p) in present.iter().enumerate() {
                        if p {
                            let bit = i * 2048 + s;
                            bitmap[bit / 8] |= 1 << (bit % 8);
                        }
                    }
                    7
                } else {
                    6
                };
                entry(i, state, at, &mut f);
            }
        }
    }
    let sb_at = f.len();
    f.extend_from_slice(&bitmap);
    let e = bat_at + chunk_ratio * 8;
    f[e..e + 8].copy_from_slice(&(6 | sb_at as u64).to_le_bytes());
    f
}

#[test]
fn differencing_disks_read_through_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (parent_bytes, parent_data) = small_vhdx(dir.path());
    let parent = || VhdxReader::open(Cursor::new(parent_bytes.clone())).unwrap();
    let linkage = format!("{{{}}}", parent().data_write_guid().to_uppercase());

    // 6 MiB child of the 8 MiB parent (a child may be smaller than its
    // parent in this test; reads stop at the child's size).
    let mib = |fill: u8| vec![fill; MIB];
    let mut partial = mixed_content(MIB);
    partial[..4].copy_from_slice(b"MINE");
    let present: Vec<bool> = (0..2048).map(|s| s % 3 == 0 || s >= 2000).collect();
    let blocks = [
        Block::Full(mib(0x11)),
        Block::NotPresent,
        Block::Partial(partial.clone(), present.clone()),
        Block::Zero,
        Block::NotPresent,
        Block::Full(mib(0x66)),
    ];
    let child = differencing(6 * MIB as u64, &linkage, &blocks);
    let mut want = Vec::new();
    want.extend(mib(0x11));
    want.extend_from_slice(&parent_data[MIB..2 * MIB]);
    for (s, &p) in present.iter().enumerate() {
        let from = if p {
            &partial[..]
        } else {
            &parent_data[2 * MIB..3 * MIB]
        };
        want.extend_from_slice(&from[s * 512..(s + 1) * 512]);
    }
    want.extend(mib(0));
    want.extend_from_slice(&parent_data[4 * MIB..5 * MIB]);
    want.extend(mib(0x66));

    let mut img = open(&child).unwrap();
    let locator = img.parent_locator().unwrap().clone();
    assert_eq!(locator.path(), Some("parent.vhdx"));
    // Without its parent, a read that needs it says so.
    let mut buf = vec![0u8; 4096];
    let err = img
        .read_at((MIB + 5) as u64, &mut buf)
        .unwrap_err()
        .to_string();
    assert!(err.contains("without its parent parent.vhdx"), "{err}");
    img.read_at(0, &mut buf).unwrap();

    img.set_parent(parent()).unwrap();
    assert!(read_all(&mut img) == want);
    // Unaligned reads across the partial block's sector runs.
    let mut part = vec![0u8; MIB + 777];
    img.read_at((2 * MIB - 300) as u64, &mut part).unwrap();
    assert!(part == want[2 * MIB - 300..3 * MIB + 477]);
    // Only the zero block is reported as zeros; parent blocks are data.
    let r = regions(&mut img);
    assert_eq!(
        r.iter().filter(|x| x.0).map(|x| x.1).sum::<u64>(),
        MIB as u64,
        "{r:?}"
    );

    // The wrong parent (another DataWriteGuid) is refused.
    let mut img = open(&child).unwrap();
    let stranger = differencing(
        6 * MIB as u64,
        "{00000000-0000-0000-0000-000000000001}",
        &[],
    );
    let err = img
        .set_parent(VhdxReader::open(Cursor::new(stranger)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not this disk's parent"), "{err}");
    // A parent that is itself differencing must come with its own parent:
    // a grandchild of the child (whose DataWriteGuid is d1d1…).
    let grandchild = differencing(
        6 * MIB as u64,
        "{d1d1d1d1-d1d1-d1d1-d1d1-d1d1d1d1d1d1}",
        &[],
    );
    let mut grandchild = VhdxReader::open(Cursor::new(grandchild)).unwrap();
    let err = grandchild
        .set_parent(VhdxReader::open(Cursor::new(child.clone())).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("itself a differencing disk"), "{err}");
    let mut with_parent = VhdxReader::open(Cursor::new(child.clone())).unwrap();
    with_parent.set_parent(parent()).unwrap();
    grandchild.set_parent(with_parent).unwrap();
    assert!(read_all(&mut grandchild) == want, "a chain of three");

    // Through open_image (the CLI's way in) it is refused naming the parent.
    let path = dir.path().join("child.vhdx");
    fs::write(&path, &child).unwrap();
    let err = hypersdk_formats::open_image(&path).unwrap_err().to_string();
    assert!(
        err.contains("differencing disk") && err.contains("parent.vhdx"),
        "{err}"
    );
}
