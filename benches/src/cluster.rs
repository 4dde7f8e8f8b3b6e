//! cluster-bench: one wave of exports run by one hypervisord, then by
//! three sharing one PostgreSQL database, in the same run.
//!
//! Each worker (in this process, on a runtime of its own, as in
//! daemon-bench) has the same export slots and the same local provider;
//! every job exports a VM with one disk of realistic mixed content under a
//! per-job bandwidth limit, so the exports are I/O-bound like exports over
//! a WAN link, and the wave's time is set by how many run at once. The
//! wave is submitted in one POST to the first worker; its time runs from
//! the submission to the last job's success. Every job must succeed.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin cluster-bench -- [JOBS] [MIB] [RATE] [SLOTS]
//! ```
//! defaults: 120 jobs of 8 MiB at 8M (about 1 s each), 4 slots per worker.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A worker: a daemon on its own runtime thread, stopped when dropped.
struct Worker {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(yaml: String) -> anyhow::Result<Worker> {
        let config = hypersdk_daemon::config::Config::parse(&yaml, "bench")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("worker runtime");
            rt.block_on(async move {
                match hypersdk_daemon::Daemon::start(config).await {
                    Ok(d) => {
                        let _ = tx.send(Ok(d.addr.to_string()));
                        let _ = stopped.await;
                        d.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        let addr = rx.recv()??;
        Ok(Worker {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn curl(method: &str, url: &str, body: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let mut c = Command::new("curl");
    c.args(["-sSf", "--max-time", "60", "-X", method]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(url).output().context("curl")?;
    if !out.status.success() {
        bail!("{method} {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

struct Wave {
    jobs: usize,
    rate: String,
    slots: usize,
}

/// Runs the wave on `workers` workers sharing database `url`; its seconds
/// and how many jobs each worker ran.
fn wave(
    w: &Wave,
    url: &str,
    workers: usize,
    vms: &Path,
    out: &Path,
) -> anyhow::Result<(f64, Vec<usize>)> {
    let mut running = Vec::new();
    for i in 0..workers {
        running.push(Worker::start(format!(
            "listen: 127.0.0.1:0\ndatabase: '{url}'\nnode: w{i}\noutput_root: {}\nmax_concurrent: {}\n\
             providers:\n  kvm: {{ kind: local, dir: {} }}\n",
            out.display(),
            w.slots,
            vms.display()
        ))?);
    }
    let jobs: Vec<serde_json::Value> = (0..w.jobs)
        .map(|i| {
            serde_json::json!({"vm": format!("vm{}", i % 4), "provider": "kvm",
                               "output": format!("w{workers}-j{i}"), "bwlimit": w.rate})
        })
        .collect();
    let base = format!("http://{}", running[0].addr);
    let start = Instant::now();
    curl(
        "POST",
        &format!("{base}/api/v1/jobs"),
        Some(&serde_json::Value::from(jobs).to_string()),
    )?;
    loop {
        let done = curl(
            "GET",
            &format!("{base}/api/v1/jobs?status=succeeded&limit=1"),
            None,
        )?;
        if done["total"].as_u64() == Some(w.jobs as u64) {
            break;
        }
        let failed = curl(
            "GET",
            &format!("{base}/api/v1/jobs?status=failed&limit=5"),
            None,
        )?;
        if failed["total"].as_u64() != Some(0) {
            bail!("jobs failed: {failed}");
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the wave did not finish in 30 minutes: {done}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = start.elapsed().as_secs_f64();
    let all = curl("GET", &format!("{base}/api/v1/jobs?limit=1000"), None)?;
    let mut per = vec![0; workers];
    for j in all["jobs"].as_array().into_iter().flatten() {
        let node = j["node"].as_str().unwrap_or_default();
        if let Some(i) = node
            .strip_prefix('w')
            .and_then(|n| n.split('#').next())
            .and_then(|n| n.parse::<usize>().ok())
        {
            per[i] += 1;
        }
    }
    drop(running);
    Ok((secs, per))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let w = Wave {
        jobs: args.get(1).map_or(Ok(120), |s| s.parse())?,
        rate: args.get(3).cloned().unwrap_or_else(|| "8M".into()),
        slots: args.get(4).map_or(Ok(4), |s| s.parse())?,
    };
    let mib: u64 = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let vms = tmp.path().join("vms");
    std::fs::create_dir(&vms)?;
    for i in 0..4 {
        let disk = vms.join(format!("vm{i}.raw"));
        hypersdk_testsupport::write_mixed_file(&disk, mib << 20)?;
        std::fs::write(
            vms.join(format!("vm{i}.xml")),
            hypersdk_testsupport::domain_xml(&format!("vm{i}"), &[(&disk, "raw")]),
        )?;
    }
    let pg = hypersdk_testsupport::postgres::Postgres::start();
    println!(
        "{} jobs of {mib} MiB at {} each, {} slots per worker; one PostgreSQL (Unix socket), same host",
        w.jobs, w.rate, w.slots
    );
    println!("| workers | wave s | jobs/s | vs one worker | jobs per worker |");
    println!("|---|---|---|---|---|");
    let mut one = None;
    for workers in [1usize, 3] {
        let db = format!("wave{workers}");
        pg.create_database(&db);
        let (secs, per) = wave(&w, &pg.url(&db), workers, &vms, &tmp.path().join("out"))?;
        let base = *one.get_or_insert(secs);
        println!(
            "| {workers} | {secs:.1} | {:.2} | {:.2}× time ({:.2}× faster) | {per:?} |",
            w.jobs as f64 / secs,
            secs / base,
            base / secs
        );
    }
    Ok(())
}
