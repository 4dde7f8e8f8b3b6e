//! Azurite (Microsoft's Azure Storage emulator, installed by
//! tests/peers/install.sh) as a peer, with Microsoft's Python SDK
//! (azure-storage-blob) to make containers and read blobs back.

use std::process::{Child, Command, Stdio};

use crate::peers::{announced_port, cached, PeerDir};
use crate::python::run_python;

/// Azurite's well-known development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its published key.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct Azurite {
    /// Its port.
    pub port: u16,
    child: Child,
    _dir: PeerDir,
}

impl Azurite {
    /// Starts one.
    pub fn start() -> Azurite {
        let dir = PeerDir::new("azurite");
        let mut child = Command::new(cached("azurite-3.35.0/node_modules/.bin/azurite-blob"))
            .args([
                "--location",
                dir.arg(),
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
        let out = child.stdout.take().expect("azurite stdout");
        let port = announced_port(&mut child, out, "listens on http://127.0.0.1:", "azurite");
        Azurite {
            port,
            child,
            _dir: dir,
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
