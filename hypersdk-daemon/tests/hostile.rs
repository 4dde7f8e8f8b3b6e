//! hypervisord against a hostile operator, client and network: the binary
//! over HTTP, each attack of the security review tried and refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{config_at, sha256_hex, Daemon, Receiver};
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// A provider directory with a good VM `ok` and whatever `extra` files.
fn vm_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ok.raw"), vec![7u8; 1 << 20]).unwrap();
    std::fs::write(dir.join("ok.xml"), domain("ok", "ok.raw")).unwrap();
    dir
}

fn domain(name: &str, disk: &str) -> String {
    format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>\
         <target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
}

fn hostile_config(tmp: &Path, extra: &str) -> std::path::PathBuf {
    config_at(tmp, &vm_dir(tmp), "", extra)
}

fn run_job(d: &Daemon, body: &str) -> Value {
    let id = d.submit(body);
    d.wait(id, Duration::from_secs(60))
}

fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn a_job_names_a_vm_never_a_path() {
    let tmp = tempfile::tempdir().unwrap();
    // An XML file outside the provider directory, pointing a disk at a
    // file the daemon can read.
    let evil = tmp.path().join("evil.xml");
    std::fs::write(&evil, domain("evil", "/etc/hostname")).unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), ""));
    for vm in [
        evil.display().to_string(),
        "../evil.xml".to_string(),
        "evil.xml".to_string(),
        // OVF packages, which the local provider reads as VMs by path only.
        tmp.path().join("evil.ova").display().to_string(),
        "../exports/evil.ovf".to_string(),
    ] {
        let job = run_job(
            &d,
            &serde_json::json!({"vm": vm, "provider": "kvm"}).to_string(),
        );
        assert_eq!(job["status"], "failed", "{job}");
        let e = job["error"].as_str().unwrap();
        assert!(e.contains("looks like a path"), "{e}");
    }
    assert!(files_below(&tmp.path().join("out")).is_empty());
    // By name it works.
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm"}"#);
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[test]
fn disks_outside_disk_roots_are_refused_without_saying_whether_they_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let vms = vm_dir(tmp.path());
    std::fs::write(vms.join("shadow.xml"), domain("shadow", "/etc/hostname")).unwrap();
    std::fs::write(
        vms.join("ghost.xml"),
        domain("ghost", "/etc/no-such-file-anywhere"),
    )
    .unwrap();
    std::fs::write(
        vms.join("dots.xml"),
        domain("dots", "../../../../etc/hostname"),
    )
    .unwrap();
    // A link inside the provider directory that points out of it.
    std::os::unix::fs::symlink("/etc/hostname", vms.join("link.raw")).unwrap();
    std::fs::write(vms.join("link.xml"), domain("link", "link.raw")).unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), ""));
    let mut errors = Vec::new();
    for vm in ["shadow", "ghost", "dots", "link"] {
        let job = run_job(
            &d,
            &format!(r#"{{"vm": "{vm}", "provider": "kvm", "output": "{vm}"}}"#),
        );
        assert_eq!(job["status"], "failed", "{job}");
        let e = job["error"].as_str().unwrap().to_string();
        assert!(
            e.contains("not under a directory this provider may read disks from"),
            "{e}"
        );
        assert!(!e.to_lowercase().contains("no such file"), "{e}");
        errors.push(e);
    }
    // The existing and the missing file get the same answer.
    assert_eq!(
        errors[0].replace("shadow", "X").replace("hostname", "Y"),
        errors[1]
            .replace("ghost", "X")
            .replace("no-such-file-anywhere", "Y")
    );
    for vm in ["shadow", "ghost", "dots", "link"] {
        assert!(files_below(&tmp.path().join("out").join(vm)).is_empty());
    }
    // disk_roots widens what is allowed.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("d.raw"), vec![1u8; 65536]).unwrap();
    std::fs::write(
        vms.join("elsewhere.xml"),
        domain(
            "elsewhere",
            &other.path().join("d.raw").display().to_string(),
        ),
    )
    .unwrap();
    let job = run_job(&d, r#"{"vm": "elsewhere", "provider": "kvm"}"#);
    assert_eq!(job["status"], "failed", "{job}");
    drop(d);
    let second = tmp.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let cfg = config_at(
        &second,
        &vms,
        &format!(", disk_roots: [{}]", other.path().display()),
        "",
    );
    let d = Daemon::start(&cfg);
    let job = run_job(&d, r#"{"vm": "elsewhere", "provider": "kvm"}"#);
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[test]
fn a_log_file_holding_a_domain_is_not_a_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let vms = vm_dir(tmp.path());
    std::fs::write(
        vms.join("notes.xml"),
        format!(
            "2026-11-30 03:00:01 INFO dumping the domain\n{}\n2026-11-30 03:00:02 INFO done\n",
            domain("fromlog", "ok.raw")
        ),
    )
    .unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), ""));
    let (code, list) = d.json("GET", "/api/v1/providers/kvm/vms", None);
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ok"]);
    let job = run_job(&d, r#"{"vm": "fromlog", "provider": "kvm"}"#);
    assert_eq!(job["status"], "failed", "{job}");
}

#[test]
fn webhooks_cannot_reach_internal_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), ""));
    // Registrations are refused; none of these is ever connected to.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9/hook",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[fc00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:9/",
    ] {
        let body = serde_json::json!({"url": url, "secret": "0123456789abcdef"}).to_string();
        let (code, got) = d.call("POST", "/api/v1/webhooks", Some(&body), &[]);
        assert_eq!(code, 400, "{url}: {got}");
        assert!(got.contains("internal targets are refused"), "{url}: {got}");
    }
    let (_, list) = d.json("GET", "/api/v1/webhooks", None);
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn webhooks_follow_no_redirect_show_no_credentials_and_are_checked_at_connect_time() {
    let tmp = tempfile::tempdir().unwrap();
    let inside = Receiver::start(0, false);
    let target = inside.url.clone();
    let redirector = Receiver::answering(move |_| {
        let body = "INTERNAL-SECRET-BODY";
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    let allow = "webhooks: { attempts: 1, allow_private: [127.0.0.1/32, \"::1/128\"] }\n";
    let cfg = hostile_config(tmp.path(), allow);
    let d = Daemon::start(&cfg);
    let with_creds = redirector.url.replace("http://", "http://user:hunter2@") + "?token=abc123";
    let mut ids = Vec::new();
    for url in [
        with_creds.as_str(),
        &inside.url.replace("127.0.0.1", "localhost"),
    ] {
        let body = serde_json::json!({"url": url, "secret": "0123456789abcdef", "events": ["job.completed"]})
            .to_string();
        let (code, hook) = d.json("POST", "/api/v1/webhooks", Some(&body));
        assert_eq!(code, 201, "{hook}");
        assert!(!hook.to_string().contains("hunter2"), "{hook}");
        ids.push(hook["id"].as_i64().unwrap());
    }
    let (_, listed) = d.call("GET", "/api/v1/webhooks", None, &[]);
    assert!(
        !listed.contains("hunter2") && !listed.contains("abc123") && listed.contains("***"),
        "{listed}"
    );
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm"}"#);
    assert_eq!(job["status"], "succeeded");
    let deliveries = |d: &Daemon, id: i64, n: usize| -> Vec<Value> {
        let start = Instant::now();
        loop {
            let (_, log) = d.json("GET", &format!("/api/v1/webhooks/{id}/deliveries"), None);
            let log = log.as_array().unwrap().clone();
            if log.len() >= n {
                return log;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{log:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The redirect is not followed: the 307 is a failed attempt, its body
    // is not kept, and the target behind it saw nothing from it.
    let log = deliveries(&d, ids[0], 1);
    assert_eq!(log[0]["status"], 307, "{log:?}");
    assert_eq!(log[0]["ok"], false);
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains("INTERNAL-SECRET-BODY") && !text.contains("hunter2"),
        "{text}"
    );
    // The allowed name-based hook got its event.
    let log = deliveries(&d, ids[1], 1);
    assert_eq!(log[0]["ok"], true, "{log:?}");
    assert_eq!(inside.requests().len(), 1);
    // Restarted without the allow-list: the stored hooks are checked again
    // when connecting (the name resolved, the address literal) and nothing
    // is sent.
    drop(d);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(allow, "webhooks: { attempts: 1 }\n"),
    )
    .unwrap();
    let d = Daemon::start(&cfg);
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm", "overwrite": true}"#);
    assert_eq!(job["status"], "succeeded");
    for id in &ids {
        let log = deliveries(&d, *id, 2);
        let last = &log[1];
        assert_eq!(last["ok"], false, "{log:?}");
        assert!(
            last["error"]
                .as_str()
                .unwrap()
                .contains("internal targets are refused"),
            "{log:?}"
        );
    }
    assert_eq!(inside.requests().len(), 1);
    assert_eq!(redirector.requests().len(), 1);
}

#[test]
fn links_under_the_output_root_make_the_job_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let cfg = hostile_config(tmp.path(), "");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("s")).unwrap();
    std::os::unix::fs::symlink(outside.path(), out.join("evil")).unwrap();
    // A link in place of the staging directory of a job's export.
    std::os::unix::fs::symlink(outside.path(), out.join("s/.ok.ova.partial")).unwrap();
    let d = Daemon::start(&cfg);
    for (output, text) in [
        ("evil", "symbolic link"),
        ("evil/deeper", "symbolic link"),
        ("s", "symbolic link"),
    ] {
        let job = run_job(
            &d,
            &format!(r#"{{"vm": "ok", "provider": "kvm", "output": "{output}"}}"#),
        );
        assert_eq!(job["status"], "failed", "{job}");
        assert!(job["error"].as_str().unwrap().contains(text), "{job}");
    }
    assert!(files_below(outside.path()).is_empty());
}

#[test]
fn exports_and_the_database_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), ""));
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm", "output": "a/b"}"#);
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = tmp.path().join("out");
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("a")), 0o700);
    assert_eq!(mode(&out.join("a/b")), 0o700);
    assert_eq!(mode(&out.join("a/b/ok.ova")), 0o600);
    let ovf = run_job(&d, r#"{"vm": "ok", "provider": "kvm", "format": "ovf"}"#);
    assert_eq!(ovf["status"], "succeeded", "{ovf}");
    assert_eq!(mode(&out.join("ok")), 0o700);
    for f in files_below(&out.join("ok")) {
        assert_eq!(mode(&out.join("ok").join(&f)), 0o600, "{f}");
    }
    for db in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let p = tmp.path().join(db);
        if p.exists() || db == "jobs.db" {
            assert_eq!(mode(&p), 0o600, "{db}");
        }
    }
    drop(d);
    // A site that wants group read says so.
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&hostile_config(tmp.path(), "artifact_mode: \"0640\"\n"));
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm", "output": "g"}"#);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(mode(&tmp.path().join("out/g")), 0o750);
    assert_eq!(mode(&tmp.path().join("out/g/ok.ova")), 0o640);
}

#[test]
fn small_holes_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = format!(
        "api_keys:\n  - {{ name: ops, role: operator, sha256: {} }}\n",
        sha256_hex("op-key")
    );
    let d = Daemon::start(&hostile_config(tmp.path(), &keys));
    // The bearer scheme in any case.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (code, body) = d.call(
            "GET",
            "/api/v1/jobs",
            None,
            &[&format!("Authorization: {scheme} op-key")],
        );
        assert_eq!(code, 200, "{scheme}: {body}");
    }
    let auth = "Authorization: Bearer op-key";
    // NUL and control characters refused at submission.
    for (body, field) in [
        (r#"{"vm": "ok\u0000", "provider": "kvm"}"#, "vm"),
        (
            r#"{"vm": "ok", "provider": "kvm", "output": "a\nb"}"#,
            "output",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "name": "x\u001b[2J"}"#,
            "name",
        ),
    ] {
        let (code, got) = d.call("POST", "/api/v1/jobs", Some(body), &[auth]);
        assert_eq!(code, 400, "{got}");
        assert!(
            got.contains(&format!("{field}: ")) && got.contains("control character"),
            "{got}"
        );
        assert!(!got.contains('\u{1b}'), "{got}");
    }
    // Paths that climb out of the output root, in either field.
    for (body, field) in [
        (
            r#"{"vm": "ok", "provider": "kvm", "name": "../../etc/cron.d/x"}"#,
            "name: ",
        ),
        (r#"{"vm": "ok", "provider": "kvm", "name": ".."}"#, "name: "),
        (
            r#"{"vm": "ok", "provider": "kvm", "output": "/etc"}"#,
            "output: ",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "output": "a/../../b"}"#,
            "output: ",
        ),
    ] {
        let (code, got) = d.call("POST", "/api/v1/jobs", Some(body), &[auth]);
        assert_eq!(code, 400, "{body}: {got}");
        assert!(got.contains(field), "{body}: {got}");
    }
    // A YAML alias bomb (a billion laughs in a few hundred bytes) is refused
    // without expanding it, and the daemon keeps serving.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("vm: *i\nprovider: kvm\n");
    let (code, got) = d.call(
        "POST",
        "/api/v1/jobs",
        Some(&bomb),
        &[auth, "Content-Type: application/yaml"],
    );
    assert_eq!(code, 400, "{got}");
    assert!(got.contains("malformed YAML"), "{got}");
    let (code, _) = d.call("GET", "/api/v1/jobs", None, &[auth]);
    assert_eq!(code, 200);
    // /ready: anonymous callers learn ready or not, nothing more.
    let (code, anon) = d.json("GET", "/ready", None);
    assert_eq!(code, 200);
    assert_eq!(anon["status"], "ok");
    assert!(
        anon["queued"].is_null() && anon["free_bytes"].is_null(),
        "{anon}"
    );
    let (code, text) = d.call("GET", "/ready", None, &[auth]);
    assert_eq!(code, 200);
    let known: Value = serde_json::from_str(&text).unwrap();
    assert!(
        known["queued"].is_number() && known["free_bytes"].is_number(),
        "{known}"
    );
}

#[test]
fn failed_jobs_are_retried_from_their_checkpoint_and_their_leftovers_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hostile_config(tmp.path(), "");
    let out = tmp.path().join("out");
    // A cause that passes once fixed: something in the way of the staging
    // directory (as a full disk is, until space is freed).
    std::fs::create_dir_all(out.join("r")).unwrap();
    std::fs::write(out.join("r/.ok.ova.partial"), b"in the way").unwrap();
    let d = Daemon::start(&cfg);
    let job = run_job(&d, r#"{"vm": "ok", "provider": "kvm", "output": "r"}"#);
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["retryable"], true, "{job}");
    let id = job["id"].as_i64().unwrap();
    std::fs::remove_file(out.join("r/.ok.ova.partial")).unwrap();
    let (code, again) = d.json("POST", &format!("/api/v1/jobs/{id}/retry"), None);
    assert_eq!(code, 202, "{again}");
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(out.join("r/ok.ova").is_file());
    // A failure a retry cannot change is refused with its cause.
    let job = run_job(&d, r#"{"vm": "no-such-vm", "provider": "kvm"}"#);
    assert_eq!(job["retryable"], false, "{job}");
    let (code, got) = d.call(
        "POST",
        &format!("/api/v1/jobs/{}/retry", job["id"]),
        None,
        &[],
    );
    assert_eq!(code, 409, "{got}");
    assert!(got.contains("no-such-vm"), "{got}");
    // A succeeded job is not retried.
    let (code, _) = d.call("POST", &format!("/api/v1/jobs/{id}/retry"), None, &[]);
    assert_eq!(code, 409);
}

/// A domain with a disk large enough to cancel its export midway.
fn big_vm(dir: &Path) {
    hypersdk_testsupport::write_mixed_file(&dir.join("big.raw"), 256 << 20).unwrap();
    std::fs::write(dir.join("big.xml"), domain("big", "big.raw")).unwrap();
}

fn cancel_midway(d: &Daemon, output: &str) -> Value {
    let id = d.submit(&format!(
        r#"{{"vm": "big", "provider": "kvm", "output": "{output}", "bwlimit": "32M"}}"#
    ));
    d.wait_progress(id, 8 << 20);
    let (code, _) = d.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(code, 202);
    d.wait(id, Duration::from_secs(60))
}

#[test]
fn a_cancelled_jobs_partial_export_is_listed_resumed_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hostile_config(tmp.path(), "");
    big_vm(&tmp.path().join("vms"));
    let d = Daemon::start(&cfg);
    let job = cancel_midway(&d, "c");
    assert_eq!(job["status"], "cancelled", "{job}");
    let partial = job["partial"]["path"].as_str().unwrap().to_string();
    assert!(partial.ends_with("/c/.big.ova.partial"), "{job}");
    assert!(job["partial"]["bytes"].as_u64().unwrap() > 0, "{job}");
    assert!(Path::new(&partial).is_dir());
    // Retried: it continues and succeeds; the partial export is taken up.
    let id = job["id"].as_i64().unwrap();
    let (code, _) = d.json("POST", &format!("/api/v1/jobs/{id}/retry"), None);
    assert_eq!(code, 202);
    let done = d.wait(id, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["partial"].is_null(), "{done}");
    assert!(!Path::new(&partial).exists());
    let (_, logs) = d.json("GET", &format!("/api/v1/jobs/{id}/logs"), None);
    assert!(logs.to_string().contains("retry requested"), "{logs}");
    // Deleted: its partial export goes with it (a published one stays).
    let job = cancel_midway(&d, "e");
    let partial = job["partial"]["path"].as_str().unwrap().to_string();
    assert!(Path::new(&partial).is_dir());
    let (code, _) = d.call("DELETE", &format!("/api/v1/jobs/{}", job["id"]), None, &[]);
    assert_eq!(code, 204);
    assert!(!Path::new(&partial).exists());
    let (code, _) = d.call("GET", &format!("/api/v1/jobs/{}", job["id"]), None, &[]);
    assert_eq!(code, 404);
    let (code, _) = d.call("DELETE", &format!("/api/v1/jobs/{id}"), None, &[]);
    assert_eq!(code, 204);
    assert!(tmp.path().join("out/c/big.ova").is_file());
}

#[test]
fn partial_exports_are_removed_after_their_age() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hostile_config(tmp.path(), "partial_max_age_hours: 0\n");
    big_vm(&tmp.path().join("vms"));
    let d = Daemon::start(&cfg);
    let job = cancel_midway(&d, "old");
    assert_eq!(job["status"], "cancelled", "{job}");
    let partial = tmp.path().join("out/old/.big.ova.partial");
    // The sweep runs when a job ends (this one's own end included) and every
    // minute; another job's end triggers one more.
    let other = run_job(&d, r#"{"vm": "ok", "provider": "kvm"}"#);
    assert_eq!(other["status"], "succeeded");
    let start = Instant::now();
    let id = job["id"].as_i64().unwrap();
    loop {
        let (_, j) = d.json("GET", &format!("/api/v1/jobs/{id}"), None);
        if j["partial"].is_null() && !partial.exists() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, logs) = d.json("GET", &format!("/api/v1/jobs/{id}/logs"), None);
    // Only a recorded partial export is swept: the line says it existed.
    assert!(
        logs.to_string().contains("partial export")
            && logs.to_string().contains("removed: kept 0 hours"),
        "{logs}"
    );
}

#[test]
fn jobs_take_every_export_option_and_encrypt_only_with_keys_the_daemon_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("job.pass"), "a job passphrase\n").unwrap();
    std::fs::write(tmp.path().join("named.pass"), "the archive passphrase\n").unwrap();
    std::fs::write(tmp.path().join("outside.pass"), "not allowed\n").unwrap();
    let extra = format!(
        "key_dirs: [{}]\nencryption_keys:\n  archive: {{ passphrase_file: {} }}\n",
        keys.display(),
        tmp.path().join("named.pass").display()
    );
    let d = Daemon::start(&hostile_config(tmp.path(), &extra));
    // Every option of ExportSettings is a job field.
    let job = run_job(
        &d,
        &serde_json::json!({
            "vm": "ok", "provider": "kvm", "format": "ovf", "name": "all-options",
            "compress": "zstd:3", "compression_level": 6, "digest": "sha512",
            "encrypt_passphrase_file": keys.join("job.pass"), "verify": true,
            "parallel_disks": 1, "idle_timeout_secs": 30, "reencode": true,
            "no_checkpoint": true, "checkpoint_mib": 8, "bwlimit": "off", "overwrite": true,
            "hardware_version": "vmx-13",
        })
        .to_string(),
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["encrypted"], true, "{job}");
    assert_eq!(job["result"]["digest_algorithm"], "SHA512", "{job}");
    assert_eq!(
        job["spec"]["compression_level"], 6,
        "the job record keeps its options: {job}"
    );
    let ovf = tmp.path().join("out/all-options/all-options.ovf.zst.enc");
    assert!(
        ovf.exists(),
        "{:?}",
        files_below(&tmp.path().join("out/all-options"))
    );
    // A named key.
    let job = run_job(
        &d,
        r#"{"vm": "ok", "provider": "kvm", "name": "named", "encryption_key": "archive"}"#,
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(tmp.path().join("out/named.ova.enc").exists());
    // Key files outside key_dirs, through .. or a link, and unknown names fail
    // the job with the rule named, whether the file exists or not.
    std::os::unix::fs::symlink(tmp.path().join("outside.pass"), keys.join("link.pass")).unwrap();
    for (field, value) in [
        (
            "encrypt_passphrase_file",
            tmp.path().join("outside.pass").display().to_string(),
        ),
        ("encrypt_key_file", "/etc/hostname".to_string()),
        (
            "encrypt_key_file",
            keys.join("../outside.pass").display().to_string(),
        ),
        (
            "encrypt_passphrase_file",
            keys.join("link.pass").display().to_string(),
        ),
    ] {
        let job = run_job(
            &d,
            &serde_json::json!({"vm": "ok", "provider": "kvm", "name": "x", field: value})
                .to_string(),
        );
        assert_eq!(job["status"], "failed", "{job}");
        let e = job["error"].as_str().unwrap();
        assert!(e.contains("key_dirs") && e.contains(field), "{e}");
    }
    // Signing keys too.
    let job = run_job(
        &d,
        &serde_json::json!({"vm": "ok", "provider": "kvm", "name": "s",
            "sign_key_file": "/etc/hostname", "sign_cert_file": "/etc/hostname"})
        .to_string(),
    );
    assert_eq!(job["status"], "failed", "{job}");
    let e = job["error"].as_str().unwrap();
    assert!(e.contains("key_dirs") && e.contains("sign_key_file"), "{e}");
    let job = run_job(
        &d,
        &serde_json::json!({"vm": "ok", "provider": "kvm", "name": "s2",
            "sign_key_file": keys.join("job.pass"), "sign_cert_file": "/etc/hostname"})
        .to_string(),
    );
    assert_eq!(job["status"], "failed", "{job}");
    let e = job["error"].as_str().unwrap();
    assert!(
        e.contains("key_dirs") && e.contains("sign_cert_file"),
        "{e}"
    );
    let job = run_job(
        &d,
        r#"{"vm": "ok", "provider": "kvm", "name": "y", "encryption_key": "nope"}"#,
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("no key named 'nope'"),
        "{job}"
    );
    assert!(
        !tmp.path().join("out/x.ova.enc").exists() && !tmp.path().join("out/y.ova.enc").exists()
    );
    // Refused at submission: unknown fields, bad values, resume, two keys.
    for (body, says) in [
        (
            r#"{"vm": "ok", "provider": "kvm", "colour": "blue"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "compression_level": 12}"#,
            "compression_level 12",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "checkpoint_mib": 0}"#,
            "checkpoint_mib",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "resume": true}"#,
            "retry",
        ),
        (
            r#"{"vm": "ok", "provider": "kvm", "encryption_key": "archive", "encrypt_key_file": "/k"}"#,
            "one of encryption_key",
        ),
    ] {
        let (code, answer) = d.json("POST", "/api/v1/jobs", Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }
}
