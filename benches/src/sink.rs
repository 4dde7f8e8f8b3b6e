//! sink-bench: the same export uploaded to object-store emulators by
//! hypersdk's sinks and by each store's own client, in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin sink-bench -- [SIZE_MIB]
//! ```
//!
//! A file of SIZE_MIB (default 1024) of mixed disk content stands for an
//! export (an OVA). It is uploaded into each server (tests/peers, started
//! here on 127.0.0.1) three times, alternating:
//! - by the store's sink (`hypersdk_sinks::{s3, azure, gcs}`, default
//!   settings) in a child process, so its peak RSS is its own: the file read
//!   in 1 MiB chunks, put, completed, committed;
//! - by the store's reference client, also in its own process: boto3's
//!   `upload_file` (defaults: 8 MiB parts, 10 threads) into moto and MinIO;
//!   azure-storage-blob's `upload_blob` with `max_concurrency=4` (its
//!   parallel upload; the default is 1) into Azurite; google-cloud-storage's
//!   `upload_from_filename` (defaults: a resumable upload in 100 MiB
//!   chunks; HSDK_REF_CHUNK_MIB sets another) into gcp-storage-emulator.
//!
//! It prints the median time and rate of each, their ratio and each one's
//! peak RSS, and checks both objects have the file's SHA-256 (read back by
//! the reference client). The servers run on the same 2 cores: the figures
//! say how the two clients compare against one server, not what a cloud
//! can take. HSDK_SERVERS=moto,minio,azurite,gcs picks servers.
//!
//! `sink-bench export [SIZE_MIB]` instead exports a VM with one raw disk of
//! SIZE_MIB (default 1024) of mixed disk content from the local provider
//! into MinIO and into the GCS emulator, as an OVF directory and as an OVA,
//! three times each, alternating: an OVA is assembled in the exporter's
//! local scratch area first (the disks spooled, then the archive uploaded
//! front to back), an OVF directory goes straight up; the figures say what
//! the spool costs.

use std::io::Read;
use std::process::Command;
use std::time::Instant;

use hypersdk_core::{Artifact, Sink};
use hypersdk_testsupport::azurite::Azurite;
use hypersdk_testsupport::gcs::GcsEmulator;
use hypersdk_testsupport::python::run_python;
use hypersdk_testsupport::s3::{Minio, MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};
use hypersdk_testsupport::{path_str, peak_rss_kib, write_mixed_file};

/// HSDK_PART_MIB: another part (chunk) size, for experiments.
fn part_size() -> Option<usize> {
    std::env::var("HSDK_PART_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(|m| m << 20)
}

/// The sink of `store` ("s3", "azure", "gcs") at `endpoint` (for Azure, a
/// connection string), bucket or container `bench`.
fn open_sink(
    store: &str,
    endpoint: &str,
    state: std::path::PathBuf,
) -> anyhow::Result<hypersdk_sinks::ObjectStoreSink> {
    Ok(match store {
        "s3" => hypersdk_sinks::s3::sink(
            "s3://bench",
            &hypersdk_sinks::s3::S3Settings {
                endpoint: Some(endpoint.to_string()),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                region: Some("us-east-1".into()),
                // HSDK_CHECKSUM: sha256 or crc64nvme (default: the sink's,
                // SHA-256 over the plain HTTP of these servers).
                checksum: std::env::var("HSDK_CHECKSUM").ok(),
                part_size: part_size(),
                ..Default::default()
            },
            state,
        )?,
        "azure" => hypersdk_sinks::azure::sink(
            "az://bench",
            &hypersdk_sinks::azure::AzureSettings {
                connection_string: Some(endpoint.to_string()),
                part_size: part_size(),
                ..Default::default()
            },
            state,
        )?,
        "gcs" => hypersdk_sinks::gcs::sink(
            "gs://bench",
            &hypersdk_sinks::gcs::GcsSettings {
                endpoint: Some(endpoint.to_string()),
                anonymous: true,
                part_size: part_size(),
                ..Default::default()
            },
            state,
        )?,
        other => anyhow::bail!("no store {other}"),
    })
}

/// In the child: one export of `xml` as `format` into the store; prints
/// its time and peak RSS.
fn child_export(xml: &str, format: &str, store: &str, endpoint: &str) -> anyhow::Result<()> {
    use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let state = tempfile::tempdir()?;
    let sink = open_sink(store, endpoint, state.path().to_path_buf())?;
    let options = ExportOptions::new(if format == "ova" {
        PackageFormat::Ova
    } else {
        PackageFormat::Ovf
    })
    .with_overwrite(true);
    let start = Instant::now();
    rt.block_on(async {
        let provider = hypersdk_local::LocalProvider::new(".");
        Exporter::new(options).export(&provider, xml, &sink).await
    })?;
    println!(
        "{{\"secs\": {}, \"rss_kib\": {}}}",
        start.elapsed().as_secs_f64(),
        peak_rss_kib().unwrap_or(0)
    );
    Ok(())
}

/// `sink-bench export`: OVF directory vs OVA into MinIO and the GCS emulator.
fn export_bench(mib: u64) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let disk = tmp.path().join("disk.raw");
    write_mixed_file(&disk, mib << 20)?;
    let xml = tmp.path().join("vm.xml");
    std::fs::write(
        &xml,
        hypersdk_testsupport::domain_xml("vm", &[(&disk, "raw")]),
    )?;
    let me = std::env::current_exe()?;
    let minio = Minio::start();
    minio.create_bucket("bench");
    let gcs = GcsEmulator::start(&["bench"]);
    for (name, store, ep) in [
        ("MinIO", "s3", minio.endpoint()),
        ("gcp-storage-emulator", "gcs", gcs.endpoint()),
    ] {
        let (mut ovf, mut ova) = (Vec::new(), Vec::new());
        let (mut ovf_rss, mut ova_rss) = (0u64, 0u64);
        for round in 0..3 {
            for (format, times, rss) in [
                ("ovf", &mut ovf, &mut ovf_rss),
                ("ova", &mut ova, &mut ova_rss),
            ] {
                let mut c = Command::new(&me);
                c.args(["--child-export", path_str(&xml), format, store, &ep]);
                let v = run_json(c)?;
                times.push(v["secs"].as_f64().unwrap_or(f64::NAN));
                *rss = (*rss).max(v["rss_kib"].as_u64().unwrap_or(0));
            }
            println!(
                "{name} round {round}: OVF {:.2} s, OVA {:.2} s",
                ovf[round], ova[round]
            );
        }
        let (d, a) = (median(ovf), median(ova));
        println!("\nexport of a {mib} MiB disk into {name} (median of 3):");
        println!("| package | time | peak RSS |");
        println!("|---|---|---|");
        println!(
            "| OVF directory (straight up) | {d:.2} s | {} MiB |",
            ovf_rss / 1024
        );
        println!(
            "| OVA (spooled, then uploaded) | {a:.2} s | {} MiB |",
            ova_rss / 1024
        );
        println!("OVA time / OVF time: {:.2}\n", a / d);
    }
    Ok(())
}

fn child(file: &str, store: &str, endpoint: &str, key: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let state = tempfile::tempdir()?;
    let sink = open_sink(store, endpoint, state.path().to_path_buf())?;
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

/// The reference clients: `sys.argv[1]` the endpoint (Azure: connection
/// string), `[2]` the file, `[3]` the key; a `put()` uploads, a `sha()`
/// reads back.
const S3_CLIENT: &str = r#"
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5],
    config=Config(s3={"addressing_style": "path"}))
def put(): s3.upload_file(sys.argv[2], "bench", sys.argv[3])
def chunks(): return s3.get_object(Bucket="bench", Key=sys.argv[3])["Body"].iter_chunks(1 << 20)
def make(): s3.create_bucket(Bucket="bench")
"#;
const AZURE_CLIENT: &str = r#"
from azure.storage.blob import BlobServiceClient
svc = BlobServiceClient.from_connection_string(sys.argv[1])
def put():
    with open(sys.argv[2], "rb") as f:
        svc.get_blob_client("bench", sys.argv[3]).upload_blob(f, overwrite=True, max_concurrency=4)
def chunks(): return svc.get_blob_client("bench", sys.argv[3]).download_blob().chunks()
def make(): svc.create_container("bench")
"#;
const GCS_CLIENT: &str = r#"
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
gcs = storage.Client(project="bench", credentials=AnonymousCredentials(),
    client_options=ClientOptions(api_endpoint=sys.argv[1]))
import os
# HSDK_REF_CHUNK_MIB: the client's chunk size (default 100 MiB), to compare
# at equal chunk sizes.
chunk = int(os.environ.get("HSDK_REF_CHUNK_MIB", "0")) << 20 or None
def put(): gcs.bucket("bench").blob(sys.argv[3], chunk_size=chunk).upload_from_filename(sys.argv[2])
def chunks():
    import io
    b = io.BytesIO()
    gcs.bucket("bench").blob(sys.argv[3]).download_to_file(b)
    return [b.getvalue()]
def make(): pass
"#;

const TIMED: &str = r#"
t = time.monotonic()
put()
secs = time.monotonic() - t
print(json.dumps({"secs": secs, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"#;

const SHA: &str = r#"
h = hashlib.sha256()
for c in chunks():
    h.update(c)
print(h.hexdigest())
"#;

/// A reference client's `sys.argv[1:]`: endpoint, file, object key, and
/// the S3 test credentials.
fn argv<'a>(endpoint: &'a str, file: &'a str, key: &'a str) -> [&'a str; 5] {
    [endpoint, file, key, ACCESS_KEY, SECRET_KEY]
}

fn script(client: &str, then: &str) -> String {
    format!("import sys, time, json, resource, hashlib\n{client}\n{then}")
}

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

/// One server under test.
struct Server {
    name: &'static str,
    store: &'static str,
    endpoint: String,
    client: &'static str,
    reference: &'static str,
    ours: String,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => return child(&args[2], &args[3], &args[4], &args[5]),
        Some("--child-export") => return child_export(&args[2], &args[3], &args[4], &args[5]),
        Some("export") => {
            return export_bench(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1024))
        }
        _ => {}
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
    let wanted = |name: &str| {
        std::env::var("HSDK_SERVERS")
            .map(|v| v.split(',').any(|s| s.eq_ignore_ascii_case(name)))
            .unwrap_or(true)
    };
    let python = hypersdk_testsupport::python::venv_python();
    let me = std::env::current_exe()?;
    // Started only when wanted, kept until the end.
    let moto = wanted("moto").then(MotoS3::start);
    let minio = wanted("minio").then(Minio::start);
    let azurite = wanted("azurite").then(Azurite::start);
    let gcs = wanted("gcs").then(|| GcsEmulator::start(&["bench"]));
    let part = part_size().map_or(String::new(), |p| format!(", {} MiB parts", p >> 20));
    let mut servers = Vec::new();
    for (name, peer) in [
        ("moto", &moto.as_ref().map(|m| m.endpoint())),
        ("MinIO", &minio.as_ref().map(|m| m.endpoint())),
    ] {
        if let Some(ep) = peer {
            servers.push(Server {
                name,
                store: "s3",
                endpoint: ep.clone(),
                client: S3_CLIENT,
                reference: "boto3 upload_file (defaults)",
                ours: format!("hypersdk S3 sink{part}"),
            });
        }
    }
    if let Some(az) = &azurite {
        servers.push(Server {
            name: "Azurite",
            store: "azure",
            endpoint: az.connection_string(),
            client: AZURE_CLIENT,
            reference: "azure-storage-blob upload_blob (max_concurrency=4)",
            ours: format!("hypersdk Azure sink{part}"),
        });
    }
    if let Some(g) = &gcs {
        servers.push(Server {
            name: "gcp-storage-emulator",
            store: "gcs",
            endpoint: g.endpoint(),
            client: GCS_CLIENT,
            reference: if std::env::var("HSDK_REF_CHUNK_MIB").is_ok() {
                "google-cloud-storage upload_from_filename (HSDK_REF_CHUNK_MIB chunks)"
            } else {
                "google-cloud-storage upload_from_filename (defaults: 100 MiB chunks)"
            },
            ours: format!("hypersdk GCS sink{part}"),
        });
    }
    for srv in &servers {
        let file = path_str(&file);
        run_python(
            &script(srv.client, "make()"),
            &argv(&srv.endpoint, file, ""),
        );
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_rss, mut their_rss) = (0u64, 0u64);
        for round in 0..3 {
            let key = format!("ours-{round}.ova");
            let mut c = Command::new(&me);
            c.args(["--child", file, srv.store, &srv.endpoint, &key]);
            let v = run_json(c)?;
            ours.push(v["secs"].as_f64().unwrap_or(f64::NAN));
            our_rss = our_rss.max(v["rss_kib"].as_u64().unwrap_or(0));
            let key2 = format!("theirs-{round}.ova");
            let mut c = Command::new(&python);
            c.arg("-c")
                .arg(script(srv.client, TIMED))
                .args(argv(&srv.endpoint, file, &key2));
            let v = run_json(c)?;
            theirs.push(v["secs"].as_f64().unwrap_or(f64::NAN));
            their_rss = their_rss.max(v["rss_kib"].as_u64().unwrap_or(0));
            for k in [&key, &key2] {
                let got = run_python(&script(srv.client, SHA), &argv(&srv.endpoint, file, k));
                anyhow::ensure!(got.trim() == want, "{k}: sha256 {} != {want}", got.trim());
            }
            println!(
                "{} round {round}: hypersdk {:.2} s, reference {:.2} s",
                srv.name, ours[round], theirs[round]
            );
        }
        let bytes = (mib << 20) as f64;
        let (o, t) = (median(ours), median(theirs));
        println!("\nupload of {mib} MiB into {} (median of 3):", srv.name);
        println!("| client | time | rate | peak RSS |");
        println!("|---|---|---|---|");
        println!(
            "| {} | {o:.2} s | {:.0} MB/s | {} MiB |",
            srv.ours,
            bytes / o / 1e6,
            our_rss / 1024
        );
        println!(
            "| {} | {t:.2} s | {:.0} MB/s | {} MiB |",
            srv.reference,
            bytes / t / 1e6,
            their_rss / 1024
        );
        println!("ratio (reference time / hypersdk time): {:.2}x\n", t / o);
    }
    Ok(())
}
