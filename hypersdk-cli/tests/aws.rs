//! `hyperctl export --provider aws` against moto (EC2 and the EBS direct
//! APIs, with tests/peers/moto_ebs.py): an instance seeded with boto3 is
//! exported as an OVF directory whose disks qemu-img finds equal to the
//! seeded volumes, and the snapshots the export made are gone.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};
use hypersdk_testsupport::{assert_same_guest_data, path_str};

/// moto's keys and region the way the AWS CLI's variables give them, its
/// endpoint being moto at `endpoint`.
fn moto_env(endpoint: &str) -> [(&'static str, &str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
    ]
}

/// The classic path: `--provider-opt export_method=export-task` makes VM
/// Import/Export write the instance into S3 (moto_export.py), then the
/// export reads it from there; the package's disk equals the seeded root
/// volume, and the task's file is gone afterwards.
#[test]
fn an_ec2_instance_exports_through_an_instance_export_task() {
    let moto = MotoS3::start();
    moto.create_bucket("vm-exports");
    let tmp = tempfile::tempdir().unwrap();
    moto.seed_root_only(Some(tmp.path()));
    let endpoint = moto.endpoint();
    let out = tmp.path().join("out");
    let o = hyperctl_env(
        &[
            "export",
            "app-01",
            "--provider",
            "aws",
            "--provider-opt",
            "export_method=export-task",
            "--provider-opt",
            "export_bucket=s3://vm-exports/vms/",
            "--format",
            "ovf",
            "--output",
            path_str(&out),
            "--verify",
            "--json",
        ],
        &moto_env(&endpoint),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert_same_guest_data(
        &out.join("app-01/app-01-disk1.vmdk"),
        Some("vmdk"),
        &tmp.path().join("root.raw"),
        Some("raw"),
    );
    assert!(
        moto.list("vm-exports").is_empty(),
        "the task's file is deleted"
    );
}

#[test]
fn an_ec2_instance_exports_through_ebs_snapshots() {
    let moto = MotoS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let seeded = moto.seed_instance(Some(tmp.path()));
    let endpoint = moto.endpoint();
    let env = moto_env(&endpoint);
    let out = tmp.path().join("out");
    let o = hyperctl_env(
        &[
            "export",
            "web-01",
            "--provider",
            "aws",
            "--format",
            "ovf",
            "--output",
            path_str(&out),
            "--verify",
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!text.contains(SECRET_KEY), "the secret was printed");
    // Disks in order: the root volume, then by device name.
    for (n, dev) in [(2, "sdf"), (3, "sdg")] {
        assert_same_guest_data(
            &out.join(format!("web-01/web-01-disk{n}.vmdk")),
            Some("vmdk"),
            &tmp.path().join(format!("{dev}.raw")),
            Some("raw"),
        );
    }
    let ovf = std::fs::read_to_string(out.join("web-01/web-01.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>2</rasd:VirtualQuantity>"),
        "2 vCPUs of an m5.large"
    );
    assert!(ovf.contains("8192"), "8 GiB of an m5.large");
    assert!(
        ovf.contains(seeded["id"].as_str().unwrap()),
        "the instance id in the annotation"
    );
    let left = moto.boto3(
        "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\nprint(len(ec2.describe_snapshots(Filters=[{'Name': 'tag:created-by', 'Values': ['hypersdk']}])['Snapshots']))",
        &[],
    );
    assert_eq!(left.trim(), "0", "the export's snapshots are deleted");

    // A missing instance: an error naming it.
    let o = hyperctl_env(
        &[
            "export",
            "db-99",
            "--provider",
            "aws",
            "--output",
            path_str(&out),
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("db-99"), "{}", stderr(&o));
}

/// An endpoint nobody listens on: after the retries, an error naming the
/// call, the endpoint and the cause.
#[test]
fn an_unreachable_endpoint_is_named_with_its_cause() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = hyperctl_env(
        &["vms", "list", "--provider", "aws"],
        &[
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("EC2 DescribeInstances") && err.contains(&endpoint) && err.contains("refused"),
        "{err}"
    );
}

/// kill -9 in the middle of an export, then the same command with
/// `--resume`: the resumed run reads the snapshots the killed one made (no
/// new one is taken), the disks equal the seeded volumes, and the
/// snapshots are gone at the end.
#[test]
fn kill_9_then_resume_reads_the_same_snapshots() {
    use std::time::Duration;
    let moto = MotoS3::start();
    let tmp = tempfile::tempdir().unwrap();
    moto.seed_instance(Some(tmp.path()));
    let endpoint = moto.endpoint();
    let env = moto_env(&endpoint);
    let out = tmp.path().join("out");
    // Slow (about 4 MiB of allocated blocks at 512 KiB/s) so the kill lands mid-export.
    let args = |resume: bool| {
        resumable_ovf_export(
            &["export", "web-01", "--provider", "aws"],
            &out,
            resume,
            "512K",
        )
    };
    let snapshots = || {
        moto.boto3(
            "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\nprint(sorted(s['SnapshotId'] for s in ec2.describe_snapshots(Filters=[{'Name': 'tag:created-by', 'Values': ['hypersdk']}])['Snapshots']))",
            &[],
        )
    };
    kill_9_while_reading(
        &args(false),
        &env,
        &out.join(".web-01.partial/.checkpoint.json"),
        Duration::from_millis(1000),
    );
    let kept = snapshots();
    assert_eq!(
        kept.matches("snap-").count(),
        3,
        "the killed run's snapshots stay: {kept}"
    );

    let o = hyperctl_env(&args(true), &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        snapshots().trim(),
        "[]",
        "the resumed run deleted them, and made no other"
    );
    for (n, dev) in [(2, "sdf"), (3, "sdg")] {
        assert_same_guest_data(
            &out.join(format!("web-01/web-01-disk{n}.vmdk")),
            Some("vmdk"),
            &tmp.path().join(format!("{dev}.raw")),
            Some("raw"),
        );
    }
}
