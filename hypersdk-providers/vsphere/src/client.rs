//! A vim25 SOAP session: connect, log in, call methods, log out.
//!
//! One [`Connection`] is one logged-in session over one HTTP connection pool
//! (reqwest's); share it (`Arc`) between concurrent exports. A call that
//! finds the session expired (`NotAuthenticated`) logs in again once and
//! retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{Error, Result};
use hypersdk_formats::xml::Element;
use tracing::debug;
use zeroize::Zeroizing;

use crate::soap::{el, envelope, parse_reply, Fault, MoRef, Reply};
use hypersdk_core::tls::{client_config, Seen, TlsMode};

/// Methods that change nothing on the server: safe to send again.
const READ_ONLY: &[&str] = &[
    "RetrieveServiceContent",
    "RetrievePropertiesEx",
    "ContinueRetrievePropertiesEx",
    "CreateContainerView",
    "DestroyView",
    "HttpNfcLeaseProgress",
];

/// The provider's name in errors and reports.
pub(crate) const PROVIDER: &str = "vsphere";

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `https://host[:port][/sdk]`, `host`, or GOVC_URL style
    /// `https://user:password@host/sdk` (credentials are taken out).
    pub url: String,
    /// User name (overrides one in the URL).
    pub user: Option<String>,
    /// Password (overrides one in the URL); zeroed on drop, never logged.
    pub password: Option<Zeroizing<String>>,
    /// Certificate checking.
    pub tls: TlsMode,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Timeout of each API call (downloads have their own idle timeout).
    pub timeout: Duration,
    /// Retries of read-only calls that fail transiently (connection reset,
    /// timeout, HTTP 5xx). Calls that change something are never retried.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options for `url` with the defaults: verified TLS, 60 s per call.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            user: None,
            password: None,
            tls: TlsMode::Verify,
            ca_pem: None,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the timeout of each API call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the credentials.
    pub fn with_login(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(Zeroizing::new(password.into()));
        self
    }

    /// Sets the certificate checking.
    pub fn with_tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Trusts the extra CA certificates of a PEM file; an unreadable file
    /// is an [`Error::InvalidArgument`](hypersdk_core::Error) naming it.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> hypersdk_core::Result<Self> {
        let pem = std::fs::read(path).map_err(|e| {
            hypersdk_core::Error::InvalidArgument(format!(
                "cannot read CA file {}: {e}",
                path.display()
            ))
        })?;
        self.ca_pem = Some(pem);
        Ok(self)
    }
}

/// `https://user:pass@host/sdk` → `https://host/sdk`.
pub(crate) fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{rest}")
        }
        None => url.split_once('@').map_or(url, |(_, h)| h).to_string(),
    }
}

/// The URL of the SDK endpoint and any credentials it carried.
fn normalize_url(raw: &str) -> Result<(reqwest::Url, Option<String>, Option<String>)> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let mut url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        Error::InvalidArgument(format!("bad vSphere URL '{}': {e}", redact_url(raw)))
    })?;
    if url.host_str().is_none() {
        return Err(Error::InvalidArgument(format!(
            "vSphere URL '{}' has no host",
            redact_url(raw)
        )));
    }
    let user = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url.password().map(percent_decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/sdk");
    }
    Ok((url, user, password))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The references a session works from (from `RetrieveServiceContent`).
#[derive(Debug, Clone)]
pub struct ServiceContent {
    /// Root of the inventory.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The view manager.
    pub view_manager: MoRef,
    /// The session manager.
    pub session_manager: MoRef,
    /// `about.fullName`, e.g. "VMware vCenter Server 8.0.3 build-…".
    pub full_name: String,
    /// `about.apiVersion`.
    pub api_version: String,
}

/// A logged-in vim25 session.
pub struct Connection {
    http: reqwest::Client,
    url: reqwest::Url,
    host: String,
    user: String,
    password: Zeroizing<String>,
    cookie: Mutex<Option<String>>,
    content: ServiceContent,
    seen: Arc<Mutex<Seen>>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url.as_str())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A permanent provider error of this crate.
pub(crate) fn permanent(message: impl Into<String>) -> Error {
    provider_err(message, false)
}

/// A provider error of this crate.
pub(crate) fn provider_err(message: impl Into<String>, retryable: bool) -> Error {
    Error::Provider {
        provider: PROVIDER.into(),
        message: message.into(),
        retryable,
        source: None,
    }
}

impl Connection {
    /// Connects and logs in.
    pub async fn connect(opts: &ConnectOptions) -> Result<Arc<Connection>> {
        let (url, url_user, url_password) = normalize_url(&opts.url)?;
        let user = opts
            .user
            .clone()
            .or(url_user)
            .ok_or_else(|| Error::InvalidArgument("no vSphere user name given".into()))?;
        let password = opts
            .password
            .clone()
            .or(url_password.map(Zeroizing::new))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("no password given for vSphere user '{user}'"))
            })?;
        let (tls, seen) =
            client_config(&opts.tls, opts.ca_pem.as_deref()).map_err(Error::InvalidArgument)?;
        // No overall timeout on the client: disk downloads run for hours.
        // API calls get `opts.timeout` each; every read has an idle limit.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .read_timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| provider_err(format!("cannot build the HTTP client: {e}"), false))?;
        let host = url
            .host_str()
            .map(|h| match url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
            .unwrap_or_default();
        let mut conn = Connection {
            http,
            url,
            host,
            user,
            password,
            cookie: Mutex::new(None),
            content: ServiceContent {
                root_folder: MoRef::new("Folder", ""),
                property_collector: MoRef::new("PropertyCollector", ""),
                view_manager: MoRef::new("ViewManager", ""),
                session_manager: MoRef::new("SessionManager", ""),
                full_name: String::new(),
                api_version: String::new(),
            },
            seen,
            timeout: opts.timeout,
            retry: opts.retry.clone(),
        };
        let rv = conn
            .raw_call(
                "RetrieveServiceContent",
                &MoRef::new("ServiceInstance", "ServiceInstance").xml("_this"),
            )
            .await?;
        let rv = rv
            .find("returnval")
            .ok_or_else(|| permanent("RetrieveServiceContent returned nothing"))?;
        let mo = |name: &str| {
            rv.find(name)
                .and_then(MoRef::from_element)
                .ok_or_else(|| permanent(format!("the service content lacks {name}")))
        };
        conn.content = ServiceContent {
            root_folder: mo("rootFolder")?,
            property_collector: mo("propertyCollector")?,
            view_manager: mo("viewManager")?,
            session_manager: mo("sessionManager")?,
            full_name: rv
                .find("about")
                .and_then(|a| a.find_text("fullName"))
                .unwrap_or("")
                .to_string(),
            api_version: rv
                .find("about")
                .and_then(|a| a.find_text("apiVersion"))
                .unwrap_or("")
                .to_string(),
        };
        conn.login().await?;
        debug!(host = %conn.host, user = %conn.user, server = %conn.content.full_name, "logged in");
        Ok(Arc::new(conn))
    }

    async fn login(&self) -> Result<()> {
        let body = format!(
            "{}{}{}",
            self.content.session_manager.xml("_this"),
            el("userName", &self.user),
            el("password", &self.password)
        );
        match self.raw_call("Login", &body).await {
            Ok(_) => Ok(()),
            Err(Error::Provider { message, .. }) if message.contains("InvalidLogin") => {
                Err(Error::Auth {
                    provider: PROVIDER.into(),
                    target: self.host.clone(),
                    user: self.user.clone(),
                    message: "the user name or password is wrong (InvalidLogin)".into(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Logs out (the session ends on the server).
    pub async fn logout(&self) -> Result<()> {
        let body = self.content.session_manager.xml("_this");
        self.raw_call("Logout", &body).await?;
        *self.cookie.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// The server's references.
    pub fn content(&self) -> &ServiceContent {
        &self.content
    }

    /// `host[:port]` connected to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The HTTP client (for NFC downloads) and the session cookie.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn cookie(&self) -> Option<String> {
        self.cookie
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The base URL (scheme, host, port).
    pub(crate) fn base_url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The retry policy of this connection ([`ConnectOptions::retry`]).
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Calls `method` with `body` (its parameters, `_this` first) and returns
    /// the `<methodResponse>` element. Logs in again once if the session
    /// expired; retries read-only methods that fail transiently (see
    /// [`ConnectOptions::retry`]).
    pub async fn call(&self, method: &str, body: &str) -> Result<Element> {
        if READ_ONLY.contains(&method) {
            self.retry
                .run(method, |_| self.call_once(method, body))
                .await
        } else {
            self.call_once(method, body).await
        }
    }

    async fn call_once(&self, method: &str, body: &str) -> Result<Element> {
        match self.raw_call(method, body).await {
            Err(Error::Provider { message, .. }) if message.contains("NotAuthenticated") => {
                debug!(method, "session expired; logging in again");
                self.login().await?;
                self.raw_call(method, body).await
            }
            r => r,
        }
    }

    /// Describes a transport failure, with the certificate's thumbprint when
    /// TLS verification refused it.
    fn transport_error(&self, method: &str, e: reqwest::Error) -> Error {
        let seen = {
            let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *s)
        };
        if let (Some(thumb), Some(reason)) = (seen.thumbprint, seen.reason) {
            return provider_err(
                format!(
                    "the TLS certificate of {} is not trusted ({reason}); its SHA-1 thumbprint is {thumb} \
                     (check it, then pass --thumbprint {thumb} to pin it, or --ca-file with its CA)",
                    self.host
                ),
                false,
            );
        }
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        if e.is_connect() {
            provider_err(format!("cannot connect to {}: {msg}", self.host), true)
        } else if e.is_timeout() {
            provider_err(format!("{method} on {} timed out: {msg}", self.host), true)
        } else {
            provider_err(format!("{method} on {} failed: {msg}", self.host), true)
        }
    }

    async fn raw_call(&self, method: &str, body: &str) -> Result<Element> {
        let mut req = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/8.0.1.0")
            .body(envelope(method, body));
        if let Some(c) = self.cookie() {
            req = req.header("Cookie", c);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(method, e))?;
        if let Some(c) = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session="))
        {
            let pair = c.split(';').next().unwrap_or(c).to_string();
            *self.cookie.lock().unwrap_or_else(|p| p.into_inner()) = Some(pair);
        }
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| self.transport_error(method, e))?;
        match parse_reply(&text) {
            Ok(Reply::Ok(e)) => Ok(e),
            Ok(Reply::Fault(f)) => Err(fault_error(method, &self.host, f)),
            Err(why) => Err(provider_err(
                format!(
                    "{method} on {}: HTTP {status}, not a SOAP response ({why}): {}",
                    self.host,
                    text.chars().take(200).collect::<String>()
                ),
                status.is_server_error(),
            )),
        }
    }
}

fn fault_error(method: &str, host: &str, f: Fault) -> Error {
    let retryable = matches!(
        f.kind.as_str(),
        "TaskInProgress" | "ResourceBusy" | "HostCommunication"
    );
    provider_err(format!("{method} on {host}: {f}"), retryable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalize_and_lose_credentials() {
        let (u, user, pass) =
            normalize_url("https://admin%40vsphere.local:s%3Acret@vc.example:8443").unwrap();
        assert_eq!(u.as_str(), "https://vc.example:8443/sdk");
        assert_eq!(user.as_deref(), Some("admin@vsphere.local"));
        assert_eq!(pass.as_deref(), Some("s:cret"));
        let (u, user, _) = normalize_url("vc.example").unwrap();
        assert_eq!(u.as_str(), "https://vc.example/sdk");
        assert_eq!(user, None);
        assert_eq!(redact_url("https://a:b@h/sdk"), "https://h/sdk");
        assert!(normalize_url("https://").is_err());
        let dbg = format!(
            "{:?}",
            ConnectOptions::new("https://u:p@h").with_login("u", "secret")
        );
        assert!(!dbg.contains("secret") && !dbg.contains(":p@"), "{dbg}");
    }
}
