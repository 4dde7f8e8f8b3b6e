//! [`VsphereConfig`]: the registry entry of this provider — the settings
//! `kind: vsphere` stands for, in a config file, a daemon's provider list,
//! a binding's `connect`, or as `vsphere://user@vcenter.example`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::connect::{read_secret_file, truthy};
use hypersdk_core::{Fields, Provider, ProviderSettings, ProviderUrl, Result, Secret};
use serde::Deserialize;
use serde_json::Value;

use crate::{ConnectOptions, TlsMode, VsphereProvider};

/// How to reach a vCenter or ESXi host.
///
/// ```
/// let c: hypersdk_vsphere::VsphereConfig = serde_json::from_str(
///     r#"{"url": "vc.example", "user": "migrator@vsphere.local",
///         "password_file": "/etc/hypersdk/vc.pass", "thumbprint": "AB:CD"}"#).unwrap();
/// assert_eq!(c.user.as_deref(), Some("migrator@vsphere.local"));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsphereConfig {
    /// `https://host[:port][/sdk]` or just `host` (https and /sdk implied)
    /// [env: GOVC_URL].
    pub url: String,
    /// User name [env: GOVC_USERNAME].
    #[serde(default, alias = "username")]
    pub user: Option<String>,
    /// File whose first line is the password (kept out of process lists).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password itself [env: GOVC_PASSWORD] (a binding's argument);
    /// `password_file` wins.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Accept only the certificate with this SHA-1 or SHA-256 thumbprint
    /// [env: GOVC_TLS_THUMBPRINT].
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// PEM file of extra trusted CA certificates [env: GOVC_TLS_CA_CERTS].
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate [env: GOVC_INSECURE=1].
    #[serde(default)]
    pub insecure: bool,
    /// Seconds each API call may take (default 60).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl VsphereConfig {
    /// The connection options these settings describe (the password file
    /// and CA file are read here; an unreadable one is an error naming it).
    pub fn connect_options(&self) -> Result<ConnectOptions> {
        let mut o = ConnectOptions::new(&self.url).with_tls(TlsMode::from_settings(
            self.thumbprint.clone(),
            self.insecure,
        ));
        o.user = self.user.clone();
        let password = match &self.password_file {
            Some(f) => Some(read_secret_file(f, "password file")?),
            None => self.password.clone(),
        };
        if let Some(p) = password {
            o.password = Some(zeroize::Zeroizing::new(p.expose().to_string()));
        }
        if let Some(ca) = &self.ca_file {
            o = o.with_ca_file(ca)?;
        }
        if let Some(t) = self.timeout_secs {
            o = o.with_timeout(Duration::from_secs(t.max(1)));
        }
        Ok(o)
    }
}

#[async_trait]
impl ProviderSettings for VsphereConfig {
    const KIND: &'static str = "vsphere";
    const ABOUT: &'static str = "vCenter Server or ESXi (vSphere Web Services API)";

    /// `vsphere://[USER@]HOST[:PORT][/PATH]` → `url: https://HOST[:PORT]/PATH`
    /// (`/sdk` when no path), `user: USER`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        if url.host.is_empty() {
            return Err(hypersdk_core::Error::InvalidArgument(
                "a vsphere URL needs a host: vsphere://[USER@]HOST[:PORT][/sdk]".into(),
            ));
        }
        let path = if url.path.is_empty() {
            "/sdk"
        } else {
            &url.path
        };
        let mut f = Fields::new();
        f.insert("url".into(), format!("https://{}{path}", url.host).into());
        if let Some(u) = &url.user {
            f.insert("user".into(), u.clone().into());
        }
        Ok(f)
    }

    /// govc's variables: GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD,
    /// GOVC_INSECURE, GOVC_TLS_CA_CERTS, GOVC_TLS_THUMBPRINT.
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        for (var, field) in [
            ("GOVC_URL", "url"),
            ("GOVC_USERNAME", "user"),
            ("GOVC_PASSWORD", "password"),
            ("GOVC_TLS_CA_CERTS", "ca_file"),
            ("GOVC_TLS_THUMBPRINT", "thumbprint"),
        ] {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                f.insert(field.into(), Value::String(v));
            }
        }
        if let Some(v) = env("GOVC_INSECURE") {
            f.insert("insecure".into(), Value::Bool(truthy(&v)));
        }
        f
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(
            VsphereProvider::connect(&self.connect_options()?).await?,
        ))
    }
}
