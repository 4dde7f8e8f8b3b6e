//! Where request-signing credentials come from: keys given (settings,
//! `AWS_*` variables, `~/.aws` profiles), or the instance role of the EC2
//! instance this runs on, through the instance metadata service (IMDSv2:
//! a session token first, then the role's temporary credentials, fetched
//! again five minutes before they expire).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hypersdk_core::{Error, Result};

use crate::client::{err, read_bounded};
use crate::sigv4::Credentials;

/// Where credentials come from.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// Keys given.
    Static(Credentials),
    /// The instance role, from the metadata service.
    InstanceRole(Arc<Imds>),
}

impl From<Credentials> for CredentialSource {
    fn from(c: Credentials) -> CredentialSource {
        CredentialSource::Static(c)
    }
}

impl CredentialSource {
    /// The instance role of the metadata service at `endpoint`
    /// (`http://169.254.169.254` on EC2).
    pub fn instance_role(endpoint: &str) -> Result<CredentialSource> {
        // reqwest uses the process's rustls provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(CredentialSource::InstanceRole(Arc::new(Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
            cached: tokio::sync::Mutex::new(None),
        })))
    }

    /// Credentials to sign with now.
    pub async fn get(&self) -> Result<Credentials> {
        match self {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::InstanceRole(imds) => imds.get().await,
        }
    }

    /// Who signs, for messages: the access key id, or "the instance role".
    pub fn who(&self) -> String {
        match self {
            CredentialSource::Static(c) => c.access_key_id.clone(),
            CredentialSource::InstanceRole(_) => "the instance role".into(),
        }
    }
}

/// The instance metadata service, and the role credentials it gave last.
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(Credentials, SystemTime)>>,
}

impl std::fmt::Debug for Imds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imds")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Imds {
    async fn get(&self) -> Result<Credentials> {
        let mut cached = self.cached.lock().await;
        if let Some((c, until)) = cached.as_ref() {
            if SystemTime::now() + Duration::from_secs(300) < *until {
                return Ok(c.clone());
            }
        }
        let (c, until) = self.fetch().await?;
        *cached = Some((c.clone(), until));
        Ok(c)
    }

    fn failed(&self, what: &str, cause: String) -> Error {
        err(
            format!(
                "no AWS credentials: the instance metadata service at {} ({what}) {cause}; \
                 set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials",
                self.endpoint
            ),
            false,
        )
    }

    /// "Retrieve security credentials from instance metadata" (IMDSv2).
    async fn fetch(&self) -> Result<(Credentials, SystemTime)> {
        let send = |req: reqwest::RequestBuilder, what: &'static str| async move {
            let r = req.send().await.map_err(|e| {
                self.failed(
                    what,
                    format!(
                        "cannot be reached ({})",
                        hypersdk_core::error::chain(&e.without_url())
                    ),
                )
            })?;
            if !r.status().is_success() {
                return Err(self.failed(what, format!("answered HTTP {}", r.status())));
            }
            let body = read_bounded(r, 64 << 10)
                .await
                .map_err(|e| self.failed(what, e.to_string()))?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        let token = send(
            self.http
                .put(format!("{}/latest/api/token", self.endpoint))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
            "session token",
        )
        .await?;
        let token = token.trim().to_string();
        let base = format!(
            "{}/latest/meta-data/iam/security-credentials/",
            self.endpoint
        );
        let roles = send(
            self.http
                .get(&base)
                .header("X-aws-ec2-metadata-token", &token),
            "role name",
        )
        .await?;
        let role = roles.lines().next().unwrap_or("").trim().to_string();
        if role.is_empty()
            || !role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        {
            return Err(self.failed("role name", "names no instance role".into()));
        }
        let text = send(
            self.http
                .get(format!("{base}{role}"))
                .header("X-aws-ec2-metadata-token", &token),
            "role credentials",
        )
        .await?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            self.failed(
                "role credentials",
                format!("answered something not JSON: {e}"),
            )
        })?;
        let field = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        if v["Code"].as_str().is_some_and(|c| c != "Success") {
            return Err(self.failed(
                "role credentials",
                format!("said {}", v["Code"].as_str().unwrap_or("")),
            ));
        }
        let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
            return Err(self.failed("role credentials", "gave no keys".into()));
        };
        let until = field("Expiration")
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e).ok())
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64))
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(900));
        tracing::debug!(role = %role, "credentials of the instance role");
        Ok((
            Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: field("Token"),
            },
            until,
        ))
    }
}
