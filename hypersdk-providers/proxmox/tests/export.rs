//! The Proxmox provider against the API stub (tests/peers/proxmox_api.py)
//! and a real OpenSSH server reading qcow2/raw files qemu-img made.

#![allow(clippy::unwrap_used)]

use hypersdk_core::Provider;
use hypersdk_proxmox::ProxmoxConfig;
use hypersdk_testsupport::proxmox::{make_parent, Proxmox};
use hypersdk_testsupport::{mixed_content, path_str, run_tool};
use serde_json::json;

fn provider(
    pve: &Proxmox,
    tweak: impl FnOnce(&mut serde_json::Value),
) -> hypersdk_proxmox::ProxmoxProvider {
    let mut s = pve.settings();
    s.as_object_mut().unwrap().remove("kind");
    tweak(&mut s);
    let c: ProxmoxConfig = serde_json::from_value(s).unwrap();
    c.provider().unwrap()
}

/// VM 100 "web-1" (running; qcow2 scsi0 of 24 MiB, qcow2 virtio1 of 8 MiB)
/// and VM 101 "db-1" (stopped; raw sata0 of 8 MiB); returns the contents.
fn seed(pve: &Proxmox) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (vmid, name, fmt, size) in [
        (100, "vm-100-disk-0.qcow2", "qcow2", 24 << 20),
        (100, "vm-100-disk-1.qcow2", "qcow2", 8 << 20),
        (101, "vm-101-disk-0.raw", "raw", 8 << 20),
    ] {
        let mut data = mixed_content(size);
        data[..8].copy_from_slice(&name.as_bytes()[..8]);
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, &data).unwrap();
        let file = pve.volume(vmid, name);
        make_parent(&file);
        run_tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
                path_str(&raw),
                path_str(&file),
            ],
        );
        out.push(data);
    }
    pve.seed_vm(
        "pve1",
        100,
        "running",
        json!({
            "name": "web-1", "cores": 2, "sockets": 1, "memory": "2048", "bios": "ovmf",
            "machine": "q35", "ostype": "l26", "boot": "order=scsi0;net0",
            "scsi0": "local:100/vm-100-disk-0.qcow2,size=24M",
            "virtio1": "local:100/vm-100-disk-1.qcow2,size=8M",
            "ide2": "none,media=cdrom",
            "net0": "virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1",
        }),
    );
    pve.seed_vm(
        "pve2",
        101,
        "stopped",
        json!({
            "name": "db-1", "cores": 1, "memory": 1024, "ostype": "win10",
            "sata0": "local:101/vm-101-disk-0.raw,size=8M",
        }),
    );
    let mut it = out.into_iter();
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

async fn read_disk(src: &dyn hypersdk_core::ExportSource, i: usize, offset: u64) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut s = src.open_disk(i, offset).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    got
}

#[tokio::test]
async fn inventory_and_disks_of_a_running_and_a_stopped_vm() {
    let pve = Proxmox::start();
    let (web0, web1, db0) = seed(&pve);
    let p = provider(&pve, |_| {});
    let vms = p.list_vms().await.unwrap();
    let names: Vec<_> = vms
        .iter()
        .map(|v| (v.id.as_str(), v.name.as_str()))
        .collect();
    assert_eq!(names, [("100", "web-1"), ("101", "db-1")]);
    let spec = p.vm_spec("web-1").await.unwrap();
    assert_eq!((spec.cpus, spec.memory_mib), (2, 2048));
    assert_eq!(spec.disks.len(), 2);
    assert_eq!(p.vm_spec("pve2/101").await.unwrap().name, "db-1");

    // The running VM: a snapshot first; the VM writes on meanwhile, the
    // export reads what the snapshot saw.
    let src = p.open_export("100").await.unwrap();
    assert_eq!(pve.stats()["snapshots"]["100"].as_array().unwrap().len(), 1);
    run_tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x99 0 1M",
            path_str(&pve.volume(100, "vm-100-disk-0.qcow2")),
        ],
    );
    assert!(
        read_disk(src.as_ref(), 0, 0).await == web0,
        "scsi0 as snapshotted"
    );
    assert!(read_disk(src.as_ref(), 1, 0).await == web1);
    assert!(
        read_disk(src.as_ref(), 0, 5 << 20).await == web0[5 << 20..],
        "from an offset"
    );
    src.close().await.unwrap();
    let stats = pve.stats();
    assert_eq!(
        stats["snapshots"]["100"].as_array().unwrap().len(),
        0,
        "{stats}"
    );
    assert_eq!(stats["snapshots_deleted"], 1);

    // The stopped VM: no snapshot; raw read as is. Its node is reached at
    // the address the cluster reports (GET /cluster/status), no override.
    let p = provider(&pve, |s| {
        s.as_object_mut().unwrap().remove("ssh_hosts");
    });
    let src = p.open_export("db-1").await.unwrap();
    assert!(read_disk(src.as_ref(), 0, 0).await == db0);
    src.close().await.unwrap();
    assert_eq!(pve.stats()["snapshots_made"], 1);
}

#[tokio::test]
async fn bad_token_fingerprint_host_key_and_names_each_say_what_failed() {
    let pve = Proxmox::start();
    seed(&pve);
    let err = |e: hypersdk_core::Error| e.to_string();
    let p = provider(&pve, |s| s["token"] = json!("root@pam!hypersdk=wrong"));
    let e = err(p.list_vms().await.unwrap_err());
    assert!(e.contains("token was refused"), "{e}");
    let p = provider(&pve, |s| s["fingerprint"] = json!("AA:BB"));
    let e = err(p.list_vms().await.unwrap_err());
    assert!(
        e.contains("not trusted") && e.contains(&pve.fingerprint),
        "{e}"
    );
    let p = provider(&pve, |s| s["ssh_host_keys"] = json!(["SHA256:AAAA"]));
    let e = err(p.open_export("db-1").await.unwrap_err());
    assert!(e.contains("host key") && e.contains(&pve.host_key), "{e}");
    let p = provider(&pve, |_| {});
    let e = err(p.vm_spec("nope").await.unwrap_err());
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test]
async fn running_and_stopped_vms_pass_the_provider_testkit() {
    let pve = Proxmox::start();
    seed(&pve);
    let p = provider(&pve, |_| {});
    hypersdk_testkit::provider::run_suite(&p, "web-1").await;
    hypersdk_testkit::provider::run_suite(&p, "db-1").await;
    // Every snapshot the suite's exports made is gone.
    let stats = pve.stats();
    assert_eq!(
        stats["snapshots"]["100"].as_array().unwrap().len(),
        0,
        "{stats}"
    );
    assert_eq!(
        stats["snapshots_made"], stats["snapshots_deleted"],
        "{stats}"
    );
}

/// The stub answers proxmoxer (the client Proxmox users script with) in the
/// shapes it parses, for every call the provider makes.
#[tokio::test]
async fn proxmoxer_reads_the_stub_as_the_provider_does() {
    let pve = Proxmox::start();
    seed(&pve);
    let code = r#"
import sys, json, time, warnings
warnings.filterwarnings("ignore")
from proxmoxer import ProxmoxAPI
user_token, secret = sys.argv[2].split("=", 1)
user, token = user_token.split("!")
px = ProxmoxAPI("127.0.0.1", port=int(sys.argv[1]), user=user, token_name=token,
                token_value=secret, verify_ssl=False)
out = {"version": px.version.get()["release"]}
out["vms"] = [(r["vmid"], r["node"], r["status"]) for r in px.cluster.resources.get(type="vm")]
out["config"] = px.nodes("pve1").qemu(100).config.get()["scsi0"]
out["status"] = px.nodes("pve1").qemu(100).status.current.get()["status"]
upid = px.nodes("pve1").qemu(100).snapshot.post(snapname="fromPy", vmstate=0)
while px.nodes("pve1").tasks(upid).status.get()["status"] != "stopped":
    time.sleep(0.1)
out["exit"] = px.nodes("pve1").tasks(upid).status.get()["exitstatus"]
out["snaps"] = [s["name"] for s in px.nodes("pve1").qemu(100).snapshot.get()]
out["path"] = px.nodes("pve1").storage("local").content("local:100/vm-100-disk-0.qcow2").get()["format"]
out["storage"] = px.storage("local").get()["type"]
upid = px.nodes("pve1").qemu(100).snapshot("fromPy").delete()
try:
    px.nodes("pve1").qemu(999).config.get()
except Exception as e:
    out["missing"] = str(e)
print(json.dumps(out))
"#;
    let port = pve.port.to_string();
    let out = hypersdk_testsupport::python::run_python(
        code,
        &[&port, hypersdk_testsupport::proxmox::TOKEN],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["version"], "8.3");
    assert_eq!(
        v["vms"],
        json!([[100, "pve1", "running"], [101, "pve2", "stopped"]])
    );
    assert_eq!(v["config"], "local:100/vm-100-disk-0.qcow2,size=24M");
    assert_eq!(
        (v["status"].as_str(), v["exit"].as_str()),
        (Some("running"), Some("OK"))
    );
    assert_eq!(v["snaps"], json!(["fromPy", "current"]));
    assert_eq!(
        (v["path"].as_str(), v["storage"].as_str()),
        (Some("qcow2"), Some("dir"))
    );
    assert!(
        v["missing"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
}
