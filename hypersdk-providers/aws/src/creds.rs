//! Where request-signing credentials come from: keys given (settings,
//! `AWS_*` variables, `~/.aws` profiles); a role assumed with a web
//! identity token (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, as on
//! EKS, through STS `AssumeRoleWithWebIdentity`); the task or pod role of
//! a container (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`,
//! with `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`); or the instance role of
//! the EC2 instance this runs on, through the instance metadata service
//! (IMDSv2: a session token first, then the role's temporary credentials).
//! Temporary credentials are fetched again five minutes before they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hypersdk_core::{Error, Result};

use crate::client::err;
use crate::sigv4::Credentials;
use hypersdk_core::http::read_bounded;

/// Where credentials come from.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// Keys given.
    Static(Credentials),
    /// The instance role, from the metadata service.
    InstanceRole(Arc<Imds>),
    /// A role assumed with a web identity token.
    WebIdentity(Arc<WebIdentity>),
    /// The task or pod role, from the container credentials endpoint.
    Container(Arc<Container>),
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
        let http = client(Duration::from_secs(2), Duration::from_secs(5), false)?;
        Ok(CredentialSource::InstanceRole(Arc::new(Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
            cached: tokio::sync::Mutex::new(None),
        })))
    }

    /// Role `role_arn` assumed through STS at `sts` (an `http(s)://host`
    /// endpoint) with the token in `token_file`, read again at every
    /// renewal (Kubernetes rotates it).
    pub fn web_identity(
        sts: &str,
        role_arn: &str,
        token_file: &std::path::Path,
        session: &str,
    ) -> Result<CredentialSource> {
        let http = client(Duration::from_secs(15), Duration::from_secs(60), true)?;
        Ok(CredentialSource::WebIdentity(Arc::new(WebIdentity {
            sts: sts.trim_end_matches('/').to_string(),
            role_arn: role_arn.to_string(),
            token_file: token_file.to_path_buf(),
            session: session.to_string(),
            http,
            cached: tokio::sync::Mutex::new(None),
        })))
    }

    /// The task or pod role from the container credentials endpoint at
    /// `url` (ECS, EKS Pod Identity), with `authorization` as the
    /// Authorization header. Plain HTTP only to the addresses the AWS SDKs
    /// allow (loopback, 169.254.170.2, 169.254.170.23): the header is a
    /// secret.
    pub fn container(url: &str, authorization: Option<String>) -> Result<CredentialSource> {
        let host = url
            .strip_prefix("http://")
            .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
            .map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(h, _)| h)
                    .trim_matches(['[', ']'])
            });
        let allowed = match host {
            None => url.starts_with("https://"),
            Some(h) => {
                h == "169.254.170.2"
                    || h == "169.254.170.23"
                    || h == "fd00:ec2::23"
                    || h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        };
        if !allowed {
            return Err(Error::InvalidArgument(format!(
                "container credentials URL {:?}: plain HTTP only to loopback, 169.254.170.2 or 169.254.170.23",
                url.split('?').next().unwrap_or("")
            )));
        }
        let http = client(Duration::from_secs(2), Duration::from_secs(5), false)?;
        Ok(CredentialSource::Container(Arc::new(Container {
            url: url.to_string(),
            authorization,
            http,
            cached: tokio::sync::Mutex::new(None),
        })))
    }

    /// Credentials to sign with now.
    pub async fn get(&self) -> Result<Credentials> {
        match self {
            CredentialSource::Static(c) => Ok(c.clone()),
            CredentialSource::InstanceRole(imds) => cached(&imds.cached, imds.fetch()).await,
            CredentialSource::WebIdentity(w) => cached(&w.cached, w.fetch()).await,
            CredentialSource::Container(c) => cached(&c.cached, c.fetch()).await,
        }
    }

    /// Who signs, for messages: the access key id, or the role.
    pub fn who(&self) -> String {
        match self {
            CredentialSource::Static(c) => c.access_key_id.clone(),
            CredentialSource::InstanceRole(_) => "the instance role".into(),
            CredentialSource::WebIdentity(w) => w.role_arn.clone(),
            CredentialSource::Container(_) => "the container's role".into(),
        }
    }
}

/// The instance metadata service, and the role credentials it gave last.
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
    cached: Cache,
}

impl std::fmt::Debug for Imds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imds")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A client for a credential endpoint: these limits, no redirects, and a
/// proxy only for `remote` ones (a link-local or loopback endpoint is never
/// reached through a proxy).
fn client(connect: Duration, total: Duration, remote: bool) -> Result<reqwest::Client> {
    // reqwest uses the process's rustls provider: ring, as everywhere here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .redirect(reqwest::redirect::Policy::none());
    if !remote {
        b = b.no_proxy();
    }
    b.build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// Temporary credentials last fetched, and until when they hold.
type Cache = tokio::sync::Mutex<Option<(Credentials, SystemTime)>>;

/// The cached credentials, or (five minutes before they expire) new ones
/// from `fetch`.
async fn cached(
    cache: &Cache,
    fetch: impl std::future::Future<Output = Result<(Credentials, SystemTime)>>,
) -> Result<Credentials> {
    let mut cached = cache.lock().await;
    if let Some((c, until)) = cached.as_ref() {
        if SystemTime::now() + Duration::from_secs(300) < *until {
            return Ok(c.clone());
        }
    }
    let (c, until) = fetch.await?;
    *cached = Some((c.clone(), until));
    Ok(c)
}

/// An RFC 3339 expiry, or 15 minutes from now.
fn expiry(text: Option<&str>) -> SystemTime {
    text.and_then(|e| chrono::DateTime::parse_from_rfc3339(e.trim()).ok())
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64))
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(900))
}

/// The container credentials endpoint.
pub struct Container {
    url: String,
    authorization: Option<String>,
    http: reqwest::Client,
    cached: Cache,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("url", &self.url.split('?').next().unwrap_or(""))
            .finish_non_exhaustive()
    }
}

impl Container {
    async fn fetch(&self) -> Result<(Credentials, SystemTime)> {
        let shown = self.url.split('?').next().unwrap_or("").to_string();
        let failed = |why: String| {
            err(
                format!("no AWS credentials: the container credentials endpoint {shown} {why}"),
                false,
            )
        };
        let mut req = self.http.get(&self.url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a.trim());
        }
        let resp = req.send().await.map_err(|e| {
            failed(format!(
                "cannot be reached ({})",
                hypersdk_core::error::chain(&e.without_url())
            ))
        })?;
        if !resp.status().is_success() {
            return Err(failed(format!("answered HTTP {}", resp.status())));
        }
        let body = read_bounded(resp, 64 << 10)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("answered something not JSON: {e}")))?;
        let field = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
            return Err(failed("gave no keys".into()));
        };
        Ok((
            Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: field("Token"),
            },
            expiry(field("Expiration").as_deref()),
        ))
    }
}

/// A role assumed with a web identity token.
pub struct WebIdentity {
    sts: String,
    role_arn: String,
    token_file: std::path::PathBuf,
    session: String,
    http: reqwest::Client,
    cached: Cache,
}

impl std::fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebIdentity")
            .field("sts", &self.sts)
            .field("role_arn", &self.role_arn)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WebIdentity {
    /// STS API Reference, AssumeRoleWithWebIdentity (an unsigned request:
    /// the token is the proof).
    async fn fetch(&self) -> Result<(Credentials, SystemTime)> {
        use std::io::Read;
        let mut token = String::new();
        std::fs::File::open(&self.token_file)
            .and_then(|f| f.take(64 << 10).read_to_string(&mut token))
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot read the web identity token file {}: {e}",
                    self.token_file.display()
                ))
            })?;
        let form = crate::sigv4::canonical_query(&[
            ("Action".into(), "AssumeRoleWithWebIdentity".into()),
            ("Version".into(), "2011-06-15".into()),
            ("RoleArn".into(), self.role_arn.clone()),
            ("RoleSessionName".into(), self.session.clone()),
            ("WebIdentityToken".into(), token.trim().to_string()),
            ("DurationSeconds".into(), "3600".into()),
        ]);
        let what = format!(
            "STS AssumeRoleWithWebIdentity of {} at {}",
            self.role_arn, self.sts
        );
        let resp = self
            .http
            .post(format!("{}/", self.sts))
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("{what}: {}", hypersdk_core::error::chain(&e.without_url())),
                    true,
                )
            })?;
        let status = resp.status();
        let body = read_bounded(resp, 1 << 20)
            .await
            .map_err(|e| err(format!("{what}: {e}"), true))?;
        let text = String::from_utf8_lossy(&body);
        let doc = hypersdk_formats::xml::parse(&text).ok();
        // <ErrorResponse><Error><Code/><Message/></Error></ErrorResponse>
        let find = |name: &str| {
            doc.as_ref()
                .and_then(|d| d.find("Error"))
                .and_then(|e| e.find_text(name))
                .map(str::to_string)
        };
        if !status.is_success() {
            let message = hypersdk_formats::error::display_text(
                &format!(
                    "{}: {}",
                    find("Code").unwrap_or_else(|| format!("HTTP {status}")),
                    find("Message").unwrap_or_default()
                ),
                hypersdk_formats::error::MAX_SHOWN_MESSAGE,
            );
            if status.is_server_error() {
                return Err(err(format!("{what}: {message}"), true));
            }
            return Err(Error::Auth {
                provider: "aws".into(),
                target: self.sts.clone(),
                user: self.role_arn.clone(),
                message,
            });
        }
        // <AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>
        let creds = doc
            .as_ref()
            .and_then(|d| d.find("AssumeRoleWithWebIdentityResult"))
            .and_then(|r| r.find("Credentials"));
        let get = |n: &str| {
            creds
                .and_then(|c| c.find_text(n))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let (Some(id), Some(secret)) = (get("AccessKeyId"), get("SecretAccessKey")) else {
            return Err(err(format!("{what}: no credentials in the answer"), false));
        };
        Ok((
            Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: get("SessionToken"),
            },
            expiry(get("Expiration").as_deref()),
        ))
    }
}

impl Imds {
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
        let until = expiry(field("Expiration").as_deref());
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
