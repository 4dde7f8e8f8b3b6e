//! Azurite (Microsoft's Azure Storage emulator, installed by
//! tests/peers/install.sh) as a peer, with Microsoft's Python SDK
//! (azure-storage-blob) to make containers and read blobs back.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::python::{run_python, venv_python};

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its published key.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on 127.0.0.1 (in memory); killed on drop.
#[derive(Debug)]
pub struct Azurite {
    /// Its port.
    pub port: u16,
    child: Child,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A directory removed on drop (Azurite's workspace).
    #[derive(Debug)]
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn azurite_bin() -> PathBuf {
    let _ = venv_python(); // runs install.sh if the peers are missing
    let cache = std::env::var_os("HYPERSDK_PEERS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/hypersdk/peers")
        });
    let bin = cache.join("azurite-3.35.0/node_modules/.bin/azurite-blob");
    if !bin.exists() {
        let status = Command::new("bash")
            .arg(crate::workspace_root().join("tests/peers/install.sh"))
            .status()
            .expect("run tests/peers/install.sh");
        assert!(status.success(), "tests/peers/install.sh failed");
    }
    bin
}

impl Azurite {
    /// Starts one.
    pub fn start() -> Azurite {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hypersdk-azurite-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("azurite workspace");
        let mut child = Command::new(azurite_bin())
            .args([
                "--location",
                dir.to_str().expect("UTF-8 temp dir"),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let stdout = child.stdout.take().expect("azurite stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let mut sent = false;
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if !sent {
                    if let Some(at) = line.find("listens on http://127.0.0.1:") {
                        let port = line[at + "listens on http://127.0.0.1:".len()..]
                            .trim()
                            .parse::<u16>()
                            .ok();
                        let _ = tx.send(port);
                        sent = true;
                    }
                }
                line.clear(); // keep draining so it never blocks on a full pipe
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(p)) => p,
            _ => {
                let _ = child.kill();
                panic!("azurite did not start within 60 s");
            }
        };
        Azurite {
            port,
            child,
            _dir: tempfile_dir::Dir(dir),
        }
    }

    /// Its blob endpoint (`http://127.0.0.1:PORT/devstoreaccount1`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Its connection string.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={};",
            self.endpoint()
        )
    }

    /// Runs `code` after the SDK's `svc` (a BlobServiceClient) is made;
    /// `args` follow as `sys.argv[2:]`.
    pub fn sdk(&self, code: &str, args: &[&str]) -> String {
        let cs = self.connection_string();
        let mut all = vec![cs.as_str()];
        all.extend_from_slice(args);
        run_python(
            &format!("import sys\nfrom azure.storage.blob import BlobServiceClient\nsvc = BlobServiceClient.from_connection_string(sys.argv[1])\n{code}"),
            &all,
        )
    }

    /// Creates container `name`.
    pub fn create_container(&self, name: &str) {
        self.sdk("svc.create_container(sys.argv[2])", &[name]);
    }

    /// Blob names and sizes in `container`, sorted.
    pub fn list(&self, container: &str) -> Vec<(String, u64)> {
        let out = self.sdk(
            "import json\nc = svc.get_container_client(sys.argv[2])\nprint(json.dumps(sorted([b.name, b.size] for b in c.list_blobs())))",
            &[container],
        );
        serde_json::from_str(out.trim()).expect("a listing")
    }

    /// Downloads blob `name` of `container` into `to`.
    pub fn download(&self, container: &str, name: &str, to: &std::path::Path) {
        self.sdk(
            "b = svc.get_blob_client(sys.argv[2], sys.argv[3])\nopen(sys.argv[4], 'wb').write(b.download_blob().readall())",
            &[container, name, to.to_str().expect("a UTF-8 path")],
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
