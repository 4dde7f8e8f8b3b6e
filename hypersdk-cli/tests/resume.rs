//! Interrupted exports continued with `hyperctl export --resume`: after
//! kill -9 at random moments, and after the output disk filled up.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hypersdk_testsupport::{dir_contents, disk_like_content, domain_xml, mixed_content, path_str};

/// A VM in `dir` with two raw disks of `mib` MiB each (disk-like and mixed
/// content, so the VMDKs are large enough to be cut).
fn make_vm(dir: &Path, mib: usize) -> PathBuf {
    let a = dir.join("a.raw");
    let b = dir.join("b.raw");
    std::fs::write(&a, disk_like_content(mib << 20)).unwrap();
    std::fs::write(&b, mixed_content(mib << 20)).unwrap();
    let xml = dir.join("resumable.xml");
    std::fs::write(&xml, domain_xml("resumable", &[(&a, "raw"), (&b, "raw")])).unwrap();
    xml
}

/// A seed from the clock, or HYPERSDK_KILL_SEED to replay one.
fn seed() -> u64 {
    let s = std::env::var("HYPERSDK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("kill seed {s} (HYPERSDK_KILL_SEED replays it)");
    s
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_same_export() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 48);
    for format in ["ova", "ovf"] {
        let reference = tmp.path().join(format!("reference-{format}"));
        let out = tmp.path().join(format!("out-{format}"));
        ok(&[
            "export",
            path_str(&xml),
            "--format",
            format,
            "--output",
            path_str(&reference),
        ]);
        let mut rng = seed();
        let mut killed_with_checkpoint = 0;
        let mut completed = false;
        for round in 0..3 {
            // Slowed down so that the kill lands mid-export: 96 MiB at 24
            // MiB/s (a resumed run may finish before its kill).
            let mut args = vec![
                "export",
                path_str(&xml),
                "--format",
                format,
                "--output",
                path_str(&out),
                "--bwlimit",
                "24M",
                "--checkpoint-mib",
                "2",
            ];
            if round > 0 {
                args.push("--resume");
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_hyperctl"))
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Killed at a random moment once something is durable (a kill
            // before the first checkpoint with durable bytes keeps nothing:
            // that comes after 2 MiB of VMDK are stored, later on a loaded
            // machine than on a quiet one).
            let partial = out.join(if format == "ova" {
                ".resumable.ova.partial"
            } else {
                ".resumable.partial"
            });
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(20)
                && !durable_bytes_saved(&partial.join(".checkpoint.json"))
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let wait_ms = next(&mut rng) % 1200;
            std::thread::sleep(Duration::from_millis(wait_ms));
            let _ = child.kill(); // SIGKILL
            let status = child.wait().unwrap();
            println!(
                "{format} round {round}: killed {wait_ms} ms after the first durable checkpoint ({status})"
            );
            if status.success() {
                assert!(round > 0, "the first run cannot finish before its kill");
                completed = true;
                break;
            }
            assert!(partial.is_dir(), "the partial export survives kill -9");
            if partial.join(".checkpoint.json").is_file() {
                killed_with_checkpoint += 1;
            }
        }
        assert!(
            killed_with_checkpoint > 0,
            "some kill came after a checkpoint"
        );
        if !completed {
            let report: serde_json::Value = serde_json::from_str(&ok(&[
                "export",
                path_str(&xml),
                "--format",
                format,
                "--output",
                path_str(&out),
                "--resume",
                "--json",
            ]))
            .unwrap();
            println!("{format}: resumed, kept {} bytes", report["resumed_bytes"]);
            assert!(report["resumed_bytes"].as_u64().unwrap() > 0);
            assert!(
                report["bytes_read"].as_u64().unwrap() < 96 << 20,
                "not read again from the start: {}",
                report["bytes_read"]
            );
        }
        let (got, want) = if format == "ova" {
            (
                vec![(
                    "ova".to_string(),
                    std::fs::read(out.join("resumable.ova")).unwrap(),
                )],
                vec![(
                    "ova".to_string(),
                    std::fs::read(reference.join("resumable.ova")).unwrap(),
                )],
            )
        } else {
            (
                dir_contents(&out.join("resumable")),
                dir_contents(&reference.join("resumable")),
            )
        };
        assert!(
            got == want,
            "the resumed {format} export is byte-identical to an uninterrupted one"
        );
        assert_eq!(
            listing(&out).iter().filter(|n| n.starts_with('.')).count(),
            0,
            "nothing partial is left: {:?}",
            listing(&out)
        );
    }
}

/// Runs `script` with `sh` in a private mount namespace (so it may mount a
/// small tmpfs), or, where that is not allowed, with a file-size limit
/// standing in for the full disk. Returns which of the two it used.
fn run_confined(script: &str, env: &[(&str, &str)]) -> &'static str {
    let try_run = |wrapper: &[&str], mode: &str| {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..])
            .arg("-c")
            .arg(script)
            .env("MODE", mode);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    // HYPERSDK_FULL_DISK=fsize forces the stand-in (to test it where tmpfs works).
    let forced = std::env::var("HYPERSDK_FULL_DISK").is_ok_and(|v| v == "fsize");
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .output()
        .ok()
        .filter(|_| !forced);
    let (out, mode) = match probe {
        Some(p) if p.status.success() => (try_run(&["unshare", "-rm", "sh"], "tmpfs"), "tmpfs"),
        _ => (try_run(&["sh"], "fsize"), "fsize"),
    };
    assert!(
        out.status.success(),
        "confined script ({mode}) failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    mode
}

#[test]
fn a_full_disk_keeps_the_checkpoint_and_resume_works_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 32);
    let reference = tmp.path().join("reference");
    ok(&[
        "export",
        path_str(&xml),
        "--format",
        "ovf",
        "--output",
        path_str(&reference),
    ]);
    let results = tmp.path().join("results");
    std::fs::create_dir(&results).unwrap();
    let out = tmp.path().join("small-disk");
    std::fs::create_dir(&out).unwrap();
    // tmpfs: 64 MiB with a 52 MiB filler leaves 12 MiB for a larger export;
    // removing the filler is "freeing space". Else a file-size limit of a
    // few MiB (SIGXFSZ ignored, so writes fail with EFBIG), lifted for the
    // resume.
    let script = r#"
set -u
if [ "$MODE" = tmpfs ]; then
  mount -t tmpfs -o size=64m tmpfs "$OUT" || exit 10
  dd if=/dev/zero of="$OUT/filler" bs=1M count=52 2>/dev/null || exit 11
  "$HYPERCTL" export "$VM" --format ovf --output "$OUT" --checkpoint-mib 1 2> "$RES/err1" && exit 12
else
  ( trap '' XFSZ; ulimit -f 4096; exec "$HYPERCTL" export "$VM" --format ovf --output "$OUT" --checkpoint-mib 1 2> "$RES/err1" ) && exit 12
fi
ls -a "$OUT" > "$RES/listing1"
cp "$OUT/.resumable.partial/.checkpoint.json" "$RES/checkpoint1.json" || exit 13
[ "$MODE" = tmpfs ] && rm "$OUT/filler"
"$HYPERCTL" export "$VM" --format ovf --output "$OUT" --resume --json > "$RES/report.json" 2> "$RES/err2" || exit 14
cp -r "$OUT/resumable" "$RES/resumable" || exit 15
"#;
    let mode = run_confined(
        script,
        &[
            ("HYPERCTL", env!("CARGO_BIN_EXE_hyperctl")),
            ("VM", path_str(&xml)),
            ("OUT", path_str(&out)),
            ("RES", path_str(&results)),
        ],
    );
    let err1 = std::fs::read_to_string(results.join("err1")).unwrap();
    println!("full disk via {mode}:\n{err1}");
    let expected = if mode == "tmpfs" {
        "No space left on device"
    } else {
        "File too large"
    };
    let error_line = err1.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        error_line.contains(expected) && error_line.contains("resumable"),
        "a clear error naming what failed: {error_line}"
    );
    assert!(
        err1.contains("--resume"),
        "the user is told how to continue: {err1}"
    );
    let listing1 = std::fs::read_to_string(results.join("listing1")).unwrap();
    assert!(
        !listing1.lines().any(|l| l == "resumable"),
        "nothing published: {listing1}"
    );
    let ck: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("checkpoint1.json")).unwrap()).unwrap();
    assert_eq!(ck["identity"]["vm"], "resumable", "the checkpoint is whole");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("report.json")).unwrap()).unwrap();
    assert!(
        report["resumed_bytes"].as_u64().unwrap() > 0,
        "continued, not restarted"
    );
    assert!(
        dir_contents(&results.join("resumable")) == dir_contents(&reference.join("resumable")),
        "the resumed export is byte-identical to an uninterrupted one"
    );
}
