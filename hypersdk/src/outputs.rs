//! The sink registry: an export's output, as a user writes it, to the sink
//! that writes there.
//!
//! | output | sink | feature |
//! |---|---|---|
//! | a path (`out/`, `/srv/exports`), or `file:///srv/exports` | [`LocalDirSink`] | always |
//! | `s3://bucket/prefix/` | [`sinks::s3`](hypersdk_sinks) (S3, MinIO, Ceph) | `s3` (default) |
//! | `az://container/prefix/`, `azure://account/container/prefix/` | `sinks::azure` (Azure Blob, Azurite) | `azure` (default) |
//! | `gs://bucket/prefix/` | `sinks::gcs` (Cloud Storage, gcp-storage-emulator) | `gcs` (default) |
//!
//! An output with a URL scheme is never taken as a local path: a scheme
//! this build does not carry is refused, naming what would add it.

use std::path::PathBuf;

use hypersdk_core::{Error, Result, Sink};
use hypersdk_sinks::LocalDirSink;

/// How to open an output, beyond what it says itself.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    /// Mode of files a local directory gets (default 0600).
    pub file_mode: Option<u32>,
    /// Where object-store sinks keep resume state (default
    /// `$XDG_STATE_HOME/hypersdk/uploads`, else
    /// `~/.local/state/hypersdk/uploads`).
    pub state_dir: Option<PathBuf>,
    /// S3 settings (endpoint, credentials, profile, …); the environment
    /// and `~/.aws` fill in the rest.
    #[cfg(feature = "s3")]
    pub s3: hypersdk_sinks::s3::S3Settings,
    /// Azure settings (account, key or SAS, connection string, endpoint);
    /// the environment fills in the rest.
    #[cfg(feature = "azure")]
    pub azure: hypersdk_sinks::azure::AzureSettings,
    /// Cloud Storage settings (endpoint, credentials file); the
    /// environment fills in the rest.
    #[cfg(feature = "gcs")]
    pub gcs: hypersdk_sinks::gcs::GcsSettings,
}

/// The URL scheme of `output` (`s3` of `s3://b/p`), if it has one. A
/// Windows-style drive (`C:\x`) or a path with a colon later on is not one.
pub fn scheme(output: &str) -> Option<&str> {
    let (s, rest) = output.split_once("://")?;
    let ok = s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (ok && !rest.is_empty()).then_some(s)
}

/// The default state directory of object-store sinks.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("hypersdk/uploads")
}

/// Verifies a package published in an object store (`s3://bucket/x/vm.ova`):
/// the object is read through once, its members checked against its
/// manifest (decrypted with `key` if it is encrypted).
pub async fn verify_published(
    url: &str,
    options: &OutputOptions,
    key: Option<hypersdk_core::transforms::encrypt::KeySource>,
) -> Result<hypersdk_core::files::PackageReport> {
    let (dir, name) = url
        .trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(d, _)| scheme(d).is_some())
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{url}: name an object (…/vm.ova), not a bucket"))
        })?;
    let sink = open_output(dir, options)?;
    let reader = sink.read(name).await?;
    let label = url.to_string();
    tokio::task::spawn_blocking(move || {
        let input = tokio_util::io::SyncIoBridge::new(reader);
        hypersdk_core::files::verify_ova_stream(input, &label, key.as_ref())
    })
    .await
    .map_err(|e| Error::Internal(format!("verify task failed: {e}")))?
}

/// The sink writing to `output`.
pub fn open_output(output: &str, options: &OutputOptions) -> Result<Box<dyn Sink>> {
    let local = |path: &str| -> Box<dyn Sink> {
        let mut s = LocalDirSink::new(path);
        if let Some(m) = options.file_mode {
            s = s.with_file_mode(m);
        }
        Box::new(s)
    };
    let Some(scheme) = scheme(output) else {
        return Ok(local(output));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = &output["file://".len()..];
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "{output}: a file:// URL needs an absolute path (file:///srv/exports)"
                )));
            }
            Ok(local(path))
        }
        #[cfg(feature = "s3")]
        "s3" => {
            let state = options.state_dir.clone().unwrap_or_else(default_state_dir);
            Ok(Box::new(hypersdk_sinks::s3::sink(
                output,
                &options.s3,
                state,
            )?))
        }
        #[cfg(not(feature = "s3"))]
        "s3" => Err(Error::InvalidArgument(format!(
            "{output}: this build has no S3 sink; build hypersdk with cargo feature `s3`"
        ))),
        #[cfg(feature = "azure")]
        "az" | "azure" => {
            let state = options.state_dir.clone().unwrap_or_else(default_state_dir);
            Ok(Box::new(hypersdk_sinks::azure::sink(output, &options.azure, state)?))
        }
        #[cfg(not(feature = "azure"))]
        "az" | "azure" => Err(Error::InvalidArgument(format!(
            "{output}: this build has no Azure Blob sink; build hypersdk with cargo feature `azure`"
        ))),
        #[cfg(feature = "gcs")]
        "gs" => {
            let state = options.state_dir.clone().unwrap_or_else(default_state_dir);
            Ok(Box::new(hypersdk_sinks::gcs::sink(output, &options.gcs, state)?))
        }
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(Error::InvalidArgument(format!(
            "{output}: this build has no Cloud Storage sink; build hypersdk with cargo feature `gcs`"
        ))),
        other => Err(Error::InvalidArgument(format!(
            "{output}: unknown output scheme {other}:// (a local directory, s3://bucket/prefix/, az://container/prefix/ or gs://bucket/prefix/)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_never_paths() {
        assert_eq!(scheme("s3://b/x/"), Some("s3"));
        assert_eq!(scheme("out/dir"), None);
        assert_eq!(scheme("./a://b"), None);
        assert_eq!(scheme("C:\\x"), None);
        let o = OutputOptions::default();
        for bad in ["ftp://host/x", "gs://B/x", "file://relative"] {
            let e = open_output(bad, &o).err().unwrap();
            assert_eq!(e.code(), "invalid_argument", "{bad}: {e}");
        }
        assert!(open_output("file:///tmp/x", &o).is_ok());
    }
}
