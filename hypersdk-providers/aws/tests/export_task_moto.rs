//! The AWS provider's classic path (export_method export-task) against
//! moto with tests/peers/moto_export.py: VM Import/Export's instance export
//! writes the root volume as a streamOptimized VMDK into S3, the provider
//! waits for the task and streams the file into the package. boto3 makes
//! the same calls against the extension; the provider testkit passes; the
//! disk reads back as seeded; every path cancels a running task and
//! deletes the file; an interrupted export takes up its task again.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::AwsConfig;
use hypersdk_core::Provider;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "vm-exports";

fn provider(moto: &MotoS3) -> hypersdk_aws::AwsProvider {
    let c: AwsConfig = serde_json::from_value(serde_json::json!({
        "region": "us-east-1",
        "endpoint": moto.endpoint(),
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "export_method": "export-task",
        "export_bucket": format!("s3://{BUCKET}/vms"),
    }))
    .unwrap();
    c.provider().unwrap()
}

/// The export tasks' states, as boto3 reads them.
fn task_states(moto: &MotoS3) -> Vec<String> {
    let out = moto.boto3(
        "ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\nprint(' '.join(t['State'] for t in ec2.describe_export_tasks()['ExportTasks']))",
        &[],
    );
    out.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_provider_export_the_root_volume_through_export_tasks() {
    let moto = MotoS3::start();
    moto.create_bucket(BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let seeded = moto.seed_root_only(Some(tmp.path()));

    // boto3, AWS's own client, against the extension: the task's shape,
    // the file it writes, the errors.
    let out = moto.boto3(
        "import json, time\n\
         ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
         t = ec2.create_instance_export_task(InstanceId=sys.argv[4], TargetEnvironment='vmware', ExportToS3Task={'DiskImageFormat': 'VMDK', 'S3Bucket': 'vm-exports', 'S3Prefix': 'sdk/'})['ExportTask']\n\
         while ec2.describe_export_tasks(ExportTaskIds=[t['ExportTaskId']])['ExportTasks'][0]['State'] == 'active': time.sleep(0.1)\n\
         s3.download_file('vm-exports', t['ExportToS3Task']['S3Key'], sys.argv[5])\n\
         errors = []\n\
         for call in [lambda: ec2.cancel_export_task(ExportTaskId=t['ExportTaskId']), lambda: ec2.describe_export_tasks(ExportTaskIds=['export-i-00000000000000000']), lambda: ec2.create_instance_export_task(InstanceId=sys.argv[4], TargetEnvironment='vmware', ExportToS3Task={'DiskImageFormat': 'VMDK', 'S3Bucket': 'no-such-bucket'})]:\n\
         \x20   try: call()\n\
         \x20   except ec2.exceptions.ClientError as e: errors.append(e.response['Error']['Code'])\n\
         s3.delete_object(Bucket='vm-exports', Key=t['ExportToS3Task']['S3Key'])\n\
         print(json.dumps({'key': t['ExportToS3Task']['S3Key'], 'format': t['ExportToS3Task']['DiskImageFormat'], 'errors': errors}))",
        &[seeded["id"].as_str().unwrap(), tmp.path().join("sdk.vmdk").to_str().unwrap()],
    );
    let sdk: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        sdk["key"].as_str().unwrap().starts_with("sdk/export-i-"),
        "{sdk}"
    );
    assert_eq!(sdk["format"], "vmdk");
    assert_eq!(
        sdk["errors"],
        serde_json::json!([
            "IncorrectState",
            "InvalidExportTaskID.NotFound",
            "InvalidParameter"
        ])
    );
    hypersdk_testsupport::assert_same_guest_data(
        &tmp.path().join("sdk.vmdk"),
        Some("vmdk"),
        &tmp.path().join("root.raw"),
        Some("raw"),
    );

    let p = provider(&moto);
    hypersdk_testkit::provider::run_suite(&p, "app-01").await;
    let source = p.open_export("app-01").await.unwrap();
    let (digest, n) = hypersdk_testkit::provider::disk_sha256(source.as_ref(), 0).await;
    source.close().await.unwrap();
    assert_eq!(n, 1 << 30);
    assert_eq!(digest, seeded["disks"]["/dev/sda1"]);
    assert_eq!(moto.list(BUCKET), Vec::<(String, u64)>::new(), "files left");
    assert!(
        !task_states(&moto).iter().any(|s| s == "active"),
        "{:?}",
        task_states(&moto)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_export_cancels_its_task_and_a_killed_one_is_taken_up() {
    let moto = MotoS3::start_with_export_seconds(2.0);
    moto.create_bucket(BUCKET);
    let seeded = moto.seed_root_only(None);
    let p = provider(&moto);

    // Closed while the task runs: cancelled, nothing written.
    let source = p.open_export("app-01").await.unwrap();
    source.close().await.unwrap();
    assert_eq!(task_states(&moto), ["cancelled"]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(moto.list(BUCKET), Vec::<(String, u64)>::new());

    // Killed (no close): the token finds the same task, which finishes.
    let first = p.open_export("app-01").await.unwrap();
    let token = first.resume_token().unwrap();
    std::mem::forget(first);
    let again = p.resume_export("app-01", &token).await.unwrap();
    let (digest, _) = hypersdk_testkit::provider::disk_sha256(again.as_ref(), 0).await;
    assert_eq!(digest, seeded["disks"]["/dev/sda1"]);
    again.close().await.unwrap();
    assert_eq!(task_states(&moto), ["cancelled", "completed"], "one task");
    assert_eq!(moto.list(BUCKET), Vec::<(String, u64)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_classic_path_cannot_do_is_refused_by_name() {
    let moto = MotoS3::start();
    moto.create_bucket(BUCKET);
    moto.seed_instance(None);
    let p = provider(&moto);
    let e = p.open_export("web-01").await.err().unwrap();
    assert!(e.to_string().contains("root volume"), "{e}");
    assert!(task_states(&moto).is_empty(), "no task was started");
    let e = p.open_export("ami-12c6146b").await.err().unwrap();
    assert!(e.to_string().contains("EBS direct"), "{e}");

    for (method, bucket, says) in [
        ("export-task", None, "export_bucket"),
        ("export-task", Some("gs://x"), "s3://"),
        ("export-task", Some("s3://vm-exports/../x"), "plain"),
        ("snapshots", None, "ebs-direct or export-task"),
    ] {
        let c: AwsConfig = serde_json::from_value(serde_json::json!({
            "region": "us-east-1",
            "endpoint": moto.endpoint(),
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "export_method": method,
            "export_bucket": bucket,
        }))
        .unwrap();
        let e = c.provider().err().unwrap();
        assert!(e.to_string().contains(says), "{method} {bucket:?}: {e}");
    }
}
