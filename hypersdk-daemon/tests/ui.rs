//! The dashboard in a real browser: headless Chromium (Debian's), driven by
//! playwright-core through tests/peers/ui_browser.mjs against a daemon with
//! API keys of each role, the example VMs, a schedule with missed runs and
//! a webhook whose circuit is open; the schedule's name carries HTML that
//! must show as text and never run. Screenshots of every page are kept in
//! target/ui-screenshots/ (a CI artifact).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{config, sha256_hex, Daemon, Receiver};
use hypersdk_testsupport::{playwright_dir, workspace_root};
use serde_json::{json, Value};

#[test]
fn the_dashboard_works_in_a_browser_for_each_role() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium (tests/peers/install.sh installs it)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let keys = format!(
        "api_keys:\n  - {{ name: watcher, role: viewer, sha256: {} }}\n  - {{ name: root, role: admin, sha256: {} }}\n\
         webhooks: {{ attempts: 1, breaker_failures: 1, breaker_cooldown_secs: 600, allow_private: [127.0.0.1/32] }}\n",
        sha256_hex("viewer-key-123"),
        sha256_hex("admin-key-456")
    );
    let cfg = config(tmp.path(), &keys);
    let mut d = Daemon::start(&cfg);
    let admin = "X-API-Key: admin-key-456";
    let post = |d: &Daemon, path: &str, body: Value| {
        let (code, out) = d.call(
            "POST",
            path,
            Some(&body.to_string()),
            &[admin, "Content-Type: application/json"],
        );
        assert!(code < 300, "{path}: {code} {out}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    // A webhook that always fails: its circuit opens at the first event.
    let bad = Receiver::start(0, true);
    post(
        &d,
        "/api/v1/webhooks",
        json!({"url": bad.url, "secret": "0123456789abcdef", "events": ["job.created"]}),
    );
    // A schedule every 2 s, then the daemon down for 5 s: missed runs.
    let s = post(
        &d,
        "/api/v1/schedules",
        json!({"name": "nightly <img src=x onerror=\"window.__pwned=1\">", "cron": "*/2 * * * * *", "job": {"vm": "demo-vm", "provider": "kvm", "output": "sched", "overwrite": true}}),
    );
    let id = s["id"].as_i64().unwrap();
    let (code, _) = d.call(
        "PUT",
        "/api/v1/profiles/fast",
        Some(r#"{"compress": "zstd:1", "verify": true}"#),
        &[admin, "Content-Type: application/json"],
    );
    assert!(code < 300, "{code}");
    d.kill();
    std::thread::sleep(Duration::from_secs(5));
    let d = Daemon::start(&cfg);
    let start = Instant::now();
    loop {
        let (_, runs) = d.call(
            "GET",
            &format!("/api/v1/schedules/{id}/runs"),
            None,
            &[admin],
        );
        if runs.contains("\"missed\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{runs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    post(&d, &format!("/api/v1/schedules/{id}/disable"), json!({}));

    let shots = workspace_root().join("target/ui-screenshots");
    let out = Command::new("node")
        .arg(workspace_root().join("tests/peers/ui_browser.mjs"))
        .env("BASE", format!("http://{}", d.addr))
        .env("PLAYWRIGHT_DIR", playwright_dir())
        .env("ADMIN_KEY", "admin-key-456")
        .env("VIEWER_KEY", "viewer-key-123")
        .env("SHOTS", &shots)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    for page in [
        "signin",
        "jobs",
        "job",
        "submit",
        "vms",
        "schedules",
        "profiles",
        "webhooks",
        "audit",
        "health",
        "jobs-phone",
        "submit-viewer",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "screenshot of {page}"
        );
    }
}
