//! A role assumed with a web identity token (EKS service accounts:
//! AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) against moto's STS — whose
//! AssumeRoleWithWebIdentity answer boto3 parses first — then used to sign
//! the provider's EC2 calls; settings from the variables as botocore reads
//! them.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::AwsConfig;
use hypersdk_core::{Provider, ProviderSettings};
use hypersdk_testsupport::s3::{MotoS3, S3Peer};

const ROLE: &str = "arn:aws:iam::123456789012:role/hypersdk-exporter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_role_signs_when_no_keys_are_given() {
    let moto = MotoS3::start();
    moto.seed_instance(None);
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln\n",
    )
    .unwrap();

    let boto = moto.boto3(
        "import json\nsts = boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
         r = sts.assume_role_with_web_identity(RoleArn=sys.argv[4], RoleSessionName='check', WebIdentityToken='header.payload.signature')\n\
         print(json.dumps({'key': bool(r['Credentials']['AccessKeyId']), 'token': bool(r['Credentials']['SessionToken'])}))",
        &[ROLE],
    );
    let b: serde_json::Value = serde_json::from_str(boto.trim()).unwrap();
    assert_eq!(b, serde_json::json!({"key": true, "token": true}));

    let endpoint = moto.endpoint();
    let token_path = token.to_str().unwrap().to_string();
    let env = |k: &str| match k {
        "AWS_REGION" => Some("us-east-1".to_string()),
        "AWS_ENDPOINT_URL" => Some(endpoint.clone()),
        "AWS_ROLE_ARN" => Some(ROLE.to_string()),
        "AWS_WEB_IDENTITY_TOKEN_FILE" => Some(token_path.clone()),
        "AWS_EC2_METADATA_DISABLED" => Some("true".to_string()),
        _ => None,
    };
    let fields = AwsConfig::env_fields(&env);
    let config: AwsConfig = serde_json::from_value(serde_json::Value::Object(fields)).unwrap();
    let p = config.provider().unwrap();
    let vms = p.list_vms().await.unwrap();
    assert!(vms.iter().any(|v| v.name == "web-01"), "{vms:?}");

    // The token file gone: an error naming it.
    std::fs::remove_file(&token).unwrap();
    let p = config.provider().unwrap();
    let e = p.list_vms().await.unwrap_err().to_string();
    assert!(
        e.contains("web identity token file") && e.contains("token"),
        "{e}"
    );
}
