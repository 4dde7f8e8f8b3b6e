//! The SigV4 signer signs as AWS's own Python SDK does: the same requests
//! signed by botocore's `SigV4Auth` at the same instant carry the same
//! Authorization header.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::sigv4::{canonical_query, sign, Credentials, Request};
use hypersdk_testsupport::python::run_python;

const BOTOCORE: &str = r#"
import sys, json, datetime
from unittest import mock
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
method, url, body, service, token = sys.argv[1:6]
headers = json.loads(sys.argv[6])
req = AWSRequest(method=method, url=url, data=body.encode(), headers=headers)
creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token or None)
at = datetime.datetime(2026, 11, 30, 12, 34, 56)
with mock.patch("botocore.auth.get_current_datetime", return_value=at):
    SigV4Auth(creds, service, "eu-west-1").add_auth(req)
assert req.headers["X-Amz-Date"] == "20261130T123456Z", req.headers["X-Amz-Date"]
print(req.headers["Authorization"])
"#;

fn botocore(
    method: &str,
    url: &str,
    body: &str,
    service: &str,
    token: &str,
    headers: &str,
) -> String {
    run_python(BOTOCORE, &[method, url, body, service, token, headers])
        .trim()
        .to_string()
}

fn ours(req: &Request<'_>, service: &str, token: Option<&str>) -> String {
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: token.map(str::to_string),
    };
    sign(
        req,
        &creds,
        ("eu-west-1", service),
        "20261130T123456Z",
        false,
    )
    .into_iter()
    .find(|(k, _)| k == "authorization")
    .unwrap()
    .1
}

#[test]
fn an_ec2_query_signs_as_botocore_does() {
    let body = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&Filter.1.Value.1=web%2A";
    let ct = "application/x-www-form-urlencoded; charset=utf-8";
    let req = Request {
        method: "POST",
        host: "127.0.0.1:5000",
        path: "/",
        query: &[],
        headers: &[("content-type".into(), ct.into())],
        body: body.as_bytes(),
    };
    for token in [None, Some("FwoGZXIvYXdzEXAMPLETOKEN")] {
        assert_eq!(
            ours(&req, "ec2", token),
            botocore(
                "POST",
                "http://127.0.0.1:5000/",
                body,
                "ec2",
                token.unwrap_or(""),
                &format!("{{\"Content-Type\": \"{ct}\"}}")
            )
        );
    }
}

#[test]
fn an_ebs_get_with_a_query_signs_as_botocore_does() {
    let query = vec![
        ("maxResults".to_string(), "1000".to_string()),
        ("pageToken".to_string(), "a/b+c=d".to_string()),
        ("blockToken".to_string(), "tok en".to_string()),
    ];
    let req = Request {
        method: "GET",
        host: "ebs.eu-west-1.amazonaws.com",
        path: "/snapshots/snap-0123456789abcdef0/blocks",
        query: &query,
        headers: &[],
        body: b"",
    };
    let url = format!(
        "https://ebs.eu-west-1.amazonaws.com/snapshots/snap-0123456789abcdef0/blocks?{}",
        canonical_query(&query)
    );
    assert_eq!(
        ours(&req, "ebs", None),
        botocore("GET", &url, "", "ebs", "", "{}")
    );
}
