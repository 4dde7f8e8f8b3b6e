//! What deploy/ ships, checked with the tools that will read it: the
//! Prometheus alert rules with `promtool check rules` and their unit tests
//! with `promtool test rules`; the Grafana dashboard against Grafana's
//! dashboard model (tests/peers/check_dashboard.py: JSON schema, ids, grid)
//! with every query parsed by promtool; and every metric the rules and the
//! dashboard use present in a real daemon's /metrics after an export, a
//! failed job and a webhook delivery.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{config, Daemon, Receiver};
use hypersdk_testsupport::{python::venv_python, workspace_root};
use serde_json::json;

fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus; tests/peers/install.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The dashboard's queries, checked by check_dashboard.py; Err with its
/// complaints when it refuses the file.
fn dashboard_queries(file: &Path) -> Result<Vec<String>, String> {
    let out = Command::new(venv_python())
        .arg(workspace_root().join("tests/peers/check_dashboard.py"))
        .arg(file)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect())
}

/// `hypersdk_…` names in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("hypersdk_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if boundary {
            into.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = workspace_root().join("deploy/prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "hypersdk-alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let (ok, out) = promtool(&dir, &["test", "rules", "hypersdk-alerts.test.yml"]);
    assert!(ok, "{out}");

    // The unit tests bite: a threshold changed makes them fail.
    let tmp = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(dir.join("hypersdk-alerts.yml")).unwrap();
    std::fs::write(
        tmp.path().join("hypersdk-alerts.yml"),
        rules.replace("> 0.2", "> 0.6"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("hypersdk-alerts.test.yml"),
        tmp.path().join("hypersdk-alerts.test.yml"),
    )
    .unwrap();
    let (ok, out) = promtool(tmp.path(), &["test", "rules", "hypersdk-alerts.test.yml"]);
    assert!(!ok, "a changed rule must fail its test: {out}");
}

#[test]
fn the_dashboard_fits_grafanas_model_and_every_query_parses() {
    let file = workspace_root().join("deploy/grafana/hypersdk-dashboard.json");
    let queries = dashboard_queries(&file).unwrap();
    assert!(queries.len() >= 15, "{queries:?}");
    // Each query as a recording rule: promtool parses its PromQL.
    let tmp = tempfile::tempdir().unwrap();
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({"record": format!("hypersdk:dashboard_query_{i}"),
                   "expr": q.replace("$instance", ".*").replace("$__rate_interval", "5m")})
        })
        .collect();
    let doc = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(tmp.path().join("queries.yml"), doc.to_string()).unwrap();
    let (ok, out) = promtool(tmp.path(), &["check", "rules", "queries.yml"]);
    assert!(ok, "{out}");

    // The checker bites: overlapping panels, a panel wider than the grid,
    // a query without refId are each refused.
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    type Damage = fn(&mut serde_json::Value);
    let damages: [(Damage, &str); 3] = [
        (
            |d| d["panels"][2]["gridPos"] = d["panels"][1]["gridPos"].clone(),
            "overlaps",
        ),
        (|d| d["panels"][1]["gridPos"]["w"] = json!(30), "gridPos/w"),
        (
            |d| {
                d["panels"][1]["targets"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("refId");
            },
            "refId",
        ),
    ];
    for (damage, want) in damages {
        let mut bad = good.clone();
        damage(&mut bad);
        let f = tmp.path().join("bad.json");
        std::fs::write(&f, bad.to_string()).unwrap();
        let err = dashboard_queries(&f).unwrap_err();
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_in_a_real_scrape() {
    let mut used = BTreeSet::new();
    let rules =
        std::fs::read_to_string(workspace_root().join("deploy/prometheus/hypersdk-alerts.yml"))
            .unwrap();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if !line.contains("summary:") && !line.contains("description:") {
            metric_names(line, &mut used);
        }
    }
    for q in
        dashboard_queries(&workspace_root().join("deploy/grafana/hypersdk-dashboard.json")).unwrap()
    {
        metric_names(&q, &mut used);
    }
    assert!(used.len() >= 14, "{used:?}");

    let tmp = tempfile::tempdir().unwrap();
    let hook = Receiver::start(0, false);
    let d = Daemon::start(&config(
        tmp.path(),
        "webhooks: { allow_private: [127.0.0.1/32] }\n",
    ));
    let (code, v) = d.json(
        "POST",
        "/api/v1/webhooks",
        Some(&json!({"url": hook.url, "secret": "a-secret-of-16-chars", "events": ["job.completed"]}).to_string()),
    );
    assert_eq!(code, 201, "{v}");
    let ok = d.submit(r#"{"vm": "demo-vm", "provider": "kvm", "format": "ova"}"#);
    let bad = d.submit(r#"{"vm": "no-such-vm", "provider": "kvm"}"#);
    assert_eq!(d.wait(ok, Duration::from_secs(60))["status"], "succeeded");
    assert_eq!(d.wait(bad, Duration::from_secs(60))["status"], "failed");
    let start = Instant::now();
    while hook.requests().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "webhook delivered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The delivery is counted right after the request is answered.
    std::thread::sleep(Duration::from_millis(200));
    let (code, scrape) = d.call("GET", "/metrics", None, &[]);
    assert_eq!(code, 200);
    assert!(scrape.ends_with("# EOF\n"), "OpenMetrics text");
    let samples: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !samples.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{scrape}");
    for want in [
        "hypersdk_export_errors_total{provider=\"kvm\",kind=\"vm_not_found\"} 1",
        "hypersdk_webhook_deliveries_total{result=\"delivered\"} 1",
        "hypersdk_jobs_ended_total{status=\"succeeded\"} 1",
    ] {
        assert!(scrape.contains(want), "{want} in\n{scrape}");
    }
    // Read bytes, counted live, add up to the guest bytes the export read.
    let (_, job) = d.json("GET", &format!("/api/v1/jobs/{ok}"), None);
    let read: u64 = scrape
        .lines()
        .filter(|l| l.starts_with("hypersdk_export_read_bytes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        read,
        job["result"]["bytes_read"].as_u64().unwrap(),
        "{scrape}"
    );
}
