//! `hyperctl export --provider kubevirt` against a real kube-apiserver with
//! KubeVirt's CRDs and the real virt-exportserver
//! (tests/peers/kube_cluster.py): a VM with two PVC disks is exported as an
//! OVF directory whose disks qemu-img finds equal to the PVCs' disk.img,
//! and as an OVA that verifies; the export, its token Secret and the
//! snapshot are deleted afterwards; kill -9 mid-export then `--resume`
//! takes up the same VirtualMachineExport and gives the same disks.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::kube::KubeCluster;
use hypersdk_testsupport::{assert_same_guest_data, path_str};

fn ours(k: &KubeCluster) -> Vec<String> {
    let q = "?labelSelector=created-by%3Dhypersdk";
    let mut all = k.names(&format!(
        "/apis/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports{q}"
    ));
    all.extend(k.names(&format!("/api/v1/namespaces/default/secrets{q}")));
    all.extend(k.names(&format!(
        "/apis/snapshot.kubevirt.io/v1beta1/namespaces/default/virtualmachinesnapshots{q}"
    )));
    all
}

fn same_disks(k: &KubeCluster, vm: &str, out: &std::path::Path) {
    for (n, d) in [(1, "root"), (2, "data")] {
        assert_same_guest_data(
            &out.join(format!("{vm}/{vm}-disk{n}.vmdk")),
            Some("vmdk"),
            &k.pvc_dir("default", &format!("{vm}-{d}")).join("disk.img"),
            Some("raw"),
        );
    }
}

#[test]
fn a_kubevirt_vm_exports_through_virtualmachineexport() {
    let k = KubeCluster::start();
    k.seed_vm("web-1", true, false);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let kubeconfig = k.kubeconfig.display().to_string();
    let env = [("KUBECONFIG", kubeconfig.as_str())];
    let export = |format: &str| {
        hyperctl_env(
            &[
                "export",
                "web-1",
                "--provider",
                "kubevirt:///default",
                "--format",
                format,
                "--output",
                path_str(&out),
                "--verify",
                "--json",
            ],
            &env,
        )
    };
    let o = export("ovf");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert!(
        !stderr(&o).contains(&k.token),
        "the cluster token was printed"
    );
    same_disks(&k, "web-1", &out);
    let ovf = std::fs::read_to_string(out.join("web-1/web-1.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"),
        "2 sockets x 2 cores"
    );
    assert!(ovf.contains("2048"), "2 GiB");
    assert!(ovf.contains("efi"), "EFI firmware");
    assert!(ovf.contains("02:00:00:aa:bb:01"), "the first NIC's MAC");
    assert_eq!(
        ours(&k),
        Vec::<String>::new(),
        "what the export made is gone"
    );

    let o = export("ova");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("web-1.ova").exists());
    assert_eq!(ours(&k), Vec::<String>::new());

    // One PVC on its own.
    let o = hyperctl_env(
        &[
            "export",
            "pvc:web-1-data",
            "--provider",
            "kubevirt",
            "--format",
            "ovf",
            "--output",
            path_str(&out),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_guest_data(
        &out.join("web-1-data/web-1-data-disk1.vmdk"),
        Some("vmdk"),
        &k.pvc_dir("default", "web-1-data").join("disk.img"),
        Some("raw"),
    );
    assert_eq!(ours(&k), Vec::<String>::new());

    let o = hyperctl_env(&["vms", "list", "--provider", "kubevirt"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("web-1"));
    let o = hyperctl_env(
        &[
            "export",
            "db-9",
            "--provider",
            "kubevirt",
            "--output",
            path_str(&out),
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("db-9"), "{}", stderr(&o));
}

#[test]
fn kill_9_then_resume_takes_up_the_same_export() {
    use std::time::Duration;
    let k = KubeCluster::start();
    k.seed_vm("web-2", false, false);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let kubeconfig = k.kubeconfig.display().to_string();
    let env = [("KUBECONFIG", kubeconfig.as_str())];
    // 24 MiB at 1 MiB/s: slow enough for the kill to land mid-export.
    let args = |resume: bool| {
        resumable_ovf_export(
            &["export", "web-2", "--provider", "kubevirt"],
            &out,
            resume,
            "1M",
        )
    };
    kill_9_while_reading(
        &args(false),
        &env,
        &out.join(".web-2.partial/.checkpoint.json"),
        Duration::from_millis(1500),
    );
    assert_eq!(k.stats()["exports_seen"], 1);
    let o = hyperctl_env(&args(true), &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        k.stats()["exports_seen"],
        1,
        "the resumed run made no new export"
    );
    same_disks(&k, "web-2", &out);
    assert_eq!(ours(&k), Vec::<String>::new());
}
