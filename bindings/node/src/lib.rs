//! The native addon of the Node package `@hypersdk/core` (napi-rs):
//! providers, exports with progress and cancellation, package verification
//! and unwrapping, each a thin call into the Rust library. Values cross as
//! JSON text (the library's own serde shapes); `index.js` turns them into
//! objects, progress into an async iterator and failures into Error
//! subclasses with a `code`.
//!
//! Failures reach JavaScript as errors whose message is
//! `hypersdk:<code>: <message>`, the code being
//! [`hypersdk_core::Error::code`].

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use hypersdk_core::task::ExportTask;
use hypersdk_core::{files, ExportSettings, VmQuery};

/// A failure as JavaScript sees it (see the crate docs).
fn fail(code: &str, message: impl std::fmt::Display) -> Error {
    Error::new(
        Status::GenericFailure,
        format!("hypersdk:{code}: {message}"),
    )
}

fn lib_err(e: hypersdk_core::Error) -> Error {
    fail(e.code(), hypersdk_core::error::chain(&e))
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    fail("invalid_argument", format!("{what}: {e}"))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| fail("internal", e))
}

fn settings(text: &str) -> Result<hypersdk_core::ExportOptions> {
    let s: ExportSettings = serde_json::from_str(text).map_err(|e| bad("export options", e))?;
    s.to_options().map_err(lib_err)
}

/// TLS and CA settings of a vSphere login.
#[napi(object)]
#[derive(Debug)]
pub struct VsphereTls {
    /// Accept any certificate.
    pub insecure: Option<bool>,
    /// Accept only the certificate with this SHA-1/SHA-256 thumbprint.
    pub thumbprint: Option<String>,
    /// PEM file of extra trusted CA certificates.
    pub ca_file: Option<String>,
}

/// A connected platform.
#[napi]
#[derive(Debug)]
pub struct Provider {
    inner: Arc<dyn hypersdk_core::Provider>,
}

/// Connects any provider of the registry: `kind_or_url` is a kind
/// (`local`, `vsphere`, …) or a URL (`vsphere://user@vc.example`), and
/// `settings_json` the provider's settings (JSON object; the fields of the
/// daemon's `providers:` entries). Fields not given come from the URL, then
/// from the environment variables the platform's tools read (GOVC_*).
#[napi]
pub async fn connect(kind_or_url: String, settings_json: String) -> Result<Provider> {
    let fields: hypersdk::Fields =
        serde_json::from_str(&settings_json).map_err(|e| bad("provider settings", e))?;
    let config = hypersdk::ProviderConfig::resolve(&kind_or_url, fields, &hypersdk::process_env)
        .map_err(lib_err)?;
    Ok(Provider {
        inner: Arc::from(config.connect().await.map_err(lib_err)?),
    })
}

/// The provider kinds this build carries, as JSON `[{kind, about}]`.
#[napi]
pub fn provider_kinds() -> Result<String> {
    json(&hypersdk::kinds())
}

/// KVM/libvirt VMs described by the domain XML files in `dir` (through
/// the registry; local providers connect without waiting, so this one is
/// synchronous).
#[napi]
pub fn local(dir: String) -> Result<Provider> {
    use futures_util::FutureExt as _;
    connect(
        "local".into(),
        serde_json::json!({ "dir": dir }).to_string(),
    )
    .now_or_never()
    .unwrap_or_else(|| Err(fail("internal", "the local provider waited to connect")))
}

/// Logs in to vCenter/ESXi.
#[napi]
pub async fn vsphere(
    url: String,
    user: String,
    password: String,
    tls: Option<VsphereTls>,
) -> Result<Provider> {
    let mut f = serde_json::json!({"url": url, "user": user, "password": password});
    if let Some(t) = tls {
        f["insecure"] = t.insecure.unwrap_or(false).into();
        if let Some(tp) = t.thumbprint {
            f["thumbprint"] = tp.into();
        }
        if let Some(ca) = t.ca_file {
            f["ca_file"] = ca.into();
        }
    }
    connect("vsphere".into(), f.to_string()).await
}

#[napi]
impl Provider {
    /// The provider's kind: "local", "vsphere", …
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Every VM, as JSON.
    #[napi]
    pub async fn list_vms(&self) -> Result<String> {
        json(&self.inner.list_vms().await.map_err(lib_err)?)
    }

    /// VMs matching a query (JSON of VmQuery's fields), as JSON.
    #[napi]
    pub async fn search_vms(&self, query: String) -> Result<String> {
        let q: VmQuery = serde_json::from_str(&query).map_err(|e| bad("search", e))?;
        q.validate().map_err(lib_err)?;
        json(&self.inner.search_vms(&q).await.map_err(lib_err)?)
    }

    /// One VM's full description, as JSON.
    #[napi]
    pub async fn get_vm(&self, vm: String) -> Result<String> {
        json(&self.inner.vm_spec(&vm).await.map_err(lib_err)?)
    }

    /// Where an export of `vm` with `settings` (JSON) would publish, below
    /// the output directory.
    #[napi]
    pub async fn artifact_name(&self, vm: String, settings_json: String) -> Result<String> {
        let options = settings(&settings_json)?;
        let spec = self.inner.vm_spec(&vm).await.map_err(lib_err)?;
        Ok(options.artifact(&spec.name).name().to_string())
    }

    /// Ends the platform session (vSphere logout).
    #[napi]
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await.map_err(lib_err)
    }

    /// Starts exporting `vm` into the directory `output` with the options
    /// of `settings_json` (JSON of ExportSettings); returns at once.
    #[napi]
    pub fn start_export(
        &self,
        vm: String,
        output: String,
        settings_json: String,
    ) -> Result<Export> {
        let options = settings(&settings_json)?;
        let runtime = within_runtime_if_available(tokio::runtime::Handle::try_current)
            .map_err(|e| fail("internal", format!("no async runtime: {e}")))?;
        Ok(Export(ExportTask::spawn(
            &runtime,
            options,
            self.inner.clone(),
            vm,
            hypersdk::open_output(&output, &hypersdk::OutputOptions::default()).map_err(lib_err)?,
        )))
    }
}

/// A running export.
#[napi]
#[derive(Debug)]
pub struct Export(ExportTask);

#[napi]
impl Export {
    /// Asks the export to stop; waiting then fails with code `cancelled`.
    #[napi]
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether it has ended.
    #[napi]
    pub fn done(&self) -> bool {
        self.0.is_done()
    }

    /// Waits for the end: the report as JSON, or the failure.
    #[napi]
    pub async fn wait(&self) -> Result<String> {
        match self.0.outcome().await {
            Ok(report) => json(&report),
            Err(f) => Err(fail(f.code, f.message)),
        }
    }

    /// The next progress event as JSON, or null once the export has ended
    /// and every event was read.
    #[napi]
    pub async fn next_event(&self) -> Option<String> {
        let e = self.0.next_event().await?;
        serde_json::to_string(&e).ok()
    }
}

fn key(
    key_file: Option<String>,
    passphrase_file: Option<String>,
) -> Result<Option<hypersdk_core::transforms::encrypt::KeySource>> {
    files::optional_key(
        key_file.as_deref().map(std::path::Path::new),
        passphrase_file.as_deref().map(std::path::Path::new),
    )
    .map_err(lib_err)
}

/// Key files of [`verify`] and [`unwrap`].
#[napi(object)]
#[derive(Debug)]
pub struct KeyOptions {
    /// File holding the 32-byte key.
    pub key_file: Option<String>,
    /// File whose first line is the passphrase.
    pub passphrase_file: Option<String>,
    /// verify: fail (code `integrity`) unless the package checks out (default true).
    pub strict: Option<bool>,
    /// unwrap: replace an existing output.
    pub overwrite: Option<bool>,
}

/// Checks a package (OVA, OVF directory, or an export's compressed or
/// encrypted OVA; or an OVA published in an object store, by its URL,
/// `s3://bucket/x/vm.ova`) against its manifest; the report as JSON.
#[napi]
pub async fn verify(path: String, options: Option<KeyOptions>) -> Result<String> {
    let (k, p, strict) = match options {
        Some(o) => (o.key_file, o.passphrase_file, o.strict.unwrap_or(true)),
        None => (None, None, true),
    };
    let k = key(k, p)?;
    if hypersdk::output_scheme(&path).is_some() {
        // A package published in an object store, read through once.
        let r = hypersdk::verify_published(&path, &hypersdk::OutputOptions::default(), k)
            .await
            .map_err(lib_err)?;
        if strict && !r.verified() {
            return Err(lib_err(hypersdk::Error::Integrity {
                file: path,
                detail: r.failures().join("; "),
            }));
        }
        return json(&files::package_summary(&r));
    }
    let r = tokio::task::spawn_blocking(move || {
        let path = std::path::Path::new(&path);
        if strict {
            files::verify_package_strict(path, k.as_ref())
        } else {
            files::verify_package(path, k.as_ref())
        }
    })
    .await
    .map_err(|e| fail("internal", e))?
    .map_err(lib_err)?;
    json(&files::package_summary(&r))
}

/// Decrypts and decompresses a file an export wrapped; `output` appears
/// only when whole. Plain bytes written.
#[napi]
pub async fn unwrap(input: String, output: String, options: Option<KeyOptions>) -> Result<i64> {
    let (k, p, overwrite) = match options {
        Some(o) => (o.key_file, o.passphrase_file, o.overwrite.unwrap_or(false)),
        None => (None, None, false),
    };
    let k = key(k, p)?;
    let n = tokio::task::spawn_blocking(move || {
        files::unwrap_file(
            std::path::Path::new(&input),
            std::path::Path::new(&output),
            k.as_ref(),
            overwrite,
        )
    })
    .await
    .map_err(|e| fail("internal", e))?
    .map_err(lib_err)?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}
