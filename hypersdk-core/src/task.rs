//! An export running in the background, for callers that poll it — the
//! language bindings hand it to Python, JavaScript and the like: progress
//! events wait in a bounded queue, the outcome is kept until asked for (as
//! often as asked), and the export can be cancelled from anywhere.
//!
//! Progress is best effort: when nobody reads, the newest events are dropped
//! rather than slowing the export ([`EVENT_QUEUE`] are kept); the report is
//! exact.
//!
//! ```no_run
//! # async fn demo(provider: std::sync::Arc<dyn hypersdk_core::Provider>, sink: Box<dyn hypersdk_core::Sink>) {
//! use hypersdk_core::{task::ExportTask, ExportOptions, PackageFormat};
//! let task = ExportTask::spawn(
//!     &tokio::runtime::Handle::current(),
//!     ExportOptions::new(PackageFormat::Ova),
//!     provider,
//!     "web-01".into(),
//!     sink,
//! );
//! while let Some(event) = task.next_event().await {
//!     println!("{} {}/{}", event.disk, event.bytes_done, event.bytes_total);
//! }
//! match task.outcome().await {
//!     Ok(report) => println!("{}", report.location),
//!     Err(f) => eprintln!("{}: {}", f.code, f.message),
//! }
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::{ExportOptions, ExportReport, Exporter, ProgressEvent, Provider, Sink};

/// Progress events a task keeps for its reader.
pub const EVENT_QUEUE: usize = 1024;

/// Why a task failed, kept so that it can be reported more than once: the
/// error's [`code`](crate::Error::code) and its message with causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// [`crate::Error::code`] of the failure.
    pub code: &'static str,
    /// The error and its causes ([`crate::error::chain`]).
    pub message: String,
}

type Outcome = Option<Result<ExportReport, TaskFailure>>;

/// A running (or finished) export.
#[derive(Debug, Clone)]
pub struct ExportTask {
    cancel: CancellationToken,
    events: Arc<Mutex<mpsc::Receiver<ProgressEvent>>>,
    done: watch::Receiver<Outcome>,
}

impl ExportTask {
    /// Starts exporting `vm` of `provider` into `sink` with `options` on
    /// `runtime`; returns at once.
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        options: ExportOptions,
        provider: Arc<dyn Provider>,
        vm: String,
        sink: Box<dyn Sink>,
    ) -> ExportTask {
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (done_tx, done_rx) = watch::channel::<Outcome>(None);
        let exporter = Exporter::new(options)
            .with_cancel(cancel.clone())
            .on_progress(Arc::new(move |e| {
                let _ = tx.try_send(e.clone());
            }));
        runtime.spawn(async move {
            let outcome = exporter
                .export(provider.as_ref(), &vm, sink.as_ref())
                .await
                .map_err(|e| TaskFailure {
                    code: e.code(),
                    message: crate::error::chain(&e),
                });
            // Dropping the exporter closes the event queue before the
            // outcome is known, so a reader sees every event, then the end.
            drop(exporter);
            let _ = done_tx.send(Some(outcome));
        });
        ExportTask {
            cancel,
            events: Arc::new(Mutex::new(rx)),
            done: done_rx,
        }
    }

    /// Asks the export to stop; it ends with code `cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether it has ended.
    pub fn is_done(&self) -> bool {
        self.done.borrow().is_some()
    }

    /// The next progress event, or None once the export has ended and every
    /// kept event was read.
    pub async fn next_event(&self) -> Option<ProgressEvent> {
        self.events.lock().await.recv().await
    }

    /// Waits for the end: the report, or why it failed.
    pub async fn outcome(&self) -> Result<ExportReport, TaskFailure> {
        let mut done = self.done.clone();
        let v = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TaskFailure {
                code: "internal",
                message: "the export task ended without a result".into(),
            })?;
        v.clone().unwrap_or_else(|| {
            Err(TaskFailure {
                code: "internal",
                message: "no result".into(),
            })
        })
    }
}
