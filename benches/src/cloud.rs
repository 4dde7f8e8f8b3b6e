//! cloud-bench: reading a cloud VM's disk through hypersdk's provider and
//! through the cloud's own tool, against the same server, in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin cloud-bench -- [SIZE_MIB]
//! ```
//!
//! - Azure: VM web-02 (tests/peers/seed_azure_vm.py, deallocated) gets a
//!   data disk of SIZE_MIB (default 1024; MiB stripes of random and text
//!   data on every other MiB, the rest unallocated) as a page blob in
//!   Azurite behind the ARM stub. hypersdk: `AzureProvider` grants access
//!   and reads the disk (page ranges, 4 MiB ranged GETs, 8 in flight,
//!   Content-MD5 checked). Baseline: Microsoft's Python SDK —
//!   azure-mgmt-compute `begin_grant_access`, then azure-storage-blob
//!   `download_blob(max_concurrency=8)` (its parallel download, which also
//!   skips empty page ranges) into a file in /tmp (it writes at offsets, so
//!   it needs a seekable target; hashed after its clock stops), while
//!   hypersdk's timed read includes its SHA-256.
//! - AWS (when `coldsnap` is in the peer cache: `cargo install coldsnap
//!   --version 0.12.0 --locked --root ~/.cache/hypersdk/peers/coldsnap-0.12.0`):
//!   instance web-01 (tests/peers/seed_ec2_instance.py `--big SIZE_MIB`)
//!   gets a volume of SIZE_MIB with every other 512 KiB block written.
//!   hypersdk: `AwsProvider` snapshots it and reads the snapshot through the
//!   EBS direct APIs (16 blocks in flight, SHA-256 checked). Baseline:
//!   `coldsnap download` of that same snapshot (AWS's own Rust tool for the
//!   EBS direct APIs) into a file.
//! - GCP (`HSDK_CLOUDS=gcp`): instance web-03 (tests/peers/seed_gce_vm.py
//!   `--big GIB`, SIZE_MIB rounded up to GiB) gets a data disk with a random
//!   MiB on every other MiB of its first 2 GiB; the stub's image export
//!   writes it as `tar -Sczf` into gcp-storage-emulator. Once the object is
//!   staged and the export has noticed (not timed: that is the cloud's
//!   work, and the provider's poll of the build), hypersdk reads the disk
//!   from the bucket, inflating and unpacking on the fly. Baseline: Google's
//!   Python client (google-cloud-storage `download_to_file`) piped into
//!   GNU `tar -xzSf -` (what one does by hand with the object), the
//!   unpacked disk.raw hashed after its clock stops.
//! - KubeVirt (`HSDK_CLOUDS=kubevirt`): VM bench-1 (tests/peers/seed_kubevirt_vm.py
//!   `--big SIZE_MIB`) on the real kube-apiserver and virt-exportserver.
//!   From one open VirtualMachineExport per round (five rounds): hypersdk
//!   reads the data volume; curl reads it into /dev/null; curl downloads
//!   both volumes into files (the baseline), and again followed by `sync`;
//!   hypersdk exports the VM as an OVF directory (checked with `qemu-img
//!   compare`). CPU seconds of each side are printed.
//!
//! Each side runs three times, alternating; the median is printed with
//! its rate (MB/s of guest bytes) and the ratio. Every read is checked
//! against the seeded SHA-256. The servers share the machine's 2 cores
//! with the clients: the figures compare clients against one server, not
//! what a cloud can take.

use std::process::Command;
use std::time::Instant;

use hypersdk_core::{ExportSource, Provider};
use hypersdk_testsupport::azure_compute::{
    AzureCompute, CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION, TENANT,
};
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

/// CPU seconds (user + system) of this process and of its reaped
/// children, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14-17 (utime, stime, cutime, cstime), counted from the state (3).
    let get = |n: usize| f.get(n - 3).copied().unwrap_or(0.0) / 100.0;
    (get(14) + get(15), get(16) + get(17))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Reads disk `index` of `source` whole: (seconds, sha256 hex, bytes).
async fn read_disk(source: &dyn ExportSource, index: usize) -> anyhow::Result<(f64, String, u64)> {
    use sha2::Digest;
    let start = Instant::now();
    let mut s = source.open_disk(index, 0).await?;
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(b) = futures_util::StreamExt::next(&mut s).await {
        let b = b?;
        n += b.len() as u64;
        h.update(&b);
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((start.elapsed().as_secs_f64(), hex, n))
}

fn report(what: &str, ours: &[f64], theirs: &[f64], baseline: &str, bytes: u64) {
    let (o, t) = (median(ours.to_vec()), median(theirs.to_vec()));
    let mb = bytes as f64 / 1e6;
    println!(
        "| {what}: hypersdk | {o:.2} | {:.1} | {:.2}× |",
        mb / o,
        t / o
    );
    println!(
        "| {what}: {baseline} (baseline) | {t:.2} | {:.1} | 1.00× |",
        mb / t
    );
}

async fn azure(size_mib: u64) -> anyhow::Result<()> {
    let peer = AzureCompute::start();
    let seeded = peer.seed_vm_sized(true, size_mib);
    let want = seeded["disks"]["web-02-data2"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let arm = hypersdk_azure::arm::Arm::new(
        &peer.endpoint(),
        hypersdk_azure::arm::Credential::ClientSecret {
            authority: peer.endpoint(),
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            secret: hypersdk_core::connect::Secret::new(CLIENT_SECRET),
        },
    )?;
    let p = hypersdk_azure::AzureProvider::new(arm, SUBSCRIPTION, None)?;
    let sdk = r#"
import hashlib, time
from azure.mgmt.compute.models import GrantAccessData
from azure.storage.blob import BlobClient
acc = c.disks.begin_grant_access('rg-hypersdk', 'web-02-data2', GrantAccessData(access='Read', duration_in_seconds=3600), polling_interval=0, **o).result()
blob = BlobClient.from_blob_url(acc.access_sas)
size = blob.get_blob_properties().size - 512
# A parallel download writes at offsets: into a file (the page cache),
# hashed after the clock stops.
path = "/tmp/cloud-bench-sdk-%d.vhd" % os.getpid()
with open(path, "wb") as f:
    start = time.perf_counter()
    blob.download_blob(max_concurrency=8).readinto(f)
    secs = time.perf_counter() - start
h = hashlib.sha256()
with open(path, "rb") as f:
    left = size
    while left > 0:
        b = f.read(min(left, 8 << 20))
        h.update(b); left -= len(b)
os.unlink(path)
c.disks.begin_revoke_access('rg-hypersdk', 'web-02-data2', polling_interval=0, **o).result()
print(json.dumps({"secs": secs, "sha256": h.hexdigest()}))
"#;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..3 {
        let source = p.open_export("web-02").await?;
        let (secs, hex, n) = read_disk(source.as_ref(), 2).await?;
        source.close_after(true).await?;
        anyhow::ensure!(hex == want, "hypersdk read {hex}, seeded {want}");
        bytes = n;
        ours.push(secs);
        let v: serde_json::Value = serde_json::from_str(peer.sdk(sdk).trim())?;
        anyhow::ensure!(v["sha256"] == want.as_str(), "the SDK read {}", v["sha256"]);
        theirs.push(v["secs"].as_f64().unwrap_or(f64::NAN));
        eprintln!(
            "azure round {round}: hypersdk {secs:.2} s, SDK {:.2} s",
            theirs[round]
        );
    }
    report(
        &format!("Azure page blob, {size_mib} MiB (half allocated)"),
        &ours,
        &theirs,
        "azure-storage-blob download_blob(max_concurrency=8)",
        bytes,
    );
    Ok(())
}

async fn aws(size_mib: u64) -> anyhow::Result<()> {
    let home = std::env::var("HOME")?;
    let coldsnap =
        std::path::PathBuf::from(home).join(".cache/hypersdk/peers/coldsnap-0.12.0/bin/coldsnap");
    if !coldsnap.exists() {
        println!("(AWS skipped: no {})", coldsnap.display());
        return Ok(());
    }
    let moto = MotoS3::start();
    let seeded = moto.seed_instance_big(size_mib);
    let want = seeded["disks"]["/dev/sdh"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let creds = hypersdk_aws::sigv4::Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    };
    let p = hypersdk_aws::AwsProvider::new(
        hypersdk_aws::ec2::Ec2::new(&moto.endpoint(), "us-east-1", creds.clone())?,
        hypersdk_aws::ebs::Ebs::new(&moto.endpoint(), "us-east-1", creds)?,
    );
    let tmp = tempfile::tempdir()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..3 {
        let source = p.open_export("web-01").await?;
        let index = source
            .spec()
            .disks
            .iter()
            .position(|d| d.name == "web-01-sdh")
            .ok_or_else(|| anyhow::anyhow!("no sdh"))?;
        let (secs, hex, n) = read_disk(source.as_ref(), index).await?;
        anyhow::ensure!(hex == want, "hypersdk read {hex}, seeded {want}");
        bytes = n;
        ours.push(secs);
        // coldsnap reads the very snapshot hypersdk just read.
        let token: serde_json::Value =
            serde_json::from_str(&source.resume_token().unwrap_or_default())?;
        let snap = token["snapshots"][index]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let file = tmp.path().join("coldsnap.img");
        let _ = std::fs::remove_file(&file);
        let start = Instant::now();
        let o = Command::new(&coldsnap)
            .args([
                "--region",
                "us-east-1",
                "--endpoint",
                &moto.endpoint(),
                "download",
                &snap,
            ])
            .arg(&file)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()?;
        let secs_c = start.elapsed().as_secs_f64();
        source.close_after(true).await?;
        anyhow::ensure!(
            o.status.success(),
            "coldsnap: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got: String = hypersdk_testkit::sink::sha256_of_file(&file)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        anyhow::ensure!(got == want, "coldsnap read {got}");
        theirs.push(secs_c);
        eprintln!("aws round {round}: hypersdk {secs:.2} s, coldsnap {secs_c:.2} s");
    }
    report(
        &format!("EBS snapshot, {size_mib} MiB (half allocated)"),
        &ours,
        &theirs,
        "coldsnap download",
        bytes,
    );
    Ok(())
}

async fn gcp(size_mib: u64) -> anyhow::Result<()> {
    use hypersdk_testsupport::gce::{GceCompute, BUCKET};
    let gib = size_mib.div_ceil(1024);
    let peer = GceCompute::start();
    let seeded = peer.seed_vm(true, Some(gib));
    let want = seeded["disks"]["web-03-data"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let config: hypersdk_gcp::GcpConfig = serde_json::from_value(peer.config())?;
    let p = config.provider()?;
    let sdk = r#"
import hashlib, subprocess, tempfile, time
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
gcs = storage.Client(project="hypersdk-test", credentials=AnonymousCredentials(),
    client_options=ClientOptions(api_endpoint=sys.argv[5]))
with tempfile.TemporaryDirectory() as d:
    start = time.perf_counter()
    tar = subprocess.Popen(["tar", "-xzSf", "-", "-C", d], stdin=subprocess.PIPE)
    gcs.bucket(sys.argv[6]).blob(sys.argv[7]).download_to_file(tar.stdin)
    tar.stdin.close()
    assert tar.wait() == 0
    secs = time.perf_counter() - start
    h = hashlib.sha256()
    with open(d + "/disk.raw", "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
print(json.dumps({"secs": secs, "sha256": h.hexdigest()}))
"#;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..3 {
        let source = p.open_export("web-03").await?;
        let token: serde_json::Value =
            serde_json::from_str(&source.resume_token().unwrap_or_default())?;
        let object = token["exports"][1]["object"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Staged first (the cloud's part, not timed): the first MiB read
        // and dropped, once the export noticed its build finished (it
        // polls with a backoff up to 10 s).
        let mut first = source.open_disk(1, 0).await?;
        futures_util::StreamExt::next(&mut first).await;
        drop(first);
        let (secs, hex, n) = read_disk(source.as_ref(), 1).await?;
        anyhow::ensure!(hex == want, "hypersdk read {hex}, seeded {want}");
        bytes = n;
        ours.push(secs);
        let storage = peer.storage.endpoint();
        let v: serde_json::Value = serde_json::from_str(
            peer.sdk(&format!(
                "sys.argv[5:] = {:?}\n{sdk}",
                [storage.as_str(), BUCKET, object.as_str()]
            ))
            .trim(),
        )?;
        source.close_after(true).await?;
        anyhow::ensure!(v["sha256"] == want.as_str(), "the SDK read {}", v["sha256"]);
        theirs.push(v["secs"].as_f64().unwrap_or(f64::NAN));
        eprintln!(
            "gcp round {round}: hypersdk {secs:.2} s, SDK + tar {:.2} s",
            theirs[round]
        );
    }
    report(
        &format!("Compute Engine image export (tar.gz in GCS), {gib} GiB disk"),
        &ours,
        &theirs,
        "google-cloud-storage download_to_file | tar -xzSf -",
        bytes,
    );
    Ok(())
}

/// KubeVirt: a VM's 1 GiB (SIZE_MIB) PVC volume read from the real
/// virt-exportserver through the provider, and exported as an OVF
/// directory, against `curl` downloading the same raw volume URL.
async fn kubevirt(size_mib: u64) -> anyhow::Result<()> {
    use hypersdk_testsupport::kube::KubeCluster;
    let k = KubeCluster::start();
    let seeded = k.seed_vm_sized("bench-1", size_mib);
    let want = seeded["disks"]["bench-1-data"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let config: hypersdk_kubevirt::KubevirtConfig =
        serde_json::from_value(serde_json::json!({ "kubeconfig": k.kubeconfig }))?;
    let p = config.provider().await?;
    let tmp = tempfile::tempdir()?;
    let (mut setups, mut ours, mut null, mut files, mut exports) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    let mut total = 0;
    let (mut cpu_files, mut cpu_exports) = (Vec::new(), Vec::new());
    let (mut durable, mut cpu_durable) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let opened = Instant::now();
        let source = p.open_export("bench-1").await?;
        setups.push(opened.elapsed().as_secs_f64());
        let (secs, hex, n) = read_disk(source.as_ref(), 1).await?;
        anyhow::ensure!(hex == want, "hypersdk read {hex}, seeded {want}");
        bytes = n;
        total = source.spec().disks.iter().map(|d| d.capacity).sum();
        ours.push(secs);
        // curl reads the volumes of the same export.
        let token: serde_json::Value =
            serde_json::from_str(&source.resume_token().unwrap_or_default())?;
        let export = k.get(&format!(
            "/apis/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports/{}",
            token["export"].as_str().unwrap_or_default()
        ));
        let links = &export["status"]["links"]["external"];
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, links["cert"].as_str().unwrap_or_default())?;
        let url = |name: &str| {
            links["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == name))
                .and_then(|v| v["formats"][0]["url"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let secret = k.get(&format!(
            "/api/v1/namespaces/default/secrets/{}",
            token["secret"].as_str().unwrap_or_default()
        ));
        use base64::Engine as _;
        let tok = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"]["token"].as_str().unwrap_or_default())?,
        )?;
        let curl = |outputs: &[(&str, std::path::PathBuf)]| -> anyhow::Result<()> {
            let mut c = Command::new("curl");
            c.args(["-sS", "--fail", "--cacert"])
                .arg(&ca)
                .args(["-H", &format!("x-kubevirt-export-token: {tok}")]);
            for (volume, out) in outputs {
                c.arg("-o").arg(out).arg(url(volume));
            }
            let o = c.output()?;
            anyhow::ensure!(
                o.status.success(),
                "curl: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(())
        };
        let start = Instant::now();
        curl(&[("bench-1-data", "/dev/null".into())])?;
        let secs_null = start.elapsed().as_secs_f64();
        null.push(secs_null);
        // Both volumes into files; with `sync`, made durable as the
        // export makes its files (`sync FILE…` after curl; the export fsyncs
        // each file before it checkpoints or publishes). (seconds, CPU).
        let to_files = |sync: bool| -> anyhow::Result<(f64, f64)> {
            let got = tmp.path().join("curl");
            std::fs::create_dir_all(&got)?;
            let files = [got.join("root.img"), got.join("data.img")];
            let cpu = cpu_seconds().1;
            let start = Instant::now();
            curl(&[
                ("bench-1-root", files[0].clone()),
                ("bench-1-data", files[1].clone()),
            ])?;
            if sync {
                let synced = Command::new("sync").args(&files).status()?;
                anyhow::ensure!(synced.success(), "sync");
            }
            let timed = (start.elapsed().as_secs_f64(), cpu_seconds().1 - cpu);
            std::fs::remove_dir_all(&got)?;
            Ok(timed)
        };
        let (secs_files, cpu_f) = to_files(false)?;
        files.push(secs_files);
        cpu_files.push(cpu_f);
        let (secs_durable, cpu_d) = to_files(true)?;
        durable.push(secs_durable);
        cpu_durable.push(cpu_d);
        // The whole VM from the same export, as an OVF directory.
        let dir = tmp.path().join(format!("ovf-{round}"));
        let cpu = cpu_seconds().0;
        let start = Instant::now();
        hypersdk_core::Exporter::new(hypersdk_core::ExportOptions::new(
            hypersdk_core::PackageFormat::Ovf,
        ))
        .export_source(
            source.as_ref(),
            "kubevirt",
            &hypersdk_sinks::LocalDirSink::new(&dir),
        )
        .await?;
        exports.push(start.elapsed().as_secs_f64());
        cpu_exports.push(cpu_seconds().0 - cpu);
        source.close_after(true).await?;
        let check = std::process::Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(dir.join("bench-1/bench-1-disk2.vmdk"))
            .arg(k.pvc_dir("default", "bench-1-data").join("disk.img"))
            .status()?;
        anyhow::ensure!(
            check.success(),
            "qemu-img compare of the exported data disk: {:?}",
            std::fs::read_dir(&dir)?.collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir)?;
        eprintln!(
            "kubevirt round {round}: export Ready after {:.2} s; hypersdk read {secs:.2} s, \
             curl → /dev/null {secs_null:.2} s, curl → files {secs_files:.2} s (CPU {cpu_f:.2} s), \
             + sync {:.2} s (CPU {:.2} s), \
             OVF export {:.2} s (CPU {:.2} s)",
            setups[round], durable[round], cpu_durable[round], exports[round], cpu_exports[round]
        );
    }
    report(
        &format!("KubeVirt volume, {size_mib} MiB (half random)"),
        &ours,
        &null,
        "curl (same export URL, to /dev/null)",
        bytes,
    );
    let (e, f) = (median(exports.clone()), median(files.clone()));
    println!(
        "| curl → files, both volumes of the same export (baseline; CPU {:.2} s) | {f:.2} | {:.1} | 1.00× |",
        median(cpu_files),
        total as f64 / 1e6 / f,
    );
    let d = median(durable.clone());
    println!(
        "| curl → files + `sync` of both (durable, as the export's files are; CPU {:.2} s) | {d:.2} | {:.1} | {:.2}× |",
        median(cpu_durable),
        total as f64 / 1e6 / d,
        f / d
    );
    println!(
        "| **hypersdk: the VM (16 MiB + {size_mib} MiB) exported as an OVF directory** from the same export (CPU {:.2} s) | {e:.2} | {:.1} | {:.2}× ({:.2}× of durable curl) |",
        median(cpu_exports),
        total as f64 / 1e6 / e,
        f / e,
        d / e
    );
    println!(
        "| (before either: creating the VirtualMachineExport until Ready) | {:.2} | – | – |",
        median(setups)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    println!("| read | secs | MB/s | vs baseline |");
    println!("|---|---|---|---|");
    let clouds = std::env::var("HSDK_CLOUDS").unwrap_or_else(|_| "azure,aws".into());
    if clouds.contains("azure") {
        azure(size_mib).await?;
    }
    if clouds.contains("aws") {
        aws(size_mib).await?;
    }
    if clouds.contains("gcp") {
        gcp(size_mib).await?;
    }
    if clouds.contains("kubevirt") {
        kubevirt(size_mib).await?;
    }
    Ok(())
}
