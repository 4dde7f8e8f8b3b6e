//! The API suite: hypervisord as a user runs it, the binary with a config
//! file, talked to over HTTP on 127.0.0.1 (a port the OS picks) with curl.
//! Included by `api.rs` (SQLite) and `api_postgres.rs` (PostgreSQL).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{config, config_at, sha256_hex, Daemon, Receiver};
use hypersdk_testsupport::{domain_xml, run_tool, write_mixed_file};
use serde_json::{json, Value};

#[test]
fn a_submitted_export_runs_and_reports_with_logs_progress_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(tmp.path(), ""));
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "format": "ovf", "output": "batch1", "verify": true}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    // Progress as Server-Sent Events, until the end event.
    let (code, events) = d.call("GET", &format!("/api/v1/jobs/{id}/progress"), None, &[]);
    assert_eq!(code, 200);
    assert!(events.contains("event: end"), "{events}");
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"]["verified"], true);
    let dir = tmp.path().join("out/batch1/demo-vm");
    let mf = std::fs::read_to_string(dir.join("demo-vm.mf")).unwrap();
    assert_eq!(mf, job["result"]["manifest"].as_str().unwrap());
    for f in job["result"]["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let sum = run_tool("sha256sum", &[dir.join(name).to_str().unwrap()]);
        assert!(sum.starts_with(f["digest"].as_str().unwrap()), "{name}");
    }
    let (_, logs) = d.json("GET", &format!("/api/v1/jobs/{id}/logs"), None);
    let statuses: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"]);

    // Its report: the stored result as JSON, or one HTML page.
    let (code, report) = d.json("GET", &format!("/api/v1/jobs/{id}/report"), None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(report, job["result"]);
    assert_eq!(report["attempts"].as_array().unwrap().len(), 1);
    let (code, page) = d.call(
        "GET",
        &format!("/api/v1/jobs/{id}/report"),
        None,
        &["Accept: text/html,application/xhtml+xml"],
    );
    assert_eq!(code, 200);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains("<script"));
    for f in job["result"]["files"].as_array().unwrap() {
        assert!(
            page.contains(f["digest"].as_str().unwrap()),
            "{f} in the page"
        );
    }
    let (code, e) = d.json("GET", &format!("/api/v1/jobs/{id}/report?format=pdf"), None);
    assert_eq!(code, 400, "{e}");

    // A YAML batch, listed with filters and paging.
    let (code, batch) = d.call(
        "POST",
        "/api/v1/jobs",
        Some("- {vm: demo-vm, provider: kvm, output: b2, priority: low}\n- {vm: demo-vm, provider: kvm, output: b3, priority: critical}\n"),
        &["Content-Type: application/yaml"],
    );
    assert_eq!(code, 201, "{batch}");
    for j in serde_json::from_str::<Value>(&batch).unwrap()["jobs"]
        .as_array()
        .unwrap()
    {
        let done = d.wait(j["id"].as_i64().unwrap(), Duration::from_secs(60));
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let (_, list) = d.json(
        "GET",
        "/api/v1/jobs?status=succeeded&limit=2&offset=0",
        None,
    );
    assert_eq!(list["total"], 3);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert!(tmp.path().join("out/b3/demo-vm.ova").is_file());
    let (code, queued) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "no-such-vm", "provider": "kvm"}"#),
    );
    assert_eq!(code, 201, "{queued}");
    let failed = queued["jobs"][0]["id"].as_i64().unwrap();
    d.wait(failed, Duration::from_secs(60));
    let (code, e) = d.json("GET", &format!("/api/v1/jobs/{failed}/report"), None);
    assert_eq!(code, 409, "{e}");
    assert!(
        e.to_string().contains("only a succeeded job has a report"),
        "{e}"
    );

    let (_, vms) = d.json("GET", "/api/v1/providers/kvm/vms", None);
    assert_eq!(vms["vms"][0]["name"], "demo-vm");
    let (code, metrics) = d.call("GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("hypersdk_jobs{status=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "hypersdk_http_requests_total{method=\"POST\",route=\"/api/v1/jobs\",status=\"201\"} 3"
        ),
        "{metrics}"
    );
    let (_, api) = d.json("GET", "/api/v1/openapi.json", None);
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/progress",
        "/metrics",
    ] {
        assert!(api["paths"][p].is_object(), "{p} in the OpenAPI document");
    }
    assert!(api["components"]["schemas"]["JobSpec"].is_object());
    let (code, ready) = d.json("GET", "/ready", None);
    assert_eq!(code, 200);
    assert_eq!(ready["status"], "ok");
}

#[test]
fn bad_requests_get_a_specific_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(tmp.path(), "max_body_bytes: 4096\n"));
    /// Method, path, body, headers, expected status, text the message holds.
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<String>,
        &'a [&'a str],
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/jobs",
            Some("{\"vm\": ".into()),
            &[],
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("- vm: [".into()),
            &["Content-Type: application/yaml"],
            400,
            "malformed YAML",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(r#"{"vm":"a","provider":"kvm","colour":"red"}"#.into()),
            &[],
            400,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(r#"{"vm":"a","provider":"aws"}"#.into()),
            &[],
            400,
            "unknown provider 'aws'",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(
                r#"[{"vm":"a","provider":"kvm"},{"vm":"b","provider":"kvm","compress":"lzma"}]"#
                    .into(),
            ),
            &[],
            400,
            "job 2: compress",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(r#"{"vm":"a","provider":"kvm","output":"../etc"}"#.into()),
            &[],
            400,
            "output",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("[]".into()),
            &[],
            400,
            "empty list",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some("42".into()),
            &[],
            400,
            "expected a job",
        ),
        (
            "POST",
            "/api/v1/jobs",
            Some(format!(
                "{{\"vm\":\"{}\",\"provider\":\"kvm\"}}",
                "x".repeat(8000)
            )),
            &[],
            413,
            "",
        ),
        (
            "GET",
            "/api/v1/jobs?status=done",
            None,
            &[],
            400,
            "unknown status 'done'",
        ),
        ("GET", "/api/v1/jobs?limit=0", None, &[], 400, "limit"),
        ("GET", "/api/v1/jobs?colour=red", None, &[], 400, "colour"),
        ("GET", "/api/v1/jobs/abc", None, &[], 400, "not a number"),
        ("GET", "/api/v1/jobs/999", None, &[], 404, "no job 999"),
        (
            "POST",
            "/api/v1/jobs/999/cancel",
            None,
            &[],
            404,
            "no job 999",
        ),
        (
            "GET",
            "/api/v1/providers/aws/vms",
            None,
            &[],
            404,
            "no provider 'aws'",
        ),
        ("GET", "/api/v2/nothing", None, &[], 404, "no such route"),
    ];
    for (method, path, body, headers, want, text) in cases {
        let (code, got) = d.call(method, path, body.as_deref(), headers);
        assert_eq!(code, want, "{method} {path}: {got}");
        let v: Value =
            serde_json::from_str(&got).unwrap_or_else(|e| panic!("{path}: not JSON: {got:?} {e}"));
        assert_eq!(v["error"]["status"], want);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{method} {path}: {got}"
        );
    }
    // Cancelling a job that is over is a conflict.
    let (_, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm":"demo-vm","provider":"kvm"}"#),
    );
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    d.wait(id, Duration::from_secs(60));
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(code, 409, "{v}");
    // A job of a VM that does not exist fails with the reason.
    let (_, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm":"no-such-vm","provider":"kvm"}"#),
    );
    let job = d.wait(
        sub["jobs"][0]["id"].as_i64().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(job["status"], "failed");
    assert!(
        job["error"].as_str().unwrap().contains("no-such-vm"),
        "{job}"
    );
}

#[test]
fn api_keys_roles_and_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = format!(
        "api_keys:\n  - {{ name: watcher, role: viewer, sha256: {} }}\n  - {{ name: ops, role: operator, sha256: {} }}\n  - {{ name: root, role: admin, sha256: {} }}\n",
        sha256_hex("view-key"),
        sha256_hex("ops-key"),
        sha256_hex("admin-key")
    );
    let d = Daemon::start(&config(tmp.path(), &keys));
    let job = r#"{"vm":"demo-vm","provider":"kvm"}"#;
    assert_eq!(d.call("GET", "/api/v1/jobs", None, &[]).0, 401);
    assert_eq!(
        d.call("GET", "/api/v1/jobs", None, &["X-API-Key: wrong"]).0,
        401
    );
    assert_eq!(
        d.call("GET", "/health", None, &[]).0,
        200,
        "liveness needs no key"
    );
    assert_eq!(
        d.call("GET", "/api/v1/jobs", None, &["X-API-Key: view-key"])
            .0,
        200
    );
    let (code, body) = d.call("POST", "/api/v1/jobs", Some(job), &["X-API-Key: view-key"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Operator"), "{body}");
    let (code, body) = d.call(
        "POST",
        "/api/v1/jobs",
        Some(job),
        &["Authorization: Bearer ops-key"],
    );
    assert_eq!(code, 201, "{body}");
    let sub: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sub["jobs"][0]["submitted_by"], "ops");
    assert_eq!(
        d.call("GET", "/api/v1/audit", None, &["X-API-Key: ops-key"])
            .0,
        403
    );
    let (code, audit) = d.call("GET", "/api/v1/audit", None, &["X-API-Key: admin-key"]);
    assert_eq!(code, 200);
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let entries = audit.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "ops" && e["status"] == 201 && e["method"] == "POST"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "watcher" && e["status"] == 403),
        "{audit}"
    );

    // No keys and a non-loopback address: refused at start.
    let bad = tmp.path().join("open.yaml");
    std::fs::write(
        &bad,
        format!(
            "listen: 0.0.0.0:0\ndatabase: {}\noutput_root: {}\n",
            tmp.path().join("x.db").display(),
            tmp.path().join("x").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hypervisord"))
        .args(["--config", bad.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("api_keys"),
        "{err}"
    );
}

/// A config in `dir` whose provider `kvm` has one VM, `big`, with a 64 MiB
/// disk (at 16 MiB/s a job runs about 4 s), and `max_concurrent` slots.
fn big_vm_config(dir: &Path, max_concurrent: usize) -> PathBuf {
    let vms = dir.join("vms");
    std::fs::create_dir(&vms).unwrap();
    // Disks beside their domains: the provider's directory is a disk root.
    let disk = vms.join("big.raw");
    write_mixed_file(&disk, 64 << 20).unwrap();
    std::fs::write(vms.join("big.xml"), domain_xml("big", &[(&disk, "raw")])).unwrap();
    config_at(
        dir,
        &vms,
        "",
        &format!("max_concurrent: {max_concurrent}\n"),
    )
}

#[test]
fn cancelling_stops_a_running_export_and_drops_a_queued_job() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&big_vm_config(tmp.path(), 1));
    let body = r#"[{"vm":"big","provider":"kvm","output":"a","bwlimit":"16M"},{"vm":"big","provider":"kvm","output":"b"}]"#;
    let (code, sub) = d.json("POST", "/api/v1/jobs", Some(body));
    assert_eq!(code, 201, "{sub}");
    let (a, b) = (
        sub["jobs"][0]["id"].as_i64().unwrap(),
        sub["jobs"][1]["id"].as_i64().unwrap(),
    );
    let start = Instant::now();
    while d.json("GET", &format!("/api/v1/jobs/{a}"), None).1["status"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{b}/cancel"), None);
    assert_eq!(
        (code, v["status"].as_str()),
        (202, Some("cancelled")),
        "{v}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{a}/cancel"), None);
    assert_eq!(code, 202, "{v}");
    let job = d.wait(a, Duration::from_secs(10));
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(
        !tmp.path().join("out/a/big.ova").exists(),
        "nothing published"
    );
    let (_, logs) = d.json("GET", &format!("/api/v1/jobs/{a}/logs"), None);
    assert!(
        logs.to_string().contains("cancel requested by anonymous"),
        "{logs}"
    );
    assert_eq!(
        d.wait(b, Duration::from_secs(1))["started_at"],
        Value::Null,
        "never ran"
    );
}

#[test]
fn kill_9_while_jobs_run_then_restart_completes_every_job_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = big_vm_config(tmp.path(), 3);
    let mut d = Daemon::start(&cfg);
    let jobs: Vec<Value> = (0..6)
        .map(|i| json!({"vm": "big", "provider": "kvm", "output": format!("j{i}"), "bwlimit": "16M"}))
        .collect();
    let (code, sub) = d.json("POST", "/api/v1/jobs", Some(&Value::from(jobs).to_string()));
    assert_eq!(code, 201, "{sub}");
    let ids: Vec<i64> = sub["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    // Kill it while three run, well into their disks.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, running) = d.json("GET", "/api/v1/jobs?status=running", None);
    assert_eq!(running["total"], 3, "{running}");
    d.kill();

    let d = Daemon::start(&cfg);
    let mut reports = Vec::new();
    for id in &ids {
        let job = d.wait(*id, Duration::from_secs(120));
        assert_eq!(job["status"], "succeeded", "{job}");
        reports.push(job);
    }
    let (_, all) = d.json("GET", "/api/v1/jobs?limit=100", None);
    assert_eq!(all["total"], 6, "none lost, none duplicated");
    let resumed: Vec<&Value> = reports.iter().filter(|j| j["attempts"] == 2).collect();
    assert_eq!(resumed.len(), 3, "the three interrupted jobs ran again");
    assert!(
        resumed
            .iter()
            .all(|j| j["result"]["resumed_bytes"].as_u64().unwrap() > 0),
        "and continued from their checkpoints"
    );
    let first = std::fs::read(tmp.path().join("out/j0/big.ova")).unwrap();
    for i in 1..6 {
        assert!(
            std::fs::read(tmp.path().join(format!("out/j{i}/big.ova"))).unwrap() == first,
            "job {i}'s OVA is the same as the others"
        );
    }
    let (_, logs) = d.json(
        "GET",
        &format!("/api/v1/jobs/{}/logs", resumed[0]["id"]),
        None,
    );
    assert!(logs.to_string().contains("queued again"), "{logs}");
}

#[test]
fn profiles_fill_in_what_a_job_leaves_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(tmp.path(), ""));
    let yaml = ["Content-Type: application/yaml"];
    let (code, body) = d.call(
        "PUT",
        "/api/v1/profiles/fast-ovf",
        Some("provider: kvm\nformat: ovf\nverify: true\ndigest: sha512\n"),
        &yaml,
    );
    assert_eq!(code, 200, "{body}");
    for (bad, text) in [
        ("vm: x\n", "vm: a profile cannot set it"),
        ("colour: red\n", "unknown field `colour`"),
        ("provider: aws\n", "unknown provider 'aws'"),
        ("- 1\n", "an object of job options"),
    ] {
        let (code, body) = d.call("PUT", "/api/v1/profiles/bad", Some(bad), &yaml);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains(text), "{bad}: {body}");
    }
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "profile": "fast-ovf", "output": "p", "verify": false}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let spec = &sub["jobs"][0]["spec"];
    assert_eq!(
        (spec["provider"].as_str(), spec["format"].as_str()),
        (Some("kvm"), Some("ovf"))
    );
    // The job's own setting wins (false options are left out of the record).
    assert!(
        matches!(spec.get("verify"), None | Some(Value::Bool(false))),
        "{spec}"
    );
    assert_eq!(spec["digest"], "sha512");
    let job = d.wait(
        sub["jobs"][0]["id"].as_i64().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        std::fs::read_to_string(tmp.path().join("out/p/demo-vm/demo-vm.mf"))
            .unwrap()
            .starts_with("SHA512(")
    );
    let (code, body) = d.call(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "profile": "gone"}"#),
        &[],
    );
    assert_eq!(code, 400);
    assert!(body.contains("no profile 'gone'"), "{body}");
    let (_, list) = d.json("GET", "/api/v1/profiles", None);
    assert_eq!(list[0]["name"], "fast-ovf");
    assert_eq!(
        d.call("DELETE", "/api/v1/profiles/fast-ovf", None, &[]).0,
        204
    );
    assert_eq!(
        d.call("DELETE", "/api/v1/profiles/fast-ovf", None, &[]).0,
        404
    );
}

#[test]
fn schedules_run_on_time_report_missed_runs_and_refuse_bad_cron() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "");
    let mut d = Daemon::start(&cfg);
    let job = r#""job": {"vm": "demo-vm", "provider": "kvm", "output": "s", "overwrite": true}"#;
    for (body, text) in [
        (
            format!(r#"{{"name": "x", "cron": "61 * * * *", {job}}}"#),
            "cron: '61 * * * *' is not a valid cron expression",
        ),
        (
            format!(r#"{{"name": "x", "cron": "every day", {job}}}"#),
            "cron:",
        ),
        (
            format!(r#"{{"name": "x", "cron": "0 1 * * *", "timezone": "Mars/Olympus", {job}}}"#),
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            r#"{"name": "x", "cron": "0 1 * * *", "job": {"vm": "a", "provider": "aws"}}"#
                .to_string(),
            "unknown provider 'aws'",
        ),
        (
            format!(r#"{{"name": "x", "cron": "0 1 * * *", "when": "now", {job}}}"#),
            "unknown field `when`",
        ),
    ] {
        let (code, got) = d.call("POST", "/api/v1/schedules", Some(&body), &[]);
        assert_eq!(code, 400, "{body}: {got}");
        assert!(got.contains(text), "{body}: {got}");
    }
    // Every 2 seconds (a leading seconds field), in a named time zone.
    let (code, s) = d.json(
        "POST",
        "/api/v1/schedules",
        Some(&format!(
            r#"{{"name": "often", "cron": "*/2 * * * * *", "timezone": "Europe/Berlin", {job}}}"#
        )),
    );
    assert_eq!(code, 201, "{s}");
    let id = s["id"].as_i64().unwrap();
    assert!(s["next_run_at"].is_string());
    let (code, dup) = d.call(
        "POST",
        "/api/v1/schedules",
        Some(&format!(
            r#"{{"name": "often", "cron": "0 1 * * *", {job}}}"#
        )),
        &[],
    );
    assert_eq!(code, 409, "{dup}");
    let runs_of = |d: &Daemon| -> Vec<Value> {
        d.json("GET", &format!("/api/v1/schedules/{id}/runs"), None)
            .1
            .as_array()
            .unwrap()
            .clone()
    };
    let start = Instant::now();
    while !runs_of(&d).iter().any(|r| r["status"] == "submitted") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the schedule ran within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = runs_of(&d)
        .into_iter()
        .find(|r| r["status"] == "submitted")
        .unwrap();
    let job_id = run["jobs"][0].as_i64().unwrap();
    let (_, j) = d.json("GET", &format!("/api/v1/jobs/{job_id}"), None);
    assert_eq!(j["submitted_by"], "schedule:often");
    let (code, trig) = d.json("POST", &format!("/api/v1/schedules/{id}/trigger"), None);
    assert_eq!(code, 201, "{trig}");
    assert!(trig["message"]
        .as_str()
        .unwrap()
        .contains("triggered by anonymous"));

    // Down for 5 s: the occurrences in between are reported as missed.
    d.kill();
    std::thread::sleep(Duration::from_secs(5));
    let d = Daemon::start(&cfg);
    let start = Instant::now();
    loop {
        let runs = runs_of(&d);
        let missed = runs.iter().filter(|r| r["status"] == "missed").count();
        if missed >= 1 {
            assert!(runs
                .iter()
                .filter(|r| r["status"] == "missed")
                .all(|r| r["due_at"].is_string()));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "missed runs reported: {runs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, off) = d.json("POST", &format!("/api/v1/schedules/{id}/disable"), None);
    assert_eq!(
        (off["enabled"].as_bool(), off["next_run_at"].is_null()),
        (Some(false), true),
        "{off}"
    );
    let (_, on) = d.json("POST", &format!("/api/v1/schedules/{id}/enable"), None);
    assert!(on["next_run_at"].is_string());
    assert_eq!(
        d.call("DELETE", &format!("/api/v1/schedules/{id}"), None, &[])
            .0,
        204
    );
    assert_eq!(
        d.call("GET", &format!("/api/v1/schedules/{id}"), None, &[])
            .0,
        404
    );
}

fn header<'a>(h: &'a [(String, String)], k: &str) -> &'a str {
    h.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[test]
fn webhooks_are_signed_retried_logged_and_paused_by_a_circuit_breaker() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(
        tmp.path(),
        "webhooks: { attempts: 3, initial_delay_ms: 20, breaker_failures: 2, breaker_cooldown_secs: 600, allow_private: [127.0.0.1/32] }\n",
    ));
    // Bad registrations.
    for (body, text) in [
        (
            r#"{"url": "ftp://x/", "secret": "0123456789abcdef"}"#,
            "not http or https",
        ),
        (
            r#"{"url": "http://127.0.0.1:1/", "secret": "short"}"#,
            "secret: at least 16",
        ),
        (
            r#"{"url": "http://127.0.0.1:1/", "secret": "0123456789abcdef", "events": ["job.exploded"]}"#,
            "unknown event 'job.exploded'",
        ),
    ] {
        let (code, got) = d.call("POST", "/api/v1/webhooks", Some(body), &[]);
        assert_eq!(code, 400, "{got}");
        assert!(got.contains(text), "{got}");
    }
    // A receiver that fails twice, then takes everything.
    let good = Receiver::start(2, false);
    let secret = "s3cret-s3cret-s3cret";
    let (code, hook) = d.json(
        "POST",
        "/api/v1/webhooks",
        Some(&json!({"url": good.url, "secret": secret, "events": ["job.created", "job.started", "job.completed"]}).to_string()),
    );
    assert_eq!(code, 201, "{hook}");
    assert!(hook.get("secret").is_none(), "the secret is never shown");
    let (_, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm"}"#),
    );
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    d.wait(id, Duration::from_secs(60));
    let start = Instant::now();
    while good.requests().len() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} requests",
            good.requests().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reqs = good.requests();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut events = Vec::new();
    for (h, body) in &reqs {
        let sig = header(h, "x-hypersdk-signature")
            .strip_prefix("sha256=")
            .unwrap();
        let tag: Vec<u8> = (0..sig.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&sig[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, body, &tag).expect("the signature verifies");
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], header(h, "x-hypersdk-event"));
        assert_eq!(v["job"]["id"], id);
        events.push(v["event"].as_str().unwrap().to_string());
    }
    // job.created tried 3 times (500, 500, then 204), then the rest in order.
    assert_eq!(
        events,
        [
            "job.created",
            "job.created",
            "job.created",
            "job.started",
            "job.completed"
        ]
    );
    let (_, log) = d.json(
        "GET",
        &format!("/api/v1/webhooks/{}/deliveries", hook["id"]),
        None,
    );
    let statuses: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 204, 204, 204], "{log}");

    // An endpoint that always fails: after two failed deliveries its
    // circuit opens and nothing more is sent, but every event is logged.
    let bad = Receiver::start(0, true);
    let (_, badhook) = d.json(
        "POST",
        "/api/v1/webhooks",
        Some(&json!({"url": bad.url, "secret": secret, "events": ["job.created"]}).to_string()),
    );
    let jobs: Vec<Value> = (0..4)
        .map(|i| json!({"vm": "demo-vm", "provider": "kvm", "output": format!("w{i}")}))
        .collect();
    let (_, sub) = d.json("POST", "/api/v1/jobs", Some(&Value::from(jobs).to_string()));
    for j in sub["jobs"].as_array().unwrap() {
        d.wait(j["id"].as_i64().unwrap(), Duration::from_secs(60));
    }
    let start = Instant::now();
    let log = loop {
        let (_, log) = d.json(
            "GET",
            &format!("/api/v1/webhooks/{}/deliveries", badhook["id"]),
            None,
        );
        if log.as_array().unwrap().len() >= 8 {
            break log;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let attempts: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 1, 2, 3, 0, 0], "{log}");
    assert!(
        log[7]["error"]
            .as_str()
            .unwrap()
            .contains("circuit is open"),
        "{log}"
    );
    assert_eq!(
        bad.requests().len(),
        6,
        "two deliveries of three tries, then none"
    );
    // The breaker's state in the listing and in the metrics.
    let (_, hooks) = d.json("GET", "/api/v1/webhooks", None);
    let listed = hooks
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == badhook["id"])
        .unwrap()
        .clone();
    assert_eq!(listed["circuit"]["open"], true, "{listed}");
    assert_eq!(listed["circuit"]["failures_in_a_row"], 2, "{listed}");
    assert!(listed["circuit"]["open_until"].is_string(), "{listed}");
    let (_, metrics) = d.call("GET", "/metrics", None, &[]);
    assert!(
        metrics.contains(&format!(
            "hypersdk_webhook_breaker_open{{webhook=\"{}\"}} 1",
            badhook["id"]
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("hypersdk_webhook_deliveries_total{result=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hypersdk_webhook_deliveries_total{result=\"skipped\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        d.call(
            "DELETE",
            &format!("/api/v1/webhooks/{}", badhook["id"]),
            None,
            &[]
        )
        .0,
        204
    );
}

#[test]
fn rate_limits_per_client_answer_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(
        tmp.path(),
        "rate_limit: { per_second: 0.5, burst: 3 }\n",
    ));
    for _ in 0..3 {
        assert_eq!(d.call("GET", "/api/v1/jobs", None, &[]).0, 200);
    }
    let out = Command::new("curl")
        .args(["-sS", "-i", &format!("http://{}/api/v1/jobs", d.addr)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 429"), "{text}");
    let wait: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    assert!((1..=2).contains(&wait), "{text}");
    assert!(
        text.contains("rate limit: 0.5 requests per second for 127.0.0.1"),
        "{text}"
    );
    assert_eq!(
        d.call("GET", "/health", None, &[]).0,
        200,
        "probes are not limited"
    );
}

#[test]
fn tls_with_a_configured_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let cfg = config(
        tmp.path(),
        &format!(
            "tls: {{ cert: {}, key: {} }}\n",
            cert.display(),
            key.display()
        ),
    );
    let d = Daemon::start_with_ca(&cfg, Some(cert.to_str().unwrap().to_string()));
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm"}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let job = d.wait(
        sub["jobs"][0]["id"].as_i64().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(job["status"], "succeeded");
    // Plain HTTP to the TLS port gets nowhere.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{}/health", d.addr),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plain HTTP is not served");
    // Nor does a client that does not trust the certificate.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("https://{}/health", d.addr),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an untrusted certificate is refused by the client"
    );
}

#[test]
fn fifty_jobs_survive_kill_9_at_random_moments() {
    let tmp = tempfile::tempdir().unwrap();
    // A VM with a 4 MiB disk: each export is short, so kills land in every
    // phase (submission, start, export, finish).
    let vms = tmp.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let disk = vms.join("small.raw");
    write_mixed_file(&disk, 4 << 20).unwrap();
    std::fs::write(
        vms.join("small.xml"),
        domain_xml("small", &[(&disk, "raw")]),
    )
    .unwrap();
    let cfg = config_at(tmp.path(), &vms, "", "max_concurrent: 3\n");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill seed {seed}");
    let mut d = Daemon::start(&cfg);
    let jobs: Vec<Value> = (0..50)
        .map(|i| json!({"vm": "small", "provider": "kvm", "output": format!("j{i:02}"), "bwlimit": "40M"}))
        .collect();
    let (code, sub) = d.json("POST", "/api/v1/jobs", Some(&Value::from(jobs).to_string()));
    assert_eq!(code, 201, "{sub}");
    for round in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = 100 + seed % 900;
        std::thread::sleep(Duration::from_millis(wait));
        let (_, done) = d.json("GET", "/api/v1/jobs?status=succeeded&limit=1", None);
        println!(
            "round {round}: kill -9 after {wait} ms, {} succeeded",
            done["total"]
        );
        d.kill();
        d = Daemon::start(&cfg);
    }
    let start = Instant::now();
    loop {
        let (_, done) = d.json("GET", "/api/v1/jobs?status=succeeded&limit=1", None);
        if done["total"] == 50 {
            break;
        }
        let (_, failed) = d.json("GET", "/api/v1/jobs?status=failed&limit=100", None);
        assert_eq!(failed["total"], 0, "{failed}");
        assert!(start.elapsed() < Duration::from_secs(120), "{done}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, all) = d.json("GET", "/api/v1/jobs?limit=1000", None);
    assert_eq!(all["total"], 50, "none lost, none duplicated");
    for i in 0..50 {
        let dir = tmp.path().join(format!("out/j{i:02}"));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["small.ova"],
            "job {i}: one artifact, nothing partial left"
        );
    }
}

#[test]
fn priorities_and_the_per_provider_bound_order_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = big_vm_config(tmp.path(), 3);
    // The provider may run one export at a time, though three slots exist.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            "kvm: {{ kind: local, dir: {} }}",
            tmp.path().join("vms").display()
        ),
        &format!(
            "kvm: {{ kind: local, dir: {}, max_concurrent: 1 }}",
            tmp.path().join("vms").display()
        ),
    );
    assert!(text.contains("max_concurrent: 1"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg);
    let body = json!([
        {"vm": "big", "provider": "kvm", "output": "first", "bwlimit": "64M"},
        {"vm": "big", "provider": "kvm", "output": "low", "priority": "low", "bwlimit": "64M"},
        {"vm": "big", "provider": "kvm", "output": "critical", "priority": "critical", "bwlimit": "64M"}
    ]);
    let (code, sub) = d.json("POST", "/api/v1/jobs", Some(&body.to_string()));
    assert_eq!(code, 201, "{sub}");
    let ids: Vec<i64> = sub["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    let start = Instant::now();
    let mut most_running = 0;
    loop {
        let (_, running) = d.json("GET", "/api/v1/jobs?status=running", None);
        most_running = most_running.max(running["total"].as_i64().unwrap());
        let (_, done) = d.json("GET", "/api/v1/jobs?status=succeeded", None);
        if done["total"] == 3 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{done}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most_running, 1, "one export of the provider at a time");
    let started = |id: i64| {
        d.json("GET", &format!("/api/v1/jobs/{id}"), None).1["started_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(started(ids[2]) < started(ids[1]), "critical ran before low");
}

#[cfg(feature = "otel")]
#[test]
fn traces_reach_an_otlp_collector_with_the_callers_trace_and_the_job_below_it() {
    let receiver = hypersdk_testsupport::python::OtlpReceiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &format!(
            "telemetry: {{ otlp_endpoint: '{}', service_name: hypervisord-test, headers: {{ x-collector-key: k1 }} }}\n",
            receiver.endpoint()
        ),
    );
    let mut d = Daemon::start(&cfg);
    // The caller's own trace: W3C trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (code, body) = d.call(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "output": "traced"}"#),
        &[
            "Content-Type: application/json",
            &format!("traceparent: 00-{trace}-{caller_span}-01"),
        ],
    );
    assert_eq!(code, 201, "{body}");
    let sub: Value = serde_json::from_str(&body).unwrap();
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        job["trace_parent"].as_str().unwrap().contains(trace),
        "{job}"
    );
    let (code, _) = d.call("GET", "/api/v1/jobs/999999", None, &[]);
    assert_eq!(code, 404);

    // A graceful stop sends the spans still buffered.
    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "hypervisord did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let spans = receiver.spans();
    let find = |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();

    // The submission: a server span, child of the caller's span.
    let submit = find("POST /api/v1/jobs");
    assert_eq!(submit.len(), 1, "{names:?}");
    let submit = submit[0];
    assert_eq!(submit["trace_id"], trace, "{submit}");
    assert_eq!(submit["parent_span_id"], caller_span, "{submit}");
    assert_eq!(submit["kind"], "server");
    assert_eq!(submit["attributes"]["http.route"], "/api/v1/jobs");
    assert_eq!(submit["attributes"]["http.request.method"], "POST");
    assert_eq!(submit["attributes"]["http.response.status_code"], 201);
    assert_eq!(submit["resource"]["service.name"], "hypervisord-test");
    assert_eq!(submit["headers"]["x-collector-key"], "k1");

    // The job's run: in the caller's trace, below the submission.
    let runs = find("export job");
    assert_eq!(runs.len(), 1, "{names:?}");
    let run = runs[0];
    assert_eq!(run["trace_id"], trace, "{run}");
    assert_eq!(run["parent_span_id"], submit["span_id"], "{run}");
    assert_eq!(run["attributes"]["hypersdk.job.id"], id);
    assert_eq!(run["attributes"]["hypersdk.vm"], "demo-vm");
    assert_eq!(run["attributes"]["hypersdk.job.status"], "succeeded");
    assert_eq!(
        run["attributes"]["hypersdk.bytes_read"], job["result"]["bytes_read"],
        "{run}"
    );
    assert_ne!(run["status"], "error");
    // The exporter's own spans below it: the export, then each disk.
    let export = find("export");
    assert_eq!(export.len(), 1, "{names:?}");
    assert_eq!(export[0]["parent_span_id"], run["span_id"]);
    let disks = find("disk");
    assert!(!disks.is_empty(), "{names:?}");
    for disk in disks {
        assert_eq!(disk["parent_span_id"], export[0]["span_id"], "{disk}");
        assert_eq!(disk["trace_id"], trace);
    }
    // A request without a caller's trace starts its own, and says how it ended.
    let missing = find("GET /api/v1/jobs/{id}")
        .into_iter()
        .find(|s| s["attributes"]["http.response.status_code"] == 404)
        .unwrap_or_else(|| panic!("no 404 span in {names:?}"));
    assert_ne!(missing["trace_id"], trace);
    assert_eq!(missing["parent_span_id"], "");
    assert_eq!(missing["attributes"]["url.path"], "/api/v1/jobs/999999");
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(tmp.path(), ""));
    let (code, api) = d.json("GET", "/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    let paths = api["paths"].as_object().unwrap();
    // Every route group the daemon serves is in it (schedules, webhooks and
    // profiles were once missing).
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/retry",
        "/api/v1/schedules",
        "/api/v1/schedules/{id}/trigger",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}/deliveries",
        "/api/v1/profiles/{name}",
        "/api/v1/audit",
        "/api/v1/openapi.json",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    // And every operation in it is served: none falls through to the
    // router's fallback or gets 405 (ids and names that do not exist, so
    // nothing changes).
    let mut operations = 0;
    for (path, item) in paths {
        let url = path.replace("{id}", "987654").replace("{name}", "no-such");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let (code, body) = d.call(&method.to_uppercase(), &url, None, &[]);
            assert_ne!(code, 405, "{method} {path}: {body}");
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not served: {body}"
            );
        }
    }
    assert!(operations >= 30, "{operations} operations");
    // A route that is not in the document is not served either.
    let (code, body) = d.call("GET", "/api/v1/nothing-here", None, &[]);
    assert_eq!(code, 404);
    assert!(body.contains("no such route"), "{body}");
}

#[test]
fn a_submission_with_an_idempotency_key_queues_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&config(tmp.path(), ""));
    let body = r#"[{"vm": "demo-vm", "provider": "kvm", "output": "once-a"},
                   {"vm": "demo-vm", "provider": "kvm", "output": "once-b"}]"#;
    let post = |key: &str, body: &str| {
        d.call(
            "POST",
            "/api/v1/jobs",
            Some(body),
            &[
                "Content-Type: application/json",
                &format!("Idempotency-Key: {key}"),
            ],
        )
    };
    let (code, first) = post("wave-7", body);
    assert_eq!(code, 201, "{first}");
    let first: Value = serde_json::from_str(&first).unwrap();
    // The answer was lost; the client tries again.
    let (code, again) = post("wave-7", body);
    assert_eq!(code, 200, "{again}");
    let again: Value = serde_json::from_str(&again).unwrap();
    let ids = |v: &Value| -> Vec<i64> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&first), ids(&again), "the same jobs, none new");
    let (_, all) = d.json("GET", "/api/v1/jobs?limit=100", None);
    assert_eq!(all["total"], 2);
    // The same key for a submission of another size: refused.
    let (code, err) = post("wave-7", r#"{"vm": "demo-vm", "provider": "kvm"}"#);
    assert_eq!(code, 409, "{err}");
    assert!(err.contains("wave-7"), "{err}");
    // Another key is another submission; a bad key is refused by name.
    assert_eq!(post("wave-8", body).0, 201);
    let (code, err) = post(&"k".repeat(201), body);
    assert_eq!(code, 400, "{err}");
    assert!(err.contains("Idempotency-Key"), "{err}");
    for id in ids(&first) {
        assert_eq!(d.wait(id, Duration::from_secs(60))["status"], "succeeded");
    }
}
