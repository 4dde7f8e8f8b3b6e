//! Instance-role credentials from the instance metadata service (IMDSv2),
//! against the stub tests/peers/imds.py — read first by botocore's own
//! InstanceMetadataFetcher, so the stub answers as boto3 expects — then
//! used by the provider to list moto's instances.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::creds::CredentialSource;
use hypersdk_aws::ebs::Ebs;
use hypersdk_aws::ec2::Ec2;
use hypersdk_aws::AwsProvider;
use hypersdk_core::Provider;
use hypersdk_testsupport::python::run_python;
use hypersdk_testsupport::s3::{Imds, MotoS3, S3Peer, ACCESS_KEY, CONTAINER_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_role_signs_when_no_keys_are_given() {
    let moto = MotoS3::start();
    moto.seed_instance(None);
    let imds = Imds::start();
    let botocore = run_python(
        "import sys, json\nfrom botocore.utils import InstanceMetadataFetcher\n\
         c = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=sys.argv[1]).retrieve_iam_role_credentials()\n\
         print(json.dumps({'role': c['role_name'], 'key': c['access_key'], 'token': bool(c['token'])}))",
        &[&imds.endpoint()],
    );
    let b: serde_json::Value = serde_json::from_str(botocore.trim()).unwrap();
    assert_eq!(b["role"], "hypersdk-exporter");
    assert_eq!(b["key"], ACCESS_KEY);
    assert_eq!(b["token"], true);

    let role = CredentialSource::instance_role(&imds.endpoint()).unwrap();
    let p = AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", role.clone()).unwrap(),
        Ebs::new(&moto.endpoint(), "us-east-1", role).unwrap(),
    );
    let vms = p.list_vms().await.unwrap();
    assert!(vms.iter().any(|v| v.name == "web-01"), "{vms:?}");
    p.vm_spec("web-01").await.unwrap();
    let s = imds.stats();
    assert_eq!(
        s["credentials"], 2,
        "botocore's fetch, then ours once (cached): {s}"
    );
    assert_eq!(s["refused"], 0, "{s}");

    // Nothing listens: the error says what to set instead.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let none = CredentialSource::instance_role(&format!("http://127.0.0.1:{port}")).unwrap();
    let p = AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", none.clone()).unwrap(),
        Ebs::new(&moto.endpoint(), "us-east-1", none).unwrap(),
    );
    let e = p.list_vms().await.unwrap_err().to_string();
    assert!(
        e.contains("no AWS credentials") && e.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );
}

/// The task or pod role from the container credentials endpoint (ECS, EKS
/// Pod Identity), read first by botocore's ContainerMetadataFetcher; a
/// wrong token is refused, and plain HTTP to other hosts is never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_role_signs_when_its_endpoint_is_set() {
    let moto = MotoS3::start();
    moto.seed_instance(None);
    let imds = Imds::start();
    let url = format!("{}/v2/credentials/task-1", imds.endpoint());
    let botocore = run_python(
        "import sys, json\nfrom botocore.utils import ContainerMetadataFetcher\n\
         c = ContainerMetadataFetcher().retrieve_full_uri(sys.argv[1], headers={'Authorization': sys.argv[2]})\n\
         print(json.dumps({'key': c['AccessKeyId'], 'token': bool(c['Token'])}))",
        &[&url, CONTAINER_TOKEN],
    );
    let b: serde_json::Value = serde_json::from_str(botocore.trim()).unwrap();
    assert_eq!(b["key"], ACCESS_KEY);

    let role = CredentialSource::container(&url, Some(CONTAINER_TOKEN.into())).unwrap();
    let p = AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", role.clone()).unwrap(),
        Ebs::new(&moto.endpoint(), "us-east-1", role).unwrap(),
    );
    assert!(p
        .list_vms()
        .await
        .unwrap()
        .iter()
        .any(|v| v.name == "web-01"));

    let wrong = CredentialSource::container(&url, Some("not-it".into())).unwrap();
    let p = AwsProvider::new(
        Ec2::new(&moto.endpoint(), "us-east-1", wrong.clone()).unwrap(),
        Ebs::new(&moto.endpoint(), "us-east-1", wrong).unwrap(),
    );
    let e = p.list_vms().await.unwrap_err().to_string();
    assert!(
        e.contains("container credentials endpoint") && e.contains("401"),
        "{e}"
    );
    assert!(!e.contains("not-it"), "{e}");
    let e = CredentialSource::container("http://10.1.2.3/v2/credentials/x", None).unwrap_err();
    assert_eq!(e.code(), "invalid_argument", "{e}");
}
