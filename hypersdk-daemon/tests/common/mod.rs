//! The daemon test harness shared by the suites: the hypervisord binary
//! started with a config file and talked to over HTTP with curl, and a
//! webhook receiver.

#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hypersdk_testsupport::{run_tool, workspace_root};
use serde_json::Value;

/// A daemon started from a config file; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    /// host:port it listens on.
    pub addr: String,
    /// `https` with this CA file, when the daemon serves TLS.
    ca: Option<String>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        Self::start_with_ca(config, None)
    }

    pub fn start_with_ca(config: &Path, ca: Option<String>) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hypervisord"))
            .args(["--config", config.to_str().unwrap(), "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Built first, so that a failed check below still kills the child.
        let mut d = Daemon {
            child,
            addr: String::new(),
            ca,
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("hypervisord printed {line:?}: {e}"));
        assert_eq!(v["tls"].as_bool(), Some(d.ca.is_some()), "{line}");
        d.addr = v["listen"].as_str().unwrap().to_string();
        d
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `method path` with `body` and extra headers: (status, body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[&str],
    ) -> (u16, String) {
        let url = match &self.ca {
            Some(_) => format!("https://{}{path}", self.addr),
            None => format!("http://{}{path}", self.addr),
        };
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--max-time".into(),
            "30".into(),
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(ca) = &self.ca {
            args.push("--cacert".into());
            args.push(ca.clone());
        }
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        if let Some(b) = body {
            args.push("--data-binary".into());
            args.push(b.into());
        }
        args.push(url);
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (code, text) = self.call(method, path, body, &[]);
        (
            code,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} gave {text:?}: {e}")),
        )
    }

    /// Submits the job `body` (expecting 201); returns its id.
    pub fn submit(&self, body: &str) -> i64 {
        let (code, sub) = self.json("POST", "/api/v1/jobs", Some(body));
        assert_eq!(code, 201, "{sub}");
        sub["jobs"][0]["id"].as_i64().unwrap()
    }

    /// Waits until job `id` has read more than `bytes` (at most 60 s).
    pub fn wait_progress(&self, id: i64, bytes: u64) {
        let start = Instant::now();
        loop {
            let (_, j) = self.json("GET", &format!("/api/v1/jobs/{id}"), None);
            if j["progress"]["bytes_done"].as_u64().unwrap_or(0) > bytes {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until job `id` is in a final state; returns it.
    pub fn wait(&self, id: i64, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (code, job) = self.json("GET", &format!("/api/v1/jobs/{id}"), None);
            assert_eq!(code, 200, "{job}");
            let status = job["status"].as_str().unwrap();
            if ["succeeded", "failed", "cancelled"].contains(&status) {
                return job;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} still {status} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this suite runs on PostgreSQL: the test crates whose name ends
/// in `_postgres` (they hold the same tests as their SQLite twin).
pub fn postgres() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_postgres")
}

/// The `database` of a config in `dir`: `dir/jobs.db`, or on PostgreSQL a
/// fresh database of the test process's private server.
pub fn database(dir: &Path) -> String {
    if postgres() {
        hypersdk_testsupport::postgres::Postgres::shared().fresh_url()
    } else {
        dir.join("jobs.db").display().to_string()
    }
}

/// A config in `dir` with the example VMs as provider `kvm` and `extra` lines.
pub fn config(dir: &Path, extra: &str) -> PathBuf {
    config_at(dir, &workspace_root().join("examples/vms"), "", extra)
}

/// A config file in `dir` (with the database and the output root `out`
/// there) whose provider `kvm` reads the domains of `vms`, with `provider`
/// appended to its fields (e.g. `, disk_roots: [/srv/disks]`) and `extra`
/// lines.
pub fn config_at(dir: &Path, vms: &Path, provider: &str, extra: &str) -> PathBuf {
    let path = dir.join("hypervisord.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\noutput_root: {}\nproviders:\n  kvm: {{ kind: local, dir: {}{provider} }}\n{extra}",
            database(dir),
            dir.join("out").display(),
            vms.display()
        ),
    )
    .unwrap();
    path
}

pub fn sha256_hex(key: &str) -> String {
    let out = run_tool("sh", &["-c", &format!("printf %s '{key}' | sha256sum")]);
    out.split_whitespace().next().unwrap().to_string()
}

/// A request the receiver saw: lower-case headers and the body.
pub type Seen = (Vec<(String, String)>, Vec<u8>);

/// A webhook receiver on 127.0.0.1: answers the first `fail_first`
/// requests (or all, if `always_fail`) with 500, the others with 204, and
/// records every request's headers and body.
pub struct Receiver {
    pub url: String,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Receiver {
    pub fn start(fail_first: usize, always_fail: bool) -> Receiver {
        Self::answering(move |n| {
            let status = if always_fail || n <= fail_first {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n")
        })
    }

    /// A receiver whose answer to its `n`th request (from 1) is `answer(n)`,
    /// a whole HTTP response.
    pub fn answering(answer: impl Fn(usize) -> String + Send + Sync + 'static) -> Receiver {
        use std::io::{Read, Write};
        let answer = std::sync::Arc::new(answer);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { break };
                let s = s.clone();
                let answer = answer.clone();
                std::thread::spawn(move || loop {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    let mut len = 0;
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        let l = line.trim_end().to_string();
                        if l.is_empty() {
                            break;
                        }
                        let (k, v) = l.split_once(':').unwrap();
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    let n = {
                        let mut g = s.lock().unwrap();
                        g.push((headers, body));
                        g.len()
                    };
                    let _ = conn.write_all(answer(n).as_bytes());
                });
            }
        });
        Receiver { url, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A config in `dir` (database and output root `out` there) whose one
/// provider `name` has `settings`, with its field `secret` moved into a
/// file beside it named by `SECRET_file`, as operators keep secrets.
pub fn provider_config(dir: &Path, name: &str, mut settings: Value, secret: &str) -> PathBuf {
    let o = settings.as_object_mut().unwrap();
    if let Some(v) = o.remove(secret) {
        let file = dir.join(format!("{name}.{secret}"));
        std::fs::write(&file, v.as_str().unwrap()).unwrap();
        o.insert(
            format!("{secret}_file"),
            Value::String(file.display().to_string()),
        );
    }
    let path = dir.join("hypervisord.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\noutput_root: {}\nproviders:\n  {name}: {settings}\n",
            database(dir),
            dir.join("out").display(),
        ),
    )
    .unwrap();
    path
}

/// Unpacks the OVA at `ova` into `dir` (created).
pub fn unpack(ova: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run_tool(
        "tar",
        &["-xf", ova.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
}

/// Exports `vm` of `provider` slowly into `output` as OVF, cancels the job
/// while it reads, and retries it: the cancel must keep one snapshot (as
/// `kept` counts them on the platform) with the partial export, the retry
/// must finish without a new one (`made` counts those taken) and leave none.
/// Returns the job's id.
pub fn cancel_then_retry_from_the_kept_snapshot(
    d: &Daemon,
    provider: &str,
    vm: &str,
    output: &str,
    kept: impl Fn() -> usize,
    made: impl Fn() -> Value,
) -> i64 {
    let id = d.submit(
        &serde_json::json!({"vm": vm, "provider": provider, "format": "ovf", "output": output, "bwlimit": "2M"})
            .to_string(),
    );
    d.wait_progress(id, 1 << 20);
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(code, 202, "{v}");
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(kept(), 1, "kept with the partial export");
    let before = made();
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{id}/retry"), None);
    assert!(code == 200 || code == 202, "{code} {v}");
    let job = d.wait(id, Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(made(), before, "no new snapshot");
    assert_eq!(kept(), 0);
    id
}

/// Submits a job for each of `names` to `provider`: each must fail (or be
/// refused) with "not found".
pub fn names_are_not_found(d: &Daemon, provider: &str, names: &[&str]) {
    for vm in names {
        let (code, sub) = d.json(
            "POST",
            "/api/v1/jobs",
            Some(&serde_json::json!({"vm": vm, "provider": provider}).to_string()),
        );
        let failed = if code == 201 {
            let id = sub["jobs"][0]["id"].as_i64().unwrap();
            d.wait(id, Duration::from_secs(60))
        } else {
            sub
        };
        assert_ne!(failed["status"], "succeeded", "{vm}: {failed}");
        assert!(failed.to_string().contains("not found"), "{vm}: {failed}");
    }
}
