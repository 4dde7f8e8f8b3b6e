//! The REST calls of Compute Engine (v1) and Cloud Build (v1): JSON over the
//! project's one HTTP client, with an access token from
//! [`GoogleAuth`], retried on the answers Google documents as transient
//! (429, 5xx) and on lost connections.
//!
//! Every URL is built here from validated names: nothing the server
//! answers (a `selfLink`, a `targetLink`) is ever fetched.

use std::sync::Arc;
use std::time::Duration;

use hypersdk_core::error::chain;
use hypersdk_core::http::read_bounded;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{Error, Result};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};
use hypersdk_sinks::google_auth::GoogleAuth;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// The largest API answer read (an aggregated list page is the largest).
const MAX_ANSWER: usize = 32 << 20;
/// Pages of a list read at most.
const MAX_PAGES: usize = 10_000;

/// Characters of a path segment or query value sent as they are.
const PLAIN: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` escaped for a URL path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, PLAIN).to_string()
}

/// A provider error.
pub(crate) fn err(message: String, retryable: bool) -> Error {
    Error::Provider {
        provider: "gcp".into(),
        message,
        retryable,
        source: None,
    }
}

/// Compute Engine and Cloud Build of one project.
#[derive(Debug)]
pub(crate) struct Google {
    pub(crate) http: reqwest::Client,
    pub(crate) auth: Option<Arc<GoogleAuth>>,
    /// `https://compute.googleapis.com` or another server, no trailing `/`.
    pub(crate) compute: String,
    /// `https://cloudbuild.googleapis.com` or another server.
    pub(crate) cloudbuild: String,
    pub(crate) project: String,
}

impl Google {
    /// `…/compute/v1/projects/PROJECT/` + `path`.
    pub(crate) fn compute_url(&self, path: &str) -> String {
        format!(
            "{}/compute/v1/projects/{}/{path}",
            self.compute,
            enc(&self.project)
        )
    }

    /// `…/v1/projects/PROJECT/` + `path` of Cloud Build.
    pub(crate) fn build_url(&self, path: &str) -> String {
        format!(
            "{}/v1/projects/{}/{path}",
            self.cloudbuild,
            enc(&self.project)
        )
    }

    /// One call: the answer's JSON, or None for 404. Retried on 429, 5xx
    /// and lost connections; a 401 is tried once more with a new token.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        let shown = url.split('?').next().unwrap_or(url).to_string();
        let what = format!("{method} {shown}");
        RetryPolicy::default()
            .run(&format!("Google Cloud {what}"), |_| {
                let (method, what, shown) = (method.clone(), what.clone(), shown.clone());
                async move {
                    let mut req = self.http.request(method.clone(), url);
                    if let Some(auth) = &self.auth {
                        let token = auth.token(&self.http).await.map_err(|e| Error::Auth {
                            provider: "gcp".into(),
                            target: self.compute.clone(),
                            user: auth.source().to_string(),
                            message: e.to_string(),
                        })?;
                        req = req.bearer_auth(token);
                    }
                    if let Some(b) = body {
                        req = req
                            .header("Content-Type", "application/json")
                            .body(b.to_string());
                    } else if method == reqwest::Method::POST {
                        req = req.header("Content-Length", "0");
                    }
                    let resp = req.send().await.map_err(|e| {
                        err(format!("{what} failed: {}", chain(&e.without_url())), true)
                    })?;
                    let status = resp.status().as_u16();
                    let body = read_bounded(resp, MAX_ANSWER)
                        .await
                        .map_err(|e| err(format!("{what}: reading the answer: {e}"), true))?;
                    if (200..300).contains(&status) {
                        if body.is_empty() {
                            return Ok(Some(Value::Null));
                        }
                        return serde_json::from_slice(&body).map(Some).map_err(|e| {
                            err(format!("{what}: the answer is not JSON ({e})"), false)
                        });
                    }
                    if status == 404 {
                        return Ok(None);
                    }
                    let said = google_error(status, &body);
                    if status == 401 || status == 403 {
                        return Err(Error::Auth {
                            provider: "gcp".into(),
                            target: shown.clone(),
                            user: self
                                .auth
                                .as_ref()
                                .map_or("no credentials".into(), |a| a.source().to_string()),
                            message: said,
                        });
                    }
                    Err(err(
                        format!("{what}: {said}"),
                        status == 429 || status >= 500,
                    ))
                }
            })
            .await
    }

    /// A GET that must find something.
    pub(crate) async fn get(&self, url: &str, what: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, url, None)
            .await?
            .ok_or_else(|| err(format!("{what} is not found"), false))
    }

    /// A POST that must find its target.
    pub(crate) async fn post(&self, url: &str, body: &Value, what: &str) -> Result<Value> {
        self.call(reqwest::Method::POST, url, Some(body))
            .await?
            .ok_or_else(|| err(format!("{what}: not found"), false))
    }

    /// Every item of an aggregated list (`items` maps a scope to `{key: [...]}`).
    pub(crate) async fn aggregated(&self, what: &str, key: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.compute_url(&format!("aggregated/{what}?maxResults=500"));
            if let Some(p) = &page {
                url.push_str(&format!("&pageToken={}", enc(p)));
            }
            let v = self.get(&url, &format!("the project's {what}")).await?;
            if let Some(items) = v["items"].as_object() {
                for scoped in items.values() {
                    out.extend(scoped[key].as_array().into_iter().flatten().cloned());
                }
            }
            page = v["nextPageToken"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if page.is_none() {
                return Ok(out);
            }
        }
        Err(err(
            format!("the list of {what} goes on past {MAX_PAGES} pages"),
            false,
        ))
    }

    /// Waits for global operation `op` (as an insert or delete answered it)
    /// to be DONE, then checks its `error`.
    pub(crate) async fn wait_global(&self, op: Value, what: &str) -> Result<()> {
        let name = op["name"]
            .as_str()
            .filter(|n| valid_name(n))
            .ok_or_else(|| err(format!("{what}: the answer names no operation"), false))?
            .to_string();
        let mut op = op;
        let mut delay = Duration::from_millis(200);
        let start = std::time::Instant::now();
        let mut said = start;
        loop {
            if op["status"] == "DONE" {
                if let Some(errors) = op["error"]["errors"].as_array() {
                    let text: Vec<String> = errors
                        .iter()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                e["code"].as_str().unwrap_or("?"),
                                e["message"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    return Err(err(
                        format!(
                            "{what} failed: {}",
                            display_text(&text.join("; "), MAX_SHOWN_MESSAGE)
                        ),
                        false,
                    ));
                }
                return Ok(());
            }
            if said.elapsed() > Duration::from_secs(30) {
                tracing::info!(operation = %name, waited_s = start.elapsed().as_secs(), "{what}: still waiting");
                said = std::time::Instant::now();
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            op = self
                .get(
                    &self.compute_url(&format!("global/operations/{}", enc(&name))),
                    &format!("operation {name}"),
                )
                .await?;
        }
    }
}

/// "HTTP 403 PERMISSION_DENIED: …" of an error answer ({"error": {"code",
/// "message", "status"}}, or OAuth's {"error", "error_description"}).
fn google_error(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let text = match (e["status"].as_str(), e["message"].as_str()) {
        (Some(s), Some(m)) => format!("{s}: {m}"),
        (None, Some(m)) => m.to_string(),
        _ => v["error_description"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    };
    format!(
        "HTTP {status} {}",
        display_text(text.trim(), MAX_SHOWN_MESSAGE)
    )
}

/// A Compute Engine resource name (RFC 1035 label, 1–63 characters), or
/// an operation's name (the same characters, up to 128).
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The last path segment of a resource URL (`…/zones/ZONE` → `ZONE`),
/// if it is a valid name.
pub(crate) fn last_name(url: &str) -> Option<String> {
    url.rsplit('/')
        .next()
        .filter(|n| valid_name(n))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("web-03"));
        assert!(valid_name("operation-1796088236053-40191c122fdc54b5"));
        for bad in ["", "Web", "a/b", "..", "a b", "a?x=1", "a%2F"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(
            last_name("https://x/compute/v1/projects/p/zones/us-central1-a").as_deref(),
            Some("us-central1-a")
        );
        assert_eq!(last_name("https://x/zones/../.."), None);
    }

    #[test]
    fn errors_say_what_google_said() {
        let body = br#"{"error":{"code":403,"message":"Required 'compute.instances.get' permission","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(
            google_error(403, body),
            "HTTP 403 PERMISSION_DENIED: Required 'compute.instances.get' permission"
        );
        assert_eq!(
            google_error(
                400,
                br#"{"error":"invalid_grant","error_description":"Invalid JWT"}"#
            ),
            "HTTP 400 Invalid JWT"
        );
    }
}
