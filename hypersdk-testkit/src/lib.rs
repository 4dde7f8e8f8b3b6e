//! The contract of hypersdk's extension points, as tests: behaviour every
//! [`Provider`](hypersdk_core::Provider), [`ExportSource`](hypersdk_core::ExportSource)
//! and [`Sink`](hypersdk_core::Sink) must show, whatever platform or store
//! it speaks to. Each implementation runs these suites in its own crate's
//! `tests/` against its real peer (the way object_store's backends share
//! one `integration.rs`); a new provider or sink is done when they pass.
//!
//! - [`sink::run_suite`]: objects appear only on commit and whole; an
//!   aborted or dropped staging area leaves nothing; an existing artifact
//!   is refused unless overwriting, and then replaced whole; listing, reading
//!   and deleting agree; names cannot climb out; a resumable staging area
//!   kept after an interruption continues to the same object.
//! - [`provider::run_suite`]: list, search and get agree; a missing VM is
//!   `vm_not_found`; every disk stream is exactly the disk's capacity, and
//!   opening at an offset gives the same bytes as skipping to it (a served
//!   encoding too, which decodes to the guest bytes); two exports of one VM
//!   give identical packages; a cancelled
//!   export leaves nothing visible.
//!
//! Failures panic with a message naming the rule, the implementation and
//! what differed, as test assertions do.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let sink = hypersdk_sinks::MemorySink::new();
//! hypersdk_testkit::sink::run_suite(&sink, hypersdk_testkit::sink::Capabilities::LOCAL).await;
//! # });
//! ```

pub mod provider;
pub mod sink;

/// A name no other run of the suite uses (process id and a counter).
pub(crate) fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
