//! `kind: proxmox` settings: the API endpoint and token, TLS, and how the
//! nodes are reached over SSH.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::tls::TlsMode;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::api::Api;
use crate::sftp::{HostKeys, SshSettings};
use crate::ProxmoxProvider;

/// How to reach a Proxmox VE cluster.
///
/// ```
/// let c: hypersdk_proxmox::ProxmoxConfig = serde_json::from_str(r#"{
///     "url": "https://pve1.example.com:8006",
///     "token_file": "/etc/hypersdk/pve.token",
///     "fingerprint": "AB:CD:…",
///     "ssh_key": "/etc/hypersdk/pve_ed25519"}"#).unwrap();
/// assert_eq!(c.ssh_user.as_deref(), None); // root
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// The API endpoint, `https://HOST[:8006]`.
    pub url: String,
    /// The API token, `USER@REALM!TOKENID=SECRET` (or `PVEAPIToken=…`).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Accept only the API certificate with this SHA-256 (or SHA-1)
    /// fingerprint, `AB:CD:…` as the PVE GUI shows it.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// A CA certificate (PEM) to trust besides the system's (the cluster's
    /// `/etc/pve/pve-root-ca.pem`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the API certificate at all.
    #[serde(default)]
    pub insecure: bool,
    /// SSH user on the nodes (default root).
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// SSH private key (OpenSSH format, unencrypted).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// SSH port of the nodes (default 22).
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// Accept only node host keys with these fingerprints (`SHA256:…`, as
    /// `ssh-keygen -l` shows them).
    #[serde(default)]
    pub ssh_host_keys: Vec<String>,
    /// A known_hosts file for the nodes' host keys (default
    /// `~/.ssh/known_hosts` when no fingerprint is pinned).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Address of each node for SSH, where it is not the one the cluster
    /// reports (`GET /cluster/status`).
    #[serde(default)]
    pub ssh_hosts: BTreeMap<String, String>,
    /// Seconds to wait for a PVE task (a snapshot) to end (default 600).
    #[serde(default)]
    pub task_timeout_s: Option<u64>,
}

impl ProxmoxConfig {
    /// The provider these settings reach (reads the token and key files;
    /// nothing is contacted before a call).
    pub fn provider(&self) -> Result<ProxmoxProvider> {
        let bad = |what: String| Error::InvalidArgument(format!("proxmox settings: {what}"));
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| bad(format!("url {:?}: {e}", self.url)))?;
        if url.scheme() != "https"
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(bad(format!(
                "url {:?} is not https://HOST[:PORT]",
                self.url
            )));
        }
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| bad(format!("token_file {}: {e}", f.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, None) => return Err(bad("an API token is needed (token or token_file)".into())),
        };
        let token = token.trim().trim_start_matches("PVEAPIToken=").to_string();
        let user = match token.split_once('=') {
            Some((id, secret)) if id.contains('@') && id.contains('!') && !secret.is_empty() => {
                id.split('!').next().unwrap_or_default().to_string()
            }
            _ => return Err(bad("the token is not USER@REALM!TOKENID=SECRET".into())),
        };
        let ca = match &self.ca_file {
            Some(f) => {
                Some(std::fs::read(f).map_err(|e| bad(format!("ca_file {}: {e}", f.display())))?)
            }
            None => None,
        };
        let tls = TlsMode::from_settings(self.fingerprint.clone(), self.insecure);
        let api = Api::new(&url, &token, &user, &tls, ca.as_deref())?;
        let key = match &self.ssh_key {
            Some(p) => Some(
                russh::keys::load_secret_key(p, None)
                    .map_err(|e| bad(format!("ssh_key {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let host_keys = if !self.ssh_host_keys.is_empty() {
            HostKeys::Pinned(self.ssh_host_keys.clone())
        } else {
            HostKeys::KnownHosts(self.known_hosts.clone())
        };
        let ssh = SshSettings {
            user: self.ssh_user.clone().unwrap_or_else(|| "root".into()),
            key,
            port: self.ssh_port.unwrap_or(22),
            host_keys,
            hosts: self.ssh_hosts.clone(),
        };
        Ok(ProxmoxProvider::new(
            api,
            ssh,
            Duration::from_secs(self.task_timeout_s.unwrap_or(600)),
        ))
    }
}

#[async_trait]
impl ProviderSettings for ProxmoxConfig {
    const KIND: &'static str = "proxmox";
    const ABOUT: &'static str =
        "Proxmox VE QEMU VMs, described through the PVE API, disks read over SFTP from the node";

    /// `proxmox://HOST[:PORT]` (the API at `https://HOST:PORT`, default 8006).
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        let mut f = Fields::new();
        if url.host.is_empty() || !url.path.trim_matches('/').is_empty() {
            return Err(Error::InvalidArgument(
                "a proxmox URL is proxmox://HOST[:PORT]".into(),
            ));
        }
        let host = if url
            .host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            url.host.clone()
        } else {
            format!("{}:8006", url.host)
        };
        f.insert("url".into(), Value::String(format!("https://{host}")));
        Ok(f)
    }

    /// `PROXMOX_URL`, `PROXMOX_TOKEN` (the names the community Ansible
    /// collection and Terraform providers read as PM_API_URL / PM_API_TOKEN
    /// are also taken).
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        if let Some(u) = env("PROXMOX_URL").or_else(|| env("PM_API_URL")) {
            let u = u
                .trim_end_matches('/')
                .trim_end_matches("/api2/json")
                .to_string();
            f.insert("url".into(), Value::String(u));
        }
        let token = env("PROXMOX_TOKEN").or_else(|| {
            Some(format!(
                "{}={}",
                env("PM_API_TOKEN_ID")?,
                env("PM_API_TOKEN_SECRET")?
            ))
        });
        if let Some(t) = token {
            f.insert("token".into(), Value::String(t));
        }
        f
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider()?))
    }
}
