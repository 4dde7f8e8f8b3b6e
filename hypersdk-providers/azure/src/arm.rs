//! Azure Resource Manager: bearer tokens from Microsoft Entra ID (a service
//! principal's secret, a managed identity, or a token given as is), JSON
//! GETs with paging, and long-running operations (202 + polling).
//!
//! Every URL the server hands back (`nextLink`, `Location`,
//! `Azure-AsyncOperation`) must be on the ARM endpoint's own origin: a
//! server cannot steer the client, and its token, elsewhere.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hypersdk_core::connect::Secret;
use hypersdk_core::error::chain;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{Error, Result};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

/// Largest ARM answer read (a page of VMs is far smaller).
const MAX_ANSWER: usize = 16 << 20;
/// Pages followed in one listing.
const MAX_PAGES: usize = 10_000;
/// Longest wait for one long-running operation.
const MAX_OPERATION: Duration = Duration::from_secs(3 * 3600);

/// How a token is obtained.
pub enum Credential {
    /// A service principal's client secret, through the OAuth 2.0 client
    /// credentials flow at `{authority}/{tenant}/oauth2/v2.0/token`.
    ClientSecret {
        /// `https://login.microsoftonline.com` or another cloud's authority.
        authority: String,
        /// Directory (tenant) id.
        tenant: String,
        /// Application (client) id.
        client_id: String,
        /// Its secret.
        secret: Secret,
    },
    /// The managed identity of the machine this runs on, from the instance
    /// metadata service (`{endpoint}/metadata/identity/oauth2/token`).
    ManagedIdentity {
        /// `http://169.254.169.254` unless overridden.
        endpoint: String,
        /// A user-assigned identity's client id.
        client_id: Option<String>,
    },
    /// A token obtained elsewhere (`az account get-access-token`).
    Token(Secret),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientSecret {
                tenant, client_id, ..
            } => write!(
                f,
                "ClientSecret {{ tenant: {tenant}, client_id: {client_id} }}"
            ),
            Credential::ManagedIdentity { client_id, .. } => {
                write!(f, "ManagedIdentity {{ client_id: {client_id:?} }}")
            }
            Credential::Token(_) => f.write_str("Token(<hidden>)"),
        }
    }
}

/// A provider error of Azure.
pub(crate) fn err(message: String, retryable: bool) -> Error {
    Error::Provider {
        provider: "azure".into(),
        message,
        retryable,
        source: None,
    }
}

/// The `scheme://host[:port]` of `url`.
pub(crate) fn origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    (!host.is_empty() && !host.contains('@')).then(|| &url[..url.len() - rest.len() + end])
}

/// An ARM endpoint of one subscription, with its credential.
pub struct Arm {
    pub(crate) http: reqwest::Client,
    /// `https://management.azure.com`, no trailing `/`.
    pub(crate) endpoint: String,
    credential: Credential,
    token: Mutex<Option<(Secret, Instant)>>,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("endpoint", &self.endpoint)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// A JSON answer of ARM: status, headers that matter, body.
struct Answer {
    status: u16,
    location: Option<String>,
    async_operation: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Arm {
    /// A client of `endpoint` (`http(s)://host[:port]`).
    pub fn new(endpoint: &str, credential: Credential) -> Result<Arm> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        if origin(&endpoint) != Some(endpoint.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "Azure Resource Manager endpoint {endpoint:?} is not an http(s)://host[:port] URL"
            )));
        }
        // reqwest uses the process's rustls provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Arm {
            http,
            endpoint,
            credential,
            token: Mutex::new(None),
        })
    }

    /// Whether the endpoint is plain HTTP (an emulator): only then may the
    /// disk data URLs it hands out be plain HTTP too.
    pub(crate) fn plain_http(&self) -> bool {
        self.endpoint.starts_with("http://")
    }

    /// A bearer token, fetched again five minutes before it expires.
    async fn bearer(&self, fresh: bool) -> Result<Secret> {
        if !fresh {
            if let Some((t, until)) = self.token.lock().ok().and_then(|g| g.clone()) {
                if Instant::now() + Duration::from_secs(300) < until {
                    return Ok(t);
                }
            }
        }
        let (token, lifetime) = match &self.credential {
            Credential::Token(t) => (t.clone(), Duration::from_secs(3600)),
            Credential::ClientSecret {
                authority,
                tenant,
                client_id,
                secret,
            } => {
                let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
                let url = format!(
                    "{}/{}/oauth2/v2.0/token",
                    authority.trim_end_matches('/'),
                    enc(tenant)
                );
                let body = format!(
                    "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
                    enc(client_id),
                    enc(secret.expose()),
                    enc(&format!("{}/.default", self.endpoint))
                );
                let req = self
                    .http
                    .post(&url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body);
                self.token_answer(req, &format!("tenant {tenant}"), client_id)
                    .await?
            }
            Credential::ManagedIdentity {
                endpoint,
                client_id,
            } => {
                let mut url = format!(
                    "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    endpoint.trim_end_matches('/'),
                    utf8_percent_encode(&format!("{}/", self.endpoint), NON_ALPHANUMERIC)
                );
                if let Some(id) = client_id {
                    url.push_str("&client_id=");
                    url.push_str(&utf8_percent_encode(id, NON_ALPHANUMERIC).to_string());
                }
                // Off Azure the address answers nothing: a short limit.
                let req = self
                    .http
                    .get(&url)
                    .header("Metadata", "true")
                    .timeout(Duration::from_secs(5));
                self.token_answer(
                    req,
                    "the instance metadata service",
                    client_id.as_deref().unwrap_or("managed identity"),
                )
                .await?
            }
        };
        if let Ok(mut g) = self.token.lock() {
            *g = Some((token.clone(), Instant::now() + lifetime));
        }
        Ok(token)
    }

    /// The token of an Entra ID or metadata-service answer.
    async fn token_answer(
        &self,
        req: reqwest::RequestBuilder,
        target: &str,
        user: &str,
    ) -> Result<(Secret, Duration)> {
        let managed = matches!(self.credential, Credential::ManagedIdentity { .. });
        let resp = req.send().await.map_err(|e| {
            let cause = chain(&e.without_url());
            if managed {
                // Not on Azure, most likely: say what else works, and do
                // not wait through retries for a service that is not there.
                err(
                    format!(
                        "no Azure credentials: {target} (for the machine's managed identity) cannot be reached ({cause}); \
                         set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a service principal, or access_token"
                    ),
                    false,
                )
            } else {
                err(format!("cannot reach {target} for a token: {cause}"), true)
            }
        })?;
        let status = resp.status();
        let body = read_bounded(resp, 1 << 20).await?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let said = v["error_description"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("no error text");
            if status.is_server_error() {
                return Err(err(
                    format!("{target} answered HTTP {status} for a token"),
                    true,
                ));
            }
            return Err(Error::Auth {
                provider: "azure".into(),
                target: target.into(),
                user: user.into(),
                message: format!("HTTP {status}: {}", display_text(said, MAX_SHOWN_MESSAGE)),
            });
        }
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err(format!("{target} answered without an access_token"), false))?;
        // A number from Entra ID, a string from the metadata service.
        let secs = v["expires_in"]
            .as_u64()
            .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3600);
        Ok((Secret::new(token), Duration::from_secs(secs)))
    }

    /// `path` (below the endpoint, or a URL on its origin) with
    /// `api-version` added unless present.
    fn url(&self, path: &str, api: &str) -> Result<String> {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.endpoint)
        } else if origin(path) == Some(self.endpoint.as_str()) {
            path.to_string()
        } else {
            return Err(err(
                format!(
                    "Azure Resource Manager pointed to {:?}, outside {}: refused",
                    origin(path).unwrap_or("an invalid URL"),
                    self.endpoint
                ),
                false,
            ));
        };
        Ok(if url.contains("api-version=") {
            url
        } else if url.contains('?') {
            format!("{url}&api-version={api}")
        } else {
            format!("{url}?api-version={api}")
        })
    }

    /// One request, retried on throttling (429), 5xx and broken
    /// connections; a 401 fetches a new token once.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let what = format!("{method} {}", shown_path(url));
        RetryPolicy::default()
            .run(&format!("Azure Resource Manager {what}"), |_| {
                let (method, what) = (method.clone(), what.clone());
                async move {
                    let mut fresh = false;
                    loop {
                        let token = self.bearer(fresh).await?;
                        let mut req = self
                            .http
                            .request(method.clone(), url)
                            .bearer_auth(token.expose());
                        if let Some(b) = body {
                            req = req
                                .header("Content-Type", "application/json")
                                .body(b.to_string());
                        } else if method == reqwest::Method::POST {
                            req = req.header("Content-Length", "0");
                        }
                        let resp = req.send().await.map_err(|e| {
                            err(
                                format!(
                                    "{what} at {} failed: {}",
                                    self.endpoint,
                                    chain(&e.without_url())
                                ),
                                true,
                            )
                        })?;
                        let status = resp.status().as_u16();
                        let header = |n: &str| {
                            resp.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let answer = Answer {
                            status,
                            location: header("location"),
                            async_operation: header("azure-asyncoperation"),
                            retry_after: header("retry-after")
                                .and_then(|s| s.parse::<u64>().ok())
                                .map(|s| Duration::from_secs(s.min(60))),
                            body: Vec::new(),
                        };
                        let body = read_bounded(resp, MAX_ANSWER).await?;
                        let answer = Answer { body, ..answer };
                        if status == 401 && !fresh {
                            fresh = true;
                            continue;
                        }
                        if status == 429 || status >= 500 {
                            return Err(err(
                                format!("{what}: {}", arm_error(status, &answer.body)),
                                true,
                            ));
                        }
                        return Ok(answer);
                    }
                }
            })
            .await
    }

    /// The JSON of a GET of `path`; `Ok(None)` when it is not found (404).
    pub(crate) async fn get(&self, path: &str, api: &str) -> Result<Option<Value>> {
        let url = self.url(path, api)?;
        let a = self.send(reqwest::Method::GET, &url, None).await?;
        match a.status {
            200 => Ok(Some(json(&a.body, &url)?)),
            404 => Ok(None),
            s => Err(self.failed("GET", &url, s, &a.body)),
        }
    }

    /// Every item of a listing (`value`), following `nextLink`.
    pub(crate) async fn list(&self, path: &str, api: &str) -> Result<Vec<Value>> {
        let mut url = self.url(path, api)?;
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let a = self.send(reqwest::Method::GET, &url, None).await?;
            if a.status != 200 {
                return Err(self.failed("GET", &url, a.status, &a.body));
            }
            let mut page = json(&a.body, &url)?;
            if let Value::Array(items) = page["value"].take() {
                out.extend(items);
            }
            match page["nextLink"].as_str().filter(|s| !s.is_empty()) {
                Some(next) => url = self.url(next, api)?,
                None => return Ok(out),
            }
        }
        Err(err(
            format!("{} has more than {MAX_PAGES} pages", shown_path(&url)),
            false,
        ))
    }

    /// A long-running `method` of `path` with `body`, waited for: its
    /// result (`None` when it has none).
    pub(crate) async fn operation(
        &self,
        method: reqwest::Method,
        path: &str,
        api: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let url = self.url(path, api)?;
        let verb = method.to_string();
        let a = self.send(method.clone(), &url, body).await?;
        let start = Instant::now();
        match a.status {
            200 | 201 if method == reqwest::Method::PUT => {
                let v = json(&a.body, &url)?;
                if terminal(&v) {
                    return self.settled(v, &url);
                }
                // Created but still provisioning: watch the resource.
                self.watch_resource(&url, api, start).await
            }
            200 | 201 => Ok((!a.body.is_empty())
                .then(|| json(&a.body, &url))
                .transpose()?),
            204 => Ok(None),
            202 => {
                let mut wait = a.retry_after.unwrap_or(Duration::from_secs(2));
                if let Some(op) = a.async_operation.as_deref() {
                    let op = self.url(op, api)?;
                    loop {
                        self.pause(&verb, &url, start, wait).await?;
                        let s = self.send(reqwest::Method::GET, &op, None).await?;
                        if s.status != 200 {
                            return Err(self.failed("GET", &op, s.status, &s.body));
                        }
                        let v = json(&s.body, &op)?;
                        wait = s.retry_after.unwrap_or(wait);
                        match v["status"].as_str().unwrap_or("") {
                            "Succeeded" => break,
                            "Failed" | "Canceled" | "Cancelled" => {
                                return Err(err(
                                    format!(
                                        "{verb} {} {}: {}",
                                        shown_path(&url),
                                        v["status"].as_str().unwrap_or(""),
                                        error_text(&v)
                                    ),
                                    false,
                                ))
                            }
                            _ => {}
                        }
                    }
                    return match (method == reqwest::Method::PUT, a.location.as_deref()) {
                        (true, _) => Ok(self.get(&url, api).await?),
                        (false, Some(loc)) => {
                            let loc = self.url(loc, api)?;
                            let r = self.send(reqwest::Method::GET, &loc, None).await?;
                            match r.status {
                                200 => Ok(Some(json(&r.body, &loc)?)),
                                202 | 204 => Ok(None),
                                s => Err(self.failed("GET", &loc, s, &r.body)),
                            }
                        }
                        (false, None) => Ok(None),
                    };
                }
                let Some(loc) = a.location.as_deref() else {
                    return Err(err(
                        format!(
                            "{verb} {} was accepted without a Location to follow",
                            shown_path(&url)
                        ),
                        false,
                    ));
                };
                let loc = self.url(loc, api)?;
                loop {
                    self.pause(&verb, &url, start, wait).await?;
                    let s = self.send(reqwest::Method::GET, &loc, None).await?;
                    wait = s.retry_after.unwrap_or(wait);
                    match s.status {
                        202 => continue,
                        200 | 201 if method == reqwest::Method::PUT => {
                            return self.get(&url, api).await
                        }
                        200 | 201 => {
                            return (!s.body.is_empty())
                                .then(|| json(&s.body, &loc))
                                .transpose()
                        }
                        204 => return Ok(None),
                        st => return Err(self.failed("GET", &loc, st, &s.body)),
                    }
                }
            }
            s => Err(self.failed(&verb, &url, s, &a.body)),
        }
    }

    /// Polls a resource until its provisioning state is terminal.
    async fn watch_resource(&self, url: &str, api: &str, start: Instant) -> Result<Option<Value>> {
        loop {
            self.pause("PUT", url, start, Duration::from_secs(2))
                .await?;
            match self.get(url, api).await? {
                Some(v) if terminal(&v) => return self.settled(v, url),
                Some(_) => continue,
                None => {
                    return Err(err(
                        format!("{} vanished while being created", shown_path(url)),
                        false,
                    ))
                }
            }
        }
    }

    /// `v` if it provisioned, else the error saying why not.
    fn settled(&self, v: Value, url: &str) -> Result<Option<Value>> {
        match v["properties"]["provisioningState"].as_str() {
            Some("Failed") | Some("Canceled") => Err(err(
                format!(
                    "{} failed to provision: {}",
                    shown_path(url),
                    error_text(&v)
                ),
                false,
            )),
            _ => Ok(Some(v)),
        }
    }

    /// Waits `wait` between polls, logging progress; gives up after
    /// [`MAX_OPERATION`].
    async fn pause(&self, verb: &str, url: &str, start: Instant, wait: Duration) -> Result<()> {
        if start.elapsed() > MAX_OPERATION {
            return Err(err(
                format!(
                    "{verb} {} did not finish within {} minutes",
                    shown_path(url),
                    MAX_OPERATION.as_secs() / 60
                ),
                false,
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            tracing::info!(operation = %format!("{verb} {}", shown_path(url)), waited_s = start.elapsed().as_secs(), "waiting for Azure");
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// The error of a failed request.
    fn failed(&self, verb: &str, url: &str, status: u16, body: &[u8]) -> Error {
        let what = format!("{verb} {}", shown_path(url));
        if status == 401 || status == 403 {
            return Error::Auth {
                provider: "azure".into(),
                target: self.endpoint.clone(),
                user: format!("{:?}", self.credential),
                message: format!("{what}: {}", arm_error(status, body)),
            };
        }
        err(format!("{what}: {}", arm_error(status, body)), false)
    }
}

/// Whether a resource's provisioning has ended.
fn terminal(v: &Value) -> bool {
    !matches!(
        v["properties"]["provisioningState"].as_str(),
        Some("Creating" | "Updating" | "Accepted" | "Running" | "InProgress")
    )
}

/// The path of a URL without its query (a SAS or token never shows).
pub(crate) fn shown_path(url: &str) -> String {
    let o = origin(url).map_or(0, str::len);
    let path = &url[o..];
    display_text(
        path.split(['?', '#']).next().unwrap_or(""),
        MAX_SHOWN_MESSAGE,
    )
}

/// ARM's `{"error": {"code", "message"}}` as text.
fn error_text(v: &Value) -> String {
    let e = &v["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => display_text(&format!("{c}: {m}"), MAX_SHOWN_MESSAGE),
        (Some(c), None) => display_text(c, MAX_SHOWN_MESSAGE),
        _ => "no error details".into(),
    }
}

/// "HTTP 404 ResourceNotFound: …" of an error answer.
fn arm_error(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    format!("HTTP {status} {}", error_text(&v))
}

fn json(body: &[u8], url: &str) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| {
        err(
            format!(
                "{} answered something that is not JSON: {e}",
                shown_path(url)
            ),
            false,
        )
    })
}

/// At most `limit` bytes of an answer's body ([`hypersdk_core::http::read_bounded`]):
/// a longer one is a permanent error, one that breaks off a transient one.
pub(crate) async fn read_bounded(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    hypersdk_core::http::read_bounded(resp, limit)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => err(format!("an {e}"), false),
            _ => err(format!("the answer broke off: {}", chain(&e)), true),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://management.azure.com/subscriptions/x?a=b"),
            Some("https://management.azure.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:8080"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin("https://user@evil/x"), None);
        assert_eq!(origin("ftp://x"), None);
        assert_eq!(shown_path("https://h/a/b?sig=secret"), "/a/b");
    }

    #[test]
    fn foreign_links_are_refused() {
        let arm = Arm::new(
            "https://management.azure.com",
            Credential::Token(Secret::new("t")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(arm.url("https://169.254.169.254/metadata", "1").is_err());
        assert!(arm
            .url("https://management.azure.com.evil.example/x", "1")
            .is_err());
        let u = arm
            .url("https://management.azure.com/x?$skiptoken=2", "2024")
            .unwrap_or_default();
        assert_eq!(
            u,
            "https://management.azure.com/x?$skiptoken=2&api-version=2024"
        );
    }
}
