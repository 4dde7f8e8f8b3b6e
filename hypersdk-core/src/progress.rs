//! Progress events of an export.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What stage an event reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A disk is being read and encoded.
    Disk,
    /// A disk finished.
    DiskDone,
    /// The package (OVF, manifest, OVA) is being written.
    Packaging,
    /// Stored files are being read back and checked.
    Verify,
    /// The export is complete.
    Done,
}

/// Progress of one disk (or of packaging).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressEvent {
    /// Stage.
    pub phase: Phase,
    /// Index of the disk in the VM spec (0 for packaging events).
    pub disk_index: usize,
    /// Disk name.
    pub disk: String,
    /// Guest bytes read so far.
    pub bytes_done: u64,
    /// Guest bytes in total.
    pub bytes_total: u64,
    /// Average rate since the disk started, bytes per second.
    pub rate_bps: f64,
    /// Estimated seconds left, once a rate is known.
    pub eta_secs: Option<f64>,
}

/// A callback receiving progress events. Called from the export's task; keep it quick.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// Throttles and computes rate and ETA for one disk's events.
#[derive(Debug)]
pub(crate) struct ProgressTracker {
    start: Instant,
    last: Option<Instant>,
    interval: Duration,
}

impl ProgressTracker {
    pub(crate) fn new(interval: Duration) -> Self {
        ProgressTracker {
            start: Instant::now(),
            last: None,
            interval,
        }
    }

    /// The event for `done` of `total` bytes, or None if one was sent too recently.
    pub(crate) fn event(
        &mut self,
        phase: Phase,
        disk_index: usize,
        disk: &str,
        done: u64,
        total: u64,
        force: bool,
    ) -> Option<ProgressEvent> {
        let now = Instant::now();
        if !force && self.last.is_some_and(|l| now - l < self.interval) {
            return None;
        }
        self.last = Some(now);
        let secs = (now - self.start).as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
        Some(ProgressEvent {
            phase,
            disk_index,
            disk: disk.to_string(),
            bytes_done: done,
            bytes_total: total,
            rate_bps: rate,
            eta_secs: eta,
        })
    }
}
