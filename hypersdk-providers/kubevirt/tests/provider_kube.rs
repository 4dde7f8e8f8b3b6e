//! The KubeVirt provider against a real kube-apiserver with KubeVirt's CRDs
//! and the real virt-exportserver (tests/peers/kube_cluster.py playing
//! KubeVirt's export and snapshot controllers): VMs seeded with two PVC
//! disks of known content pass the provider testkit, describe as seeded,
//! read back byte for byte — directly when stopped, through a snapshot when
//! running — and every export, token Secret and snapshot the provider made
//! is gone afterwards, also when the export fails or is cancelled.

#![allow(clippy::unwrap_used)]

use hypersdk_core::vm::{ControllerKind, Firmware, PowerState};
use hypersdk_core::{ExportSource, Provider};
use hypersdk_kubevirt::{KubevirtConfig, KubevirtProvider};
use hypersdk_testsupport::kube::KubeCluster;
use serde_json::json;

async fn provider(k: &KubeCluster) -> KubevirtProvider {
    let c: KubevirtConfig = serde_json::from_value(json!({
        "kubeconfig": k.kubeconfig,
        "ready_timeout_s": 20,
    }))
    .unwrap();
    c.provider().await.unwrap()
}

/// Nothing the provider made is left in the cluster.
fn released(k: &KubeCluster) {
    let ours = "?labelSelector=created-by%3Dhypersdk";
    assert_eq!(
        k.names(&format!(
            "/apis/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports{ours}"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        k.names(&format!("/api/v1/namespaces/default/secrets{ours}")),
        Vec::<String>::new()
    );
    assert_eq!(
        k.names(&format!(
            "/apis/snapshot.kubevirt.io/v1beta1/namespaces/default/virtualmachinesnapshots{ours}"
        )),
        Vec::<String>::new()
    );
}

async fn digests(source: &dyn ExportSource) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..source.spec().disks.len() {
        out.push(hypersdk_testkit::provider::disk_sha256(source, i).await.0);
    }
    out
}

fn seeded_digests(seeded: &serde_json::Value, vm: &str) -> Vec<String> {
    ["root", "data"]
        .iter()
        .map(|d| {
            seeded["disks"][format!("{vm}-{d}")]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_running_vms_pass_the_testkit_and_read_back_as_seeded() {
    let k = KubeCluster::start();
    let stopped = k.seed_vm("web-1", false, false);
    let running = k.seed_vm("db-1", true, false);
    let p = provider(&k).await;
    hypersdk_testkit::provider::run_suite(&p, "web-1").await;
    released(&k);

    let spec = p.vm_spec("default/web-1").await.unwrap();
    assert_eq!(spec.id, "default/web-1");
    assert_eq!((spec.cpus, spec.hardware.cores_per_socket), (4, Some(2)));
    assert_eq!(spec.memory_mib, 2048);
    assert_eq!(spec.firmware, Firmware::Uefi);
    assert!(!spec.hardware.secure_boot);
    assert_eq!(spec.power_state, PowerState::Off);
    let names: Vec<&str> = spec.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        ["root", "data"],
        "the cloud-init disk is not VM data"
    );
    assert_eq!(spec.disks[0].controller, ControllerKind::Virtio);
    assert_eq!(spec.disks[1].controller, ControllerKind::Sata);
    assert_eq!(spec.disks[0].capacity, 16 << 20);
    let nets: Vec<(&str, Option<&str>, &str)> = spec
        .nics
        .iter()
        .map(|n| (n.network.as_str(), n.mac.as_deref(), n.model.as_str()))
        .collect();
    assert_eq!(
        nets,
        [
            ("pod", Some("02:00:00:aa:bb:01"), "virtio"),
            ("storage-net", Some("02:00:00:aa:bb:02"), "e1000e")
        ]
    );
    assert!(spec
        .annotation
        .as_deref()
        .unwrap()
        .contains("runStrategy Halted"));

    let source = p.open_export("web-1").await.unwrap();
    assert_eq!(
        digests(source.as_ref()).await,
        seeded_digests(&stopped, "web-1")
    );
    source.close().await.unwrap();
    released(&k);

    // A running VM is exported through a snapshot, deleted afterwards.
    let made = k.stats()["snapshots_made"].as_u64().unwrap_or(0);
    let source = p.open_export("db-1").await.unwrap();
    assert_eq!(k.stats()["snapshots_made"].as_u64().unwrap(), made + 1);
    assert_eq!(
        digests(source.as_ref()).await,
        seeded_digests(&running, "db-1")
    );
    source.close().await.unwrap();
    released(&k);

    // A lone PVC (`pvc:NAME`): a one-disk export of the claim itself,
    // labelled as a PVC's, its placeholder hardware said in the annotation.
    let spec = p.vm_spec("default/pvc:web-1-data").await.unwrap();
    assert_eq!(spec.id, "default/pvc:web-1-data");
    assert_eq!(spec.disks.len(), 1);
    assert!(
        spec.annotation.as_deref().unwrap().contains("placeholders"),
        "{spec:?}"
    );
    let source = p.open_export("pvc:web-1-data").await.unwrap();
    let export: serde_json::Value = serde_json::from_str(&source.resume_token().unwrap()).unwrap();
    let object = k.get(&format!(
        "/apis/export.kubevirt.io/v1beta1/namespaces/default/virtualmachineexports/{}",
        export["export"].as_str().unwrap()
    ));
    assert_eq!(
        object["spec"]["source"],
        json!({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "web-1-data"})
    );
    assert_eq!(
        object["metadata"]["labels"]["hypersdk.io/pvc"],
        "web-1-data"
    );
    assert_eq!(
        digests(source.as_ref()).await,
        seeded_digests(&stopped, "web-1")[1..]
    );
    source.close().await.unwrap();
    released(&k);
    let e = p.vm_spec("pvc:nope").await.err().unwrap();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    assert!(e.to_string().contains("PersistentVolumeClaim"), "{e}");
    assert_eq!(k.stats()["servers_running"], json!([]));
}

/// Connections to the export server cut three times while a 256 MiB
/// volume is read: each read resumes with Range from the byte it broke at,
/// and the disks still read back as seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_during_a_256_mib_volume_resume_with_range() {
    let k = KubeCluster::start_cutting(3, 40_000_000);
    let seeded = k.seed_vm_sized("big-1", 256);
    let p = provider(&k).await;
    let source = p.open_export("big-1").await.unwrap();
    assert_eq!(source.spec().disks[1].capacity, 256 << 20);
    assert_eq!(
        digests(source.as_ref()).await,
        seeded_digests(&seeded, "big-1")
    );
    assert_eq!(k.stats()["cuts"], 3, "every cut was met");
    source.close().await.unwrap();
    released(&k);
}

/// An export server that refuses the export's token: an authentication
/// error naming the Secret, and nothing left behind. An export whose status
/// sends a volume to another host (the cloud metadata address) is refused
/// before any request goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_a_foreign_link_are_refused() {
    let k = KubeCluster::start_with_wrong_token();
    k.seed_vm("web-3", false, false);
    k.seed_vm_with("web-4", &["--annotation", "hypersdk.test/links=foreign"]);
    let p = provider(&k).await;
    let e = p.open_export("web-3").await.err().unwrap();
    assert_eq!(e.code(), "auth", "{e}");
    assert!(e.to_string().contains("Secret"), "{e}");
    // A 70-character name (label values hold 63): the export and its
    // Secret are still made — the server's refusal of the token proves it.
    let long = format!("web-{}", "x".repeat(66));
    k.seed_vm(&long, false, false);
    let e = p.open_export(&long).await.err().unwrap();
    assert_eq!(e.code(), "auth", "{e}");
    let e = p.open_export("web-4").await.err().unwrap().to_string();
    assert!(
        e.contains("another host") && e.contains("169.254.169.254"),
        "{e}"
    );
    released(&k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_exported_is_named_and_nothing_is_left() {
    let k = KubeCluster::start_with(-1.0);
    k.seed_vm("app-1", false, true);
    k.seed_vm("app-2", false, false);
    k.seed_vm_with("db-1", &["--label", "app=db", "--label", "tier=backend"]);
    let p = provider(&k).await;
    // A label selector lists only the VMs it matches.
    let listed = |selector: &'static str| {
        let kubeconfig = k.kubeconfig.clone();
        async move {
            let c: KubevirtConfig = serde_json::from_value(json!({
                "kubeconfig": kubeconfig, "label_selector": selector,
            }))
            .unwrap();
            let mut names: Vec<String> = c
                .provider()
                .await
                .unwrap()
                .list_vms()
                .await
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(listed("app=db").await, ["db-1"]);
    assert_eq!(listed("app=web").await, ["app-1", "app-2"]);
    assert_eq!(listed("tier in (backend),app!=web").await, ["db-1"]);
    assert!(listed("app=nothing").await.is_empty());
    let e = p.open_export("app-1").await.err().unwrap();
    assert!(e.to_string().contains("containerDisk"), "{e}");
    let e = p.vm_spec("nope").await.err().unwrap();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    for bad in ["../x", "a/b/c", "UPPER", "x?y"] {
        assert!(p.vm_spec(bad).await.is_err(), "{bad}");
    }
    // An export that never becomes Ready: a timeout naming it, and the
    // export and its Secret deleted.
    let c: KubevirtConfig = serde_json::from_value(json!({
        "kubeconfig": k.kubeconfig, "ready_timeout_s": 2,
    }))
    .unwrap();
    let quick = c.provider().await.unwrap();
    let e = quick.open_export("app-2").await.err().unwrap();
    assert!(e.to_string().contains("not ready after 2 s"), "{e}");
    released(&k);
}
