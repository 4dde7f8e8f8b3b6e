//! Azure Blob Storage (and Azurite) as a sink.
//!
//! `az://container/prefix/` (the account from the settings or the
//! environment) or `azure://account/container/prefix/` names the
//! destination. Credentials come the way Azure users already give them,
//! first match wins:
//!
//! 1. [`AzureSettings`] fields (the daemon's named sinks, the bindings);
//! 2. a connection string: `AZURE_STORAGE_CONNECTION_STRING`
//!    (`AccountName=…;AccountKey=…;BlobEndpoint=…` or `SharedAccessSignature=…`);
//! 3. the variables the `az` CLI reads: `AZURE_STORAGE_ACCOUNT`,
//!    `AZURE_STORAGE_KEY`, `AZURE_STORAGE_SAS_TOKEN`; and object_store's
//!    (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, service
//!    principal, workload identity);
//! 4. a managed identity or the `az` CLI's login.
//!
//! Objects are block blobs: parts are staged blocks, committed by one block
//! list at publication, so nothing is visible before. Uncommitted blocks
//! cannot be deleted through the API: those of an aborted export expire
//! after 7 days (Azure's rule) or when a blob of that name is committed.

use std::sync::Arc;

use hypersdk_core::{Error, Result};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use crate::object::{endpoint_is_http, hidden, plain_prefix};
use crate::ObjectStoreSink;

/// How to reach a container, beyond what its URL says.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    /// Storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Account key.
    #[serde(default)]
    pub access_key: Option<String>,
    /// SAS token (`sv=…&sig=…`).
    #[serde(default)]
    pub sas_token: Option<String>,
    /// A connection string, as the portal gives it.
    #[serde(default)]
    pub connection_string: Option<String>,
    /// Blob endpoint (`http://127.0.0.1:10000/devstoreaccount1` for
    /// Azurite); default `https://ACCOUNT.blob.core.windows.net`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Part (block) size in bytes (at least 5 MiB; default 16 MiB).
    #[serde(default)]
    pub part_size: Option<usize>,
}

impl std::fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSettings")
            .field("account", &self.account)
            .field("access_key", &hidden(&self.access_key))
            .field("sas_token", &hidden(&self.sas_token))
            .field("connection_string", &hidden(&self.connection_string))
            .field("endpoint", &self.endpoint)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// Account (if the URL names one), container and prefix of an `az://` or
/// `azure://` URL.
pub fn parse_url(url: &str) -> Result<(Option<String>, String, String)> {
    let bad = |why: &str| Error::InvalidArgument(format!("{url}: {why}"));
    let (account, rest) = if let Some(r) = url.strip_prefix("az://") {
        (None, r)
    } else if let Some(r) = url.strip_prefix("azure://") {
        let (a, r) = r
            .split_once('/')
            .ok_or_else(|| bad("azure:// URLs are azure://ACCOUNT/CONTAINER/PREFIX"))?;
        (Some(a.to_string()), r)
    } else {
        return Err(bad("not an az:// or azure:// URL"));
    };
    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Container names: 3–63 of [a-z0-9-], not starting with '-' (Azure's rules).
    let ok = (3..=63).contains(&container.len())
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-');
    if !ok {
        return Err(bad(&format!(
            "{container:?} is not a container name (3 to 63 lower-case letters, digits and hyphens)"
        )));
    }
    if let Some(a) = &account {
        if a.is_empty()
            || !a
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(&format!("{a:?} is not a storage account name")));
        }
    }
    Ok((account, container.to_string(), plain_prefix(url, prefix)?))
}

/// The fields of a connection string (`Key=Value;…`), by lower-case key.
fn connection_string(text: &str) -> std::collections::HashMap<String, String> {
    text.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// An Azure Blob sink for `url`, keeping resume state in `state_dir`.
pub fn sink(
    url: &str,
    settings: &AzureSettings,
    state_dir: std::path::PathBuf,
) -> Result<ObjectStoreSink> {
    let (url_account, container, prefix) = parse_url(url)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cs = settings
        .connection_string
        .clone()
        .or_else(|| env("AZURE_STORAGE_CONNECTION_STRING"))
        .map(|c| connection_string(&c))
        .unwrap_or_default();
    let account = url_account
        .or_else(|| settings.account.clone())
        .or_else(|| cs.get("accountname").cloned())
        .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
        .or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{url}: no storage account (azure://ACCOUNT/…, AZURE_STORAGE_ACCOUNT or a connection string)"
            ))
        })?;
    let mut b = MicrosoftAzureBuilder::from_env()
        .with_account(&account)
        .with_container_name(&container);
    let key = settings
        .access_key
        .clone()
        .or_else(|| cs.get("accountkey").cloned())
        .or_else(|| env("AZURE_STORAGE_KEY"));
    let sas = settings
        .sas_token
        .clone()
        .or_else(|| cs.get("sharedaccesssignature").cloned())
        .or_else(|| env("AZURE_STORAGE_SAS_TOKEN"));
    if let Some(k) = key {
        b = b.with_access_key(k);
    } else if let Some(s) = sas {
        b = b.with_config(AzureConfigKey::SasKey, s.trim_start_matches('?'));
    }
    let endpoint = settings
        .endpoint
        .clone()
        .or_else(|| cs.get("blobendpoint").cloned());
    if let Some(e) = &endpoint {
        let http = endpoint_is_http("Azure", e)?;
        b = b
            .with_endpoint(e.trim_end_matches('/').to_string())
            .with_allow_http(http);
    }
    let store = Arc::new(b.build().map_err(|e| {
        Error::InvalidArgument(format!("cannot set up Azure Blob access to {url}: {e}"))
    })?);
    Ok(ObjectStoreSink::over(
        crate::multipart::Multipart::of(store),
        &format!("azure://{account}/{container}"),
        &prefix,
        state_dir,
        settings.part_size,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_connection_strings() {
        assert_eq!(
            parse_url("az://vms/wave1/").unwrap(),
            (None, "vms".into(), "wave1".into())
        );
        assert_eq!(
            parse_url("azure://acct1/vms").unwrap(),
            (Some("acct1".into()), "vms".into(), "".into())
        );
        for bad in [
            "az://V/x",
            "az://ab",
            "az://-ab/x",
            "az://vms/../x",
            "azure://vms",
            "s3://vms",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let cs = connection_string(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=abc==;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;",
        );
        assert_eq!(cs["accountkey"], "abc==");
        assert_eq!(cs["blobendpoint"], "http://127.0.0.1:1/devstoreaccount1");
        let s = AzureSettings {
            access_key: Some("very-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
