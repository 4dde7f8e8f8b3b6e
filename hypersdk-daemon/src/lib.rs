//! hypervisord, the hypersdk job daemon: export jobs submitted over a REST
//! API, kept in an embedded SQLite store, run by a bounded worker pool.
//!
//! - [`config`]: the YAML configuration (listen address, database, output
//!   root, providers, concurrency bounds, API keys).
//! - [`store`]: jobs, their event logs and the audit log, in SQLite (WAL,
//!   `synchronous=FULL`): a job answered with 201 survives kill -9.
//! - [`runner`]: takes queued jobs by priority within the global and
//!   per-provider bounds and runs the [`hypersdk_core::Exporter`] with
//!   checkpoints and `resume`, so jobs running at a crash continue from
//!   their checkpoint when the daemon starts again.
//! - [`api`]: the routes under `/api/v1` (OpenAPI at
//!   `/api/v1/openapi.json`), `/health`, `/ready`, `/metrics`; API keys
//!   with roles; per-client rate limits; an audit log of every mutating
//!   call; [`serve`]: plain TCP or TLS.
//! - [`profiles`], [`schedules`], [`webhooks`]: named job options, cron
//!   schedules in a time zone (missed runs reported), signed job events
//!   with retries and a circuit breaker.
//! - [`outputs`]: job directories below the output root, walked without
//!   following links, and the partial exports failed jobs keep for a retry;
//!   [`egress`]: which addresses webhooks may reach (internal ones refused
//!   unless allow-listed, at registration and at every connection).
//! - [`telemetry`]: JSON logs, and OpenTelemetry traces over OTLP/HTTP
//!   (feature `otel`, on by default): a span per API request and per job run.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = hypersdk_daemon::config::Config::parse(
//!     "database: /tmp/jobs.db\noutput_root: /tmp/exports\nproviders:\n  kvm: { kind: local, dir: /etc/libvirt/qemu }\n",
//!     "inline",
//! )?;
//! let daemon = hypersdk_daemon::Daemon::start(config).await?;
//! println!("listening on {}", daemon.addr);
//! daemon.wait().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod db;
pub mod egress;
pub mod metrics;
pub mod migrations;
pub mod model;
pub mod outputs;
pub mod profiles;
pub mod runner;
pub mod schedules;
pub mod serve;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod ui;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use hypersdk_core::CancellationToken;

/// Locks `m`, taking the data over from a thread that panicked while
/// holding it (every value the daemon keeps under a lock stays valid).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the store `config` names: a SQLite file, or a PostgreSQL
/// database (connecting on the blocking pool).
pub async fn open_store(config: &config::Config) -> anyhow::Result<store::Store> {
    let options = store::OpenOptions {
        node: config.node_name(),
        lease: std::time::Duration::from_secs(config.lease_secs),
        ..store::OpenOptions::default()
    };
    let Some(url) = config.postgres_url() else {
        return Ok(store::Store::open_sqlite(&config.database, &options)?);
    };
    let target = db::PgTarget::parse(
        url,
        config.database_password_file.as_deref(),
        config.database_ca_file.as_deref(),
        &|k| std::env::var(k).ok(),
    )
    .map_err(|e| anyhow::anyhow!("database: {e}"))?;
    let store = store::Store::open_postgres(target, options).await?;
    tracing::info!(
        node = store.node(),
        owner = store.owner(),
        "job store: PostgreSQL, shared"
    );
    Ok(store)
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    stop: CancellationToken,
    runner: Arc<runner::Runner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Opens the store, queues again the jobs a previous run left running,
    /// binds the listener and starts serving and running jobs.
    pub async fn start(config: config::Config) -> anyhow::Result<Daemon> {
        config.check()?;
        let config = Arc::new(config);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(hypersdk_sinks::dir_mode(config.file_mode()))
                .create(&config.output_root)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create the output root {}: {e}",
                        config.output_root.display()
                    )
                })?;
        }
        let store = open_store(&config).await?;
        let requeued = store.requeue_interrupted().await?;
        if !requeued.is_empty() {
            tracing::info!(jobs = ?requeued, "jobs interrupted by the last shutdown queued again; they continue from their checkpoints");
        }
        let metrics = Arc::new(metrics::Metrics::default());
        let hooks =
            webhooks::Webhooks::start(store.clone(), config.webhooks.clone(), metrics.clone())
                .await?;
        let runner = runner::Runner::new(store.clone(), config.clone(), metrics.clone(), hooks);
        let submitter = Arc::new(submit::Submitter::new(store.clone(), runner.clone()));
        let state = Arc::new(api::AppState {
            store,
            submitter: submitter.clone(),
            runner: runner.clone(),
            metrics,
            config: config.clone(),
            buckets: Default::default(),
        });
        let tls = config.tls.as_ref().map(serve::acceptor).transpose()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app =
            api::router(state.clone()).into_make_service_with_connect_info::<serve::PeerAddr>();
        let s = stop.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move { s.cancelled().await };
            let served = match tls {
                Some(acceptor) => match serve::TlsListener::new(listener, acceptor) {
                    Ok(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
                    Err(e) => Err(e),
                },
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "the API server stopped");
            }
        });
        let worker = tokio::spawn(runner.clone().run(stop.clone()));
        let scheduler = tokio::spawn(schedules::run(submitter, stop.clone()));
        let mut tasks = vec![server, worker, scheduler];
        if runner.store().shared() {
            tasks.push(tokio::spawn(runner.clone().watch_remote(stop.clone())));
        }
        Ok(Daemon {
            addr,
            tls: config.tls.is_some(),
            stop,
            runner,
            tasks,
        })
    }

    /// Stops: no new jobs, running exports interrupted (they keep their
    /// checkpoints and stay `running` in the store, to continue at the next
    /// start), the server closed.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.runner.stop_all();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.runner.active() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // Shared store: the interrupted runs go back to the queue now, for
        // another hypervisord to continue (alone, the next start does it).
        if self.runner.store().shared() {
            match self.runner.store().release_own().await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(jobs = ?ids, "running jobs given back to the queue")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give running jobs back (their leases run out instead)")
                }
            }
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down.
    pub async fn wait(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async move {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}
