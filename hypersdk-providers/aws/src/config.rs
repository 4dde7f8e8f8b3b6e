//! `kind: aws` settings: a region, credentials and endpoints, given the way
//! AWS users already give them.

use async_trait::async_trait;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::creds::CredentialSource;
use crate::ebs::Ebs;
use crate::ec2::Ec2;
use crate::s3::S3;
use crate::sigv4::Credentials;
use crate::AwsProvider;

/// How to reach one region's instances. Unset fields come from the
/// environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, as the AWS CLI reads
/// them) and then the shared files (`~/.aws/credentials`, `~/.aws/config`,
/// profile `AWS_PROFILE` or `default`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region (`eu-west-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// EC2 endpoint (default `https://ec2.REGION.amazonaws.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// EBS direct API endpoint (default `https://ebs.REGION.amazonaws.com`,
    /// or `endpoint` when that is given and this is not).
    #[serde(default)]
    pub ebs_endpoint: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Profile of the shared files.
    #[serde(default)]
    pub profile: Option<String>,
    /// A role to assume with the web identity token in
    /// `web_identity_token_file` (EKS service accounts: AWS_ROLE_ARN).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The web identity token's file (AWS_WEB_IDENTITY_TOKEN_FILE).
    #[serde(default)]
    pub web_identity_token_file: Option<std::path::PathBuf>,
    /// The assumed role's session name (default `hypersdk`).
    #[serde(default)]
    pub role_session_name: Option<String>,
    /// STS endpoint (default `https://sts.REGION.amazonaws.com`, or
    /// `endpoint` when that is given and this is not).
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// The container credentials endpoint (ECS, EKS Pod Identity):
    /// AWS_CONTAINER_CREDENTIALS_FULL_URI, or 169.254.170.2 and
    /// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.
    #[serde(default)]
    pub container_credentials_uri: Option<String>,
    /// Its Authorization header (AWS_CONTAINER_AUTHORIZATION_TOKEN).
    #[serde(default)]
    pub container_authorization_token: Option<hypersdk_core::connect::Secret>,
    /// A file holding it (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, as EKS
    /// Pod Identity sets it), read when connecting.
    #[serde(default)]
    pub container_authorization_token_file: Option<std::path::PathBuf>,
    /// The instance metadata service whose instance role signs when no
    /// keys are given (default `http://169.254.169.254`).
    #[serde(default)]
    pub imds_endpoint: Option<String>,
    /// Never ask the instance metadata service (AWS_EC2_METADATA_DISABLED).
    #[serde(default)]
    pub imds_disabled: bool,
    /// How disks are read: `ebs-direct` (default: a snapshot per volume,
    /// read through the EBS direct APIs) or `export-task` (VM
    /// Import/Export's CreateInstanceExportTask into `export_bucket`, then
    /// read from S3; the root volume only).
    #[serde(default)]
    pub export_method: Option<String>,
    /// Where `export-task` writes: `s3://BUCKET[/PREFIX]` (the bucket must
    /// grant VM Import/Export write access, as its guide says).
    #[serde(default)]
    pub export_bucket: Option<String>,
    /// S3 endpoint, path-style (default: virtual-hosted
    /// `https://BUCKET.s3.REGION.amazonaws.com`).
    #[serde(default)]
    pub s3_endpoint: Option<String>,
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("ebs_endpoint", &self.ebs_endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hide(&self.secret_access_key))
            .field("session_token", &hide(&self.session_token))
            .field("profile", &self.profile)
            .field("role_arn", &self.role_arn)
            .field("web_identity_token_file", &self.web_identity_token_file)
            .field("role_session_name", &self.role_session_name)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("container_credentials_uri", &self.container_credentials_uri)
            .field(
                "container_authorization_token",
                &self
                    .container_authorization_token
                    .as_ref()
                    .map(|_| "<hidden>"),
            )
            .field(
                "container_authorization_token_file",
                &self.container_authorization_token_file,
            )
            .field("imds_endpoint", &self.imds_endpoint)
            .field("imds_disabled", &self.imds_disabled)
            .field("export_method", &self.export_method)
            .field("export_bucket", &self.export_bucket)
            .field("s3_endpoint", &self.s3_endpoint)
            .finish()
    }
}

impl AwsConfig {
    /// Fills what is unset from the shared files.
    fn with_files(mut self) -> AwsConfig {
        let profile = self.profile.clone().unwrap_or_else(|| "default".into());
        let keys = hypersdk_core::connect::aws_shared_profile(&profile);
        let get = |k: &str| keys.get(k).cloned();
        if self.access_key_id.is_none() {
            if let (Some(id), Some(secret)) =
                (get("aws_access_key_id"), get("aws_secret_access_key"))
            {
                self.access_key_id = Some(id);
                self.secret_access_key = Some(secret);
                self.session_token = get("aws_session_token");
            }
        }
        if self.region.is_none() {
            self.region = get("region");
        }
        if self.endpoint.is_none() {
            self.endpoint = get("endpoint_url");
        }
        self
    }

    /// The provider these settings reach.
    pub fn provider(&self) -> Result<AwsProvider> {
        // Keys given outright win; then a web identity; then the profile's
        // keys; then the instance role (botocore's order).
        let keys_given = self.access_key_id.is_some();
        let c = self.clone().with_files();
        let region = c.region.clone().ok_or_else(|| {
            Error::InvalidArgument(
                "no AWS region: set region, AWS_REGION or the profile's region".into(),
            )
        })?;
        if region.is_empty()
            || !region
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        {
            return Err(Error::InvalidArgument(format!(
                "{region:?} is not an AWS region"
            )));
        }
        let web_identity = match (&c.role_arn, &c.web_identity_token_file) {
            (Some(role), Some(file)) if !keys_given => Some(CredentialSource::web_identity(
                &c.sts_endpoint
                    .clone()
                    .or(c.endpoint.clone())
                    .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com")),
                role,
                file,
                c.role_session_name.as_deref().unwrap_or("hypersdk"),
            )?),
            _ => None,
        };
        let creds = match (web_identity, c.access_key_id.clone(), c.secret_access_key.clone()) {
            (Some(w), _, _) => w,
            (None, Some(id), Some(secret)) => CredentialSource::Static(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: c.session_token.clone(),
            }),
            (None, _, _) if c.container_credentials_uri.is_some() => {
                let token = match (&c.container_authorization_token, &c.container_authorization_token_file) {
                    (Some(t), _) => Some(t.expose().to_string()),
                    (None, Some(f)) => Some(
                        hypersdk_core::connect::read_secret_file(f, "container authorization token")?
                            .expose()
                            .trim()
                            .to_string(),
                    ),
                    (None, None) => None,
                };
                CredentialSource::container(c.container_credentials_uri.as_deref().unwrap_or(""), token)?
            }
            _ if c.imds_disabled => return Err(Error::InvalidArgument(
                "no AWS credentials: set access_key_id and secret_access_key, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (the instance metadata service is disabled)".into(),
            )),
            // On EC2: the instance role.
            _ => CredentialSource::instance_role(
                c.imds_endpoint.as_deref().unwrap_or("http://169.254.169.254"),
            )?,
        };
        let ec2 = c
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        let ebs = c
            .ebs_endpoint
            .clone()
            .or(c.endpoint.clone())
            .unwrap_or_else(|| format!("https://ebs.{region}.amazonaws.com"));
        let provider = AwsProvider::new(
            Ec2::new(&ec2, &region, creds.clone())?,
            Ebs::new(&ebs, &region, creds.clone())?,
        );
        match c.export_method.as_deref().unwrap_or("ebs-direct") {
            "ebs-direct" => Ok(provider),
            "export-task" => {
                let url = c.export_bucket.as_deref().ok_or_else(|| {
                    Error::InvalidArgument(
                        "export_method export-task writes into an S3 bucket: give export_bucket (s3://BUCKET[/PREFIX])".into(),
                    )
                })?;
                let rest = url.strip_prefix("s3://").ok_or_else(|| {
                    Error::InvalidArgument(format!("export_bucket {url:?} is not an s3:// URL"))
                })?;
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if prefix
                    .split('/')
                    .any(|p| p == "." || p == ".." || p.contains(['?', '#', '\\']))
                {
                    return Err(Error::InvalidArgument(format!(
                        "export_bucket {url:?}: not a plain key prefix"
                    )));
                }
                let s3_endpoint = c.s3_endpoint.clone().or(c.endpoint.clone());
                let s3 = S3::new(bucket, s3_endpoint.as_deref(), &region, creds)?;
                Ok(provider.with_export_tasks(s3, bucket, prefix))
            }
            other => Err(Error::InvalidArgument(format!(
                "export_method {other:?}: ebs-direct or export-task"
            ))),
        }
    }
}

#[async_trait]
impl ProviderSettings for AwsConfig {
    const KIND: &'static str = "aws";
    const ABOUT: &'static str =
        "AWS EC2 instances, read through EBS snapshots (EBS direct APIs) or VM Import/Export tasks";

    /// `aws://REGION` → `region: REGION`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        let mut f = Fields::new();
        if !url.host.is_empty() {
            f.insert("region".into(), Value::String(url.host.clone()));
        }
        Ok(f)
    }

    /// The AWS CLI's variables: AWS_REGION (or AWS_DEFAULT_REGION),
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    /// AWS_PROFILE, AWS_ENDPOINT_URL_EC2 (or AWS_ENDPOINT_URL),
    /// AWS_ENDPOINT_URL_EBS, AWS_ENDPOINT_URL_STS, AWS_ROLE_ARN,
    /// AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_SESSION_NAME,
    /// AWS_CONTAINER_CREDENTIALS_FULL_URI (or _RELATIVE_URI),
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN (or _FILE),
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_EC2_METADATA_DISABLED.
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        let mut put = |field: &str, vars: &[&str]| {
            if let Some(v) = vars.iter().find_map(|v| env(v).filter(|v| !v.is_empty())) {
                f.insert(field.into(), Value::String(v));
            }
        };
        put("region", &["AWS_REGION", "AWS_DEFAULT_REGION"]);
        put("access_key_id", &["AWS_ACCESS_KEY_ID"]);
        put("secret_access_key", &["AWS_SECRET_ACCESS_KEY"]);
        put("session_token", &["AWS_SESSION_TOKEN"]);
        put("profile", &["AWS_PROFILE"]);
        put("endpoint", &["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]);
        put("ebs_endpoint", &["AWS_ENDPOINT_URL_EBS"]);
        put("s3_endpoint", &["AWS_ENDPOINT_URL_S3"]);
        put("imds_endpoint", &["AWS_EC2_METADATA_SERVICE_ENDPOINT"]);
        put("role_arn", &["AWS_ROLE_ARN"]);
        put("web_identity_token_file", &["AWS_WEB_IDENTITY_TOKEN_FILE"]);
        put("role_session_name", &["AWS_ROLE_SESSION_NAME"]);
        put("sts_endpoint", &["AWS_ENDPOINT_URL_STS"]);
        put(
            "container_credentials_uri",
            &["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        );
        put(
            "container_authorization_token",
            &["AWS_CONTAINER_AUTHORIZATION_TOKEN"],
        );
        put(
            "container_authorization_token_file",
            &["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        );
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| hypersdk_core::connect::truthy(&v)) {
            f.insert("imds_disabled".into(), Value::Bool(true));
        }
        if !f.contains_key("container_credentials_uri") {
            if let Some(rel) =
                env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").filter(|r| r.starts_with('/'))
            {
                f.insert(
                    "container_credentials_uri".into(),
                    Value::String(format!("http://169.254.170.2{rel}")),
                );
            }
        }
        f
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_secrets() {
        let c = AwsConfig {
            secret_access_key: Some("very-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
