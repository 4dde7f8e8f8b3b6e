//! `hyperctl export --report`: a self-contained HTML page and its JSON
//! twin, with per-disk timings and throughput over time; after a kill -9
//! and `--resume`, both runs and the bytes kept; progress off with
//! `--quiet` and `--json`, lines with binary units and sane rates on a pipe.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hypersdk_testsupport::{disk_like_content, domain_xml, mixed_content, path_str};
use serde_json::Value;

fn vm(dir: &std::path::Path) -> std::path::PathBuf {
    let a = dir.join("a.raw");
    let b = dir.join("b.raw");
    std::fs::write(&a, disk_like_content(24 << 20)).unwrap();
    std::fs::write(&b, mixed_content(16 << 20)).unwrap();
    let xml = dir.join("rep.xml");
    std::fs::write(
        &xml,
        domain_xml("rep&lt;script&gt;1", &[(&a, "raw"), (&b, "raw")]),
    )
    .unwrap();
    xml
}

#[test]
fn a_report_shows_disks_digests_timings_and_throughput_and_escapes_names() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = vm(tmp.path());
    let out = tmp.path().join("out");
    let html = tmp.path().join("report.html");
    let json = tmp.path().join("report.json");
    // 40 MiB at 16 MiB/s: a few seconds of samples.
    let o = hyperctl(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&out),
        "--bwlimit",
        "16M",
        "--verify",
        "--report",
        path_str(&html),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // On a pipe: progress lines in binary units, no absurd rate.
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("disk ")).collect();
    assert!(!lines.is_empty(), "{err}");
    for l in &lines {
        assert!(l.contains("MiB") || l.contains("KiB"), "{l}");
        assert!(!l.contains(" MB/s"), "one unit system: {l}");
        if let Some(rate) = l.split("  ").find(|p| p.ends_with("/s")) {
            let (v, unit) = rate.split_once(' ').unwrap();
            let v: f64 = v.parse().unwrap();
            let bps = v * match unit {
                "B/s" => 1.0,
                "KiB/s" => 1024.0,
                "MiB/s" => 1048576.0,
                "GiB/s" => 1073741824.0,
                u => panic!("unit {u} in {l}"),
            };
            // Limited to 16 MiB/s (the bucket's burst allows a little more).
            assert!(bps < 40.0 * 1048576.0, "absurd rate in {l}");
        }
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<script"), "no scripts, and names escaped");
    assert!(
        page.contains("rep&lt;script&gt;1"),
        "the VM's name, escaped"
    );
    assert!(
        !page.contains("http://") || !page.contains("src=\"http"),
        "nothing fetched"
    );
    assert!(page.contains("verified: every stored file"));
    assert!(page.contains("<polyline"), "a throughput chart");
    assert!(page.contains("a.raw") && page.contains("b.raw"), "sources");
    for want in ["CPUs", "Memory", "Firmware", "Network", "Runs", "Options"] {
        assert!(page.contains(want), "{want} in the report");
    }
    let mf = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ova"))
        .unwrap();
    let listing = Command::new("tar")
        .arg("-xOf")
        .arg(&mf)
        .arg("--wildcards")
        .arg("*.mf")
        .output()
        .unwrap();
    for line in String::from_utf8(listing.stdout).unwrap().lines() {
        let digest = line.rsplit("= ").next().unwrap();
        assert!(page.contains(digest), "{digest} in the page");
    }

    // The same export again, its report as JSON.
    let out2 = tmp.path().join("out2");
    let o = hyperctl(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&out2),
        "--bwlimit",
        "16M",
        "--report",
        path_str(&json),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).lines().any(|l| l.starts_with("disk ")),
        "no progress with --json: {}",
        stderr(&o)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let stdout: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r, stdout, "the file is the report --json prints");
    assert_eq!(r["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(r["options"]["format"], "ova");
    for d in r["disks"].as_array().unwrap() {
        let tl = d["timeline"].as_array().unwrap();
        assert!(tl.len() >= 3, "{d}");
        let last = tl.last().unwrap();
        assert_eq!(last[1], d["capacity"], "ends at the capacity: {d}");
        assert!(d["secs"].as_f64().unwrap() > 0.5, "{d}");
        assert!(d["started_secs"].as_f64().is_some(), "{d}");
        assert_eq!(d["source_format"], "raw");
    }

    // --quiet: nothing but errors.
    let o = hyperctl(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&tmp.path().join("out3")),
        "--quiet",
    ]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn a_resumed_export_reports_both_runs_and_the_bytes_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = vm(tmp.path());
    let out = tmp.path().join("out");
    let json = tmp.path().join("r.json");
    let args = |resume: bool| {
        let mut a = vec![
            "export".to_string(),
            path_str(&xml).to_string(),
            "--format".into(),
            "ovf".into(),
            "--output".into(),
            path_str(&out).to_string(),
            "--checkpoint-mib".into(),
            "1".into(),
            "--report".into(),
            path_str(&json).to_string(),
        ];
        if resume {
            a.push("--resume".into());
        } else {
            a.extend(["--bwlimit".into(), "8M".into()]);
        }
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperctl"))
        .args(args(false))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = out.join(".rep_script_1.partial/.checkpoint.json");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) && !durable_bytes_saved(&checkpoint) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    assert!(!child.wait().unwrap().success(), "killed mid-export");
    assert!(!json.exists(), "no report of an export that did not finish");
    let a: Vec<String> = args(true);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = hyperctl(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = r["attempts"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r}");
    assert_eq!(runs[0]["kept_bytes"], 0);
    assert!(runs[1]["kept_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["resumed_bytes"].as_u64().unwrap() > 0, "{r}");
    let resumed: u64 = r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["resumed_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(resumed, r["resumed_bytes"].as_u64().unwrap());
    assert!(
        r["bytes_read"].as_u64().unwrap() < (40 << 20),
        "kept bytes not read again: {r}"
    );
}
