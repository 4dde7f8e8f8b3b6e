//! gcp-storage-emulator (tests/peers/gcs_emulator.py) as a peer, with
//! Google's own Python client (google-cloud-storage) to make buckets and
//! read objects back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::Duration;

use crate::python::{run_python, start_peer};

/// A Cloud Storage emulator on 127.0.0.1, in memory; killed on drop.
#[derive(Debug)]
pub struct GcsEmulator {
    /// Its port.
    pub port: u16,
    child: Child,
}

const CLIENT: &str = r#"
import sys, os
os.environ["STORAGE_EMULATOR_HOST"] = sys.argv[1]
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
gcs = storage.Client(project="hypersdk-test", credentials=AnonymousCredentials())
"#;

impl GcsEmulator {
    /// Starts one with buckets `buckets`.
    pub fn start(buckets: &[&str]) -> GcsEmulator {
        let mut args = Vec::new();
        for b in buckets {
            args.extend(["--bucket", b]);
        }
        let (child, port) = start_peer("tests/peers/gcs_emulator.py", &args);
        GcsEmulator { port, child }
    }

    /// Its endpoint URL (what `STORAGE_EMULATOR_HOST` names).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `code` after Google's client `gcs` (a storage.Client, no
    /// credentials) for this emulator is made; `args` follow as
    /// `sys.argv[2:]`.
    pub fn client(&self, code: &str, args: &[&str]) -> String {
        let endpoint = self.endpoint();
        let mut all = vec![endpoint.as_str()];
        all.extend_from_slice(args);
        run_python(&format!("{CLIENT}\n{code}"), &all)
    }

    /// Downloads `key` of `bucket` into `to` with the client's
    /// `download_to_filename`.
    pub fn download(&self, bucket: &str, key: &str, to: &std::path::Path) {
        self.client(
            "gcs.bucket(sys.argv[2]).blob(sys.argv[3]).download_to_filename(sys.argv[4])",
            &[bucket, key, &to.display().to_string()],
        );
    }

    /// Names of the objects in `bucket`, sorted.
    pub fn list(&self, bucket: &str) -> Vec<String> {
        let out = self.client(
            "print('\\n'.join(sorted(b.name for b in gcs.list_blobs(sys.argv[2]))))",
            &[bucket],
        );
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// What it counted: `chunk_puts`, `chunk_bytes`, `sessions`, `cancels`.
    pub fn stats(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the emulator");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /_peer/stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("ask the emulator");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the emulator");
        let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        serde_json::from_str(body).expect("stats as JSON")
    }

    /// A count of [`stats`](Self::stats), 0 if absent.
    pub fn count(&self, what: &str) -> u64 {
        self.stats()[what].as_u64().unwrap_or(0)
    }
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
