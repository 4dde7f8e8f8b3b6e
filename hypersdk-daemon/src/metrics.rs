//! Prometheus metrics at `/metrics`, kept and encoded by the
//! `prometheus-client` crate (OpenMetrics text format).
//!
//! Names follow Prometheus' conventions: a `hypersdk_` prefix, the unit in
//! the name (`_seconds`, `_bytes`), `_total` on counters. What each one is,
//! and the alert rules and Grafana dashboard built on them, are in
//! `deploy/` (checked by the test suite against a scrape of a real daemon).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hypersdk_http_requests_total` | counter | method, route, status |
//! | `hypersdk_http_request_duration_seconds` | histogram | route |
//! | `hypersdk_jobs` | gauge (at scrape) | status |
//! | `hypersdk_queue_depth` | gauge (at scrape) | |
//! | `hypersdk_queue_wait_seconds` | histogram | provider |
//! | `hypersdk_active_exports` | gauge | |
//! | `hypersdk_export_read_bytes_total` | counter (live) | provider, sink |
//! | `hypersdk_export_stored_bytes_total` | counter | provider, sink |
//! | `hypersdk_export_duration_seconds` | histogram | provider, status |
//! | `hypersdk_jobs_ended_total` | counter | status |
//! | `hypersdk_export_errors_total` | counter | provider, kind |
//! | `hypersdk_webhook_deliveries_total` | counter | result |
//! | `hypersdk_webhook_breaker_open` | gauge | webhook |
//! | `hypersdk_output_free_bytes`, `hypersdk_output_size_bytes` | gauge (at scrape) | |
//! | `hypersdk_start_time_seconds` | gauge | |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::JobStatus;

/// Upper bounds (seconds) of the request latency histogram.
const HTTP_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Upper bounds (seconds) of export durations and queue waits: from a
/// second to a day.
const LONG_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    provider: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    provider: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    provider: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn long_histogram() -> Histogram {
    Histogram::new(LONG_BUCKETS)
}

/// What the daemon has seen since it started, and what is true at a
/// scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    jobs: Family<StatusLabels, Gauge>,
    queue_depth: Gauge,
    queue_wait: HistogramFamily<ProviderLabels>,
    active: Gauge,
    read_bytes: Family<FlowLabels, Counter>,
    stored_bytes: Family<FlowLabels, Counter>,
    export_duration: HistogramFamily<EndLabels>,
    ended: Family<StatusLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    deliveries: Family<ResultLabels, Counter>,
    breaker: Family<WebhookLabels, Gauge>,
    output_free: Gauge<u64, AtomicU64>,
    output_size: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            queue_wait: Family::new_with_constructor(long_histogram),
            active: Gauge::default(),
            read_bytes: Family::default(),
            stored_bytes: Family::default(),
            export_duration: Family::new_with_constructor(long_histogram),
            ended: Family::default(),
            errors: Family::default(),
            deliveries: Family::default(),
            breaker: Family::default(),
            output_free: Gauge::default(),
            output_size: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "hypersdk_http_requests",
            "API requests answered",
            m.http_requests.clone(),
        );
        r.register(
            "hypersdk_http_request_duration_seconds",
            "API request latency",
            m.http_duration.clone(),
        );
        r.register(
            "hypersdk_jobs",
            "Jobs in the store by status",
            m.jobs.clone(),
        );
        r.register(
            "hypersdk_queue_depth",
            "Jobs waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register(
            "hypersdk_queue_wait_seconds",
            "Time from submission to the first start of a job",
            m.queue_wait.clone(),
        );
        r.register(
            "hypersdk_active_exports",
            "Exports running now",
            m.active.clone(),
        );
        r.register(
            "hypersdk_export_read_bytes",
            "Guest bytes read from the source as the exports run (bytes kept from an interrupted run not counted)",
            m.read_bytes.clone(),
        );
        r.register(
            "hypersdk_export_stored_bytes",
            "Bytes of the artifacts published",
            m.stored_bytes.clone(),
        );
        r.register(
            "hypersdk_export_duration_seconds",
            "Wall time of export runs, by how they ended",
            m.export_duration.clone(),
        );
        r.register(
            "hypersdk_jobs_ended",
            "Jobs that ended since the daemon started, by status",
            m.ended.clone(),
        );
        r.register(
            "hypersdk_export_errors",
            "Failed export runs by the kind of error (hypersdk's error codes)",
            m.errors.clone(),
        );
        r.register(
            "hypersdk_webhook_deliveries",
            "Webhook deliveries: delivered, failed (every attempt failed) or skipped (circuit open, target refused)",
            m.deliveries.clone(),
        );
        r.register(
            "hypersdk_webhook_breaker_open",
            "1 while a webhook's circuit breaker is open",
            m.breaker.clone(),
        );
        r.register(
            "hypersdk_output_free_bytes",
            "Bytes free to the daemon on the output root's file system",
            m.output_free.clone(),
        );
        r.register(
            "hypersdk_output_size_bytes",
            "Size of the output root's file system",
            m.output_size.clone(),
        );
        let started: Gauge<f64, AtomicU64> = Gauge::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register(
            "hypersdk_start_time_seconds",
            "When the daemon started, seconds since the Unix epoch",
            started,
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Records one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16, secs: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(secs);
    }

    /// Guest bytes an export just read.
    pub fn read(&self, provider: &str, sink: &str, bytes: u64) {
        self.read_bytes
            .get_or_create(&FlowLabels {
                provider: provider.to_string(),
                sink: sink.to_string(),
            })
            .inc_by(bytes);
    }

    /// A job waited `secs` in the queue before its first start.
    pub fn queue_wait(&self, provider: &str, secs: f64) {
        self.queue_wait
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .observe(secs.max(0.0));
    }

    /// Exports running now.
    pub fn set_active(&self, n: usize) {
        self.active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A run of a job ended: how, after how long, what it stored, why it
    /// failed (an error code).
    pub fn run_ended(
        &self,
        provider: &str,
        sink: &str,
        status: JobStatus,
        secs: f64,
        stored: u64,
        error: Option<&str>,
    ) {
        self.export_duration
            .get_or_create(&EndLabels {
                provider: provider.to_string(),
                status: status.as_str().to_string(),
            })
            .observe(secs);
        if stored > 0 {
            self.stored_bytes
                .get_or_create(&FlowLabels {
                    provider: provider.to_string(),
                    sink: sink.to_string(),
                })
                .inc_by(stored);
        }
        if let Some(kind) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    provider: provider.to_string(),
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    /// A job reached a final status.
    pub fn job_ended(&self, status: JobStatus) {
        self.ended
            .get_or_create(&StatusLabels {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    /// A webhook delivery ended: `delivered`, `failed` or `skipped`.
    pub fn delivery(&self, result: &str) {
        self.deliveries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Whether webhook `id`'s circuit breaker is open.
    pub fn breaker(&self, id: i64, open: bool) {
        self.breaker
            .get_or_create(&WebhookLabels {
                webhook: id.to_string(),
            })
            .set(i64::from(open));
    }

    /// A removed webhook's breaker is no longer reported.
    pub fn forget_webhook(&self, id: i64) {
        self.breaker.remove(&WebhookLabels {
            webhook: id.to_string(),
        });
    }

    /// The exposition text; `jobs` are the stored jobs per status, `space`
    /// the output root's file system (free, size) if known.
    pub fn render(&self, jobs: &[(String, i64)], space: Option<(u64, u64)>) -> String {
        let count = |s: &str| jobs.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
        for status in ["queued", "running", "succeeded", "failed", "cancelled"] {
            self.jobs
                .get_or_create(&StatusLabels {
                    status: status.to_string(),
                })
                .set(count(status));
        }
        self.queue_depth.set(count("queued"));
        if let Some((free, size)) = space {
            self.output_free.set(free);
            self.output_size.set(size);
        }
        let mut s = String::with_capacity(8 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        s
    }
}

/// Free bytes (to unprivileged users) and size of the file system holding
/// `path`, None if it cannot tell.
pub fn space(path: &std::path::Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}
