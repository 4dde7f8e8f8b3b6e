//! `hyperctl export --provider azure://…` against the ARM stub over Azurite
//! (tests/peers/azure_arm.py): a running VM seeded with three managed disks
//! is exported as an OVF directory whose disks qemu-img finds equal to the
//! seeded content, and as an OVA that verifies; the snapshots and read
//! access the exports took are released; credentials come from azure-identity's
//! variables and never show.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::azure_compute::{
    AzureCompute, CLIENT_ID, CLIENT_SECRET, RESOURCE_GROUP, SUBSCRIPTION, TENANT,
};
use hypersdk_testsupport::{assert_same_guest_data, path_str};

/// The stub's service principal the way azure-identity's variables give
/// it, its authority being the stub at `endpoint`.
fn service_principal(endpoint: &str) -> [(&'static str, &str); 4] {
    [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
        ("AZURE_AUTHORITY_HOST", endpoint),
    ]
}

#[test]
fn an_azure_vm_exports_through_snapshots_of_its_managed_disks() {
    let peer = AzureCompute::start();
    let tmp = tempfile::tempdir().unwrap();
    peer.seed_vm(Some(tmp.path()), false);
    let endpoint = peer.endpoint();
    let provider = format!("azure://{SUBSCRIPTION}/{RESOURCE_GROUP}");
    let endpoint_opt = format!("endpoint={endpoint}");
    let env = service_principal(&endpoint);
    let out = tmp.path().join("out");
    let export = |format: &str| {
        hyperctl_env(
            &[
                "export",
                "web-02",
                "--provider",
                &provider,
                "--provider-opt",
                &endpoint_opt,
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
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!text.contains(CLIENT_SECRET), "the secret was printed");
    assert!(!text.contains("sig="), "a SAS was printed");
    for (n, disk) in [
        (1, "web-02_OsDisk"),
        (2, "web-02-data1"),
        (3, "web-02-data2"),
    ] {
        assert_same_guest_data(
            &out.join(format!("web-02/web-02-disk{n}.vmdk")),
            Some("vmdk"),
            &tmp.path().join(format!("{disk}.raw")),
            Some("raw"),
        );
    }
    let ovf = std::fs::read_to_string(out.join("web-02/web-02.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>2</rasd:VirtualQuantity>"),
        "2 vCPUs of a Standard_D2s_v3"
    );
    assert!(ovf.contains("8192"), "8 GiB of a Standard_D2s_v3");
    assert!(ovf.contains("00:0d:3a:12:34:56"), "the first NIC's MAC");
    assert!(ovf.contains("efi"), "Trusted Launch boots UEFI");
    let s = peer.stats();
    assert_eq!(s["snapshots_made"], 3, "{s}");
    assert_eq!(s["open_access"], serde_json::json!([]), "{s}");
    assert_eq!(s["snapshots"], serde_json::json!([]), "{s}");

    let o = export("ova");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert!(out.join("web-02.ova").exists());
    let s = peer.stats();
    assert_eq!(s["open_access"], serde_json::json!([]), "{s}");
    assert_eq!(s["snapshots"], serde_json::json!([]), "{s}");

    // The listing, and a missing VM named in the error.
    let o = hyperctl_env(
        &[
            "vms",
            "list",
            "--provider",
            &provider,
            "--provider-opt",
            &endpoint_opt,
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("web-02"));
    let o = hyperctl_env(
        &[
            "export",
            "db-99",
            "--provider",
            &provider,
            "--provider-opt",
            &endpoint_opt,
            "--output",
            path_str(&out),
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("db-99"), "{}", stderr(&o));
}

/// No credentials at all off Azure: the managed identity's metadata
/// service does not answer, and the error says what to set.
#[test]
fn missing_credentials_say_what_to_set() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("http://127.0.0.1:{port}");
    let o = hyperctl_env(
        &[
            "vms",
            "list",
            "--provider",
            &format!("azure://{SUBSCRIPTION}"),
            "--provider-opt",
            &format!("endpoint={nobody}"),
        ],
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", nobody.as_str())],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no Azure credentials") && err.contains("AZURE_CLIENT_SECRET"),
        "{err}"
    );
}

/// kill -9 in the middle of an export, then the same command with
/// `--resume`: the resumed run reads the snapshots the killed one made (no
/// new one is taken), the disks equal the seeded ones, and nothing is left
/// on the cloud side at the end.
#[test]
fn kill_9_then_resume_reads_the_same_snapshots() {
    use std::time::Duration;
    let peer = AzureCompute::start();
    let tmp = tempfile::tempdir().unwrap();
    peer.seed_vm(Some(tmp.path()), false);
    let endpoint = peer.endpoint();
    let provider = format!("azure://{SUBSCRIPTION}/{RESOURCE_GROUP}");
    let endpoint_opt = format!("endpoint={endpoint}");
    let out = tmp.path().join("out");
    // Slow enough (30 MiB at 1 MiB/s) for the kill to land mid-export.
    let head = [
        "export",
        "web-02",
        "--provider",
        &provider,
        "--provider-opt",
        &endpoint_opt,
    ];
    let args = |resume: bool| resumable_ovf_export(&head, &out, resume, "1M");
    kill_9_while_reading(
        &args(false),
        &service_principal(&endpoint),
        &out.join(".web-02.partial/.checkpoint.json"),
        Duration::from_millis(1500),
    );
    let s = peer.stats();
    assert_eq!(
        s["snapshots"].as_array().unwrap().len(),
        3,
        "the killed run's snapshots stay: {s}"
    );

    let o = hyperctl_env(&args(true), &service_principal(&endpoint));
    assert!(o.status.success(), "{}", stderr(&o));
    let s = peer.stats();
    assert_eq!(
        s["snapshots_made"], 3,
        "the resumed run made no snapshot: {s}"
    );
    assert_eq!(s["snapshots"], serde_json::json!([]), "{s}");
    assert_eq!(s["open_access"], serde_json::json!([]), "{s}");
    for (n, disk) in [
        (1, "web-02_OsDisk"),
        (2, "web-02-data1"),
        (3, "web-02-data2"),
    ] {
        assert_same_guest_data(
            &out.join(format!("web-02/web-02-disk{n}.vmdk")),
            Some("vmdk"),
            &tmp.path().join(format!("{disk}.raw")),
            Some("raw"),
        );
    }
}
