//! `kind: hyperv` settings: the host's WinRM endpoint and account, TLS,
//! and where its VHDX files are read (SMB shares or mounted folders).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::tls::TlsMode;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::files::PathMap;
use crate::winrm::{Account, Auth, WinRm};
use crate::HypervProvider;

/// How to reach a Hyper-V host.
///
/// ```
/// let c: hypersdk_hyperv::HypervConfig = serde_json::from_str(r#"{
///     "url": "https://hv1.corp.example:5986/wsman",
///     "user": "CORP\\svc-migrate",
///     "password_file": "/etc/hypersdk/hv1.password",
///     "shares": {"C:\\Hyper-V": "\\\\hv1.corp.example\\VMs"}}"#).unwrap();
/// assert_eq!(c.auth.as_deref(), None); // NTLM
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervConfig {
    /// The WinRM endpoint: `https://HOST:5986/wsman` (or `http://HOST:5985/wsman`
    /// with Basic sign-in, where the host allows unencrypted WinRM).
    pub url: String,
    /// The account: `DOMAIN\user`, `user@domain` or a local `user`.
    pub user: String,
    /// Its password.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `ntlm` (default) or `basic`.
    #[serde(default)]
    pub auth: Option<String>,
    /// Accept only the WinRM certificate with this SHA-256 (or SHA-1)
    /// fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the WinRM certificate at all.
    #[serde(default)]
    pub insecure: bool,
    /// Host folders and the SMB shares that serve them:
    /// `{"C:\\Hyper-V": "\\\\hv1\\VMs"}`.
    #[serde(default)]
    pub shares: BTreeMap<String, String>,
    /// Host folders and the local directories where the user mounted
    /// them: `{"C:\\Hyper-V": "/mnt/hv1-vms"}`.
    #[serde(default)]
    pub mounts: BTreeMap<String, PathBuf>,
    /// TCP port of the SMB servers (default 445).
    #[serde(default)]
    pub smb_port: Option<u16>,
    /// SMB account, where it is not the WinRM one.
    #[serde(default)]
    pub smb_user: Option<String>,
    /// A file holding the SMB account's password.
    #[serde(default)]
    pub smb_password_file: Option<PathBuf>,
    /// Seconds one PowerShell script may take (default 600: a checkpoint
    /// of a busy VM takes a while).
    #[serde(default)]
    pub script_timeout_s: Option<u64>,
}

fn first_line(path: &PathBuf, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| {
            Error::InvalidArgument(format!("hyperv settings: {what} {}: {e}", path.display()))
        })
        .map(|s| s.lines().next().unwrap_or_default().to_string())
}

impl HypervConfig {
    /// The provider these settings reach (reads the password files;
    /// nothing is contacted before a call).
    pub fn provider(&self) -> Result<HypervProvider> {
        let bad = |what: String| Error::InvalidArgument(format!("hyperv settings: {what}"));
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| bad(format!("url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "https" | "http")
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(bad(format!(
                "url {:?} is not https://HOST[:PORT]/wsman",
                self.url
            )));
        }
        let auth = match self.auth.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("ntlm") | Some("negotiate") => Auth::Ntlm,
            Some("basic") => Auth::Basic,
            Some("kerberos") => {
                return Err(bad(
                    "auth kerberos is not supported yet: use ntlm (a domain account works with it) or basic over HTTPS"
                        .into(),
                ))
            }
            Some(other) => return Err(bad(format!("auth {other:?}: ntlm or basic"))),
        };
        if url.scheme() == "http" && auth == Auth::Ntlm {
            return Err(bad(
                "WinRM over plain HTTP with NTLM needs WinRM's message encryption, which hypersdk does not implement: use https://HOST:5986/wsman (or auth basic where the host allows unencrypted WinRM)".into(),
            ));
        }
        if self.user.is_empty() {
            return Err(bad("user is needed".into()));
        }
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => first_line(f, "password_file")?,
            (None, None) => {
                return Err(bad(
                    "a password is needed (password or password_file)".into()
                ))
            }
        };
        let account = Account::parse(&self.user, password);
        let smb_account = match &self.smb_user {
            Some(u) => {
                let pw = match &self.smb_password_file {
                    Some(f) => first_line(f, "smb_password_file")?,
                    None => return Err(bad("smb_user needs smb_password_file".into())),
                };
                Account::parse(u, pw)
            }
            None => account.clone(),
        };
        let ca = match &self.ca_file {
            Some(f) => {
                Some(std::fs::read(f).map_err(|e| bad(format!("ca_file {}: {e}", f.display())))?)
            }
            None => None,
        };
        let tls = TlsMode::from_settings(self.fingerprint.clone(), self.insecure);
        let timeout = Duration::from_secs(self.script_timeout_s.unwrap_or(600));
        let winrm = WinRm::new(&url, auth, account, &tls, ca.as_deref(), timeout)?;
        let paths = PathMap::new(&self.shares, &self.mounts)?;
        Ok(HypervProvider::new(
            winrm,
            paths,
            smb_account,
            self.smb_port.unwrap_or(445),
        ))
    }
}

#[async_trait]
impl ProviderSettings for HypervConfig {
    const KIND: &'static str = "hyperv";
    const ABOUT: &'static str =
        "Hyper-V VMs over WinRM (PowerShell), exported from a checkpoint whose VHDX files are read over SMB";

    /// `hyperv://[USER@]HOST[:PORT]`: WinRM over HTTPS (5986 unless given).
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        if url.host.is_empty() || !url.path.trim_matches('/').is_empty() {
            return Err(Error::InvalidArgument(
                "a hyperv URL is hyperv://[USER@]HOST[:PORT]".into(),
            ));
        }
        let host = if url
            .host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            url.host.clone()
        } else {
            format!("{}:5986", url.host)
        };
        let mut f = Fields::new();
        f.insert("url".into(), Value::String(format!("https://{host}/wsman")));
        if let Some(u) = &url.user {
            f.insert("user".into(), Value::String(u.clone()));
        }
        Ok(f)
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider()?))
    }
}
