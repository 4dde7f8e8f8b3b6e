//! Python peers: the virtual environment `tests/peers/install.sh` makes
//! (target/peers/venv, packages of tests/peers/requirements.txt) and the
//! OTLP trace receiver (tests/peers/otlp_receiver.py).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::workspace_root;

/// The virtual environment's python, made by `tests/peers/install.sh` when
/// missing or out of date with requirements.txt (once per test process).
pub fn venv_python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let root = workspace_root();
            let python = root.join("target/peers/venv/bin/python");
            let req = std::fs::read(root.join("tests/peers/requirements.txt")).ok();
            let installed =
                std::fs::read(root.join("target/peers/venv/.installed-requirements")).ok();
            if !python.exists() || req != installed {
                let status = Command::new("bash")
                    .arg(root.join("tests/peers/install.sh"))
                    .status()
                    .expect("run tests/peers/install.sh");
                assert!(status.success(), "tests/peers/install.sh failed");
            }
            python
        })
        .clone()
}

/// Starts a Python peer script of tests/peers that listens on 127.0.0.1,
/// prints `{"port": N}` first and exits when its standard input closes;
/// returns it and its port.
pub fn start_peer(script: &str, args: &[&str]) -> (Child, u16) {
    let (child, v) = start_peer_json(script, args);
    let port = v["port"].as_u64().expect("port") as u16;
    (child, port)
}

/// [`start_peer`], returning the whole first line the script printed (a
/// JSON object with at least `port`); it may take up to 4 minutes to
/// print it (a cluster starting).
pub fn start_peer_json(script: &str, args: &[&str]) -> (Child, serde_json::Value) {
    let path = workspace_root().join(script);
    let mut child = Command::new(venv_python())
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdout = child.stdout.take().expect("peer stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(240)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("{script} did not start within 240 s");
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{script} printed {line:?}: {e}"));
    (child, v)
}

/// Runs a Python snippet in the tests' virtual environment with `args`
/// (as `sys.argv[1:]`); returns its standard output, or panics with its
/// standard error.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs seed script `script` (a path under the workspace) in the tests'
/// virtual environment with `args`; returns the JSON of its last output
/// line, or panics with its standard error.
pub fn run_seed(script: &str, args: &[String]) -> serde_json::Value {
    let out = Command::new(venv_python())
        .arg(crate::workspace_root().join(script))
        .args(args)
        .output()
        .expect("run the seed script");
    assert!(
        out.status.success(),
        "seeding failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a line")).expect("JSON")
}

/// An OTLP/HTTP trace receiver on 127.0.0.1 (a port the OS picked); killed
/// on drop.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Its port.
    pub port: u16,
    child: Child,
}

impl OtlpReceiver {
    /// Starts one (it lives at most 10 minutes).
    pub fn start() -> OtlpReceiver {
        let (child, port) = start_peer("tests/peers/otlp_receiver.py", &[]);
        OtlpReceiver { port, child }
    }

    /// Its base URL, as an exporter's OTLP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, decoded: name, trace_id, span_id,
    /// parent_span_id (hex), kind, attributes, status, resource, headers.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the OTLP receiver");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /spans HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("ask the OTLP receiver");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the OTLP receiver");
        let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let v: serde_json::Value = serde_json::from_str(body).expect("spans as JSON");
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
