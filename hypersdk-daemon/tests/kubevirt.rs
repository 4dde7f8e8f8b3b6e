//! hypervisord with a KubeVirt provider in its configuration (the real
//! kube-apiserver and virt-exportserver of tests/peers/kube_cluster.py):
//! the inventory lists the cluster's VMs, a job exports one as an OVA whose
//! disks read back as seeded, a cancelled job leaves no export, Secret or
//! snapshot in the cluster, and a hostile VM name is refused.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

mod common;

use common::Daemon;
use hypersdk_testsupport::kube::KubeCluster;
use hypersdk_testsupport::run_tool;

/// The names of the `plural` export objects the provider made.
fn ours(k: &KubeCluster, plural: &str) -> Vec<String> {
    k.names(&format!(
        "/apis/export.kubevirt.io/v1beta1/namespaces/default/{plural}?labelSelector=created-by%3Dhypersdk"
    ))
}

#[test]
fn a_daemon_exports_kubevirt_vms_and_cancels_cleanly() {
    let k = KubeCluster::start();
    k.seed_vm("web-1", false, false);
    k.seed_vm_sized("big-1", 768);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hypervisord.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\noutput_root: {}\nmax_concurrent: 2\nproviders:\n  k8s: {{ kind: kubevirt, kubeconfig: {} }}\n",
            tmp.path().join("jobs.db").display(),
            tmp.path().join("out").display(),
            k.kubeconfig.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&config);

    let (code, vms) = d.json("GET", "/api/v1/providers/k8s/vms", None);
    assert_eq!(code, 200, "{vms}");
    let text = vms.to_string();
    assert!(text.contains("web-1") && text.contains("big-1"), "{text}");

    // An OVA of web-1, its disks compared with the PVCs' images.
    let id = d.submit(r#"{"vm": "web-1", "provider": "k8s", "format": "ova", "output": "wave1"}"#);
    let job = d.wait(id, Duration::from_secs(180));
    assert_eq!(job["status"], "succeeded", "{job}");
    let ova = tmp.path().join("out/wave1/web-1.ova");
    assert!(ova.is_file(), "{job}");
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run_tool(
        "tar",
        &[
            "-xf",
            ova.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    for (n, pvc) in [(1, "web-1-root"), (2, "web-1-data")] {
        let vmdk = unpacked.join(format!("web-1-disk{n}.vmdk"));
        let src = k.pvc_dir("default", pvc).join("disk.img");
        run_tool(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "vmdk",
                "-F",
                "raw",
                vmdk.to_str().unwrap(),
                src.to_str().unwrap(),
            ],
        );
    }

    // A job cancelled while it reads: nothing of it left in the cluster.
    let id = d.submit(r#"{"vm": "big-1", "provider": "k8s", "format": "ovf", "output": "wave2"}"#);
    d.wait_progress(id, 1 << 20);
    let (code, v) = d.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(code, 202, "{v}");
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "cancelled", "{job}");
    let start = Instant::now();
    while !(ours(&k, "virtualmachineexports").is_empty()
        && k.names("/api/v1/namespaces/default/secrets?labelSelector=created-by%3Dhypersdk")
            .is_empty())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cancelled job's export is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Names that are not Kubernetes names never reach the cluster.
    for vm in ["../web-1", "default/../../x", "Web-1"] {
        let (code, sub) = d.json(
            "POST",
            "/api/v1/jobs",
            Some(&format!(r#"{{"vm": "{vm}", "provider": "k8s"}}"#)),
        );
        let failed = if code == 201 {
            let id = sub["jobs"][0]["id"].as_i64().unwrap();
            d.wait(id, Duration::from_secs(60))
        } else {
            sub
        };
        let text = failed.to_string();
        assert!(
            text.contains("not a VirtualMachine name"),
            "{vm}: {code} {text}"
        );
    }
}
