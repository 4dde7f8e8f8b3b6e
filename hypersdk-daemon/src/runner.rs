//! Runs queued jobs: at most `max_concurrent` exports at once (and at most a
//! provider's own `max_concurrent` of that provider), highest priority
//! first. Every export keeps a checkpoint and runs with `resume`, so a job
//! that was running when the daemon died continues where it stopped when
//! the daemon starts again.
//!
//! On a shared (PostgreSQL) store the limits are counted over every
//! hypervisord (`max_concurrent` stays this process's own capacity), each
//! run holds a lease renewed every third of `lease_secs`, and a run whose
//! lease is gone (taken over after it ran out, or not renewable for two
//! thirds of it) is stopped here and publishes nothing. A cancel asked on
//! another process reaches this one at the next renewal.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypersdk_core::{CancellationToken, Error, ExportOptions, Exporter, Provider, Sink};
use hypersdk_sinks::LocalDirSink;
use tokio::sync::{broadcast, Notify};
use tracing::{info, warn, Instrument};

use crate::config::{Config, ProviderEntry};
use crate::lock;
use crate::metrics::Metrics;
use crate::model::{Job, JobStatus, Progress};
use crate::store::{Claim, JobEnd, Limits, Store};
use crate::webhooks::Webhooks;

/// The configured providers, connected on first use and then shared.
#[derive(Debug)]
pub struct Providers {
    configs: BTreeMap<String, ProviderEntry>,
    connected: tokio::sync::Mutex<HashMap<String, Arc<dyn Provider>>>,
}

impl Providers {
    /// Providers of `configs`.
    pub fn new(configs: BTreeMap<String, ProviderEntry>) -> Self {
        Providers {
            configs,
            connected: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Configured names.
    pub fn names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// The provider called `name`, connecting it if needed.
    pub async fn get(&self, name: &str) -> hypersdk_core::Result<Arc<dyn Provider>> {
        let mut connected = self.connected.lock().await;
        if let Some(p) = connected.get(name) {
            return Ok(p.clone());
        }
        let config = self
            .configs
            .get(name)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown provider '{name}'")))?;
        let p: Arc<dyn Provider> =
            Arc::from(config.config.connect().await.map_err(|e| match e {
                Error::InvalidArgument(m) => {
                    Error::InvalidArgument(format!("provider '{name}': {m}"))
                }
                e => e,
            })?);
        connected.insert(name.to_string(), p.clone());
        Ok(p)
    }
}

/// A job being exported.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    /// The fencing token of this run.
    fence: i64,
    /// Set when the run lost its lease: it ends without recording anything.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the run records its end (its lease ends with it).
    ending: Arc<std::sync::atomic::AtomicBool>,
    progress: Progress,
    events: broadcast::Sender<Progress>,
}

impl Running {
    /// Stops a run whose lease is gone (once): it ends recording nothing.
    fn stop_lost(&self, id: i64, why: &str) {
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            warn!(job = id, "{why}");
            self.cancel.cancel();
        }
    }
}

/// Runs jobs from the store.
#[derive(Debug)]
pub struct Runner {
    store: Store,
    config: Arc<Config>,
    /// The configured providers.
    pub providers: Providers,
    /// Where job events go.
    pub webhooks: Arc<Webhooks>,
    metrics: Arc<Metrics>,
    /// The daemon's `bwlimit`, shared by every job.
    shared_limit: Option<Arc<hypersdk_core::transforms::ratelimit::RateLimiter>>,
    running: Mutex<HashMap<i64, Running>>,
    /// Every running job's progress, and each end (phase = final status).
    all: broadcast::Sender<(i64, Progress)>,
    wake: Notify,
    stopping: std::sync::atomic::AtomicBool,
}

impl Runner {
    /// A runner over `store`.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        webhooks: Arc<Webhooks>,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            store,
            webhooks,
            providers: Providers::new(config.providers.clone()),
            // Checked when the configuration was read.
            shared_limit: config
                .bwlimit
                .as_deref()
                .and_then(|b| hypersdk_core::transforms::ratelimit::RateLimiter::from_spec(b).ok()),
            config,
            metrics,
            running: Mutex::new(HashMap::new()),
            all: broadcast::channel(1024).0,
            wake: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The job store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        lock(&self.running)
    }

    /// Exports running now.
    pub fn active(&self) -> usize {
        self.running().len()
    }

    /// Looks for work now (after a submission).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Live progress of job `id`, if it runs.
    pub fn progress(&self, id: i64) -> Option<Progress> {
        self.running().get(&id).map(|r| r.progress.clone())
    }

    /// Progress updates of job `id` while it runs.
    pub fn subscribe(&self, id: i64) -> Option<broadcast::Receiver<Progress>> {
        self.running().get(&id).map(|r| r.events.subscribe())
    }

    /// Progress updates of every job, and their ends (phase = the final
    /// status), as `(job id, progress)`.
    pub fn subscribe_all(&self) -> broadcast::Receiver<(i64, Progress)> {
        self.all.subscribe()
    }

    /// Cancels running job `id`; false if it does not run here.
    pub fn cancel(&self, id: i64) -> bool {
        match self.running().get(&id) {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Interrupts every running export for a shutdown: they keep their
    /// checkpoints and stay `running` in the store, so the next start
    /// queues them again and they continue.
    pub fn stop_all(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for r in self.running().values() {
            r.cancel.cancel();
        }
    }

    /// The limits claims honour, counted over every process of the store.
    fn limits(&self) -> Limits {
        Limits {
            total: self.config.cluster_max_concurrent,
            per_provider: self
                .config
                .providers
                .iter()
                .filter_map(|(name, c)| c.max_concurrent().map(|m| (name.clone(), m)))
                .collect(),
        }
    }

    /// Renews this process's leases: a run the store no longer gives it is
    /// stopped without recording anything (another run owns the job), a
    /// run asked to cancel elsewhere is cancelled. After two thirds of a
    /// lease without a renewal every run stops the same way: by then
    /// another process may take the jobs over.
    async fn keep_leases(&self, last_renewed: &mut std::time::Instant) {
        let lease = Duration::from_millis(u64::try_from(self.store.lease_ms()).unwrap_or(30_000));
        match self.store.renew_leases().await {
            Ok(held) => {
                *last_renewed = std::time::Instant::now();
                for (id, r) in self.running().iter() {
                    if r.ending.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    match held.iter().find(|l| l.id == *id) {
                        Some(l) if l.fence == r.fence => {
                            if l.cancel && !r.cancel.is_cancelled() {
                                info!(job = id, "cancel asked for on another hypervisord");
                                r.cancel.cancel();
                            }
                        }
                        _ => {
                            r.stop_lost(
                                *id,
                                "this run lost its lease (another took the job over): stopping it",
                            );
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot renew the leases of running jobs");
                if last_renewed.elapsed() > lease * 2 / 3 {
                    for (id, r) in self.running().iter() {
                        r.stop_lost(*id, "leases not renewed for two thirds of their time: stopping the run, another hypervisord may take it over");
                    }
                }
            }
        }
        match self.store.reap_expired().await {
            Ok(ids) if !ids.is_empty() => {
                info!(jobs = ?ids, "jobs whose lease ran out queued again");
                self.wake();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot look for runs whose lease ran out"),
        }
    }

    /// Starts jobs whenever there is a free slot, until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last_sweep: Option<std::time::Instant> = None;
        let mut last_renewed = std::time::Instant::now();
        let mut last_lease_check: Option<std::time::Instant> = None;
        let renew_every = Duration::from_millis(
            u64::try_from(self.store.lease_ms() / 3)
                .unwrap_or(10_000)
                .max(100),
        );
        loop {
            if last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_sweep = Some(std::time::Instant::now());
                self.sweep_partials().await;
            }
            if last_lease_check.is_none_or(|t| t.elapsed() >= renew_every) {
                last_lease_check = Some(std::time::Instant::now());
                self.keep_leases(&mut last_renewed).await;
            }
            while self.active() < self.config.max_concurrent {
                match self.store.claim_next(self.limits()).await {
                    Ok(Some(claim)) => self.clone().start(claim),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot take the next job");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500).min(renew_every)) => {}
            }
        }
    }

    fn start(self: Arc<Self>, claim: Claim) {
        let Claim { job, fence } = claim;
        let cancel = CancellationToken::new();
        let (events, _) = broadcast::channel(64);
        let lost: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let ending: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        self.running().insert(
            job.id,
            Running {
                cancel: cancel.clone(),
                fence,
                lost: lost.clone(),
                ending: ending.clone(),
                progress: Progress::default(),
                events,
            },
        );
        self.metrics.set_active(self.active());
        let span = tracing::info_span!(
            "job",
            otel.name = "export job",
            hypersdk.job.id = job.id,
            hypersdk.vm = %job.spec.vm,
            hypersdk.provider = %job.spec.provider,
            hypersdk.attempt = job.attempts,
            hypersdk.job.status = tracing::field::Empty,
            hypersdk.bytes_read = tracing::field::Empty,
        );
        crate::telemetry::set_parent(&span, job.trace_parent.as_deref());
        tokio::spawn(async move {
            let id = job.id;
            let began = std::time::Instant::now();
            info!(job = id, vm = %job.spec.vm, provider = %job.spec.provider, attempt = job.attempts, "job started");
            if job.attempts <= 1 {
                if let Ok(created) = chrono::DateTime::parse_from_rfc3339(&job.created_at) {
                    let waited = chrono::Utc::now().signed_duration_since(created);
                    self.metrics
                        .queue_wait(&job.spec.provider, waited.num_milliseconds() as f64 / 1000.0);
                }
            }
            self.webhooks.emit(
                "job.started",
                id,
                serde_json::to_value(&job).unwrap_or_default(),
            );
            let kept: Arc<Mutex<Option<String>>> = Arc::default();
            let outcome = match self.published_before(&job).await {
                Some(report) => Ok(report),
                None => self.export(&job, fence, lost.clone(), cancel, kept.clone()).await,
            };
            if lost.load(std::sync::atomic::Ordering::SeqCst) {
                warn!(job = id, "run stopped: its lease is gone; the job is another run's now");
                self.running().remove(&id);
                self.metrics.set_active(self.active());
                self.wake();
                return;
            }
            if matches!(outcome, Err(Error::Cancelled))
                && self.stopping.load(std::sync::atomic::Ordering::SeqCst)
            {
                info!(
                    job = id,
                    "interrupted by the shutdown; it continues at the next start"
                );
                self.running().remove(&id);
                self.metrics.set_active(self.active());
                return;
            }
            let span = tracing::Span::current();
            let (stored, code) = match &outcome {
                Ok(r) => (r.size, None),
                Err(Error::Cancelled) => (0, None),
                Err(e) => (0, Some(e.code())),
            };
            let partial = lock(&kept).take().map(|path| {
                let bytes = crate::outputs::size_of(std::path::Path::new(&path));
                crate::outputs::PartialExport { path, bytes }
            });
            let (status, end) = match outcome {
                Ok(report) => {
                    // Signed: the trace layer keeps i64 as a number, u64 as text.
                    span.record(
                        "hypersdk.bytes_read",
                        i64::try_from(report.bytes_read).unwrap_or(i64::MAX),
                    );
                    let end = JobEnd {
                        result: serde_json::to_value(&report).ok(),
                        ..JobEnd::default()
                    };
                    (JobStatus::Succeeded, end)
                }
                Err(Error::Cancelled) => (
                    JobStatus::Cancelled,
                    JobEnd {
                        partial,
                        ..JobEnd::default()
                    },
                ),
                Err(e) => {
                    let end = JobEnd {
                        error: Some(hypersdk_core::error::chain(&e)),
                        retryable: hypersdk_core::checkpoint::keeps_partial(&e),
                        partial,
                        ..JobEnd::default()
                    };
                    (JobStatus::Failed, end)
                }
            };
            span.record("hypersdk.job.status", status.as_str());
            self.metrics.run_ended(
                &job.spec.provider,
                sink_label(&job.spec),
                status,
                began.elapsed().as_secs_f64(),
                stored,
                code,
            );
            if let Some(e) = &end.error {
                crate::telemetry::set_error(&span, e);
            }
            ending.store(true, std::sync::atomic::Ordering::SeqCst);
            match self.store.finish(id, status, end, Some(fence)).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(job = id, "the end of this run is not recorded: its lease is gone and the job is another run's now");
                    self.running().remove(&id);
                    self.metrics.set_active(self.active());
                    self.wake();
                    return;
                }
                Err(e) => warn!(job = id, error = %e, "cannot record the end of the job"),
            }
            let event = match status {
                JobStatus::Succeeded => "job.completed",
                JobStatus::Cancelled => "job.cancelled",
                _ => "job.failed",
            };
            if let Ok(Some(done)) = self.store.get(id).await {
                self.webhooks
                    .emit(event, id, serde_json::to_value(&done).unwrap_or_default());
            }
            info!(job = id, status = status.as_str(), "job ended");
            if let Some(r) = self.running().remove(&id) {
                let end = Progress {
                    phase: status.as_str().to_string(),
                    ..r.progress
                };
                let _ = self.all.send((id, end.clone()));
                let _ = r.events.send(end);
            }
            self.metrics.set_active(self.active());
            self.metrics.job_ended(status);
            self.wake();
            self.sweep_partials().await;
        }.instrument(span));
    }

    /// Relays the progress of jobs running on other hypervisords (as they
    /// record it in the shared store, each second) to this one's progress
    /// streams, and their ends, while anyone listens; until `stop` fires.
    pub async fn watch_remote(self: Arc<Self>, stop: CancellationToken) {
        let mut seen: HashMap<i64, Option<String>> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.all.receiver_count() == 0 {
                seen.clear();
                continue;
            }
            let Ok(now) = self.store.running_elsewhere().await else {
                continue;
            };
            let now: HashMap<i64, Option<String>> = now.into_iter().collect();
            for (id, progress) in &now {
                if seen.get(id) == Some(progress) {
                    continue;
                }
                let p = progress
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<Progress>(p).ok())
                    .unwrap_or_else(|| Progress {
                        phase: "starting".into(),
                        ..Progress::default()
                    });
                let _ = self.all.send((*id, p));
            }
            for id in seen.keys().filter(|id| !now.contains_key(id)) {
                if self.progress(*id).is_some() {
                    continue;
                }
                if let Ok(Some(job)) = self.store.get(*id).await {
                    let phase = job.status.as_str().to_string();
                    let _ = self.all.send((
                        *id,
                        Progress {
                            phase,
                            ..Progress::default()
                        },
                    ));
                }
            }
            seen = now;
        }
    }

    /// Removes the partial exports of jobs over for longer than
    /// `partial_max_age_hours`.
    pub async fn sweep_partials(&self) {
        let age = chrono::Duration::hours(
            i64::try_from(self.config.partial_max_age_hours).unwrap_or(i64::MAX / 7200),
        );
        let before =
            (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let jobs = match self.store.stale_partials(before).await {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "cannot look for old partial exports");
                return;
            }
        };
        for job in jobs {
            let Some(p) = &job.partial else { continue };
            let message = match self.remove_partial(&job).await {
                Ok(()) => format!(
                    "partial export {} removed: kept {} hours after the job ended",
                    p.path, self.config.partial_max_age_hours
                ),
                Err(e) => format!("partial export not removed: {e}"),
            };
            info!(job = job.id, "{message}");
            if let Err(e) = self.store.clear_partial(job.id, message).await {
                warn!(job = job.id, error = %e, "cannot record the removal of a partial export");
            }
        }
    }

    /// Removes a job's recorded partial export: a `.NAME.partial`
    /// directory below the output root, or, for a job into a named sink, the
    /// uploads it kept open there (through the sink, which aborts them and
    /// drops their local state).
    pub async fn remove_partial(&self, job: &Job) -> Result<(), String> {
        let Some(p) = job.partial.clone() else {
            return Ok(());
        };
        if let (Some(name), Some(_)) = (&job.spec.sink, hypersdk::output_scheme(&p.path)) {
            let sink = self
                .job_sink(job)
                .ok_or_else(|| format!("its sink '{name}' is no longer usable; left alone"))?;
            let artifact = artifact_of(&p.path)
                .ok_or_else(|| format!("{} names no artifact; left alone", p.path))?;
            return sink
                .discard_partial(&artifact)
                .await
                .map(drop)
                .map_err(|e| format!("cannot discard {}: {e}", p.path));
        }
        let root = self.config.output_root.clone();
        tokio::task::spawn_blocking(move || crate::outputs::remove_partial(&root, &p).map(|_| ()))
            .await
            .map_err(|e| format!("removal task failed: {e}"))?
    }

    /// The report of a job whose previous run published its artifact but
    /// died before recording its end: the report was saved just before
    /// publishing, and the artifact is there.
    /// A kill between publishing and removing the staging area leaves that
    /// behind: it is removed.
    async fn published_before(&self, job: &Job) -> Option<hypersdk_core::ExportReport> {
        if job.attempts < 2 {
            return None;
        }
        let result = job.result.clone()?;
        let shown = result["location"].as_str()?.to_string();
        if let (Some(_), Some(sink)) = (hypersdk::output_scheme(&shown), self.job_sink(job)) {
            // In an object store: its artifact is listed there.
            let artifact = artifact_of(&shown)?;
            let name = artifact.name().to_string();
            let listed = sink.list(&name).await.ok()?;
            let there = match &artifact {
                hypersdk_core::Artifact::File(f) => listed.iter().any(|m| &m.path == f),
                hypersdk_core::Artifact::Directory(d) => {
                    listed.iter().any(|m| m.path.starts_with(&format!("{d}/")))
                }
            };
            if !there {
                return None;
            }
            let report: hypersdk_core::ExportReport = serde_json::from_value(result).ok()?;
            info!(job = job.id, location = %shown, "the previous run published this job's export before the daemon stopped; kept");
            if let Err(e) = sink.discard_partial(&artifact).await {
                warn!(job = job.id, error = %e, "cannot discard the uploads left behind");
            }
            return Some(report);
        }
        let location = PathBuf::from(&shown);
        if !location.exists() {
            return None;
        }
        let report: hypersdk_core::ExportReport = serde_json::from_value(result).ok()?;
        info!(job = job.id, location = %location.display(), "the previous run published this job's export before the daemon stopped; kept");
        if let (Some(dir), Some(name)) = (location.parent(), location.file_name()) {
            let artifact = hypersdk_core::Artifact::File(name.to_string_lossy().into_owned());
            if let Err(e) = LocalDirSink::new(dir).discard_partial(&artifact).await {
                warn!(job = job.id, error = %e, "cannot remove the partial export left behind");
            }
        }
        Some(report)
    }

    /// The export options of a job: its settings, with key files confined
    /// to `key_dirs` (read here, when the job runs) or a named key; a job
    /// always continues its own partial export.
    fn options(&self, spec: &crate::model::JobSpec) -> hypersdk_core::Result<ExportOptions> {
        let mut settings = spec.settings.clone();
        let roots = hypersdk_core::confine::PathRoots::new(
            &self.config.key_dirs,
            "key_dirs",
            "the daemon may read encryption and signing keys from",
        );
        for (what, file) in [
            ("encrypt_key_file", &mut settings.encrypt_key_file),
            (
                "encrypt_passphrase_file",
                &mut settings.encrypt_passphrase_file,
            ),
            ("sign_key_file", &mut settings.sign_key_file),
            ("sign_cert_file", &mut settings.sign_cert_file),
        ] {
            if let Some(f) = file.as_mut() {
                *f = roots.check(what, f).map_err(Error::InvalidArgument)?;
            }
        }
        let mut options = settings.to_options()?;
        if let Some(name) = &spec.encryption_key {
            let key = self.config.encryption_keys.get(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "encryption_key: no key named '{}' in the daemon's encryption_keys",
                    hypersdk_formats::error::display_name(name)
                ))
            })?;
            options.encryption = Some(key.key_source()?);
        }
        options.resume = true;
        options.shared_limiters.extend(self.shared_limit.clone());
        Ok(options)
    }

    async fn export(
        self: &Arc<Self>,
        job: &Job,
        fence: i64,
        lost: Arc<std::sync::atomic::AtomicBool>,
        cancel: CancellationToken,
        kept: Arc<Mutex<Option<String>>>,
    ) -> hypersdk_core::Result<hypersdk_core::ExportReport> {
        let spec = &job.spec;
        let options = self.options(spec)?;
        let sink: Box<dyn hypersdk_core::Sink> = match &spec.sink {
            Some(name) => self
                .config
                .sinks
                .get(name)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "sink: no sink named '{}' in the daemon's sinks",
                        hypersdk_formats::error::display_name(name)
                    ))
                })?
                .open(spec.output.as_deref(), self.config.uploads_dir())?,
            None => Box::new(self.local_output(spec).await?),
        };
        let provider = self.providers.get(&spec.provider).await?;
        let runner = self.clone();
        let id = job.id;
        let store = self.store.clone();
        let provider_name = spec.provider.clone();
        let sink_name = sink_label(spec).to_string();
        // Guest bytes of each disk already counted in the metrics.
        let counted: Mutex<std::collections::HashMap<usize, u64>> = Mutex::default();
        let last_saved: Mutex<Option<std::time::Instant>> = Mutex::default();
        let exporter = Exporter::new(options)
            .with_cancel(cancel)
            .before_publish(Arc::new(move |report| {
                let store = store.clone();
                let lost = lost.clone();
                let value = serde_json::to_value(report).unwrap_or_default();
                Box::pin(async move {
                    match store.save_result(id, fence, value).await {
                        Ok(true) => Ok(()),
                        // Fenced off: stop without publishing, and leave the
                        // partial export to the run that owns the job now.
                        Ok(false) => {
                            warn!(job = id, "not publishing: this run's lease is gone");
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            Err(Error::Cancelled)
                        }
                        Err(e) => Err(Error::Internal(format!(
                            "cannot record the export before publishing it: {e}"
                        ))),
                    }
                })
            }))
            .on_partial_kept(Arc::new(move |at| {
                *lock(&kept) = Some(at.to_string());
            }))
            .on_progress(Arc::new(move |e| {
                if matches!(
                    e.phase,
                    hypersdk_core::Phase::Disk | hypersdk_core::Phase::DiskDone
                ) {
                    let now = e.bytes_done.saturating_sub(e.bytes_resumed);
                    let delta = {
                        let mut c = lock(&counted);
                        let seen = c.entry(e.disk_index).or_default();
                        let d = now.saturating_sub(*seen);
                        *seen = (*seen).max(now);
                        d
                    };
                    if delta > 0 {
                        runner.metrics.read(&provider_name, &sink_name, delta);
                    }
                }
                let p = Progress {
                    phase: format!("{:?}", e.phase).to_lowercase(),
                    disk: e.disk.clone(),
                    disk_index: e.disk_index,
                    bytes_done: e.bytes_done,
                    bytes_total: e.bytes_total,
                    bytes_resumed: e.bytes_resumed,
                    rate_bps: e.rate_bps,
                    eta_secs: e.eta_secs,
                };
                if let Some(r) = runner.running().get_mut(&id) {
                    r.progress = p.clone();
                    let _ = r.events.send(p.clone());
                    let _ = runner.all.send((id, p.clone()));
                }
                if runner.store.shared() {
                    // For the other hypervisords' API, at most once a second.
                    let due = {
                        let mut last = lock(&last_saved);
                        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                        if due {
                            *last = Some(std::time::Instant::now());
                        }
                        due
                    };
                    if due {
                        if let (Ok(h), Ok(text)) = (
                            tokio::runtime::Handle::try_current(),
                            serde_json::to_string(&p),
                        ) {
                            let store = runner.store.clone();
                            h.spawn(async move {
                                let _ = store.save_progress(id, fence, text).await;
                            });
                        }
                    }
                }
                runner.webhooks.emit(
                    "job.progress",
                    id,
                    serde_json::json!({ "id": id, "progress": p }),
                );
            }));
        exporter
            .export(provider.as_ref(), &spec.vm, sink.as_ref())
            .await
    }

    /// The named sink a job writes into, if it names one that is configured.
    fn job_sink(&self, job: &Job) -> Option<Box<dyn Sink>> {
        let entry = self.config.sinks.get(job.spec.sink.as_ref()?)?;
        entry
            .open(job.spec.output.as_deref(), self.config.uploads_dir())
            .map_err(|e| warn!(job = job.id, error = %e, "cannot open the job's sink"))
            .ok()
    }

    /// Names of the configured sinks.
    pub fn sink_names(&self) -> Vec<String> {
        self.config.sinks.keys().cloned().collect()
    }

    /// A job's directory below the output root, as a sink.
    async fn local_output(
        &self,
        spec: &crate::model::JobSpec,
    ) -> hypersdk_core::Result<LocalDirSink> {
        let root = self.config.output_root.clone();
        let sub = spec.output.clone();
        let file_mode = self.config.file_mode();
        let out = tokio::task::spawn_blocking(move || {
            crate::outputs::job_dir(&root, sub.as_deref(), hypersdk_sinks::dir_mode(file_mode))
        })
        .await
        .map_err(|e| Error::Internal(format!("output directory task failed: {e}")))?
        .map_err(Error::InvalidArgument)?;
        Ok(LocalDirSink::new(out).with_file_mode(file_mode))
    }
}

/// The sink a job writes into, as the metrics label it: its name, or
/// `local` for the output root.
fn sink_label(spec: &crate::model::JobSpec) -> &str {
    spec.sink.as_deref().unwrap_or("local")
}

/// The artifact a sink destination names: `…/vm.ova` a file, `…/vm/` a
/// directory.
fn artifact_of(destination: &str) -> Option<hypersdk_core::Artifact> {
    let (name, dir) = match destination.strip_suffix('/') {
        Some(d) => (d.rsplit('/').next()?, true),
        None => (destination.rsplit('/').next()?, false),
    };
    if name.is_empty() {
        return None;
    }
    Some(if dir {
        hypersdk_core::Artifact::Directory(name.into())
    } else {
        hypersdk_core::Artifact::File(name.into())
    })
}
