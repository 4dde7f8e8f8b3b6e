//! gcp-storage-emulator (tests/peers/gcs_emulator.py) as a peer, with
//! Google's own Python client (google-cloud-storage) to make buckets and
//! read objects back.

use std::process::Child;

use crate::peers::PeerDir;
use crate::python::{run_python, start_peer};

/// A Cloud Storage emulator on 127.0.0.1, in memory; killed on drop.
#[derive(Debug)]
pub struct GcsEmulator {
    /// Its port.
    pub port: u16,
    /// The service-account key file it demands tokens for, if it does.
    pub key_file: Option<std::path::PathBuf>,
    child: Child,
    _dir: Option<PeerDir>,
}

const CLIENT: &str = r#"
import sys
from google.api_core.client_options import ClientOptions
from google.cloud import storage
if sys.argv[2]:
    from google.oauth2 import service_account
    creds = service_account.Credentials.from_service_account_file(
        sys.argv[2], scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
else:
    from google.auth.credentials import AnonymousCredentials
    creds = AnonymousCredentials()
gcs = storage.Client(project="hypersdk-test", credentials=creds,
    client_options=ClientOptions(api_endpoint=sys.argv[1]))
sys.argv[1:3] = sys.argv[1:2]
"#;

impl GcsEmulator {
    /// Starts one with buckets `buckets`.
    pub fn start(buckets: &[&str]) -> GcsEmulator {
        let mut args = Vec::new();
        for b in buckets {
            args.extend(["--bucket", b]);
        }
        let (child, port) = start_peer("tests/peers/gcs_emulator.py", &args);
        GcsEmulator {
            port,
            key_file: None,
            child,
            _dir: None,
        }
    }

    /// Starts one with buckets `buckets` that stores the byte at `offset`
    /// of every upload inverted, as a faulty network path would deliver it.
    pub fn start_flipping(buckets: &[&str], offset: u64) -> GcsEmulator {
        let at = offset.to_string();
        let mut args = vec!["--flip-byte", at.as_str()];
        for b in buckets {
            args.extend(["--bucket", b]);
        }
        let (child, port) = start_peer("tests/peers/gcs_emulator.py", &args);
        GcsEmulator {
            port,
            key_file: None,
            child,
            _dir: None,
        }
    }

    /// Starts one with buckets `buckets` that demands access tokens, as
    /// Cloud Storage does, for the service account of
    /// [`key_file`](Self::key_file) (the emulator's token endpoint checks
    /// its signed assertions with google-auth).
    pub fn start_with_service_account(buckets: &[&str]) -> GcsEmulator {
        let dir = PeerDir::new("gcs");
        let key = dir.0.join("service-account.json");
        let mut args = vec!["--service-account", key.to_str().expect("a UTF-8 path")];
        for b in buckets {
            args.extend(["--bucket", b]);
        }
        let (child, port) = start_peer("tests/peers/gcs_emulator.py", &args);
        GcsEmulator {
            port,
            key_file: Some(key),
            child,
            _dir: Some(dir),
        }
    }

    /// Its endpoint URL (what `STORAGE_EMULATOR_HOST` names).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `code` after Google's client `gcs` (a storage.Client, with the
    /// service account if the emulator demands one, else no credentials)
    /// for this emulator is made; `args` follow as `sys.argv[2:]`.
    pub fn client(&self, code: &str, args: &[&str]) -> String {
        let endpoint = self.endpoint();
        let key = self
            .key_file
            .as_ref()
            .map(|k| k.display().to_string())
            .unwrap_or_default();
        let mut all = vec![endpoint.as_str(), key.as_str()];
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
        crate::peers::peer_json(self.port, "/_peer/stats")
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
