//! Sessions, TLS and the inventory against the govmomi vCenter simulator.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_core::{ControllerKind, Error, Firmware, PowerState, Provider};
use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_vsphere::{ConnectOptions, TlsMode, VsphereProvider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_unless_pinned_or_waived() {
    let sim = Vcsim::start(&[]);
    // Signed by a CA nobody trusts: refused by default, with the thumbprint
    // to check and pin.
    let err = VsphereProvider::connect(&opts(&sim, TlsMode::Verify))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not trusted")
            && err.contains(&sim.thumbprint)
            && err.contains("--thumbprint"),
        "{err}"
    );
    // With that CA trusted: verified for real.
    let mut o = opts(&sim, TlsMode::Verify);
    o.ca_pem = Some(sim.ca_pem.clone().into_bytes());
    let vc = VsphereProvider::connect(&o).await.unwrap();
    assert!(vc.connection().content().full_name.contains("VMware"));
    vc.logout().await.unwrap();
    // Pinned: the right thumbprint (any case, with or without colons) passes.
    let pin = sim.thumbprint.to_lowercase().replace(':', "");
    VsphereProvider::connect(&opts(&sim, TlsMode::Thumbprint(pin)))
        .await
        .unwrap();
    let err = VsphereProvider::connect(&opts(&sim, TlsMode::Thumbprint("00:11".into())))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the pinned one"), "{err}");
    VsphereProvider::connect(&opts(&sim, TlsMode::Insecure))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_unreachable_hosts_are_clear() {
    let sim = Vcsim::start_with_login(&[], "migrator", "s3cret");
    let good = ConnectOptions::new(&sim.url)
        .with_login("migrator", "s3cret")
        .with_tls(TlsMode::Insecure);
    VsphereProvider::connect(&good).await.unwrap();
    let bad = ConnectOptions::new(&sim.url)
        .with_login("migrator", "not-the-password-42")
        .with_tls(TlsMode::Insecure);
    let err = VsphereProvider::connect(&bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::Auth { user, .. } if user == "migrator"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("not-the-password-42"),
        "the password is not echoed: {err}"
    );

    // Credentials in a GOVC_URL-style URL work too.
    let url = sim.url.replace("https://", "https://migrator:s3cret@");
    VsphereProvider::connect(&ConnectOptions::new(url).with_tls(TlsMode::Insecure))
        .await
        .unwrap();

    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = VsphereProvider::connect(
        &ConnectOptions::new(format!("https://127.0.0.1:{port}/sdk"))
            .with_login("u", "p")
            .with_tls(TlsMode::Insecure),
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("cannot connect to 127.0.0.1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_and_describes_vms() {
    let sim = Vcsim::start(&[("alpha", &[8, 4]), ("beta", &[16])]);
    let vc = VsphereProvider::connect(&opts(&sim, TlsMode::Insecure))
        .await
        .unwrap();
    let vms = vc.list_vms().await.unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert!(
        names.contains(&"alpha") && names.contains(&"beta"),
        "{names:?}"
    );
    assert!(
        names.contains(&"DC0_H0_VM0"),
        "the simulator's own VMs too: {names:?}"
    );
    let alpha = vms.iter().find(|v| v.name == "alpha").unwrap();
    assert_eq!(alpha.disks, 2);
    assert_eq!(alpha.total_capacity, 12 << 20);
    assert_eq!(alpha.cpus, 2);
    assert_eq!(alpha.memory_mib, 2048);
    assert_eq!(alpha.power_state, PowerState::Off);

    let spec = vc.vm_spec("alpha").await.unwrap();
    assert_eq!(spec.firmware, Firmware::Uefi);
    assert_eq!(spec.disks.len(), 2);
    assert_eq!(spec.disks[0].capacity, 8 << 20);
    assert_eq!(spec.disks[1].capacity, 4 << 20);
    assert_eq!(spec.disks[0].controller, ControllerKind::Scsi);
    assert!(
        spec.disks[0].location.ends_with("alpha/alpha-disk1.vmdk"),
        "{:?}",
        spec.disks[0]
    );
    assert_eq!(spec.nics.len(), 1);
    assert_eq!(spec.nics[0].network, "VM Network");
    assert_eq!(spec.nics[0].model, "vmxnet3");
    assert!(
        spec.guest_os.description.to_lowercase().contains("ubuntu"),
        "{:?}",
        spec.guest_os
    );

    // By moref too; a missing VM is a clear error.
    let by_id = vc.vm_spec(&spec.id).await.unwrap();
    assert_eq!(by_id.name, "alpha");
    let err = vc.vm_spec("no-such-vm").await.unwrap_err();
    assert!(matches!(err, Error::VmNotFound { .. }), "{err}");

    // Search filters the listing.
    let q = hypersdk_core::VmQuery {
        name: Some("AL*".into()),
        ..Default::default()
    };
    let hits = vc.search_vms(&q).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].folder.as_deref(), Some("/DC0/vm"));
    let q = hypersdk_core::VmQuery {
        name_regex: Some("^(alpha|beta)$".into()),
        folder: Some("/DC0/vm".into()),
        ..Default::default()
    };
    assert_eq!(vc.search_vms(&q).await.unwrap().len(), 2);
    let q = hypersdk_core::VmQuery {
        folder: Some("/DC0/host".into()),
        ..Default::default()
    };
    assert!(vc.search_vms(&q).await.unwrap().is_empty());
    vc.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_answer_is_retried() {
    use hypersdk_testsupport::faultproxy::{Fault, FaultProxy};
    let sim = Vcsim::start(&[("alpha", &[8])]);
    let target: std::net::SocketAddr = sim
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/sdk")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(target);
    // The first connection carries the TLS handshake and the login, then is
    // cut in the middle of the inventory's answer.
    proxy.inject(&[Fault::CutAfter(20_000)]);
    let vc = VsphereProvider::connect(
        &ConnectOptions::new(format!("https://{}/sdk", proxy.addr()))
            .with_login(&sim.user, &sim.password)
            .with_tls(TlsMode::Insecure),
    )
    .await
    .unwrap();
    let vms = vc.list_vms().await.unwrap();
    assert!(vms.iter().any(|v| v.name == "alpha"));
    assert!(
        proxy.connections() >= 2,
        "the cut call went again on a new connection"
    );
}
