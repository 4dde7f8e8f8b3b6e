//! Several hypervisord on one PostgreSQL: a wave of exports spread over
//! three workers sharing an output root (a shared filesystem), with
//! workers killed (SIGKILL) at random moments and started again, until
//! every job is over. Every job must succeed exactly once, with one
//! artifact that verifies and nothing partial left behind.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::Daemon;
use hypersdk_testsupport::postgres::Postgres;
use hypersdk_testsupport::{domain_xml, write_mixed_file};
use serde_json::{json, Value};

/// VMs `vm0`…`vm{n-1}`, each with one disk of `bytes`, in `dir/vms`.
fn vms(dir: &Path, n: usize, bytes: u64) -> PathBuf {
    let vms = dir.join("vms");
    std::fs::create_dir(&vms).unwrap();
    for i in 0..n {
        let disk = vms.join(format!("vm{i}.raw"));
        write_mixed_file(&disk, bytes).unwrap();
        std::fs::write(
            vms.join(format!("vm{i}.xml")),
            domain_xml(&format!("vm{i}"), &[(&disk, "raw")]),
        )
        .unwrap();
    }
    vms
}

/// The config of worker `node`: the shared database and output root.
fn worker_config(dir: &Path, node: &str, url: &str, vms: &Path, slots: usize) -> PathBuf {
    let path = dir.join(format!("{node}.yaml"));
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\ndatabase: '{url}'\nnode: {node}\nlease_secs: 3\n\
             output_root: {}\nmax_concurrent: {slots}\n\
             webhooks: {{ allow_private: [127.0.0.1/32] }}\n\
             providers:\n  kvm: {{ kind: local, dir: {} }}\n",
            dir.join("out").display(),
            vms.display()
        ),
    )
    .unwrap();
    path
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Every file or directory below `dir` whose name says it is partial.
fn partials(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("partial") || name.contains(".tmp") || name.contains("checkpoint") {
                out.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

#[test]
fn three_workers_killed_at_random_finish_every_job_exactly_once() {
    const JOBS: usize = 300;
    let pg = Postgres::start();
    pg.create_database("cluster");
    let url = pg.url("cluster");
    let tmp = tempfile::tempdir().unwrap();
    let vms = vms(tmp.path(), 6, 2 << 20);
    let nodes = ["w1", "w2", "w3"];
    let configs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| worker_config(tmp.path(), n, &url, &vms, 4))
        .collect();
    let mut workers: Vec<Daemon> = configs.iter().map(|c| Daemon::start(c)).collect();

    // 2 MiB at 4 MiB/s: each export is I/O-bound for about half a second.
    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| {
            json!({"vm": format!("vm{}", i % 6), "provider": "kvm",
                   "output": format!("j{i:03}"), "bwlimit": "4M"})
        })
        .collect();
    let (code, sub) = workers[1].json("POST", "/api/v1/jobs", Some(&Value::from(jobs).to_string()));
    assert_eq!(code, 201, "{sub}");

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill seed {seed}");
    let started = Instant::now();
    let mut kills = 0;
    loop {
        let (code, done) = workers[0].json("GET", "/api/v1/jobs?status=succeeded&limit=1", None);
        assert_eq!(code, 200, "{done}");
        if done["total"] == JOBS {
            break;
        }
        let (_, failed) = workers[0].json("GET", "/api/v1/jobs?status=failed&limit=10", None);
        assert_eq!(failed["total"], 0, "{failed}");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not done after 10 minutes: {done}"
        );
        // While the wave is young, kill a random worker every 1–3 s.
        if kills < 12 && done["total"].as_u64().unwrap_or(0) < (JOBS as u64) * 9 / 10 {
            std::thread::sleep(Duration::from_millis(1000 + next(&mut seed) % 2000));
            let w = (next(&mut seed) % 3) as usize;
            println!(
                "{:>5.1} s: kill -9 {} ({} succeeded)",
                started.elapsed().as_secs_f64(),
                nodes[w],
                done["total"]
            );
            workers[w].kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(next(&mut seed) % 1500));
            workers[w] = Daemon::start(&configs[w]);
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    println!(
        "{JOBS} jobs done in {:.1} s with {kills} kills",
        started.elapsed().as_secs_f64()
    );

    // Every job succeeded exactly once: one `succeeded` line in its log.
    let (_, all) = workers[2].json("GET", "/api/v1/jobs?limit=1000", None);
    assert_eq!(all["total"], JOBS, "none lost, none duplicated");
    let mut retaken = 0;
    let mut nodes_seen = std::collections::BTreeSet::new();
    for job in all["jobs"].as_array().unwrap() {
        let id = job["id"].as_i64().unwrap();
        assert_eq!(job["status"], "succeeded", "{job}");
        let (_, log) =
            workers[id as usize % 3].json("GET", &format!("/api/v1/jobs/{id}/logs"), None);
        let ends = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "succeeded")
            .count();
        assert_eq!(ends, 1, "job {id} succeeded once: {log}");
        if job["attempts"].as_i64().unwrap() > 1 {
            retaken += 1;
        }
        nodes_seen.insert(
            job["node"]
                .as_str()
                .unwrap()
                .split('#')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    println!("{retaken} jobs ran more than once (continued after a kill); ran on {nodes_seen:?}");
    assert!(kills == 0 || retaken > 0, "kills interrupted no job?");
    assert_eq!(nodes_seen.len(), 3, "every worker ran jobs");

    // One artifact each, and it verifies; nothing partial anywhere.
    let out = tmp.path().join("out");
    for i in 0..JOBS {
        let dir = out.join(format!("j{i:03}"));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("vm{}.ova", i % 6)], "job {i}");
        let report = hypersdk_core::files::verify_package(&dir.join(&names[0]), None)
            .unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert!(report.verified(), "job {i}: {:?}", report.failures());
    }
    assert_eq!(partials(&out), Vec::<PathBuf>::new());
}

#[test]
fn any_node_serves_the_jobs_another_runs() {
    let pg = Postgres::start();
    pg.create_database("api");
    let url = pg.url("api");
    let tmp = tempfile::tempdir().unwrap();
    // 32 MiB at 8 MiB/s: about 4 s each.
    let vms = vms(tmp.path(), 1, 32 << 20);
    // `front` runs nothing (no slots): it only serves the API.
    let front = Daemon::start(&worker_config(tmp.path(), "front", &url, &vms, 0));
    let back = Daemon::start(&worker_config(tmp.path(), "back", &url, &vms, 2));

    // A webhook registered on the front reaches the back within seconds.
    let receiver = common::Receiver::start(0, false);
    let (code, hook) = front.json(
        "POST",
        "/api/v1/webhooks",
        Some(
            &json!({"url": receiver.url, "secret": "0123456789abcdef",
                     "events": ["job.created", "job.started", "job.completed", "job.cancelled"]})
            .to_string(),
        ),
    );
    assert_eq!(code, 201, "{hook}");
    std::thread::sleep(Duration::from_millis(2500));

    let submit = |out: &str| -> i64 {
        let (code, sub) = front.json(
            "POST",
            "/api/v1/jobs",
            Some(
                &json!({"vm": "vm0", "provider": "kvm", "output": out, "bwlimit": "8M"})
                    .to_string(),
            ),
        );
        assert_eq!(code, 201, "{sub}");
        sub["jobs"][0]["id"].as_i64().unwrap()
    };
    let first = submit("first");
    // Its progress, as Server-Sent Events from the front, while the back runs it.
    let addr = front.addr.clone();
    let stream = std::thread::spawn(move || {
        let out = std::process::Command::new("curl")
            .args(["-sSN", "--max-time", "60"])
            .arg(format!("http://{addr}/api/v1/jobs/{first}/progress"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    front.wait_progress(first, 1 << 20);
    let (_, job) = front.json("GET", &format!("/api/v1/jobs/{first}"), None);
    assert_eq!(job["status"], "running", "{job}");
    assert!(job["node"].as_str().unwrap().starts_with("back#"), "{job}");
    let done = front.wait(first, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let events = stream.join().unwrap();
    assert!(events.matches("event: progress").count() >= 2, "{events}");
    assert!(
        events.contains("event: end") && events.contains("succeeded"),
        "{events}"
    );

    // A cancel on the front stops the export on the back.
    let second = submit("second");
    front.wait_progress(second, 1 << 20);
    let (code, _) = front.json("POST", &format!("/api/v1/jobs/{second}/cancel"), None);
    assert_eq!(code, 202);
    let over = front.wait(second, Duration::from_secs(30));
    assert_eq!(over["status"], "cancelled", "{over}");
    let (_, log) = back.json("GET", &format!("/api/v1/jobs/{second}/logs"), None);
    assert!(log.to_string().contains("cancel requested by"), "{log}");

    // Each event once: created by the front, started and ended by the back.
    let start = Instant::now();
    while receiver.requests().len() < 6 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (_, body) in receiver.requests() {
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            ids.insert(v["id"].as_str().unwrap().to_string()),
            "delivery ids are unique"
        );
        seen.push((
            v["event"].as_str().unwrap().into(),
            v["job"]["id"].as_i64().unwrap(),
        ));
    }
    seen.sort();
    let mut want = vec![
        ("job.cancelled".to_string(), second),
        ("job.completed".into(), first),
        ("job.created".into(), first),
        ("job.created".into(), second),
        ("job.started".into(), first),
        ("job.started".into(), second),
    ];
    want.sort();
    assert_eq!(seen, want);
}
