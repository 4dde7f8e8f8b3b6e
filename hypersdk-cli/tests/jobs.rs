//! `hyperctl jobs` against a hypervisord started in-process on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::workspace_root;

/// Starts a daemon on its own runtime thread; returns its URL and the
/// temporary directory (output root under `out`).
fn daemon() -> (String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listen: 127.0.0.1:0\ndatabase: {}\noutput_root: {}\nmax_concurrent: 1\nproviders:\n  kvm: {{ kind: local, dir: {} }}\nwebhooks: {{ allow_private: [127.0.0.1/32] }}\n",
        tmp.path().join("jobs.db").display(),
        tmp.path().join("out").display(),
        workspace_root().join("examples/vms").display()
    );
    let config = hypersdk_daemon::config::Config::parse(&yaml, "test").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let d = hypersdk_daemon::Daemon::start(config).await.unwrap();
            tx.send(format!("http://{}", d.addr)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    (rx.recv().unwrap(), tmp)
}

#[test]
fn submit_watch_list_show_logs_and_cancel_through_the_daemon() {
    let (url, tmp) = daemon();
    let d = ["jobs", "--daemon", url.as_str()];
    let with =
        |rest: &[&str]| -> Vec<String> { d.iter().chain(rest).map(|s| s.to_string()).collect() };
    let run_ok = |rest: &[&str]| {
        let args = with(rest);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run_ok(&[
        "submit",
        "--vm",
        "demo-vm",
        "--provider",
        "kvm",
        "--output",
        "one",
        "--verify",
        "--watch",
    ]);
    assert!(
        out.contains("job 1 queued") && out.contains("job 1 succeeded"),
        "{out}"
    );
    assert!(tmp.path().join("out/one/demo-vm.ova").is_file());

    let file = tmp.path().join("batch.yaml");
    std::fs::write(&file, "- {vm: demo-vm, provider: kvm, output: two, format: ovf}\n- {vm: demo-vm, provider: kvm, output: three}\n").unwrap();
    let out = run_ok(&["submit", file.to_str().unwrap()]);
    assert!(
        out.contains("job 2 queued") && out.contains("job 3 queued"),
        "{out}"
    );
    let out = run_ok(&["watch", "3"]);
    assert!(out.contains("job 3 succeeded"), "{out}");

    let list: serde_json::Value =
        serde_json::from_str(&run_ok(&["list", "--json", "--status", "succeeded"])).unwrap();
    assert_eq!(list["total"], 3, "{list}");
    let out = run_ok(&["show", "2"]);
    assert!(
        out.contains("job 2: succeeded") && out.contains("exported to"),
        "{out}"
    );
    let out = run_ok(&["logs", "1"]);
    assert!(
        out.contains("[queued]") && out.contains("[running]") && out.contains("[succeeded]"),
        "{out}"
    );

    let args = with(&["cancel", "1"]);
    let line = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        line.contains("409") && line.contains("already succeeded"),
        "{line}"
    );
    let args = with(&["submit", "--vm", "demo-vm", "--provider", "aws"]);
    let line = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        line.contains("400") && line.contains("unknown provider 'aws'"),
        "{line}"
    );
    let args = with(&[
        "submit",
        "--vm",
        "no-such-vm",
        "--provider",
        "kvm",
        "--watch",
    ]);
    let o = hyperctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("failed") && stderr(&o).contains("no-such-vm"),
        "{}",
        stderr(&o)
    );
    // That failure is not one a retry changes; the job can be deleted.
    let list: serde_json::Value =
        serde_json::from_str(&run_ok(&["list", "--json", "--status", "failed"])).unwrap();
    let id = list["jobs"][0]["id"].to_string();
    let args = with(&["retry", &id]);
    let line = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        line.contains("409") && line.contains("a retry does not change"),
        "{line}"
    );
    let out = run_ok(&["delete", &id]);
    assert!(out.contains(&format!("job {id}: deleted")), "{out}");
    let args = with(&["show", &id]);
    let line = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(line.contains("404"), "{line}");
}

#[test]
fn profiles_schedules_and_webhooks_through_the_daemon() {
    let (url, tmp) = daemon();
    let run = |cmd: &str, rest: &[&str]| -> String {
        let mut args = vec![cmd, "--daemon", url.as_str()];
        args.extend_from_slice(rest);
        ok(&args)
    };
    let fail = |cmd: &str, rest: &[&str]| -> String {
        let mut args = vec![cmd, "--daemon", url.as_str()];
        args.extend_from_slice(rest);
        fails(&args)
    };
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };

    let prof = file("fast.yaml", "provider: kvm\nformat: ovf\n");
    run("profiles", &["put", "fast", &prof]);
    assert!(run("profiles", &["list"]).contains("\"fast\""));
    let out = run(
        "jobs",
        &[
            "submit",
            "--vm",
            "demo-vm",
            "--profile",
            "fast",
            "--output",
            "pf",
            "--watch",
        ],
    );
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        tmp.path().join("out/pf/demo-vm/demo-vm.ovf").is_file(),
        "the profile's format applied"
    );
    let bad = file("bad.yaml", "vm: x\n");
    assert!(fail("profiles", &["put", "bad", &bad]).contains("a profile cannot set it"));

    let sched = file(
        "nightly.yaml",
        "name: nightly\ncron: \"0 2 * * *\"\ntimezone: Europe/Paris\njob: {vm: demo-vm, profile: fast, output: sched, overwrite: true}\n",
    );
    let s: serde_json::Value = serde_json::from_str(&run("schedules", &["add", &sched])).unwrap();
    assert!(s["next_run_at"].is_string(), "{s}");
    let id = s["id"].to_string();
    let trig: serde_json::Value =
        serde_json::from_str(&run("schedules", &["trigger", &id])).unwrap();
    assert_eq!(trig["status"], "submitted", "{trig}");
    assert!(run("schedules", &["runs", &id]).contains("triggered by anonymous"));
    let off: serde_json::Value =
        serde_json::from_str(&run("schedules", &["disable", &id])).unwrap();
    assert_eq!(off["enabled"], false);
    run("schedules", &["delete", &id]);
    let badcron = file(
        "bad-cron.yaml",
        "name: x\ncron: \"0 25 * * *\"\njob: {vm: demo-vm, provider: kvm}\n",
    );
    assert!(fail("schedules", &["add", &badcron]).contains("cron:"));

    let secret = file("secret", "0123456789abcdef0123\n");
    let hook: serde_json::Value = serde_json::from_str(&run(
        "webhooks",
        &[
            "add",
            "--url",
            "http://127.0.0.1:9/hook",
            "--secret-file",
            &secret,
            "--events",
            "job.completed,job.failed",
        ],
    ))
    .unwrap();
    assert_eq!(
        hook["events"],
        serde_json::json!(["job.completed", "job.failed"])
    );
    assert!(run("webhooks", &["list"]).contains("127.0.0.1:9/hook"));
    let hid = hook["id"].to_string();
    assert!(run("webhooks", &["deliveries", &hid]).starts_with('['));
    run("webhooks", &["delete", &hid]);
    assert!(fail("webhooks", &["delete", &hid]).contains("no webhook"));
}
