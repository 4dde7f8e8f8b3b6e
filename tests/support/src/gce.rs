//! Compute Engine as a peer: the Compute Engine + Cloud Build stub
//! (tests/peers/gce.py) over a real gcp-storage-emulator that receives the
//! image exports, seeded by tests/peers/seed_gce_vm.py, and Google's own
//! clients (google-cloud-compute, google-cloud-build, REST transport) to
//! read the stub back the way Google's tools do.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::gcs::GcsEmulator;
use crate::peers::PeerDir;
use crate::python::{run_python, start_peer};

/// The stub's project.
pub const PROJECT: &str = "hypersdk-test";
/// Its zone.
pub const ZONE: &str = "us-central1-a";
/// The staging bucket made in the storage emulator.
pub const BUCKET: &str = "hypersdk-staging";

/// The stub on 127.0.0.1 and its storage emulator; both killed on drop.
#[derive(Debug)]
pub struct GceCompute {
    /// The stub's port.
    pub port: u16,
    /// The storage emulator the exports land in.
    pub storage: GcsEmulator,
    /// The service-account key the stub takes tokens for.
    pub key_file: PathBuf,
    child: Child,
    dir: PeerDir,
}

/// Builds Google's clients over the stub with the service-account key:
/// `instances`, `machine_types`, `disks`, `images`, `operations`
/// (compute_v1, REST) and `builds` (cloudbuild_v1, REST); `P` and `Z` are
/// the project and zone.
const SDK: &str = r#"
import sys, json, time
from google.oauth2 import service_account
from google.api_core.client_options import ClientOptions
from google.cloud import compute_v1
from google.cloud.devtools import cloudbuild_v1
creds = service_account.Credentials.from_service_account_file(
    sys.argv[2], scopes=["https://www.googleapis.com/auth/cloud-platform"])
kw = dict(credentials=creds, client_options=ClientOptions(api_endpoint=sys.argv[1]), transport="rest")
instances = compute_v1.InstancesClient(**kw)
machine_types = compute_v1.MachineTypesClient(**kw)
disks = compute_v1.DisksClient(**kw)
images = compute_v1.ImagesClient(**kw)
operations = compute_v1.GlobalOperationsClient(**kw)
builds = cloudbuild_v1.CloudBuildClient(**kw)
P, Z = sys.argv[3], sys.argv[4]
"#;

impl GceCompute {
    /// Starts the storage emulator (with [`BUCKET`]) and the stub, whose
    /// image exports work for `build_seconds` before they write.
    pub fn start_with(build_seconds: f64) -> GceCompute {
        let storage = GcsEmulator::start(&[BUCKET]);
        let dir = PeerDir::new("gce");
        let key = dir.0.join("service-account.json");
        let storage_url = storage.endpoint();
        let seconds = build_seconds.to_string();
        let args = [
            "--storage",
            storage_url.as_str(),
            "--dir",
            dir.arg(),
            "--service-account",
            key.to_str().expect("a UTF-8 path"),
            "--build-seconds",
            seconds.as_str(),
        ];
        let (child, port) = start_peer("tests/peers/gce.py", &args);
        GceCompute {
            port,
            storage,
            key_file: key,
            child,
            dir,
        }
    }

    /// [`start_with`](Self::start_with) exports that take 0.3 s.
    pub fn start() -> GceCompute {
        Self::start_with(0.3)
    }

    /// The stub's endpoint (`http://127.0.0.1:PORT`): Compute Engine, Cloud
    /// Build and the token endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider settings that reach the peers (as `--provider-opt`s
    /// or a daemon's provider entry).
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "project": PROJECT,
            "bucket": format!("gs://{BUCKET}/exports"),
            "credentials": self.key_file,
            "compute_endpoint": self.endpoint(),
            "cloudbuild_endpoint": self.endpoint(),
            "storage_endpoint": self.storage.endpoint(),
        })
    }

    /// Seeds instance web-03 (see tests/peers/seed_gce_vm.py): running, or
    /// TERMINATED when `stopped`; its data disk `big_gib` GiB if given.
    /// Returns the script's JSON (`id`, `disks`: name → SHA-256); the disks'
    /// raw files are `NAME.raw` in [`disk_dir`](Self::disk_dir).
    pub fn seed_vm(&self, stopped: bool, big_gib: Option<u64>) -> serde_json::Value {
        let mut args = vec![self.endpoint(), self.disk_dir().display().to_string()];
        if stopped {
            args.push("--stopped".into());
        }
        if let Some(g) = big_gib {
            args.extend(["--big".into(), g.to_string()]);
        }
        crate::python::run_seed("tests/peers/seed_gce_vm.py", &args)
    }

    /// Where the seeded disks' raw files are.
    pub fn disk_dir(&self) -> &Path {
        &self.dir.0
    }

    /// What the stub saw: images made, deleted and live, builds (running,
    /// cancelled), exports written, tokens.
    pub fn stats(&self) -> serde_json::Value {
        crate::peers::peer_json(self.port, "/_peer/stats")
    }

    /// Runs `code` with Google's clients made (see [`SDK`]); returns its
    /// standard output.
    pub fn sdk(&self, code: &str) -> String {
        let key = self.key_file.display().to_string();
        run_python(
            &format!("{SDK}\n{code}"),
            &[&self.endpoint(), &key, PROJECT, ZONE],
        )
    }
}

impl Drop for GceCompute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
