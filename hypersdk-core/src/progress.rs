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
    /// Of `bytes_done`, those an interrupted run did before this one
    /// (a resume): not read now, and in no rate.
    pub bytes_resumed: u64,
    /// Bytes per second over the last seconds (a moving window; 0 until
    /// about a second has passed), never counting resumed bytes.
    pub rate_bps: f64,
    /// Estimated seconds left, once a rate is known.
    pub eta_secs: Option<f64>,
}

/// A callback receiving progress events. Called from the export's task; keep it quick.
pub type ProgressFn = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// How far back the rate of an event looks: a moving window, so a stall
/// or a burst shows within seconds and one fast chunk cannot make the
/// rate absurd.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The shortest span a rate is computed over; before that an event
/// carries no rate (0) and no ETA.
const RATE_MIN_SPAN: Duration = Duration::from_millis(900);

/// Points a [`Timeline`] keeps at most: when full, every other point goes
/// and the spacing doubles.
pub const TIMELINE_POINTS: usize = 256;

/// Bytes done over time, for a throughput chart: `(seconds since the
/// start, bytes done)`, at most [`TIMELINE_POINTS`] points evenly thinned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    points: Vec<(f64, u64)>,
    step: f64,
}

impl Timeline {
    /// Records `bytes` done at `secs`; points closer than the current
    /// spacing to the last are skipped unless `force`d.
    pub fn record(&mut self, secs: f64, bytes: u64, force: bool) {
        if self.step == 0.0 {
            self.step = 0.25;
        }
        if let Some(&(t, _)) = self.points.last() {
            if !force && secs - t < self.step {
                return;
            }
        }
        if self.points.len() >= TIMELINE_POINTS {
            let last = self.points.len() - 1;
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                (i - 1) % 2 == 0 || i - 1 == last
            });
            self.step *= 2.0;
        }
        self.points.push((secs, bytes));
    }

    /// The points, oldest first.
    pub fn points(&self) -> &[(f64, u64)] {
        &self.points
    }
}

/// Throttles and computes rate and ETA for one disk's events.
#[derive(Debug)]
pub(crate) struct ProgressTracker {
    start: Instant,
    last: Option<Instant>,
    interval: Duration,
    /// Bytes done before this run (kept from an interrupted one): not read
    /// now, so not in any rate.
    base: u64,
    /// Recent `(time, bytes done)` points, oldest first, covering at
    /// least [`RATE_WINDOW`] once that long has passed.
    window: std::collections::VecDeque<(Instant, u64)>,
    timeline: Timeline,
}

impl ProgressTracker {
    pub(crate) fn new(interval: Duration) -> Self {
        Self::resumed(interval, 0)
    }

    /// A tracker for work that starts at `base` bytes already done.
    pub(crate) fn resumed(interval: Duration, base: u64) -> Self {
        let start = Instant::now();
        let mut timeline = Timeline::default();
        timeline.record(0.0, base, true);
        ProgressTracker {
            start,
            last: None,
            interval,
            base,
            window: std::collections::VecDeque::from([(start, base)]),
            timeline,
        }
    }

    /// What was recorded over time.
    pub(crate) fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Seconds since the tracker started.
    pub(crate) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
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
        self.timeline
            .record((now - self.start).as_secs_f64(), done, force);
        self.window.push_back((now, done));
        while self.window.len() > 2
            && self
                .window
                .get(1)
                .is_some_and(|&(t, _)| now - t >= RATE_WINDOW)
        {
            self.window.pop_front();
        }
        let rate = match self.window.front() {
            Some(&(t, b)) if now - t >= RATE_MIN_SPAN => {
                done.saturating_sub(b) as f64 / (now - t).as_secs_f64()
            }
            // A phase over quickly: its own average, the only rate there is.
            _ if force && now > self.start => {
                done.saturating_sub(self.base) as f64 / (now - self.start).as_secs_f64()
            }
            _ => 0.0,
        };
        let eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
        Some(ProgressEvent {
            phase,
            disk_index,
            disk: disk.to_string(),
            bytes_done: done,
            bytes_total: total,
            bytes_resumed: self.base,
            rate_bps: rate,
            eta_secs: eta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_wait_for_a_span_and_never_count_resumed_bytes() {
        let mut t = ProgressTracker::resumed(Duration::ZERO, 1 << 30);
        // The first chunk right after a resume: no rate yet, however big.
        let e = t
            .event(Phase::Disk, 0, "d", (1 << 30) + (1 << 20), 2 << 30, false)
            .unwrap();
        assert_eq!(e.rate_bps, 0.0);
        assert_eq!(e.eta_secs, None);
        assert_eq!(e.bytes_resumed, 1 << 30);
        std::thread::sleep(Duration::from_millis(1000));
        let e = t
            .event(Phase::Disk, 0, "d", (1 << 30) + (2 << 20), 2 << 30, false)
            .unwrap();
        // 2 MiB in about a second: far from the 1 GiB kept.
        assert!(e.rate_bps > 1e6 && e.rate_bps < 2.3e6, "{}", e.rate_bps);
        assert!(e.eta_secs.is_some());
    }

    #[test]
    fn a_timeline_stays_bounded_and_keeps_its_ends() {
        let mut tl = Timeline::default();
        for i in 0..10_000u64 {
            tl.record(i as f64, i * 10, false);
        }
        tl.record(10_000.5, 100_005, true);
        let p = tl.points();
        assert!(p.len() <= TIMELINE_POINTS + 1, "{}", p.len());
        assert_eq!(p[0], (0.0, 0));
        assert_eq!(*p.last().unwrap(), (10_000.5, 100_005));
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
