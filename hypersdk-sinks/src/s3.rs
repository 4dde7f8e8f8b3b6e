//! S3 and S3-compatible stores (MinIO, Ceph) as sinks.
//!
//! `s3://bucket/prefix/` names the destination. Credentials and settings
//! come the way AWS users already give them, first match wins:
//!
//! 1. [`S3Settings`] fields (the daemon's named sinks, the bindings);
//! 2. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//!    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, web identity and
//!    container credentials (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`,
//!    `AWS_CONTAINER_CREDENTIALS_*`);
//! 3. the shared files `~/.aws/credentials` and `~/.aws/config` (or
//!    `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`), profile
//!    `AWS_PROFILE` or `default`: `aws_access_key_id`,
//!    `aws_secret_access_key`, `aws_session_token`, `region`,
//!    `endpoint_url`;
//! 4. the instance's role (EC2 instance metadata).
//!
//! Requests use path-style addressing (`https://endpoint/bucket/key`,
//! what MinIO and Ceph want) unless `virtual_hosted` is set. An endpoint
//! given as `http://` is used over plain HTTP (a local MinIO); otherwise
//! TLS, verified against the system's roots. Secrets are never logged or
//! shown: [`S3Settings`]' Debug hides them.

use std::path::PathBuf;
use std::sync::Arc;

use hypersdk_core::{Error, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use crate::object::{endpoint_is_http, hidden, plain_prefix};
use crate::ObjectStoreSink;

/// How to reach a bucket, beyond what its URL says.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL of an S3-compatible store (`http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (`us-east-1` when neither this nor the environment says).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Profile of the shared credentials files.
    #[serde(default)]
    pub profile: Option<String>,
    /// Virtual-hosted-style requests (`https://bucket.endpoint/key`).
    #[serde(default)]
    pub virtual_hosted: bool,
    /// Part size in bytes (at least 5 MiB; default 16 MiB).
    #[serde(default)]
    pub part_size: Option<usize>,
    /// The checksum each part carries, which the store checks on receipt:
    /// `crc64nvme` (default over HTTPS; the payload is then unsigned, TLS
    /// protecting it, and no SHA-256 is spent on it) or `sha256` (default
    /// over plain HTTP, the signature then covering the payload; also for
    /// stores without CRC-64/NVME).
    #[serde(default)]
    pub checksum: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("profile", &self.profile)
            .field("virtual_hosted", &self.virtual_hosted)
            .field("part_size", &self.part_size)
            .field("checksum", &self.checksum)
            .finish()
    }
}

/// Splits `s3://bucket/prefix/` into bucket and prefix.
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| Error::InvalidArgument(format!("{url}: not an s3:// URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Bucket names: 3–63 of [a-z0-9.-] (AWS's rules, which MinIO follows).
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{url}: {bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, dots and hyphens)"
        )));
    }
    Ok((bucket.to_string(), plain_prefix(url, prefix)?))
}

/// An S3 sink for `url` (`s3://bucket/prefix/`), keeping resume state in
/// `state_dir`.
pub fn sink(url: &str, settings: &S3Settings, state_dir: PathBuf) -> Result<ObjectStoreSink> {
    let (bucket, prefix) = parse_url(url)?;
    // object_store's reqwest client uses the process's rustls provider:
    // the project's one, ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
    let env_has = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    // The shared files, for what neither the settings nor the environment give.
    let profile = settings
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".into());
    let files = hypersdk_core::connect::aws_shared_profile(&profile);
    let from_files = |k: &str| files.get(k).cloned();
    if !env_has("AWS_ACCESS_KEY_ID") {
        if let (Some(id), Some(secret)) = (
            from_files("aws_access_key_id"),
            from_files("aws_secret_access_key"),
        ) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = from_files("aws_session_token") {
                b = b.with_token(t);
            }
        }
    }
    if !env_has("AWS_REGION") && !env_has("AWS_DEFAULT_REGION") {
        b = b.with_region(from_files("region").unwrap_or_else(|| "us-east-1".into()));
    }
    let mut endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .ok()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|e| !e.is_empty())
        .or_else(|| from_files("endpoint_url"));
    // Then the explicit settings.
    if let Some(e) = &settings.endpoint {
        endpoint = Some(e.clone());
    }
    if let Some(r) = &settings.region {
        b = b.with_region(r);
    }
    if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(t) = &settings.session_token {
            b = b.with_token(t);
        }
    }
    let mut plain_http = false;
    if let Some(e) = &endpoint {
        plain_http = endpoint_is_http("S3", e)?;
        b = b
            .with_config(AmazonS3ConfigKey::Endpoint, e)
            .with_allow_http(plain_http);
    }
    let checksum = match settings
        .checksum
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None if plain_http => object_store::aws::Checksum::SHA256,
        None | Some("crc64nvme") => object_store::aws::Checksum::CRC64NVME,
        Some("sha256") => object_store::aws::Checksum::SHA256,
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "S3 checksum {other:?}: sha256 or crc64nvme"
            )))
        }
    };
    // With SHA-256 the signature covers the payload too (one digest for
    // both); with CRC-64 no SHA-256 is spent on the bytes and the payload is
    // unsigned (TLS protects it; over plain HTTP only the checksum does).
    let crc = matches!(checksum, object_store::aws::Checksum::CRC64NVME);
    b = b
        .with_virtual_hosted_style_request(settings.virtual_hosted)
        .with_checksum_algorithm(checksum)
        .with_unsigned_payload(crc);
    let store =
        Arc::new(b.build().map_err(|e| {
            Error::InvalidArgument(format!("cannot set up S3 access to {url}: {e}"))
        })?);
    Ok(ObjectStoreSink::over(
        crate::multipart::Multipart::of(store),
        &format!("s3://{bucket}"),
        &prefix,
        state_dir,
        settings.part_size,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_profiles() {
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        for bad in [
            "s3://B/x",
            "s3://ab",
            "s3://bkt/../x",
            "s3://bkt/x?y",
            "gs://bkt",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let ini =
            "[default]\naws_access_key_id = A\n[prod]\naws_access_key_id=P\nregion = eu-west-1\n";
        assert_eq!(
            hypersdk_core::connect::aws_ini_profile(ini, "prod", false)["aws_access_key_id"],
            "P"
        );
        let cfg = "[profile prod]\nregion = eu-west-1\n[default]\nregion=us-west-2\n";
        assert_eq!(
            hypersdk_core::connect::aws_ini_profile(cfg, "prod", true)["region"],
            "eu-west-1"
        );
        assert_eq!(
            hypersdk_core::connect::aws_ini_profile(cfg, "default", true)["region"],
            "us-west-2"
        );
        let s = S3Settings {
            secret_access_key: Some("very-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
