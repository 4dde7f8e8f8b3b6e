//! Choosing and connecting the provider: `--provider local|vsphere` and the
//! connection settings of each.
//!
//! vSphere settings come from flags, else the environment (govc's names:
//! GOVC_URL, GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE, GOVC_TLS_CA_CERTS,
//! plus GOVC_TLS_THUMBPRINT), else a config file of the same `KEY=VALUE`
//! lines (`--vsphere-config`). The password is never a flag: it comes from
//! `--password-file`, GOVC_PASSWORD or the config file, so it does not show
//! in the process list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};

use hypersdk_core::Provider;
use hypersdk_local::{LocalProvider, DEFAULT_DOMAIN_DIR};
use hypersdk_vsphere::{ConnectOptions, TlsMode, VsphereProvider};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// KVM/libvirt VMs described by domain XML files.
    Local,
    /// vCenter Server or ESXi (vSphere Web Services API).
    Vsphere,
}

#[derive(Args, Debug)]
pub struct ProviderArgs {
    /// Platform the VM lives on.
    #[arg(long, value_enum, default_value = "local", env = "HYPERSDK_PROVIDER")]
    provider: ProviderKind,
    /// local: directory of libvirt domain XML files.
    #[arg(long, env = "HYPERSDK_LOCAL_DIR", default_value = DEFAULT_DOMAIN_DIR)]
    dir: PathBuf,
    /// vsphere: vCenter/ESXi address, e.g. vcenter.example (https and /sdk implied) [env: GOVC_URL].
    #[arg(long)]
    url: Option<String>,
    /// vsphere: user name [env: GOVC_USERNAME].
    #[arg(long)]
    username: Option<String>,
    /// vsphere: file whose first line is the password [else env: GOVC_PASSWORD].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// vsphere: do not verify the server's certificate [env: GOVC_INSECURE=1].
    #[arg(long)]
    insecure: bool,
    /// vsphere: accept only the certificate with this SHA-1 or SHA-256
    /// thumbprint [env: GOVC_TLS_THUMBPRINT].
    #[arg(long, value_name = "AB:CD:...")]
    thumbprint: Option<String>,
    /// vsphere: PEM file of extra trusted CA certificates [env: GOVC_TLS_CA_CERTS].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// vsphere: file of KEY=VALUE lines with the GOVC_* settings above, used
    /// where neither a flag nor the environment gives one.
    #[arg(long, env = "HYPERSDK_VSPHERE_CONFIG", value_name = "FILE")]
    vsphere_config: Option<PathBuf>,
}

/// A connected provider; `close` ends its session.
pub struct Connected {
    pub provider: Box<dyn Provider>,
    vsphere: Option<VsphereProvider>,
}

impl Connected {
    /// The vSphere provider, when that is the one connected.
    pub fn vsphere(&self) -> Option<&VsphereProvider> {
        self.vsphere.as_ref()
    }

    /// Logs out of a vSphere session (errors only logged: the work is done).
    pub async fn close(self) {
        if let Some(v) = self.vsphere {
            if let Err(e) = v.logout().await {
                tracing::warn!(error = %e, "vSphere logout failed");
            }
        }
    }
}

fn read_config(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read vSphere config {}", path.display()))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{} line {}: expected KEY=VALUE", path.display(), i + 1);
        };
        let v = v.trim().trim_matches('"').trim_matches('\'');
        map.insert(
            k.trim().trim_start_matches("export ").to_string(),
            v.to_string(),
        );
    }
    Ok(map)
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl ProviderArgs {
    /// The vSphere connection settings (flags > environment > config file).
    pub fn vsphere_options(&self) -> anyhow::Result<ConnectOptions> {
        let file = match &self.vsphere_config {
            Some(p) => read_config(p)?,
            None => HashMap::new(),
        };
        let get = |flag: Option<&String>, key: &str| -> Option<String> {
            flag.cloned()
                .or_else(|| std::env::var(key).ok().filter(|v| !v.is_empty()))
                .or_else(|| file.get(key).cloned())
        };
        let Some(url) = get(self.url.as_ref(), "GOVC_URL") else {
            bail!("--provider vsphere needs --url (or GOVC_URL, or a --vsphere-config file)");
        };
        let mut opts = ConnectOptions::new(url);
        if let Some(u) = get(self.username.as_ref(), "GOVC_USERNAME") {
            opts.user = Some(u);
        }
        let password = match &self.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read password file {}", p.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            None => get(None, "GOVC_PASSWORD"),
        };
        if let Some(p) = password {
            opts.password = Some(zeroize::Zeroizing::new(p));
        }
        let insecure = self.insecure || get(None, "GOVC_INSECURE").is_some_and(|v| truthy(&v));
        opts.tls = TlsMode::from_settings(
            get(self.thumbprint.as_ref(), "GOVC_TLS_THUMBPRINT"),
            insecure,
        );
        let ca = self
            .ca_file
            .clone()
            .or_else(|| get(None, "GOVC_TLS_CA_CERTS").map(PathBuf::from));
        if let Some(ca) = ca {
            opts = opts.with_ca_file(&ca)?;
        }
        Ok(opts)
    }

    /// Connects the chosen provider.
    pub async fn connect(&self) -> anyhow::Result<Connected> {
        Ok(match self.provider {
            ProviderKind::Local => Connected {
                provider: Box::new(LocalProvider::new(&self.dir)),
                vsphere: None,
            },
            ProviderKind::Vsphere => {
                let v = VsphereProvider::connect(&self.vsphere_options()?).await?;
                Connected {
                    provider: Box::new(v.clone()),
                    vsphere: Some(v),
                }
            }
        })
    }
}
