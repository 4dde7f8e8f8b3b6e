//! `kind: gcp` settings: a project, credentials, a staging bucket and
//! endpoints, given the way Google Cloud users already give them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::connect::Secret;
use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use hypersdk_sinks::gcs::{emulator_host, parse_url, GcsBucket};
use hypersdk_sinks::google_auth::GoogleAuth;
use serde::Deserialize;
use serde_json::Value;

use crate::api::Google;
use crate::GcpProvider;

/// The scope of the provider's tokens: Compute Engine, Cloud Build and
/// Cloud Storage together.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How to reach one project's instances. Unset fields come from the
/// variables Google's clients and the gcloud CLI read
/// (`GOOGLE_CLOUD_PROJECT`, `CLOUDSDK_CORE_PROJECT`,
/// `CLOUDSDK_COMPUTE_ZONE`, `GOOGLE_APPLICATION_CREDENTIALS`,
/// `STORAGE_EMULATOR_HOST`); the project also from the credentials file.
///
/// Credentials (see [`hypersdk_sinks::google_auth`]): `credentials_json`,
/// `credentials`, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application
/// default credentials, then the metadata server on Compute Engine. The
/// account needs `compute.instances.get/list`, `compute.disks.get`,
/// `compute.images.create/get/delete`, `cloudbuild.builds.create/get`, and
/// read and delete rights on the staging bucket; Cloud Build's service
/// account writes into that bucket, as `gcloud compute images export`
/// requires.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// Project id.
    #[serde(default)]
    pub project: Option<String>,
    /// Only this zone's instances (instance names may also say `ZONE/NAME`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Where image exports are staged: `gs://BUCKET[/PREFIX]`. Needed to
    /// export, not to list.
    #[serde(default)]
    pub bucket: Option<String>,
    /// A credentials file: a service-account key, or `authorized_user`
    /// credentials as `gcloud auth application-default login` writes.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// The same as JSON text.
    #[serde(default)]
    pub credentials_json: Option<Secret>,
    /// Compute Engine (default `https://compute.googleapis.com`).
    #[serde(default)]
    pub compute_endpoint: Option<String>,
    /// Cloud Build (default `https://cloudbuild.googleapis.com`).
    #[serde(default)]
    pub cloudbuild_endpoint: Option<String>,
    /// Cloud Storage (default `https://storage.googleapis.com`, or
    /// `STORAGE_EMULATOR_HOST`, which gets no credentials, as with Google's
    /// clients).
    #[serde(default)]
    pub storage_endpoint: Option<String>,
    /// Longest an image export may run, in seconds (default 7200, what
    /// `gcloud compute images export` gives its build).
    #[serde(default)]
    pub export_timeout_s: Option<u64>,
}

impl std::fmt::Debug for GcpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpConfig")
            .field("project", &self.project)
            .field("zone", &self.zone)
            .field("bucket", &self.bucket)
            .field("credentials", &self.credentials)
            .field(
                "credentials_json",
                &self.credentials_json.as_ref().map(|_| "<hidden>"),
            )
            .field("compute_endpoint", &self.compute_endpoint)
            .field("cloudbuild_endpoint", &self.cloudbuild_endpoint)
            .field("storage_endpoint", &self.storage_endpoint)
            .field("export_timeout_s", &self.export_timeout_s)
            .finish()
    }
}

fn http_endpoint(what: &str, e: &str) -> Result<String> {
    if !(e.starts_with("https://") || e.starts_with("http://")) || e.contains(['?', '#', '@']) {
        return Err(Error::InvalidArgument(format!(
            "{what} endpoint {e:?} is not an http:// or https:// URL"
        )));
    }
    Ok(e.trim_end_matches('/').to_string())
}

impl GcpConfig {
    /// The provider these settings reach.
    pub fn provider(&self) -> Result<GcpProvider> {
        let auth = Arc::new(GoogleAuth::find(
            self.credentials_json.as_ref().map(|s| s.expose()),
            self.credentials.as_deref(),
            SCOPE,
            "provider",
        )?);
        let project = self
            .project
            .clone()
            .or_else(|| auth.project().map(str::to_string))
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "no Google Cloud project: set project, GOOGLE_CLOUD_PROJECT or gcp://PROJECT"
                        .into(),
                )
            })?;
        // Project ids: 6–30 lower-case letters, digits and hyphens (older
        // ones may hold a domain and a colon).
        if project.is_empty()
            || project.len() > 63
            || !project
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c))
        {
            return Err(Error::InvalidArgument(format!(
                "{project:?} is not a Google Cloud project id"
            )));
        }
        if let Some(z) = self.zone.as_deref().filter(|z| !crate::api::valid_name(z)) {
            return Err(Error::InvalidArgument(format!(
                "{z:?} is not a Compute Engine zone"
            )));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let google = Google {
            http,
            auth: Some(auth.clone()),
            compute: http_endpoint(
                "Compute Engine",
                self.compute_endpoint
                    .as_deref()
                    .unwrap_or("https://compute.googleapis.com"),
            )?,
            cloudbuild: http_endpoint(
                "Cloud Build",
                self.cloudbuild_endpoint
                    .as_deref()
                    .unwrap_or("https://cloudbuild.googleapis.com"),
            )?,
            project,
        };
        let staging = match &self.bucket {
            None => None,
            Some(url) => {
                let (bucket, prefix) = parse_url(url)?;
                let (endpoint, auth) = match (&self.storage_endpoint, emulator_host()) {
                    (Some(e), _) => (Some(http_endpoint("Cloud Storage", e)?), Some(auth)),
                    (None, Some(e)) => (Some(http_endpoint("Cloud Storage", &e)?), None),
                    (None, None) => (None, Some(auth)),
                };
                Some(crate::provider::Staging {
                    store: GcsBucket::new(&bucket, endpoint.as_deref(), auth)?,
                    bucket,
                    prefix,
                })
            }
        };
        Ok(GcpProvider::new(
            google,
            self.zone.clone(),
            staging,
            Duration::from_secs(self.export_timeout_s.unwrap_or(7200).clamp(60, 86_400)),
        ))
    }
}

#[async_trait]
impl ProviderSettings for GcpConfig {
    const KIND: &'static str = "gcp";
    const ABOUT: &'static str =
        "Compute Engine instances, exported through image exports staged in Cloud Storage";

    /// `gcp://PROJECT[/ZONE]`.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        let mut f = Fields::new();
        if !url.host.is_empty() {
            f.insert("project".into(), Value::String(url.host.clone()));
        }
        let zone = url.path.trim_matches('/');
        if zone.contains('/') {
            return Err(Error::InvalidArgument(
                "a gcp URL is gcp://PROJECT[/ZONE]".into(),
            ));
        }
        if !zone.is_empty() {
            f.insert("zone".into(), Value::String(zone.to_string()));
        }
        Ok(f)
    }

    /// The variables Google's clients and gcloud read: GOOGLE_CLOUD_PROJECT
    /// (or CLOUDSDK_CORE_PROJECT), CLOUDSDK_COMPUTE_ZONE.
    /// GOOGLE_APPLICATION_CREDENTIALS and STORAGE_EMULATOR_HOST are read
    /// when the provider is made.
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let mut f = Fields::new();
        let get = |var: &str| env(var).filter(|v| !v.is_empty());
        if let Some(p) = get("GOOGLE_CLOUD_PROJECT").or_else(|| get("CLOUDSDK_CORE_PROJECT")) {
            f.insert("project".into(), Value::String(p));
        }
        if let Some(z) = get("CLOUDSDK_COMPUTE_ZONE") {
            f.insert("zone".into(), Value::String(z));
        }
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
        let c = GcpConfig {
            credentials_json: Some(Secret::new("very-secret")),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn urls() {
        let u = ProviderUrl::parse("gcp://my-project/us-central1-a").unwrap_or_default();
        let f = u.map(|u| GcpConfig::url_fields(&u));
        let f = f.and_then(|r| r.ok()).unwrap_or_default();
        assert_eq!(f["project"], "my-project");
        assert_eq!(f["zone"], "us-central1-a");
    }

    #[test]
    fn endpoints_are_plain_urls() {
        assert!(http_endpoint("x", "file:///etc").is_err());
        assert!(http_endpoint("x", "http://user@host").is_err());
        assert_eq!(
            http_endpoint("x", "http://127.0.0.1:9/").unwrap_or_default(),
            "http://127.0.0.1:9"
        );
    }
}
