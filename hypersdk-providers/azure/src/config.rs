//! `kind: azure` settings: a subscription, credentials and endpoints, given
//! the way Azure users already give them.

use async_trait::async_trait;
use hypersdk_core::connect::Secret;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arm::{Arm, Credential};
use crate::AzureProvider;

/// How to reach one subscription's VMs. Unset fields come from the
/// variables azure-identity and the Azure CLI read (`AZURE_SUBSCRIPTION_ID`,
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, …).
///
/// Credentials, first that applies: `access_token`; a service principal
/// (`tenant_id`, `client_id`, `client_secret`); else the machine's managed
/// identity (`client_id` picks a user-assigned one).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// Subscription id.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Only this resource group's VMs (VM names may also say
    /// `RESOURCE_GROUP/NAME`).
    #[serde(default)]
    pub resource_group: Option<String>,
    /// Directory (tenant) id of the service principal.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id: the service principal's, or a
    /// user-assigned managed identity's.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The service principal's secret.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A bearer token for Azure Resource Manager obtained elsewhere
    /// (`az account get-access-token --query accessToken -o tsv`).
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Azure Resource Manager (default `https://management.azure.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Entra ID authority (default `https://login.microsoftonline.com`).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// The instance metadata service (default `http://169.254.169.254`).
    #[serde(default)]
    pub identity_endpoint: Option<String>,
}

impl std::fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |s: &Option<Secret>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("AzureConfig")
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &hide(&self.client_secret))
            .field("access_token", &hide(&self.access_token))
            .field("endpoint", &self.endpoint)
            .field("authority_host", &self.authority_host)
            .field("identity_endpoint", &self.identity_endpoint)
            .finish()
    }
}

impl AzureConfig {
    /// The provider these settings reach.
    pub fn provider(&self) -> Result<AzureProvider> {
        let subscription = self.subscription_id.clone().ok_or_else(|| {
            Error::InvalidArgument(
                "no Azure subscription: set subscription_id, AZURE_SUBSCRIPTION_ID or azure://SUBSCRIPTION_ID".into(),
            )
        })?;
        let credential = if let Some(t) = &self.access_token {
            Credential::Token(t.clone())
        } else if let Some(secret) = &self.client_secret {
            let (Some(tenant), Some(client_id)) = (&self.tenant_id, &self.client_id) else {
                return Err(Error::InvalidArgument(
                    "a client secret needs tenant_id and client_id (AZURE_TENANT_ID, AZURE_CLIENT_ID)".into(),
                ));
            };
            Credential::ClientSecret {
                authority: self
                    .authority_host
                    .clone()
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
                tenant: tenant.clone(),
                client_id: client_id.clone(),
                secret: secret.clone(),
            }
        } else {
            Credential::ManagedIdentity {
                endpoint: self
                    .identity_endpoint
                    .clone()
                    .unwrap_or_else(|| "http://169.254.169.254".into()),
                client_id: self.client_id.clone(),
            }
        };
        let arm = Arm::new(
            self.endpoint
                .as_deref()
                .unwrap_or("https://management.azure.com"),
            credential,
        )?;
        AzureProvider::new(arm, &subscription, self.resource_group.as_deref())
    }
}

#[async_trait]
impl ProviderSettings for AzureConfig {
    const KIND: &'static str = "azure";
    const ABOUT: &'static str =
        "Azure VMs, their managed disks read as page blobs through a read SAS";

    /// `azure://SUBSCRIPTION_ID[/RESOURCE_GROUP]`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        let mut f = Fields::new();
        if !url.host.is_empty() {
            f.insert("subscription_id".into(), Value::String(url.host.clone()));
        }
        let rg = url.path.trim_matches('/');
        if rg.contains('/') {
            return Err(Error::InvalidArgument(
                "an azure URL is azure://SUBSCRIPTION_ID[/RESOURCE_GROUP]".into(),
            ));
        }
        if !rg.is_empty() {
            f.insert("resource_group".into(), Value::String(rg.to_string()));
        }
        Ok(f)
    }

    /// azure-identity's and the Azure CLI's variables: AZURE_SUBSCRIPTION_ID,
    /// AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET,
    /// AZURE_AUTHORITY_HOST, AZURE_POD_IDENTITY_AUTHORITY_HOST (the
    /// metadata service), AZURE_DEFAULTS_GROUP (the resource group).
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        let mut put = |field: &str, var: &str| {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                f.insert(field.into(), Value::String(v));
            }
        };
        put("subscription_id", "AZURE_SUBSCRIPTION_ID");
        put("tenant_id", "AZURE_TENANT_ID");
        put("client_id", "AZURE_CLIENT_ID");
        put("client_secret", "AZURE_CLIENT_SECRET");
        put("authority_host", "AZURE_AUTHORITY_HOST");
        put("identity_endpoint", "AZURE_POD_IDENTITY_AUTHORITY_HOST");
        put("resource_group", "AZURE_DEFAULTS_GROUP");
        f
    }

    async fn connect(&self) -> Result<Box<dyn Provider>> {
        Ok(Box::new(self.provider()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_secrets() {
        let c = AzureConfig {
            client_secret: Some(Secret::new("very-secret")),
            access_token: Some(Secret::new("token-secret")),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("token-secret"));
    }

    #[test]
    fn urls() {
        let u = ProviderUrl::parse("azure://sub-1/rg-a").unwrap_or_default();
        let f = u.map(|u| AzureConfig::url_fields(&u));
        let f = f.and_then(|r| r.ok()).unwrap_or_default();
        assert_eq!(f["subscription_id"], "sub-1");
        assert_eq!(f["resource_group"], "rg-a");
    }
}
