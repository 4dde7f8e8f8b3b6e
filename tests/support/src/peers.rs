//! What the servers tests start from the peer cache have in common: where
//! tests/peers/install.sh put them, a scratch directory each, and the port
//! they announce.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

/// `rel` below the peer cache (`HYPERSDK_PEERS_CACHE`, default
/// `~/.cache/hypersdk/peers`), running tests/peers/install.sh first if it
/// is missing.
pub(crate) fn cached(rel: &str) -> PathBuf {
    let _ = crate::python::venv_python(); // runs install.sh if the venv is missing
    let cache = std::env::var_os("HYPERSDK_PEERS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/hypersdk/peers")
        });
    let path = cache.join(rel);
    if !path.exists() {
        let status = Command::new("bash")
            .arg(crate::workspace_root().join("tests/peers/install.sh"))
            .status()
            .expect("run tests/peers/install.sh");
        assert!(status.success(), "tests/peers/install.sh failed");
    }
    path
}

/// A peer's scratch directory in the system's temporary directory,
/// removed (with its contents) on drop.
#[derive(Debug)]
pub(crate) struct PeerDir(pub(crate) PathBuf);

impl PeerDir {
    /// A new empty one, named after `peer`.
    pub(crate) fn new(peer: &str) -> PeerDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hypersdk-{peer}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{peer} directory: {e}"));
        PeerDir(dir)
    }

    /// Its path, as the peer's command line takes it.
    pub(crate) fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }
}

impl Drop for PeerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The port `child` announces on `output` in a line holding `marker`
/// followed by it (`listens on http://127.0.0.1:`); the output is drained
/// after that so the peer never blocks on a full pipe. Kills it and panics
/// if none comes within 60 s.
pub(crate) fn announced_port(
    child: &mut Child,
    output: impl Read + Send + 'static,
    marker: &'static str,
    peer: &str,
) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(output);
        let mut line = String::new();
        let mut sent = false;
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if let (false, Some(at)) = (sent, line.find(marker)) {
                let port = line[at + marker.len()..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
                let _ = tx.send(port);
                sent = true;
            }
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(p)) => p,
        _ => {
            let _ = child.kill();
            panic!("{peer} did not start within 60 s");
        }
    }
}

/// The JSON a peer on 127.0.0.1:`port` answers to `GET path` (its
/// `/_peer/stats`).
pub(crate) fn peer_json(port: u16, path: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the peer");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("ask the peer");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the peer");
    let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).expect("JSON")
}

/// Where tests/peers/install.sh installed playwright-core (its
/// `node_modules` is inside), for the dashboard's browser tests.
pub fn playwright_dir() -> PathBuf {
    cached("playwright-core-1.64.1/node_modules/playwright-core")
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("the playwright-core directory")
}
