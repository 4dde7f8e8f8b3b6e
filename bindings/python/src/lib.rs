//! The native half of the Python package `hypersdk` (PyO3, abi3): providers,
//! exports with progress and cancellation, package verification and
//! decryption, each a thin call into the Rust library. Values cross as
//! JSON text (the library's own serde shapes); the pure-Python half
//! (`python/hypersdk/__init__.py`) turns them into dataclasses and offers
//! the blocking and asyncio APIs.
//!
//! Work runs on one tokio runtime (pyo3-async-runtimes'); blocking calls
//! release the GIL and wake every 100 ms to let Ctrl-C through.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use hypersdk_core::task::{ExportTask, TaskFailure};
use hypersdk_core::{files, Error, ExportSettings, VmQuery};

create_exception!(
    _native,
    HypersdkError,
    PyException,
    "Any hypersdk failure; `.code` names its kind."
);
create_exception!(
    _native,
    NotFound,
    HypersdkError,
    "The VM (or file) does not exist."
);
create_exception!(
    _native,
    AuthError,
    HypersdkError,
    "The platform refused the credentials."
);
create_exception!(
    _native,
    IntegrityError,
    HypersdkError,
    "Bytes do not match their digest, or fail authentication."
);
create_exception!(
    _native,
    CryptoError,
    HypersdkError,
    "Wrong key, damaged or altered encrypted data."
);
create_exception!(
    _native,
    AlreadyExists,
    HypersdkError,
    "The destination exists and overwrite was not asked for."
);
create_exception!(
    _native,
    InvalidArgument,
    HypersdkError,
    "An argument or option is invalid."
);
create_exception!(
    _native,
    ProviderError,
    HypersdkError,
    "The platform failed or could not be reached."
);
create_exception!(
    _native,
    DiskReadError,
    HypersdkError,
    "A disk of the VM could not be read whole."
);
create_exception!(
    _native,
    FormatError,
    HypersdkError,
    "A file is not in the format it claims, or cannot be written in it."
);
create_exception!(
    _native,
    SinkError,
    HypersdkError,
    "Writing to the destination failed (e.g. a full disk)."
);
create_exception!(
    _native,
    Cancelled,
    HypersdkError,
    "The export was cancelled."
);
create_exception!(_native, InternalError, HypersdkError, "A bug in hypersdk.");

/// A library error, kept in a form that can be raised more than once.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn of(e: &Error) -> Failure {
        let message = hypersdk_core::error::chain(e);
        Failure {
            code: e.code(),
            message,
        }
    }

    fn into_py(self) -> PyErr {
        let msg = self.message;
        let err = match self.code {
            "vm_not_found" => NotFound::new_err(msg),
            "auth" => AuthError::new_err(msg),
            "integrity" => IntegrityError::new_err(msg),
            "crypto" => CryptoError::new_err(msg),
            "already_exists" => AlreadyExists::new_err(msg),
            "invalid_argument" => InvalidArgument::new_err(msg),
            "provider" => ProviderError::new_err(msg),
            "disk_read" | "disk_length" => DiskReadError::new_err(msg),
            "format" => FormatError::new_err(msg),
            "sink" => SinkError::new_err(msg),
            "cancelled" => Cancelled::new_err(msg),
            _ => InternalError::new_err(msg),
        };
        Python::attach(|py| {
            let _ = err.value(py).setattr("code", self.code);
        });
        err
    }
}

fn py_err(e: Error) -> PyErr {
    Failure::of(&e).into_py()
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| InternalError::new_err(e.to_string()))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` to its end on the runtime with the GIL released, checking for
/// Ctrl-C (KeyboardInterrupt) every 100 ms; on an interrupt, `on_interrupt`
/// runs (to cancel the work) and the exception propagates.
fn block_on<T: Send + 'static>(
    py: Python<'_>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
    on_interrupt: impl Fn(),
) -> PyResult<T> {
    let mut task = runtime().spawn(fut);
    loop {
        let step = py.detach(|| {
            runtime().block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut task).await
            })
        });
        match step {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => return Err(InternalError::new_err(format!("task failed: {e}"))),
            Err(_) => {
                if let Err(e) = py.check_signals() {
                    on_interrupt();
                    return Err(e);
                }
            }
        }
    }
}

/// A connected platform.
#[pyclass(frozen, module = "hypersdk._native")]
struct Provider {
    inner: Arc<dyn hypersdk_core::Provider>,
}

fn provider_config(kind_or_url: &str, settings: &str) -> PyResult<hypersdk::ProviderConfig> {
    let fields: hypersdk::Fields = serde_json::from_str(settings)
        .map_err(|e| InvalidArgument::new_err(format!("provider settings: {e}")))?;
    hypersdk::ProviderConfig::resolve(kind_or_url, fields, &hypersdk::process_env).map_err(py_err)
}

async fn connect_config(config: hypersdk::ProviderConfig) -> PyResult<Provider> {
    Ok(Provider {
        inner: Arc::from(config.connect().await.map_err(py_err)?),
    })
}

/// Connects any provider of the registry (blocking): `kind_or_url` is a
/// kind ("local", "vsphere", …) or a URL ("vsphere://user@vc.example"),
/// `settings` a JSON object of its fields; fields not given come from the
/// URL, then from the platform's environment variables (GOVC_*).
#[pyfunction]
fn connect(py: Python<'_>, kind_or_url: &str, settings: &str) -> PyResult<Provider> {
    let config = provider_config(kind_or_url, settings)?;
    block_on(py, connect_config(config), || {})?
}

/// [`connect`], awaitable.
#[pyfunction]
fn connect_async<'py>(
    py: Python<'py>,
    kind_or_url: &str,
    settings: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let config = provider_config(kind_or_url, settings)?;
    pyo3_async_runtimes::tokio::future_into_py(py, connect_config(config))
}

/// The provider kinds this build carries, as JSON `[{kind, about}]`.
#[pyfunction]
fn provider_kinds() -> PyResult<String> {
    json(&hypersdk::kinds())
}

fn parse_query(query: &str) -> PyResult<VmQuery> {
    let q: VmQuery = serde_json::from_str(query)
        .map_err(|e| InvalidArgument::new_err(format!("search: {e}")))?;
    q.validate().map_err(py_err)?;
    Ok(q)
}

impl Provider {
    fn list_fut(&self) -> impl std::future::Future<Output = PyResult<String>> + Send + 'static {
        let p = self.inner.clone();
        async move { json(&p.list_vms().await.map_err(py_err)?) }
    }

    fn search_fut(
        &self,
        query: &str,
    ) -> PyResult<impl std::future::Future<Output = PyResult<String>> + Send + 'static> {
        let q = parse_query(query)?;
        let p = self.inner.clone();
        Ok(async move { json(&p.search_vms(&q).await.map_err(py_err)?) })
    }

    fn get_fut(
        &self,
        vm: String,
    ) -> impl std::future::Future<Output = PyResult<String>> + Send + 'static {
        let p = self.inner.clone();
        async move { json(&p.vm_spec(&vm).await.map_err(py_err)?) }
    }

    fn close_fut(&self) -> impl std::future::Future<Output = PyResult<()>> + Send + 'static {
        let p = self.inner.clone();
        async move { p.close().await.map_err(py_err) }
    }
}

#[pymethods]
impl Provider {
    /// The provider's kind: "local", "vsphere", …
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Every VM, as JSON.
    fn list_vms(&self, py: Python<'_>) -> PyResult<String> {
        block_on(py, self.list_fut(), || {})?
    }

    fn list_vms_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, self.list_fut())
    }

    /// VMs matching a query (JSON of VmQuery's fields), as JSON.
    fn search_vms(&self, py: Python<'_>, query: &str) -> PyResult<String> {
        block_on(py, self.search_fut(query)?, || {})?
    }

    fn search_vms_async<'py>(&self, py: Python<'py>, query: &str) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, self.search_fut(query)?)
    }

    /// One VM's full description, as JSON.
    fn get_vm(&self, py: Python<'_>, vm: String) -> PyResult<String> {
        block_on(py, self.get_fut(vm), || {})?
    }

    fn get_vm_async<'py>(&self, py: Python<'py>, vm: String) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, self.get_fut(vm))
    }

    /// Ends the platform session (vSphere logout); local: nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        block_on(py, self.close_fut(), || {})?
    }

    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, self.close_fut())
    }

    /// Where an export of `vm` with `settings` (JSON) would publish, below
    /// the output directory: the file or directory name.
    fn artifact_name(&self, py: Python<'_>, vm: String, settings: &str) -> PyResult<String> {
        let settings: ExportSettings = serde_json::from_str(settings)
            .map_err(|e| InvalidArgument::new_err(format!("export options: {e}")))?;
        let options = settings.to_options().map_err(py_err)?;
        let p = self.inner.clone();
        let spec = block_on(py, async move { p.vm_spec(&vm).await }, || {})?.map_err(py_err)?;
        Ok(options.artifact(&spec.name).name().to_string())
    }

    /// Starts exporting `vm` into `output` (a directory, or an
    /// s3://bucket/prefix/ URL) with the options
    /// of `settings` (JSON of ExportSettings); returns at once.
    fn start_export(&self, vm: String, output: String, settings: &str) -> PyResult<Export> {
        let settings: ExportSettings = serde_json::from_str(settings)
            .map_err(|e| InvalidArgument::new_err(format!("export options: {e}")))?;
        let options = settings.to_options().map_err(py_err)?;
        Ok(Export(ExportTask::spawn(
            runtime().handle(),
            options,
            self.inner.clone(),
            vm,
            hypersdk::open_output(&output, &hypersdk::OutputOptions::default()).map_err(py_err)?,
        )))
    }
}

/// A running export.
#[pyclass(frozen, module = "hypersdk._native")]
struct Export(ExportTask);

impl Failure {
    fn of_task(f: TaskFailure) -> Failure {
        Failure {
            code: f.code,
            message: f.message,
        }
    }
}

async fn outcome(task: ExportTask) -> PyResult<String> {
    match task.outcome().await {
        Ok(report) => json(&report),
        Err(f) => Err(Failure::of_task(f).into_py()),
    }
}

async fn next_event(task: ExportTask) -> Option<String> {
    let e = task.next_event().await?;
    serde_json::to_string(&e).ok()
}

#[pymethods]
impl Export {
    /// Asks the export to stop; it ends with `Cancelled` (its partial state
    /// kept for a resume when checkpoints are on).
    fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether it has ended.
    fn done(&self) -> bool {
        self.0.is_done()
    }

    /// Waits for the end (blocking); the report as JSON, or raises.
    /// KeyboardInterrupt cancels the export.
    fn wait(&self, py: Python<'_>) -> PyResult<String> {
        let task = self.0.clone();
        block_on(py, outcome(self.0.clone()), move || task.cancel())?
    }

    fn wait_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, outcome(self.0.clone()))
    }

    /// The next progress event as JSON (blocking), or None once the export
    /// has ended and every event was read. `timeout` in seconds: None when
    /// none came in time (the export still running).
    #[pyo3(signature = (timeout=None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(bool, Option<String>)> {
        let task = self.0.clone();
        let fut = async move {
            match timeout {
                Some(t) => match tokio::time::timeout(
                    Duration::from_secs_f64(t.max(0.0)),
                    next_event(task),
                )
                .await
                {
                    Ok(e) => (e.is_none(), e),
                    Err(_) => (false, None),
                },
                None => {
                    let e = next_event(task).await;
                    (e.is_none(), e)
                }
            }
        };
        block_on(py, fut, || {})
    }

    /// The next progress event as JSON (awaitable), or None at the end.
    fn next_event_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let task = self.0.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(next_event(task).await) })
    }
}

fn key(
    key_file: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
) -> PyResult<Option<hypersdk_core::transforms::encrypt::KeySource>> {
    files::optional_key(key_file.as_deref(), passphrase_file.as_deref()).map_err(py_err)
}

/// The package report as JSON (the library's summary of it).
fn report_json(r: &hypersdk_core::files::PackageReport) -> PyResult<String> {
    json(&files::package_summary(r))
}

/// Checks a package (OVA, OVF directory, or an OVA wrapped by an export's
/// compression/encryption; or an OVA published in an object store, given by
/// its URL, `s3://bucket/x/vm.ova`) against its manifest; the report as
/// JSON. With `strict`, a mismatch raises IntegrityError naming every
/// failure.
#[pyfunction]
#[pyo3(signature = (path, *, key_file=None, passphrase_file=None, strict=true))]
fn verify(
    py: Python<'_>,
    path: PathBuf,
    key_file: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    strict: bool,
) -> PyResult<String> {
    let k = key(key_file, passphrase_file)?;
    let shown = path.to_string_lossy().into_owned();
    if hypersdk::output_scheme(&shown).is_some() {
        // A package published in an object store, read through once.
        let r = block_on(
            py,
            async move {
                hypersdk::verify_published(&shown, &hypersdk::OutputOptions::default(), k).await
            },
            || {},
        )?
        .map_err(py_err)?;
        if strict && !r.verified() {
            return Err(py_err(hypersdk::Error::Integrity {
                file: path.display().to_string(),
                detail: r.failures().join("; "),
            }));
        }
        return report_json(&r);
    }
    let r = block_on(
        py,
        async move {
            tokio::task::spawn_blocking(move || {
                if strict {
                    files::verify_package_strict(&path, k.as_ref())
                } else {
                    files::verify_package(&path, k.as_ref())
                }
            })
            .await
        },
        || {},
    )?
    .map_err(|e| InternalError::new_err(e.to_string()))?
    .map_err(py_err)?;
    report_json(&r)
}

/// Decrypts and decompresses what an export wrapped (`vm.ova.zst.enc` →
/// `vm.ova`), publishing `output` only when whole; plain bytes written.
#[pyfunction]
#[pyo3(signature = (input, output, *, key_file=None, passphrase_file=None, overwrite=false))]
fn unwrap(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    key_file: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    overwrite: bool,
) -> PyResult<u64> {
    let k = key(key_file, passphrase_file)?;
    block_on(
        py,
        async move {
            tokio::task::spawn_blocking(move || {
                files::unwrap_file(&input, &output, k.as_ref(), overwrite)
            })
            .await
        },
        || {},
    )?
    .map_err(|e| InternalError::new_err(e.to_string()))?
    .map_err(py_err)
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(connect_async, m)?)?;
    m.add_function(wrap_pyfunction!(provider_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(unwrap, m)?)?;
    m.add_class::<Provider>()?;
    m.add_class::<Export>()?;
    let py = m.py();
    m.add("HypersdkError", py.get_type::<HypersdkError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("CryptoError", py.get_type::<CryptoError>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("ProviderError", py.get_type::<ProviderError>())?;
    m.add("DiskReadError", py.get_type::<DiskReadError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("SinkError", py.get_type::<SinkError>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
