//! uniffi bindings of the hypersdk export API, for Kotlin (tested here,
//! `bindings/uniffi/test.sh`) and Swift (generated from the same library).
//!
//! The surface is the export path of the library, blocking (call it from a
//! worker thread or a coroutine on `Dispatchers.IO`): connect a provider,
//! list VMs, export one with [`ExportSettings`] while a [`ProgressListener`]
//! hears progress and a [`Cancel`] can stop it, and verify a package.
//! Failures are [`HypersdkError`], one case per kind of
//! [`hypersdk_core::Error`].

use std::sync::{Arc, OnceLock};

use hypersdk_core::{files, CancellationToken, Exporter, PackageFormat};

uniffi::setup_scaffolding!();

/// A failure, by kind; `detail` says what failed and why (Kotlin
/// exceptions have their own `message`).
#[derive(Debug, uniffi::Error)]
pub enum HypersdkError {
    /// The VM does not exist.
    NotFound { detail: String },
    /// The platform refused the credentials.
    Auth { detail: String },
    /// Bytes do not match their digest, or fail authentication.
    Integrity { detail: String },
    /// Wrong key, damaged or altered encrypted data.
    Crypto { detail: String },
    /// The destination exists and overwrite was not asked for.
    AlreadyExists { detail: String },
    /// An argument or option is invalid.
    InvalidArgument { detail: String },
    /// The platform failed or could not be reached.
    Provider { detail: String },
    /// A disk could not be read whole.
    DiskRead { detail: String },
    /// A file is not in the format it claims, or cannot be written in it.
    Format { detail: String },
    /// Writing to the destination failed.
    Sink { detail: String },
    /// The export was cancelled.
    Cancelled { detail: String },
    /// A bug in hypersdk.
    Internal { detail: String },
}

impl std::fmt::Display for HypersdkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = match self {
            HypersdkError::NotFound { detail }
            | HypersdkError::Auth { detail }
            | HypersdkError::Integrity { detail }
            | HypersdkError::Crypto { detail }
            | HypersdkError::AlreadyExists { detail }
            | HypersdkError::InvalidArgument { detail }
            | HypersdkError::Provider { detail }
            | HypersdkError::DiskRead { detail }
            | HypersdkError::Format { detail }
            | HypersdkError::Sink { detail }
            | HypersdkError::Cancelled { detail }
            | HypersdkError::Internal { detail } => detail,
        };
        f.write_str(m)
    }
}

impl std::error::Error for HypersdkError {}

impl From<hypersdk_core::Error> for HypersdkError {
    fn from(e: hypersdk_core::Error) -> Self {
        let detail = hypersdk_core::error::chain(&e);
        match e.code() {
            "vm_not_found" => HypersdkError::NotFound { detail },
            "auth" => HypersdkError::Auth { detail },
            "integrity" => HypersdkError::Integrity { detail },
            "crypto" => HypersdkError::Crypto { detail },
            "already_exists" => HypersdkError::AlreadyExists { detail },
            "invalid_argument" => HypersdkError::InvalidArgument { detail },
            "provider" => HypersdkError::Provider { detail },
            "disk_read" | "disk_length" => HypersdkError::DiskRead { detail },
            "format" => HypersdkError::Format { detail },
            "sink" => HypersdkError::Sink { detail },
            "cancelled" => HypersdkError::Cancelled { detail },
            _ => HypersdkError::Internal { detail },
        }
    }
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, HypersdkError> {
    static RT: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    })
    .as_ref()
    .map_err(|e| HypersdkError::Internal {
        detail: format!("cannot start the async runtime: {e}"),
    })
}

/// A VM as a listing shows it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    /// "on", "off" or "suspended".
    pub power_state: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub guest_os: String,
    pub disks: u64,
    pub total_capacity: u64,
}

/// How to export (the library's `ExportSettings`; unset fields keep their
/// defaults: OVA, SHA-256, no compression or encryption).
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct ExportSettings {
    /// "ova" or "ovf".
    #[uniffi(default = None)]
    pub format: Option<String>,
    #[uniffi(default = None)]
    pub name: Option<String>,
    #[uniffi(default = false)]
    pub overwrite: bool,
    /// "zstd", "zstd:LEVEL", "gzip", "gzip:LEVEL".
    #[uniffi(default = None)]
    pub compress: Option<String>,
    /// "sha256", "sha512" or "sha1".
    #[uniffi(default = None)]
    pub digest: Option<String>,
    #[uniffi(default = None)]
    pub encrypt_key_file: Option<String>,
    #[uniffi(default = None)]
    pub encrypt_passphrase_file: Option<String>,
    /// "100M", or a timetable like "08:00,10M 18:00,off".
    #[uniffi(default = None)]
    pub bwlimit: Option<String>,
    #[uniffi(default = false)]
    pub verify: bool,
    #[uniffi(default = false)]
    pub resume: bool,
}

impl ExportSettings {
    fn options(&self) -> Result<hypersdk_core::ExportOptions, HypersdkError> {
        let format = match self.format.as_deref() {
            None | Some("ova") => PackageFormat::Ova,
            Some("ovf") => PackageFormat::Ovf,
            Some(other) => {
                return Err(HypersdkError::InvalidArgument {
                    detail: format!("format '{other}': expected ova or ovf"),
                })
            }
        };
        let s = hypersdk_core::ExportSettings {
            format: Some(format),
            name: self.name.clone(),
            overwrite: self.overwrite,
            compress: self.compress.clone(),
            digest: self.digest.clone(),
            encrypt_key_file: self.encrypt_key_file.as_ref().map(Into::into),
            encrypt_passphrase_file: self.encrypt_passphrase_file.as_ref().map(Into::into),
            bwlimit: self.bwlimit.clone(),
            verify: self.verify,
            resume: self.resume,
            ..Default::default()
        };
        Ok(s.to_options()?)
    }
}

/// Progress of one disk (or of packaging/verification).
#[derive(Debug, Clone, uniffi::Record)]
pub struct ProgressEvent {
    /// "disk", "diskdone", "packaging", "verify" or "done".
    pub phase: String,
    pub disk: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bps: f64,
}

/// The result of an export.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ExportReport {
    pub vm: String,
    pub provider: String,
    /// "ova" or "ovf".
    pub format: String,
    /// The published file or directory.
    pub location: String,
    pub size: u64,
    pub digest_algorithm: String,
    /// The manifest's text.
    pub manifest: String,
    pub verified: bool,
    pub encrypted: bool,
    pub bytes_read: u64,
    pub resumed_bytes: u64,
    pub duration_secs: f64,
    /// Every field the library reports, as JSON.
    pub json: String,
}

/// What a package holds and whether it checks out.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PackageSummary {
    /// "ova" or "ovf".
    pub kind: String,
    pub path: String,
    pub verified: bool,
    /// One line per mismatch or problem.
    pub failures: Vec<String>,
    pub manifest: Option<String>,
}

/// Hears the progress of an export (called from the export's threads; keep
/// it quick).
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// One progress event.
    fn on_progress(&self, event: ProgressEvent);
}

/// Stops an export it is handed to, from any thread.
#[derive(Debug, uniffi::Object)]
pub struct Cancel {
    token: CancellationToken,
}

#[uniffi::export]
impl Cancel {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Cancel {
            token: CancellationToken::new(),
        })
    }

    /// The export ends with `HypersdkError.Cancelled`.
    pub fn cancel(&self) {
        self.token.cancel();
    }
}

/// A connected platform.
#[derive(Debug, uniffi::Object)]
pub struct Provider {
    inner: Arc<dyn hypersdk_core::Provider>,
}

/// Connects any provider of the registry: `kind_or_url` is a kind
/// (`local`, `vsphere`, …) or a URL (`vsphere://user@vc.example`),
/// `settings_json` a JSON object of its fields (those of the daemon's
/// `providers:` entries); fields not given come from the URL, then from the
/// platform's environment variables (GOVC_*).
#[uniffi::export]
pub fn connect_provider(
    kind_or_url: String,
    settings_json: String,
) -> Result<Arc<Provider>, HypersdkError> {
    let fields: hypersdk::Fields = serde_json::from_str(&settings_json).map_err(|e| {
        HypersdkError::from(hypersdk_core::Error::InvalidArgument(format!(
            "provider settings: {e}"
        )))
    })?;
    let config = hypersdk::ProviderConfig::resolve(&kind_or_url, fields, &hypersdk::process_env)?;
    let p = runtime()?.block_on(config.connect())?;
    Ok(Arc::new(Provider {
        inner: Arc::from(p),
    }))
}

/// The provider kinds this build carries.
#[uniffi::export]
pub fn provider_kinds() -> Vec<String> {
    hypersdk::kinds()
        .iter()
        .map(|k| k.kind.to_string())
        .collect()
}

/// KVM/libvirt VMs described by the domain XML files in `dir`.
#[uniffi::export]
pub fn local_provider(dir: String) -> Result<Arc<Provider>, HypersdkError> {
    connect_provider(
        "local".into(),
        serde_json::json!({ "dir": dir }).to_string(),
    )
}

/// Logs in to vCenter/ESXi; the certificate is verified unless
/// `thumbprint` pins one or `insecure` is set.
#[uniffi::export]
pub fn vsphere_provider(
    url: String,
    user: String,
    password: String,
    insecure: bool,
    thumbprint: Option<String>,
    ca_file: Option<String>,
) -> Result<Arc<Provider>, HypersdkError> {
    let f = serde_json::json!({
        "url": url, "user": user, "password": password, "insecure": insecure,
        "thumbprint": thumbprint, "ca_file": ca_file,
    });
    connect_provider("vsphere".into(), f.to_string())
}

#[uniffi::export]
impl Provider {
    /// The provider's kind: "local", "vsphere", …
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Every VM.
    pub fn list_vms(&self) -> Result<Vec<VmInfo>, HypersdkError> {
        let vms = runtime()?.block_on(self.inner.list_vms())?;
        Ok(vms
            .into_iter()
            .map(|v| VmInfo {
                id: v.id,
                name: v.name,
                power_state: v.power_state.to_string(),
                cpus: v.cpus,
                memory_mib: v.memory_mib,
                guest_os: v.guest_os,
                disks: v.disks as u64,
                total_capacity: v.total_capacity,
            })
            .collect())
    }

    /// Exports `vm` into the directory `output` and returns the report
    /// (blocking).
    pub fn export(
        &self,
        vm: String,
        output: String,
        settings: ExportSettings,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<Cancel>>,
    ) -> Result<ExportReport, HypersdkError> {
        let mut exporter = Exporter::new(settings.options()?);
        if let Some(c) = cancel {
            exporter = exporter.with_cancel(c.token.clone());
        }
        if let Some(l) = listener {
            exporter = exporter.on_progress(Arc::new(move |e| {
                l.on_progress(ProgressEvent {
                    phase: serde_json::to_value(e.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    disk: e.disk.clone(),
                    bytes_done: e.bytes_done,
                    bytes_total: e.bytes_total,
                    rate_bps: e.rate_bps,
                })
            }));
        }
        let sink = hypersdk::open_output(&output, &hypersdk::OutputOptions::default())?;
        let r = runtime()?.block_on(exporter.export(self.inner.as_ref(), &vm, sink.as_ref()))?;
        Ok(ExportReport {
            json: serde_json::to_string(&r).map_err(|e| HypersdkError::Internal {
                detail: e.to_string(),
            })?,
            vm: r.vm,
            provider: r.provider,
            format: r.format.to_string(),
            location: r.location,
            size: r.size,
            digest_algorithm: r.digest_algorithm,
            manifest: r.manifest,
            verified: r.verified,
            encrypted: r.encrypted,
            bytes_read: r.bytes_read,
            resumed_bytes: r.resumed_bytes,
            duration_secs: r.duration_secs,
        })
    }

    /// Ends the platform session (vSphere logout). (Named so because the
    /// Kotlin object's `close()` frees the native handle.)
    pub fn logout(&self) -> Result<(), HypersdkError> {
        Ok(runtime()?.block_on(self.inner.close())?)
    }
}

/// Checks a package (OVA, OVF directory, or an export's compressed or
/// encrypted OVA) against its manifest.
#[uniffi::export]
pub fn verify_package(
    path: String,
    key_file: Option<String>,
    passphrase_file: Option<String>,
) -> Result<PackageSummary, HypersdkError> {
    let key = files::optional_key(
        key_file.as_deref().map(std::path::Path::new),
        passphrase_file.as_deref().map(std::path::Path::new),
    )?;
    let r = files::verify_package(std::path::Path::new(&path), key.as_ref())?;
    Ok(PackageSummary {
        kind: r.kind.to_string(),
        path: r.path.display().to_string(),
        verified: r.verified(),
        failures: r.failures(),
        manifest: r.manifest.clone(),
    })
}
