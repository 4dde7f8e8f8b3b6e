//! Persistent dirty bitmaps read from qcow2 images that qemu-img and
//! qemu-io made, checked against what QEMU itself reports for the same
//! bitmap: `qemu-nbd -B NAME` serving it as the `qemu:dirty-bitmap:NAME`
//! meta context, read with `nbdinfo --map` (libnbd).

use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};

use hypersdk_formats::qcow2::{dirty_ranges, list_bitmaps};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(img: &Path, writes: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for w in writes {
        args.extend(["-c", w]);
    }
    args.push(img.to_str().unwrap());
    run("qemu-io", &args);
}

/// The dirty ranges of `bitmap` as QEMU reports them.
fn oracle(img: &Path, bitmap: &str) -> Vec<Range<u64>> {
    let sock = img.with_extension("sock");
    let mut nbd = Command::new("qemu-nbd")
        .args(["-r", "-f", "qcow2", "-B", bitmap, "-k"])
        .arg(&sock)
        .arg(img)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-nbd did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The socket appears at bind(), a moment before qemu-nbd listens.
    let out = loop {
        let out = Command::new("nbdinfo")
            .arg(format!("--map=qemu:dirty-bitmap:{bitmap}"))
            .arg(format!("nbd+unix:///?socket={}", sock.display()))
            .output()
            .expect("nbdinfo (Debian libnbd-bin)");
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = nbd.kill();
    let _ = nbd.wait();
    assert!(
        out.status.success(),
        "nbdinfo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (off, len, kind): (u64, u64, u32) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        if kind & 1 == 1 {
            ranges.push(off..off + len);
        }
    }
    ranges
}

#[test]
fn dirty_bitmaps_match_what_qemu_serves() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    let p = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "300M"]);
    qemu_io(&img, &["write -P 0xaa 0 8M"]);
    run("qemu-img", &["bitmap", "--add", "--enable", p, "b64k"]);
    run(
        "qemu-img",
        &["bitmap", "--add", "--enable", "-g", "1M", p, "b1m"],
    );
    let writes = [
        "write -P 0xbb 5M 100k",
        "write 40M 4k",
        "write -z 100M 3M",
        "write -P 1 299M 1M",
        "discard 1M 64k",
    ];
    qemu_io(&img, &writes);
    // A bitmap added after the writes, and one disabled: nothing, and
    // the writes after it was disabled not counted.
    run("qemu-img", &["bitmap", "--add", p, "later"]);
    run("qemu-img", &["bitmap", "--add", "--enable", p, "frozen"]);
    run("qemu-img", &["bitmap", "--disable", p, "frozen"]);
    qemu_io(&img, &["write 200M 64k"]);

    let names: Vec<String> = list_bitmaps(&mut std::fs::File::open(&img).unwrap())
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b64k", "b1m", "later", "frozen"]);
    for name in ["b64k", "b1m", "later", "frozen"] {
        let ours = dirty_ranges(&mut std::fs::File::open(&img).unwrap(), name).unwrap();
        assert_eq!(ours, oracle(&img, name), "bitmap {name}");
    }
    let b64k = dirty_ranges(&mut std::fs::File::open(&img).unwrap(), "b64k").unwrap();
    let m = 1u64 << 20;
    assert_eq!(
        b64k,
        [
            m..m + 65536,
            5 * m..5 * m + 131072,
            40 * m..40 * m + 65536,
            100 * m..103 * m,
            200 * m..200 * m + 65536,
            299 * m..300 * m
        ]
    );
    let err = dirty_ranges(&mut std::fs::File::open(&img).unwrap(), "nope").unwrap_err();
    assert!(
        err.to_string().contains("no bitmap named \"nope\""),
        "{err}"
    );
}

#[test]
fn an_image_without_bitmaps_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "10M"],
    );
    assert!(list_bitmaps(&mut std::fs::File::open(&img).unwrap())
        .unwrap()
        .is_empty());
}
