//! Prometheus metrics, in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::lock;
use crate::model::JobStatus;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0];

/// One route's latency histogram.
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    bytes_exported: AtomicU64,
    active: AtomicUsize,
    ended: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            latency: Mutex::default(),
            bytes_exported: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            ended: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, secs: f64) {
        *lock(&self.requests)
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut lat = lock(&self.latency);
        let h = lat.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Guest bytes an export read.
    pub fn add_exported(&self, bytes: u64) {
        self.bytes_exported.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Exports running now.
    pub fn set_active(&self, n: usize) {
        self.active.store(n, Ordering::Relaxed);
    }

    /// A job reached a final status.
    pub fn job_ended(&self, status: JobStatus) {
        *lock(&self.ended).entry(status.as_str()).or_default() += 1;
    }

    /// The exposition text; `jobs` are the stored jobs per status.
    pub fn render(&self, jobs: &[(String, i64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP hypersdk_http_requests_total API requests answered."
        );
        let _ = writeln!(s, "# TYPE hypersdk_http_requests_total counter");
        for ((m, r, st), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                s,
                "hypersdk_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{st}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP hypersdk_http_request_duration_seconds API request latency."
        );
        let _ = writeln!(s, "# TYPE hypersdk_http_request_duration_seconds histogram");
        for (r, h) in lock(&self.latency).iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "hypersdk_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "hypersdk_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "hypersdk_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "hypersdk_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(s, "# HELP hypersdk_jobs Jobs in the store by status.");
        let _ = writeln!(s, "# TYPE hypersdk_jobs gauge");
        for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
            let n = jobs
                .iter()
                .find(|(k, _)| k == status)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(s, "hypersdk_jobs{{status=\"{status}\"}} {n}");
        }
        let queued = jobs
            .iter()
            .find(|(k, _)| k == "queued")
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(s, "# HELP hypersdk_queue_length Jobs waiting for a slot.");
        let _ = writeln!(s, "# TYPE hypersdk_queue_length gauge");
        let _ = writeln!(s, "hypersdk_queue_length {queued}");
        let _ = writeln!(
            s,
            "# HELP hypersdk_jobs_ended_total Jobs that ended since the daemon started, by status."
        );
        let _ = writeln!(s, "# TYPE hypersdk_jobs_ended_total counter");
        for (k, n) in lock(&self.ended).iter() {
            let _ = writeln!(s, "hypersdk_jobs_ended_total{{status=\"{k}\"}} {n}");
        }
        let bytes = self.bytes_exported.load(Ordering::Relaxed);
        let up = self.started.elapsed().as_secs_f64();
        let _ = writeln!(
            s,
            "# HELP hypersdk_exported_bytes_total Guest bytes read by finished exports."
        );
        let _ = writeln!(s, "# TYPE hypersdk_exported_bytes_total counter");
        let _ = writeln!(s, "hypersdk_exported_bytes_total {bytes}");
        let _ = writeln!(s, "# HELP hypersdk_export_throughput_bytes_per_second Exported bytes per second of uptime.");
        let _ = writeln!(
            s,
            "# TYPE hypersdk_export_throughput_bytes_per_second gauge"
        );
        let _ = writeln!(
            s,
            "hypersdk_export_throughput_bytes_per_second {}",
            if up > 0.0 { bytes as f64 / up } else { 0.0 }
        );
        let _ = writeln!(s, "# HELP hypersdk_active_exports Exports running now.");
        let _ = writeln!(s, "# TYPE hypersdk_active_exports gauge");
        let _ = writeln!(
            s,
            "hypersdk_active_exports {}",
            self.active.load(Ordering::Relaxed)
        );
        s
    }
}
