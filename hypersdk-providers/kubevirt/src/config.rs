//! `kind: kubevirt` settings: a kubeconfig (and context) or the pod's
//! service account, a namespace, and how exports are made.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;
use serde_json::Value;

use crate::KubevirtProvider;

/// How to reach one namespace's VirtualMachines. The kubeconfig is the
/// one kubectl uses (`KUBECONFIG`, else `~/.kube/config`) unless given;
/// `in_cluster` uses the pod's service account instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubevirtConfig {
    /// A kubeconfig file.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Its context (default: the current one).
    #[serde(default)]
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only VMs with these labels (`app=web,tier!=db`).
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Use the pod's service account (running in the cluster).
    #[serde(default)]
    pub in_cluster: bool,
    /// Download through the export's internal links (the Service in the
    /// cluster) instead of the external ones (default: internal when
    /// in_cluster).
    #[serde(default)]
    pub internal_links: Option<bool>,
    /// Seconds to wait for a snapshot or an export to be ready (default 600).
    #[serde(default)]
    pub ready_timeout_s: Option<u64>,
    /// The export's `ttlDuration` (default `4h`): a killed export is
    /// removed by KubeVirt after it.
    #[serde(default)]
    pub ttl: Option<String>,
}

impl KubevirtConfig {
    /// The provider these settings reach (reads the kubeconfig; nothing is
    /// contacted before a call).
    pub async fn provider(&self) -> Result<KubevirtProvider> {
        let bad = |what: String| Error::InvalidArgument(what);
        let config = if self.in_cluster {
            kube::Config::incluster()
                .map_err(|e| bad(format!("not in a cluster (no service account): {e}")))?
        } else {
            let kc = match &self.kubeconfig {
                Some(p) => Kubeconfig::read_from(p)
                    .map_err(|e| bad(format!("kubeconfig {}: {e}", p.display())))?,
                None => Kubeconfig::read().map_err(|e| {
                    bad(format!("no kubeconfig (KUBECONFIG or ~/.kube/config): {e}"))
                })?,
            };
            let opts = KubeConfigOptions {
                context: self.context.clone(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| bad(format!("kubeconfig: {e}")))?
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::Internal(format!("cannot make the Kubernetes client: {e}")))?;
        let ttl = self.ttl.clone().unwrap_or_else(|| "4h".into());
        if !ttl
            .chars()
            .all(|c| c.is_ascii_digit() || "hms.".contains(c))
            || ttl.is_empty()
        {
            return Err(bad(format!("ttl {ttl:?} is not a duration like 4h or 90m")));
        }
        Ok(KubevirtProvider::new(
            client,
            namespace,
            self.label_selector.clone(),
            self.internal_links.unwrap_or(self.in_cluster),
            Duration::from_secs(self.ready_timeout_s.unwrap_or(600)),
            ttl,
        ))
    }
}

#[async_trait]
impl ProviderSettings for KubevirtConfig {
    const KIND: &'static str = "kubevirt";
    const ABOUT: &'static str =
        "KubeVirt VirtualMachines, exported through VirtualMachineExport and its export server";

    /// `kubevirt://[CONTEXT]/NAMESPACE`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        let mut f = Fields::new();
        if !url.host.is_empty() {
            f.insert("context".into(), Value::String(url.host.clone()));
        }
        let ns = url.path.trim_matches('/');
        if ns.contains('/') {
            return Err(Error::InvalidArgument(
                "a kubevirt URL is kubevirt://[CONTEXT]/NAMESPACE".into(),
            ));
        }
        if !ns.is_empty() {
            f.insert("namespace".into(), Value::String(ns.to_string()));
        }
        Ok(f)
    }

    /// kubectl's KUBECONFIG is read when the provider is made.
    fn env_fields(_env: &dyn Fn(&str) -> Option<String>) -> Fields {
        Fields::new()
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider().await?))
    }
}
