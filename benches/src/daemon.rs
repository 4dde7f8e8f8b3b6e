//! daemon-bench: a bounded load test of hypervisord on loopback.
//!
//! Starts the daemon (in this process, on its own runtime) with a local
//! provider whose one VM has a 1 MiB disk (a fast test provider: each
//! export takes milliseconds), then for DURATION seconds: submits JOBS jobs
//! (one POST each, spread over the first half) while query connections
//! issue GETs (a job, a filtered page of jobs) at a paced total of RPS
//! requests per second. Every request's latency is recorded; the baseline
//! is `/health` (same server, same client, no database work), sampled in
//! the same run. At the end every job must have succeeded, and no request
//! may have failed.
//!
//! The whole run is made once per job store, in the same process, one
//! after the other: embedded SQLite, then PostgreSQL (a private server of
//! Debian's `postgresql`, on a Unix socket; `HSDK_STORES=sqlite` or
//! `postgres` runs one).
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin daemon-bench -- [JOBS] [RPS] [DURATION]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection (enough for this server's answers,
/// which all carry a Content-Length).
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(s),
            host: addr.to_string(),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.io.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
                if k.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked answer to {path}");
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.io.read_exact(&mut buf).await?;
        Ok((status, buf))
    }
}

#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: u64,
}

impl Samples {
    fn percentile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let mut v = self.micros.clone();
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i] as f64 / 1000.0
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let rps: u64 = args.get(2).map_or(Ok(600), |s| s.parse())?;
    let duration = Duration::from_secs(args.get(3).map_or(Ok(60), |s| s.parse())?);
    let stores = std::env::var("HSDK_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    for store in stores.split(',') {
        match store {
            "sqlite" => run(None, jobs, rps, duration)?,
            "postgres" => {
                let pg = hypersdk_testsupport::postgres::Postgres::start();
                pg.create_database("bench");
                run(Some(pg.url("bench")), jobs, rps, duration)?;
            }
            other => bail!("HSDK_STORES: unknown store {other:?} (sqlite, postgres)"),
        }
    }
    Ok(())
}

/// One load test; `postgres`: the store's URL, else SQLite.
fn run(postgres: Option<String>, jobs: usize, rps: u64, duration: Duration) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let vms = tmp.path().join("vms");
    std::fs::create_dir(&vms)?;
    let disk = vms.join("tiny.raw");
    hypersdk_testsupport::write_mixed_file(&disk, 1 << 20)?;
    std::fs::write(
        vms.join("tiny.xml"),
        hypersdk_testsupport::domain_xml("tiny", &[(&disk, "raw")]),
    )?;
    let database = match &postgres {
        Some(url) => format!("'{url}'"),
        None => tmp.path().join("jobs.db").display().to_string(),
    };
    let yaml = format!(
        "listen: 127.0.0.1:0\ndatabase: {database}\noutput_root: {}\nmax_concurrent: 2\nproviders:\n  fast: {{ kind: local, dir: {} }}\n",
        tmp.path().join("out").display(),
        vms.display()
    );
    let config = hypersdk_daemon::config::Config::parse(&yaml, "bench")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("daemon runtime");
        rt.block_on(async move {
            match hypersdk_daemon::Daemon::start(config).await {
                Ok(d) => {
                    let _ = tx.send(Ok(d.addr.to_string()));
                    let _ = stop_rx.await;
                    d.shutdown().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    let addr = rx.recv()??;
    println!(
        "\n## store: {}\ndaemon on {addr}; {jobs} jobs, {rps} GET/s target, {} s",
        if postgres.is_some() {
            "PostgreSQL (Unix socket)"
        } else {
            "SQLite (WAL, synchronous=FULL)"
        },
        duration.as_secs()
    );

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let start = Instant::now();
        let posts = Arc::new(Mutex::new(Samples::default()));
        let gets = Arc::new(Mutex::new(Samples::default()));
        let health = Arc::new(Mutex::new(Samples::default()));
        let submitted = Arc::new(AtomicU64::new(0));

        // Submitter: one job per POST, spread over the first half.
        let submitter = {
            let posts = posts.clone();
            let submitted = submitted.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut c = Conn::open(&addr).await?;
                let every = duration.as_secs_f64() / 2.0 / jobs as f64;
                for i in 0..jobs {
                    let due = start + Duration::from_secs_f64(every * i as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let body = format!(r#"{{"vm":"tiny","provider":"fast","output":"j{i}"}}"#);
                    let t = Instant::now();
                    let r = c.request("POST", "/api/v1/jobs", body.as_bytes()).await;
                    let mut s = posts.lock().expect("samples");
                    match r {
                        Ok((201, _)) => {
                            s.micros.push(t.elapsed().as_micros() as u64);
                            submitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((code, b)) => {
                            s.errors += 1;
                            eprintln!("POST answered {code}: {}", String::from_utf8_lossy(&b));
                        }
                        Err(e) => {
                            s.errors += 1;
                            eprintln!("POST failed: {e}");
                        }
                    }
                }
                anyhow::Ok(())
            })
        };

        // Queriers: 8 connections, paced to `rps` GETs per second in all;
        // one in 20 requests is /health (the baseline).
        let conns = 8u64;
        let mut queriers = Vec::new();
        for q in 0..conns {
            let (gets, health, submitted, addr) =
                (gets.clone(), health.clone(), submitted.clone(), addr.clone());
            queriers.push(tokio::spawn(async move {
                let mut c = Conn::open(&addr).await?;
                let every = Duration::from_secs_f64(conns as f64 / rps as f64);
                let mut n: u64 = 0;
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (q + 1);
                while start.elapsed() < duration {
                    let due = start + every * (n as u32) + every.mul_f64(q as f64 / conns as f64);
                    tokio::time::sleep_until(due.into()).await;
                    n += 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let known = submitted.load(Ordering::Relaxed).max(1);
                    let (path, target) = match n % 20 {
                        0 => ("/health".to_string(), &health),
                        k if k % 2 == 0 => (format!("/api/v1/jobs/{}", 1 + x % known), &gets),
                        _ => ("/api/v1/jobs?status=succeeded&limit=20".to_string(), &gets),
                    };
                    let t = Instant::now();
                    let r = c.request("GET", &path, b"").await;
                    let mut s = target.lock().expect("samples");
                    match r {
                        Ok((200, _)) => s.micros.push(t.elapsed().as_micros() as u64),
                        Ok((code, b)) => {
                            s.errors += 1;
                            eprintln!("GET {path} answered {code}: {}", String::from_utf8_lossy(&b));
                        }
                        Err(e) => {
                            s.errors += 1;
                            eprintln!("GET {path} failed: {e}");
                        }
                    }
                }
                anyhow::Ok(())
            }));
        }
        submitter.await??;
        for q in queriers {
            q.await??;
        }
        let load_secs = start.elapsed().as_secs_f64();

        // Every job must end, and succeed.
        let mut c = Conn::open(&addr).await?;
        let drain_limit = Instant::now() + Duration::from_secs(300);
        let succeeded = loop {
            let (_, b) = c.request("GET", "/api/v1/jobs?status=succeeded&limit=1", b"").await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            let n = v["total"].as_u64().unwrap_or(0);
            if n as usize >= jobs || Instant::now() > drain_limit {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let all_done = start.elapsed().as_secs_f64();
        let (_, b) = c.request("GET", "/api/v1/jobs?status=failed&limit=1", b"").await?;
        let failed: serde_json::Value = serde_json::from_slice(&b)?;

        let (posts, gets, health) = (
            posts.lock().expect("samples"),
            gets.lock().expect("samples"),
            health.lock().expect("samples"),
        );
        let requests = posts.micros.len() + gets.micros.len() + health.micros.len();
        println!(
            "load: {:.1} s, {requests} requests answered ({:.0}/s), {} GETs ({:.0}/s)",
            load_secs,
            requests as f64 / load_secs,
            gets.micros.len() + health.micros.len(),
            (gets.micros.len() + health.micros.len()) as f64 / load_secs
        );
        println!("| requests | count | errors | p50 ms | p90 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|---|");
        for (name, s) in [
            ("GET /health (baseline)", &*health),
            ("GET job / job page", &*gets),
            ("POST /api/v1/jobs", &*posts),
        ] {
            println!(
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s.micros.len(),
                s.errors,
                s.percentile(50.0),
                s.percentile(90.0),
                s.percentile(99.0),
                s.percentile(100.0)
            );
        }
        println!(
            "jobs: {succeeded} of {jobs} succeeded, {} failed; all done {all_done:.1} s after the start",
            failed["total"]
        );
        if posts.errors + gets.errors + health.errors > 0 || succeeded as usize != jobs {
            bail!("the load test saw errors or unfinished jobs");
        }
        anyhow::Ok(())
    })?;
    let _ = stop_tx.send(());
    let _ = daemon.join();
    Ok(())
}
