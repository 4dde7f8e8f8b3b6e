//! moto's S3 server (tests/peers/moto_s3.py) as a peer, with AWS's own
//! client (boto3) to make buckets and read objects back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{announced_port, cached, PeerDir};
use crate::python::{run_python, start_peer};

/// The credentials the tests give moto (any are accepted).
pub const ACCESS_KEY: &str = "hypersdk-test-key";
/// The secret that goes with [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "hypersdk-test-secret-never-logged";

/// A moto S3 server on 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct MotoS3 {
    /// Its port.
    pub port: u16,
    child: Child,
}

const BOTO: &str = r#"
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
    config=Config(s3={"addressing_style": "path"}))
"#;

/// Runs `code` after a boto3 client `s3` for the S3 server at `endpoint`
/// (the test credentials) is made; `args` follow as `sys.argv[4:]`.
pub fn boto3(endpoint: &str, code: &str, args: &[&str]) -> String {
    let mut all = vec![endpoint, ACCESS_KEY, SECRET_KEY];
    all.extend_from_slice(args);
    run_python(&format!("{BOTO}\n{code}"), &all)
}

/// An S3 server the tests started, and what they ask of it through
/// boto3 (AWS's own client).
pub trait S3Peer {
    /// Its endpoint URL.
    fn endpoint(&self) -> String;

    /// Runs `code` after a boto3 client `s3` for this server is made;
    /// `args` follow as `sys.argv[4:]`.
    fn boto3(&self, code: &str, args: &[&str]) -> String {
        boto3(&self.endpoint(), code, args)
    }

    /// Creates bucket `name`.
    fn create_bucket(&self, name: &str) {
        self.boto3("s3.create_bucket(Bucket=sys.argv[4])", &[name]);
    }

    /// Downloads `key` of `bucket` into `to` with boto3's download_file.
    fn download(&self, bucket: &str, key: &str, to: &std::path::Path) {
        self.boto3(
            "s3.download_file(sys.argv[4], sys.argv[5], sys.argv[6])",
            &[bucket, key, to.to_str().expect("a UTF-8 path")],
        );
    }

    /// Keys and sizes in `bucket`, sorted, as boto3 lists them.
    fn list(&self, bucket: &str) -> Vec<(String, u64)> {
        let out = self.boto3(
            "import json\nr = s3.list_objects_v2(Bucket=sys.argv[4])\nprint(json.dumps([[o['Key'], o['Size']] for o in r.get('Contents', [])]))",
            &[bucket],
        );
        serde_json::from_str(out.trim()).expect("a listing")
    }

    /// Multipart uploads still open in `bucket` (what a failed export must
    /// not leave billing its owner).
    fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self.boto3(
            "import json\nr = s3.list_multipart_uploads(Bucket=sys.argv[4])\nprint(json.dumps([u['Key'] for u in r.get('Uploads', [])]))",
            &[bucket],
        );
        serde_json::from_str(out.trim()).expect("a list of uploads")
    }
}

impl S3Peer for MotoS3 {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl MotoS3 {
    /// Starts one.
    pub fn start() -> MotoS3 {
        let (child, port) = start_peer("tests/peers/moto_s3.py", &[]);
        MotoS3 { port, child }
    }

    /// Requests counted so far: `part_puts`, `creates`, `completes`, `aborts`.
    pub fn stats(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /_peer/stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("ask moto");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read moto");
        let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        serde_json::from_str(body).expect("stats as JSON")
    }
}

impl MotoS3 {
    /// Seeds an EC2 instance `web-01` with two data volumes of known content
    /// (tests/peers/seed_ec2_instance.py); with `dir`, their whole contents
    /// are written there as `sdf.raw` and `sdg.raw`. Its id and each data
    /// device's SHA-256.
    pub fn seed_instance(&self, dir: Option<&std::path::Path>) -> serde_json::Value {
        self.seed(dir, None)
    }

    /// [`seed_instance`](Self::seed_instance), plus volume /dev/sdh of
    /// `mib` (rounded up to GiB) with every other block written.
    pub fn seed_instance_big(&self, mib: u64) -> serde_json::Value {
        self.seed(None, Some(mib))
    }

    /// Seeds instance app-01 with only a root volume of known content
    /// (what VM Import/Export's instance export takes): `disks` has
    /// `/dev/sda1`; with `dir`, its content is written there as root.raw.
    pub fn seed_root_only(&self, dir: Option<&std::path::Path>) -> serde_json::Value {
        self.seed_with(dir, &["--single".to_string()])
    }

    /// Starts one whose instance export tasks stay active for `seconds`
    /// before they write.
    pub fn start_with_export_seconds(seconds: f64) -> MotoS3 {
        let s = seconds.to_string();
        let (child, port) = start_peer("tests/peers/moto_s3.py", &["--export-seconds", &s]);
        MotoS3 { port, child }
    }

    fn seed(&self, dir: Option<&std::path::Path>, big: Option<u64>) -> serde_json::Value {
        let extra: Vec<String> = big
            .map(|mib| vec!["--big".to_string(), mib.to_string()])
            .unwrap_or_default();
        self.seed_with(dir, &extra)
    }

    fn seed_with(&self, dir: Option<&std::path::Path>, extra: &[String]) -> serde_json::Value {
        let mut args = vec![
            self.endpoint(),
            ACCESS_KEY.to_string(),
            SECRET_KEY.to_string(),
        ];
        if let Some(d) = dir {
            args.push(d.to_str().expect("a UTF-8 path").to_string());
        }
        args.extend_from_slice(extra);
        crate::python::run_seed("tests/peers/seed_ec2_instance.py", &args)
    }
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MinIO (built by tests/peers/install.sh) on 127.0.0.1, with the test
/// credentials as its root user; killed on drop.
#[derive(Debug)]
pub struct Minio {
    /// Its port.
    pub port: u16,
    child: Child,
    _dir: PeerDir,
}

impl Minio {
    /// Starts one on an empty data directory.
    pub fn start() -> Minio {
        let dir = PeerDir::new("minio");
        let mut child = Command::new(cached("minio-v0.0.0-20260212201848-7aac2a2c5b7c/minio"))
            .args(["server", dir.arg(), "--address", "127.0.0.1:0"])
            .env("MINIO_ROOT_USER", ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start minio");
        // It prints its banner, with the port it got, on standard error.
        let out = child.stderr.take().expect("minio stderr");
        let port = announced_port(&mut child, out, "API: http://127.0.0.1:", "minio");
        Minio {
            port,
            child,
            _dir: dir,
        }
    }
}

impl S3Peer for Minio {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Authorization token the container credentials endpoint of [`Imds`]
/// wants.
pub const CONTAINER_TOKEN: &str = "container-authorization-token";

/// The EC2 instance metadata service stub (tests/peers/imds.py), handing
/// out an instance role's credentials (moto's test keys); killed on drop.
#[derive(Debug)]
pub struct Imds {
    /// Its port.
    pub port: u16,
    child: std::process::Child,
}

impl Imds {
    /// Starts one; its container credentials endpoint
    /// (`/v2/credentials/…`) wants [`CONTAINER_TOKEN`].
    pub fn start() -> Imds {
        let (child, port) = crate::python::start_peer(
            "tests/peers/imds.py",
            &[ACCESS_KEY, SECRET_KEY, "--container-token", CONTAINER_TOKEN],
        );
        Imds { port, child }
    }

    /// Its endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Tokens issued, requests refused, credentials handed out.
    pub fn stats(&self) -> serde_json::Value {
        crate::peers::peer_json(self.port, "/_peer/stats")
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
