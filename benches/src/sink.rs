//! sink-bench: the same export uploaded to an S3 emulator by the S3 sink and
//! by AWS's own client, in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin sink-bench -- [SIZE_MIB]
//! ```
//!
//! A file of SIZE_MIB (default 1024) of mixed disk content stands for an
//! export (an OVA). It is uploaded into moto's S3 server and into MinIO
//! (tests/peers, started here on 127.0.0.1) three times each, alternating:
//! - by the S3 sink (`hypersdk_sinks::s3`, default 16 MiB parts and its
//!   in-flight bound) in a child process, so its peak RSS is its own: the
//!   file read in 1 MiB chunks, put, completed, committed;
//! - by boto3's `upload_file` with its default transfer settings (8 MiB
//!   parts, 10 threads), also in its own process.
//!
//! It prints the median time and rate of each, their ratio and each one's
//! peak RSS, and checks both objects have the file's SHA-256 (boto3 reads
//! them back). The servers run on the same 2 cores: the figures say how the
//! two clients compare against one server, not what S3 can take.

use std::io::Read;
use std::process::Command;
use std::time::Instant;

use hypersdk_core::{Artifact, Sink};
use hypersdk_testsupport::s3::{boto3, Minio, MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};
use hypersdk_testsupport::{path_str, peak_rss_kib, write_mixed_file};

fn child(file: &str, endpoint: &str, key: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let state = tempfile::tempdir()?;
    let settings = hypersdk_sinks::s3::S3Settings {
        endpoint: Some(endpoint.to_string()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        region: Some("us-east-1".into()),
        // HSDK_CHECKSUM: sha256 or crc64nvme (default: the sink's, SHA-256
        // over the plain HTTP of these servers).
        checksum: std::env::var("HSDK_CHECKSUM").ok(),
        // HSDK_PART_MIB: another part size, for experiments.
        part_size: std::env::var("HSDK_PART_MIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|m| m << 20),
        ..Default::default()
    };
    let sink = hypersdk_sinks::s3::sink("s3://bench", &settings, state.path().to_path_buf())?;
    let start = Instant::now();
    rt.block_on(async {
        let artifact = Artifact::File(key.to_string());
        let mut staging = sink.begin(&artifact, true).await?;
        let mut up = staging.start(key).await?;
        let mut f = std::fs::File::open(file)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            up.put(&buf[..n]).await?;
        }
        up.complete().await?;
        staging.commit().await?;
        anyhow::Ok(())
    })?;
    println!(
        "{{\"secs\": {}, \"rss_kib\": {}}}",
        start.elapsed().as_secs_f64(),
        peak_rss_kib().unwrap_or(0)
    );
    Ok(())
}

const BOTO: &str = r#"
import sys, time, json, resource, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3],
    config=Config(s3={"addressing_style": "path"}))
t = time.monotonic()
s3.upload_file(sys.argv[4], "bench", sys.argv[5])
secs = time.monotonic() - t
print(json.dumps({"secs": secs, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

/// Run by [`boto3`], after its client `s3` is made.
const SHA: &str = r#"
import hashlib
h = hashlib.sha256()
for c in s3.get_object(Bucket="bench", Key=sys.argv[4])["Body"].iter_chunks(1 << 20):
    h.update(c)
print(h.hexdigest())
"#;

fn run_json(mut c: Command) -> anyhow::Result<serde_json::Value> {
    let out = c.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], &args[3], &args[4]);
    }
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("export.ova");
    write_mixed_file(&file, mib << 20)?;
    let want = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(&file)?;
        std::io::copy(&mut f, &mut h)?;
        hypersdk_formats::manifest::to_hex(&h.finalize())
    };
    let moto = MotoS3::start();
    let minio = Minio::start();
    let python = hypersdk_testsupport::python::venv_python();
    let me = std::env::current_exe()?;
    for (server, ep) in [("moto", moto.endpoint()), ("MinIO", minio.endpoint())] {
        // HSDK_SERVERS=minio: one server only, for experiments.
        if std::env::var("HSDK_SERVERS").is_ok_and(|v| !v.eq_ignore_ascii_case(server)) {
            continue;
        }
        boto3(&ep, "s3.create_bucket(Bucket='bench')", &[]);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_rss, mut their_rss) = (0u64, 0u64);
        for round in 0..3 {
            let key = format!("ours-{round}.ova");
            let mut c = Command::new(&me);
            c.args(["--child", path_str(&file), &ep, &key]);
            let v = run_json(c)?;
            ours.push(v["secs"].as_f64().unwrap_or(f64::NAN));
            our_rss = our_rss.max(v["rss_kib"].as_u64().unwrap_or(0));
            let key2 = format!("boto3-{round}.ova");
            let mut c = Command::new(&python);
            c.args([
                "-c",
                BOTO,
                &ep,
                ACCESS_KEY,
                SECRET_KEY,
                path_str(&file),
                &key2,
            ]);
            let v = run_json(c)?;
            theirs.push(v["secs"].as_f64().unwrap_or(f64::NAN));
            their_rss = their_rss.max(v["rss_kib"].as_u64().unwrap_or(0));
            for k in [&key, &key2] {
                let got = boto3(&ep, SHA, &[k]);
                anyhow::ensure!(got.trim() == want, "{k}: sha256 {} != {want}", got.trim());
            }
            println!(
                "{server} round {round}: hypersdk {:.2} s, boto3 upload_file {:.2} s",
                ours[round], theirs[round]
            );
        }
        let bytes = (mib << 20) as f64;
        let (o, t) = (median(ours), median(theirs));
        println!("\nupload of {mib} MiB into {server} (median of 3):");
        println!("| client | time | rate | peak RSS |");
        println!("|---|---|---|---|");
        println!(
            "| hypersdk S3 sink (16 MiB parts) | {o:.2} s | {:.0} MB/s | {} MiB |",
            bytes / o / 1e6,
            our_rss / 1024
        );
        println!(
            "| boto3 upload_file (defaults) | {t:.2} s | {:.0} MB/s | {} MiB |",
            bytes / t / 1e6,
            their_rss / 1024
        );
        println!("ratio (boto3 time / hypersdk time): {:.2}x\n", t / o);
    }
    Ok(())
}
