//! The AWS provider against moto (EC2 and EBS, with tests/peers/moto_ebs.py):
//! an instance seeded with boto3 (tests/peers/seed_ec2_instance.py: two
//! data volumes made from snapshots of known content) passes the provider testkit, its disks read back as
//! seeded, and the snapshots the export made are gone afterwards.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::ebs::Ebs;
use hypersdk_aws::ec2::Ec2;
use hypersdk_aws::sigv4::Credentials;
use hypersdk_aws::AwsProvider;
use hypersdk_core::Provider;
use hypersdk_testkit::provider::disk_sha256;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

fn provider(moto: &MotoS3) -> AwsProvider {
    let creds = Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    };
    AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", creds.clone()).unwrap(),
        Ebs::new(&moto.endpoint(), "us-east-1", creds).unwrap(),
    )
}

/// Snapshots the export tagged as its own.
fn export_snapshots(moto: &MotoS3) -> usize {
    let out = moto.boto3(
        "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\nprint(len(ec2.describe_snapshots(Filters=[{'Name': 'tag:created-by', 'Values': ['hypersdk']}])['Snapshots']))",
        &[],
    );
    out.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_passes_the_provider_testkit_and_reads_back_as_seeded() {
    let moto = MotoS3::start();
    let seeded = moto.seed_instance(None);
    let p = provider(&moto);
    hypersdk_testkit::provider::run_suite(&p, "web-01").await;
    assert_eq!(
        export_snapshots(&moto),
        0,
        "the testkit's export left snapshots"
    );

    let spec = p.vm_spec(seeded["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(spec.name, "web-01");
    assert_eq!(spec.cpus, 2, "m5.large");
    assert_eq!(spec.memory_mib, 8192);
    assert_eq!(spec.disks.len(), 3, "{:?}", spec.disks);
    let source = p.open_export("web-01").await.unwrap();
    assert_eq!(export_snapshots(&moto), 3, "one snapshot per volume");
    for (i, d) in spec.disks.iter().enumerate() {
        let dev = d.name.trim_start_matches("web-01-");
        let Some(want) = seeded["disks"][format!("/dev/{dev}")].as_str() else {
            continue;
        };
        let (got, n) = disk_sha256(source.as_ref(), i).await;
        assert_eq!(n, d.capacity);
        assert_eq!(got, want, "{} reads back as seeded", d.name);
        let ranges = source.allocated_ranges(i).await.unwrap().unwrap();
        assert!(!ranges.is_empty());
    }
    source.close_after(true).await.unwrap();
    assert_eq!(
        export_snapshots(&moto),
        0,
        "the export's snapshots are deleted"
    );
}

/// Connections to the EBS endpoint reset or cut mid-answer (a
/// fault-injecting proxy in front of moto): the reads are tried again and
/// the disk reads back as seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_ebs_connections_are_tried_again() {
    use hypersdk_testsupport::faultproxy::{Fault, FaultProxy};
    let moto = MotoS3::start();
    let seeded = moto.seed_instance(None);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse().unwrap());
    let creds = Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    };
    let p = AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", creds.clone()).unwrap(),
        Ebs::new(&format!("http://{}", proxy.addr()), "us-east-1", creds).unwrap(),
    );
    proxy.inject(&[
        Fault::Reset,
        Fault::CutAfter(1000),
        Fault::Pass,
        Fault::Reset,
    ]);
    let source = p.open_export("web-01").await.unwrap();
    let spec = source.spec().clone();
    let i = spec
        .disks
        .iter()
        .position(|d| d.name == "web-01-sdf")
        .unwrap();
    let (got, _) = disk_sha256(source.as_ref(), i).await;
    assert_eq!(got, seeded["disks"]["/dev/sdf"].as_str().unwrap());
    assert!(proxy.connections() >= 4, "the faults were met");
    source.close_after(true).await.unwrap();
    assert_eq!(export_snapshots(&moto), 0);
}

/// An export cancelled while it reads: it ends as cancelled, nothing is
/// published, and its snapshots are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_deletes_its_snapshots() {
    let moto = MotoS3::start();
    moto.seed_instance(None);
    let p = provider(&moto);
    let out = tempfile::tempdir().unwrap();
    let sink = hypersdk_sinks::LocalDirSink::new(out.path());
    hypersdk_testkit::provider::an_export_cancelled_while_reading_leaves_nothing(
        &p,
        "web-01",
        64 << 20,
        &sink,
    )
    .await;
    assert!(!out.path().join("web-01.ova").exists());
    assert_eq!(
        export_snapshots(&moto),
        0,
        "the cancelled export's snapshots are deleted"
    );
}

/// A run that dies (its source dropped without closing) leaves its
/// snapshots; resuming with its token reads the same snapshots — none is
/// made — and deletes them at the end. A token whose snapshots are gone
/// gives a new export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_export_reads_the_snapshots_of_the_interrupted_one() {
    let moto = MotoS3::start();
    let seeded = moto.seed_instance(None);
    let p = provider(&moto);
    let first = p.open_export("web-01").await.unwrap();
    let token = first.resume_token().unwrap();
    drop(first); // the process died
    assert_eq!(export_snapshots(&moto), 3);

    let again = p.resume_export("web-01", &token).await.unwrap();
    assert_eq!(again.resume_token().as_deref(), Some(token.as_str()));
    assert_eq!(export_snapshots(&moto), 3, "no new snapshot");
    let i = again
        .spec()
        .disks
        .iter()
        .position(|d| d.name == "web-01-sdf")
        .unwrap();
    let (got, _) = disk_sha256(again.as_ref(), i).await;
    assert_eq!(got, seeded["disks"]["/dev/sdf"].as_str().unwrap());
    again.close_after(true).await.unwrap();
    assert_eq!(export_snapshots(&moto), 0);

    let fresh = p.resume_export("web-01", &token).await.unwrap();
    assert_ne!(fresh.resume_token().as_deref(), Some(token.as_str()));
    fresh.close_after(true).await.unwrap();
    assert_eq!(export_snapshots(&moto), 0);
    let e = p
        .resume_export("web-01", r#"{"snapshots": ["x"]}"#)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_argument", "{e}");
}

/// An AMI (registered with boto3 from two seeded snapshots) and a single
/// snapshot are exported in place: their bytes read back as seeded, and the
/// snapshots — the user's, not the export's — are still there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amis_and_snapshots_are_read_in_place_and_kept() {
    let moto = MotoS3::start();
    let seeded = moto.seed_instance(None);
    let (sdf, sdg) = (
        seeded["snapshots"]["/dev/sdf"].as_str().unwrap(),
        seeded["snapshots"]["/dev/sdg"].as_str().unwrap(),
    );
    let ami = moto.boto3(
        "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
         print(ec2.register_image(Name='golden-web', Architecture='x86_64', RootDeviceName='/dev/xvda', BootMode='uefi',\n\
             BlockDeviceMappings=[{'DeviceName': '/dev/xvda', 'Ebs': {'SnapshotId': sys.argv[4], 'VolumeSize': 1}},\n\
                                  {'DeviceName': '/dev/xvdb', 'Ebs': {'SnapshotId': sys.argv[5], 'VolumeSize': 2}}])['ImageId'])",
        &[sdf, sdg],
    );
    let ami = ami.trim();
    let p = provider(&moto);
    let spec = p.vm_spec(ami).await.unwrap();
    assert_eq!(spec.name, "golden-web");
    assert_eq!(spec.disks.len(), 2, "{:?}", spec.disks);
    assert_eq!(spec.disks[0].capacity, 1 << 30);
    assert!(spec
        .annotation
        .as_deref()
        .unwrap()
        .contains("no instance type"));
    assert_eq!(
        spec.firmware,
        hypersdk_core::vm::Firmware::Uefi,
        "BootMode uefi"
    );
    let source = p.open_export(ami).await.unwrap();
    assert_eq!(source.resume_token(), None, "nothing the export made");
    for (i, dev) in [(0, "/dev/sdf"), (1, "/dev/sdg")] {
        let (got, _) = disk_sha256(source.as_ref(), i).await;
        assert_eq!(got, seeded["disks"][dev].as_str().unwrap(), "{dev}");
    }
    source.close_after(true).await.unwrap();

    let source = p.open_export(sdg).await.unwrap();
    assert_eq!(source.spec().disks.len(), 1);
    let (got, _) = disk_sha256(source.as_ref(), 0).await;
    assert_eq!(got, seeded["disks"]["/dev/sdg"].as_str().unwrap());
    source.close_after(true).await.unwrap();

    let left = moto.boto3(
        "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
         print(len(ec2.describe_snapshots(SnapshotIds=sys.argv[4:])['Snapshots']))",
        &[sdf, sdg],
    );
    assert_eq!(left.trim(), "2", "the user's snapshots stay");
    let e = p.vm_spec("ami-0123456789abcdef0").await.unwrap_err();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    let e = p.vm_spec("ami-../x").await.unwrap_err();
    assert_eq!(e.code(), "invalid_argument", "{e}");
}
