//! [`LocalConfig`]: the registry entry of this provider — the settings
//! `kind: local` stands for, or `local:///etc/libvirt/qemu`.

use std::path::PathBuf;

use async_trait::async_trait;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;

use crate::{LocalProvider, DEFAULT_DISK_ROOTS, DEFAULT_DOMAIN_DIR};

/// Where the domain XML files are, and where their disks may lie.
///
/// ```
/// let c: hypersdk_local::LocalConfig =
///     serde_json::from_str(r#"{"dir": "/srv/vms", "disk_roots": ["/srv/images"]}"#).unwrap();
/// assert_eq!(c.dir, std::path::Path::new("/srv/vms"));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Directory of libvirt domain XML files (default `/etc/libvirt/qemu`)
    /// [env: HYPERSDK_LOCAL_DIR].
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Directories disk images may lie in (links followed); `dir` is always
    /// allowed. Set, the provider is confined: VMs by name or UUID only,
    /// never by path ([`LocalProvider::confined`]). Unset, the caller may
    /// read any file it names ([`LocalProvider::new`]) — unless the
    /// settings are [confined](ProviderSettings::confine), which sets the
    /// libvirt image directories.
    #[serde(default)]
    pub disk_roots: Option<Vec<PathBuf>>,
}

fn default_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DOMAIN_DIR)
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            dir: default_dir(),
            disk_roots: None,
        }
    }
}

impl LocalConfig {
    /// The provider these settings describe.
    pub fn provider(&self) -> LocalProvider {
        match &self.disk_roots {
            Some(roots) => LocalProvider::confined(&self.dir, roots.clone()),
            None => LocalProvider::new(&self.dir),
        }
    }
}

#[async_trait]
impl ProviderSettings for LocalConfig {
    const KIND: &'static str = "local";
    const ABOUT: &'static str = "KVM/libvirt VMs described by domain XML files";

    /// `local:///DIR` → `dir: /DIR`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        if !url.host.is_empty() || url.user.is_some() || url.path.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{url}: a local URL names a directory on this host: local:///DIR"
            )));
        }
        let mut f = Fields::new();
        f.insert("dir".into(), url.path.clone().into());
        Ok(f)
    }

    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        if let Some(d) = env("HYPERSDK_LOCAL_DIR").filter(|d| !d.is_empty()) {
            f.insert("dir".into(), d.into());
        }
        f
    }

    fn confine(&mut self) {
        if self.disk_roots.is_none() {
            self.disk_roots = Some(DEFAULT_DISK_ROOTS.iter().map(PathBuf::from).collect());
        }
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider()))
    }
}
