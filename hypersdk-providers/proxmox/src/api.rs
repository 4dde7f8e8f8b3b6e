//! The PVE REST API (`/api2/json`): answers are `{"data": …}`; a refusal is
//! an HTTP status whose reason phrase carries PVE's message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypersdk_core::tls::{client_config, Seen, TlsMode};
use hypersdk_core::{Error, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

/// Largest API answer read.
const MAX_ANSWER: usize = 16 << 20;

fn provider_err(message: String, retryable: bool) -> Error {
    Error::Provider {
        provider: "proxmox".into(),
        message,
        retryable,
        source: None,
    }
}

/// A path segment, percent-encoded (a volume id holds `:` and `/`).
pub(crate) fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The API of one cluster, with its token.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    host: String,
    auth: String,
    user: String,
    seen: Arc<Mutex<Seen>>,
}

impl Api {
    pub(crate) fn new(
        url: &reqwest::Url,
        token: &str,
        user: &str,
        tls: &TlsMode,
        ca: Option<&[u8]>,
    ) -> Result<Api> {
        let (config, seen) = client_config(tls, ca)
            .map_err(|e| Error::InvalidArgument(format!("proxmox TLS: {e}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("cannot make the HTTP client: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port().unwrap_or(443);
        Ok(Api {
            http,
            base: format!(
                "https://{}/api2/json",
                if url.port().is_some() {
                    format!("{host}:{port}")
                } else {
                    host.clone()
                }
            ),
            host: format!("{host}:{port}"),
            auth: format!("PVEAPIToken={token}"),
            user: user.to_string(),
            seen,
        })
    }

    /// The API's host and port, for messages.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, &[]).await
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Value> {
        self.call(reqwest::Method::POST, path, form).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::DELETE, path, &[]).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        if !form.is_empty() {
            // application/x-www-form-urlencoded, as pveproxy takes parameters.
            let body: Vec<String> = form
                .iter()
                .map(|(k, v)| format!("{}={}", seg(k), seg(v)))
                .collect();
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.join("&"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&method, path, e))?;
        let status = resp.status();
        let reason = resp
            .status()
            .canonical_reason()
            .unwrap_or_default()
            .to_string();
        // pveproxy puts its message in the reason phrase, which reqwest does
        // not expose beyond the canonical one; the body may hold `message`
        // or per-parameter `errors`.
        let body = hypersdk_core::http::read_bounded(resp, MAX_ANSWER)
            .await
            .map_err(|e| provider_err(format!("{method} {path} on {}: {e}", self.host), true))?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Error::Auth {
                provider: "proxmox".into(),
                target: self.host.clone(),
                user: self.user.clone(),
                message:
                    "the API token was refused (HTTP 401): check USER@REALM!TOKENID and the secret"
                        .into(),
            });
        }
        if !status.is_success() {
            let mut detail = v["message"].as_str().map(str::to_string).unwrap_or(reason);
            if let Some(errors) = v["errors"].as_object() {
                for (k, e) in errors {
                    detail.push_str(&format!("; {k}: {}", e.as_str().unwrap_or_default()));
                }
            }
            return Err(provider_err(
                format!(
                    "{method} {path} on {} answered HTTP {}: {}",
                    self.host,
                    status.as_u16(),
                    hypersdk_formats::error::display_text(
                        &detail,
                        hypersdk_formats::error::MAX_SHOWN_MESSAGE
                    )
                ),
                status.is_server_error() && status.as_u16() != 500,
            ));
        }
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Waits for task `upid` on `node` to stop; its exit status must be OK.
    pub(crate) async fn wait_task(
        &self,
        node: &str,
        upid: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<()> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let t = self
                .get(&format!("/nodes/{}/tasks/{}/status", seg(node), seg(upid)))
                .await?;
            if t["status"].as_str() == Some("stopped") {
                return match t["exitstatus"].as_str() {
                    Some("OK") => Ok(()),
                    other => Err(provider_err(
                        format!(
                            "{what} failed on node {node}: {}",
                            hypersdk_formats::error::display_text(
                                other.unwrap_or("no exit status"),
                                hypersdk_formats::error::MAX_SHOWN_MESSAGE
                            )
                        ),
                        false,
                    )),
                };
            }
            if start.elapsed() > timeout {
                return Err(provider_err(
                    format!(
                        "{what} on node {node} did not end within {} s (task {upid})",
                        timeout.as_secs()
                    ),
                    true,
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn transport_error(&self, method: &reqwest::Method, path: &str, e: reqwest::Error) -> Error {
        let seen = {
            let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *s)
        };
        if let (Some(fp), Some(reason)) = (seen.thumbprint_sha256, seen.reason) {
            return provider_err(
                format!(
                    "the TLS certificate of {} is not trusted ({reason}); its SHA-256 fingerprint is {fp} \
                     (compare it with the node's certificate in the PVE GUI, then pin it with fingerprint, or give ca_file)",
                    self.host
                ),
                false,
            );
        }
        let msg = hypersdk_core::error::chain(&e);
        if e.is_connect() {
            provider_err(format!("cannot connect to {}: {msg}", self.host), true)
        } else {
            provider_err(
                format!("{method} {path} on {} failed: {msg}", self.host),
                true,
            )
        }
    }
}
