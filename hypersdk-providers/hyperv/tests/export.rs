//! The Hyper-V provider against the WinRM stub (tests/peers/winrm_hyperv.py)
//! and a real Samba server sharing VHDX files qemu-img made.

#![allow(clippy::unwrap_used)]

use hypersdk_core::Provider;
use hypersdk_hyperv::HypervConfig;
use hypersdk_testsupport::hyperv::HyperV;
use serde_json::json;

fn provider(
    hv: &HyperV,
    tweak: impl FnOnce(&mut serde_json::Value),
) -> hypersdk_hyperv::HypervProvider {
    let mut s = hv.settings();
    s.as_object_mut().unwrap().remove("kind");
    tweak(&mut s);
    let c: HypervConfig = serde_json::from_value(s).unwrap();
    c.provider().unwrap()
}

fn seed(hv: &HyperV) -> Vec<Vec<u8>> {
    hv.seed_example()
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
async fn inventory_and_disks_from_a_checkpoint_over_smb() {
    let hv = HyperV::start();
    let data = seed(&hv);
    let p = provider(&hv, |_| {});
    let vms = p.list_vms().await.unwrap();
    let names: Vec<_> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-1", "db-1"]);
    let spec = p.vm_spec("web-1").await.unwrap();
    assert_eq!((spec.cpus, spec.memory_mib, spec.disks.len()), (4, 4096, 2));
    assert!(spec.hardware.secure_boot);
    assert_eq!(spec.nics[0].mac.as_deref(), Some("00:15:5d:01:02:03"));
    assert_eq!(
        (spec.nics[0].model.as_str(), spec.nics[0].network.as_str()),
        ("netvsc", "External")
    );
    let db = p
        .vm_spec("7a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff")
        .await
        .unwrap();
    assert_eq!(db.name, "db-1");
    assert_eq!(db.nics[0].model, "dec21140", "a legacy adapter");

    let src = p.open_export("web-1").await.unwrap();
    assert_eq!(
        hv.stats()["checkpoints"]["web-1"].as_array().unwrap().len(),
        1
    );
    assert!(
        read_disk(src.as_ref(), 0, 0).await == data[0],
        "disk0 as checkpointed"
    );
    assert!(
        read_disk(src.as_ref(), 1, 0).await == data[1],
        "the fixed VHDX"
    );
    assert!(
        read_disk(src.as_ref(), 0, 5 << 20).await == data[0][5 << 20..],
        "from an offset"
    );
    src.close().await.unwrap();
    let stats = hv.stats();
    assert_eq!(
        stats["checkpoints"]["web-1"].as_array().unwrap().len(),
        0,
        "{stats}"
    );
    assert_eq!(stats["checkpoints_removed"], 1);

    // Basic sign-in, and a share mounted by the user instead of SMB.
    let share = hv.dir.path().join("share");
    let p = provider(&hv, |s| {
        s["auth"] = json!("basic");
        s.as_object_mut().unwrap().remove("shares");
        s["mounts"] = json!({"C:\\VMs": share});
    });
    let src = p.open_export("db-1").await.unwrap();
    assert!(read_disk(src.as_ref(), 0, 0).await == data[2]);
    src.close().await.unwrap();
}

#[tokio::test]
async fn bad_password_fingerprint_share_and_names_each_say_what_failed() {
    let hv = HyperV::start();
    seed(&hv);
    let err = |e: hypersdk_core::Error| e.to_string();
    let p = provider(&hv, |s| s["password"] = json!("wrong"));
    let e = err(p.list_vms().await.unwrap_err());
    assert!(e.contains("refused") && e.contains("Administrator"), "{e}");
    let p = provider(&hv, |s| {
        s["password"] = json!("wrong");
        s["auth"] = json!("basic");
    });
    let e = err(p.list_vms().await.unwrap_err());
    assert!(e.contains("refused"), "{e}");
    let p = provider(&hv, |s| s["fingerprint"] = json!("AA:BB"));
    let e = err(p.list_vms().await.unwrap_err());
    assert!(
        e.contains("not trusted") && e.contains(&hv.fingerprint),
        "{e}"
    );
    let p = provider(&hv, |_| {});
    let e = err(p.vm_spec("nope").await.unwrap_err());
    assert!(e.contains("nope") && e.contains("unable to find"), "{e}");
    // The share unreachable: one clear error, and the checkpoint removed.
    let p = provider(&hv, |s| s["smb_port"] = json!(1));
    let src = p.open_export("web-1").await.unwrap();
    let Err(e) = src.open_disk(0, 0).await else {
        panic!("the share is unreachable")
    };
    let e = e.to_string();
    assert!(e.contains("SMB") && e.contains("127.0.0.1:1"), "{e}");
    src.close().await.unwrap();
    // A disk outside every mapped folder is refused before any checkpoint.
    let p = provider(&hv, |s| {
        s["shares"] = json!({"D:\\Other": "\\\\127.0.0.1\\vms"})
    });
    let e = err(p.open_export("web-1").await.unwrap_err());
    assert!(e.contains("no folder the settings map"), "{e}");
    let stats = hv.stats();
    assert_eq!(
        stats["checkpoints_made"], stats["checkpoints_removed"],
        "{stats}"
    );
    // A hostile name stays a name.
    let e = err(p.vm_spec("x'; Stop-Computer; '").await.unwrap_err());
    assert!(e.contains("unable to find"), "{e}");
}

#[tokio::test]
async fn running_and_stopped_vms_pass_the_provider_testkit() {
    let hv = HyperV::start();
    seed(&hv);
    let p = provider(&hv, |_| {});
    hypersdk_testkit::provider::run_suite(&p, "web-1").await;
    hypersdk_testkit::provider::run_suite(&p, "db-1").await;
    let stats = hv.stats();
    assert_eq!(
        stats["checkpoints_made"], stats["checkpoints_removed"],
        "{stats}"
    );
}

/// The stub answers pywinrm (the client Windows admins script WinRM with
/// from Linux) for the scripts the provider runs, over NTLM and Basic.
#[tokio::test]
async fn pywinrm_reads_the_stub_as_the_provider_does() {
    let hv = HyperV::start();
    seed(&hv);
    let code = r##"
import sys, json, warnings
warnings.filterwarnings("ignore")
import winrm
out = {}
for t in ("ntlm", "basic"):
    s = winrm.Session(sys.argv[1], auth=(sys.argv[2], sys.argv[3]), transport=t, server_cert_validation="ignore")
    r = s.run_ps("# hypersdk:list-vms\nGet-VM | ConvertTo-Json")
    out[t] = [v["Name"] for v in json.loads(r.std_out)]
    r = s.run_ps("# hypersdk:describe-vm\n$p_name = 'nope'\n")
    out[t + "_missing"] = [r.status_code, r.std_err.decode()]
r = s.run_ps("# hypersdk:describe-vm\n$p_name = 'web-1'\n")
out["disks"] = [d["Path"] for d in json.loads(r.std_out)["Disks"]]
print(json.dumps(out))
"##;
    let port = hv.port.to_string();
    let url = format!("https://127.0.0.1:{port}/wsman");
    let out = hypersdk_testsupport::python::run_python(
        code,
        &[
            &url,
            hypersdk_testsupport::hyperv::USER,
            hypersdk_testsupport::hyperv::PASSWORD,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ntlm"], json!(["web-1", "db-1"]));
    assert_eq!(v["basic"], json!(["web-1", "db-1"]));
    assert_eq!(v["ntlm_missing"][0], 1);
    assert!(
        v["ntlm_missing"][1]
            .as_str()
            .unwrap()
            .contains("unable to find a virtual machine"),
        "{v}"
    );
    assert_eq!(
        v["disks"],
        json!(["C:\\VMs\\web-1\\disk0.vhdx", "C:\\VMs\\web-1\\data.vhdx"])
    );
}
