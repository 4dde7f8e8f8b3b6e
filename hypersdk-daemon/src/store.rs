//! The job store: embedded SQLite by default (a file, WAL mode with
//! `synchronous=FULL`, so a job whose submission was answered 201 survives a
//! crash or kill -9), or PostgreSQL (`database: postgres://…`), which
//! several hypervisord processes on different hosts share as one cluster.
//!
//! Tables: `jobs` (the full definition, status, times, attempts, result or
//! error, and who runs it: `owner`, `fence`, `lease_until`), `job_events`
//! (each job's status history and log lines) and `audit` (every mutating
//! API call: who, what, result). Calls run on the blocking pool (see
//! [`crate::db`]): one connection for writes and one or more for reads.
//!
//! **Claims, leases and fencing.** A process takes a queued job in one
//! transaction that counts the jobs running everywhere (per provider, and in
//! all) against the limits, picks the next job (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, under an advisory lock that serialises claims so two
//! processes never both take the last free slot of a provider), and marks
//! it running with its owner (`NODE#PROCESS`), a fencing token (`fence`,
//! one more at every claim) and a lease (`lease_until`, on the database's
//! clock). The owner renews its leases every third of the lease; a job
//! whose lease ran out is queued again by any process, and continues from
//! its checkpoint wherever it runs next. Publishing the artifact and
//! recording the end check owner and token first: a process that lost its
//! lease publishes nothing.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::args;
use crate::db::{Conn, Dialect, Row};
use crate::model::{Job, JobEvent, JobSpec, JobStatus};

/// A store error: what was being done, and the database's message.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

type Connect = Arc<dyn Fn() -> Result<Box<dyn Conn>, String> + Send + Sync>;

/// One connection, made again when it broke (PostgreSQL restarted).
struct Slot {
    conn: Mutex<Option<Box<dyn Conn>>>,
    connect: Option<Connect>,
}

impl Slot {
    fn new(conn: Box<dyn Conn>, connect: Option<Connect>) -> Slot {
        Slot {
            conn: Mutex::new(Some(conn)),
            connect,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> StoreResult<T>) -> StoreResult<T> {
        let mut guard = crate::lock(&self.conn);
        if guard.as_ref().is_none_or(|c| c.is_broken()) {
            *guard = None;
            let connect = self
                .connect
                .as_ref()
                .ok_or_else(|| StoreError("the database connection is closed".into()))?;
            *guard = Some(connect().map_err(|e| StoreError(format!("cannot connect again: {e}")))?);
        }
        match guard.as_mut() {
            Some(c) => f(c.as_mut()),
            None => Err(StoreError("no database connection".into())),
        }
    }
}

/// The job store.
#[derive(Clone)]
pub struct Store {
    writer: Arc<Slot>,
    readers: Arc<Vec<Slot>>,
    next_reader: Arc<AtomicUsize>,
    dialect: Dialect,
    node: Arc<str>,
    owner: Arc<str>,
    lease_ms: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect)
            .field("owner", &self.owner)
            .field("readers", &self.readers.len())
            .finish()
    }
}

/// Creates the database file 0600 if it is missing, and makes it and its
/// `-wal`/`-shm` companions 0600 if they exist with wider modes.
fn private_files(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| StoreError(format!("cannot create {}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let p = std::path::PathBuf::from(name);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_file() && m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| StoreError(format!("cannot make {} private: {e}", p.display())))?;
            }
        }
    }
    Ok(())
}

/// Adds a line to job `id`'s log, with the status it changed to if it did.
fn add_event(
    c: &mut dyn Conn,
    id: i64,
    at: &str,
    status: Option<JobStatus>,
    message: &str,
) -> StoreResult<()> {
    c.exec(
        "insert event",
        "INSERT INTO job_events (job_id, at, status, message) VALUES (?1, ?2, ?3, ?4)",
        args![id, at, status.map(JobStatus::as_str), message],
    )
    .map(drop)
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The columns `job_from_row` reads, in order.
const JOB_COLUMNS: &str = "id, spec, status, submitted_by, created_at, started_at, finished_at, attempts, result, error, trace_parent, retryable, partial, owner, progress";

fn job_from_row(row: &Row) -> StoreResult<Job> {
    let bad = |what: &str, e: String| StoreError(format!("job {what}: {e}"));
    Ok(Job {
        id: row.int(0)?,
        spec: serde_json::from_str::<JobSpec>(&row.text(1)?)
            .map_err(|e| bad("spec", e.to_string()))?,
        status: row.text(2)?.parse().map_err(|e| bad("status", e))?,
        submitted_by: row.text(3)?,
        created_at: row.text(4)?,
        started_at: row.opt_text(5)?,
        finished_at: row.opt_text(6)?,
        attempts: row.int(7)?,
        result: row
            .opt_text(8)?
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| bad("result", e.to_string()))?,
        error: row.opt_text(9)?,
        progress: row
            .opt_text(14)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        trace_parent: row.opt_text(10)?,
        retryable: row.flag(11)?,
        partial: row
            .opt_text(12)?
            .and_then(|p| serde_json::from_str(&p).ok()),
        node: row.opt_text(13)?,
    })
}

fn jobs_from_rows(rows: Vec<Row>) -> StoreResult<Vec<Job>> {
    rows.iter().map(job_from_row).collect()
}

/// A job taken to run: it, and the fencing token of this run.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The job (status running, owned by this process).
    pub job: Job,
    /// The token publishing and ending this run must still hold.
    pub fence: i64,
}

/// Concurrency limits counted over every process sharing the store.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Running jobs at most, all providers together (None: no limit).
    pub total: Option<usize>,
    /// Running jobs at most per provider.
    pub per_provider: Vec<(String, usize)>,
}

/// A lease renewed: the job, its token, and whether a cancel was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub id: i64,
    /// Its fencing token.
    pub fence: i64,
    /// A cancel was asked for (on any process).
    pub cancel: bool,
}

/// How a job ended, besides its status.
#[derive(Debug, Clone, Default)]
pub struct JobEnd {
    /// The export report, once succeeded.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether a retry may succeed.
    pub retryable: bool,
    /// The partial export kept for a retry.
    pub partial: Option<crate::outputs::PartialExport>,
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this VM.
    pub vm: Option<String>,
}

/// How an error about a reused idempotency key begins.
pub const KEY_REUSED: &str = "idempotency key";

/// The advisory lock claims take on PostgreSQL ("hypersdk" in ASCII).
const CLAIM_LOCK: i64 = 0x6879_7065_7273_646b;

/// How the store is reached and what this process is called in it.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// This hypervisord's name among those sharing the store.
    pub node: String,
    /// How long a claim holds a job without renewal.
    pub lease: std::time::Duration,
    /// Read connections (PostgreSQL; SQLite has one).
    pub readers: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            node: "local".into(),
            lease: std::time::Duration::from_secs(30),
            readers: 4,
        }
    }
}

impl Store {
    fn new(writer: Slot, readers: Vec<Slot>, dialect: Dialect, o: &OpenOptions) -> Store {
        let started = chrono::Utc::now().timestamp_millis();
        Store {
            writer: Arc::new(writer),
            readers: Arc::new(readers),
            next_reader: Arc::default(),
            dialect,
            node: o.node.as_str().into(),
            owner: format!("{}#{}.{started}", o.node, std::process::id()).into(),
            lease_ms: i64::try_from(o.lease.as_millis()).unwrap_or(i64::MAX / 4),
        }
    }

    /// Opens (creating) the SQLite database at `path`.
    ///
    /// The file (and SQLite's `-wal` and `-shm` files beside it) is made
    /// 0600: it holds webhook secrets and every job's definition.
    pub fn open(path: &Path) -> StoreResult<Store> {
        Self::open_sqlite(path, &OpenOptions::default())
    }

    /// Opens (creating) the SQLite database at `path`, as `o` says.
    pub fn open_sqlite(path: &Path, o: &OpenOptions) -> StoreResult<Store> {
        private_files(path)?;
        let open = |what: &str| -> StoreResult<rusqlite::Connection> {
            let c = rusqlite::Connection::open(path)
                .map_err(|e| StoreError(format!("cannot open {} ({what}): {e}", path.display())))?;
            c.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| StoreError(format!("busy timeout: {e}")))?;
            c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
                .map_err(|e| StoreError(format!("pragmas: {e}")))?;
            Ok(c)
        };
        let mut writer = open("writer")?;
        crate::migrations::migrate(&mut writer)
            .map_err(|e| StoreError(format!("database {}: {e}", path.display())))?;
        let reader = open("reader")?;
        Ok(Store::new(
            Slot::new(Box::new(writer), None),
            vec![Slot::new(Box::new(reader), None)],
            Dialect::Sqlite,
            o,
        ))
    }

    /// Connects to PostgreSQL (several processes may share it), migrating
    /// its schema under an advisory lock (on the blocking pool).
    pub async fn open_postgres(target: crate::db::PgTarget, o: OpenOptions) -> StoreResult<Store> {
        tokio::task::spawn_blocking(move || Self::connect_postgres(target, &o))
            .await
            .map_err(|e| StoreError(format!("store thread failed: {e}")))?
    }

    fn connect_postgres(target: crate::db::PgTarget, o: &OpenOptions) -> StoreResult<Store> {
        let target = Arc::new(target);
        let connect: Connect = {
            let t = target.clone();
            Arc::new(move || t.connect().map(|c| Box::new(c) as Box<dyn Conn>))
        };
        let mut writer = target
            .connect()
            .map_err(|e| StoreError(format!("cannot connect to {}: {e}", target.shown())))?;
        crate::migrations::migrate_postgres(&mut writer)
            .map_err(|e| StoreError(format!("database {}: {e}", target.shown())))?;
        let mut readers = Vec::new();
        for _ in 0..o.readers.max(1) {
            let c = target
                .connect()
                .map_err(|e| StoreError(format!("cannot connect to {}: {e}", target.shown())))?;
            readers.push(Slot::new(Box::new(c), Some(connect.clone())));
        }
        Ok(Store::new(
            Slot::new(Box::new(writer), Some(connect)),
            readers,
            Dialect::Postgres,
            o,
        ))
    }

    /// Whether other processes may share this store (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// This process's name in the `owner` of the jobs it runs.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// This hypervisord's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long a lease lasts, in milliseconds.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    async fn run<T: Send + 'static>(
        slot: Arc<Slot>,
        f: impl FnOnce(&mut dyn Conn) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        tokio::task::spawn_blocking(move || slot.with(f))
            .await
            .map_err(|e| StoreError(format!("store thread failed: {e}")))?
    }

    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        Self::run(self.writer.clone(), f).await
    }

    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.readers.clone();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // A free connection if there is one, else the next in turn.
            let n = readers.len();
            let pick = (0..n)
                .map(|k| (start + k) % n)
                .find(|&k| readers[k].conn.try_lock().is_ok())
                .unwrap_or(start % n);
            readers[pick].with(f)
        })
        .await
        .map_err(|e| StoreError(format!("store thread failed: {e}")))?
    }

    /// Inserts jobs in one transaction (all or none), queued.
    /// `trace_parent`: the submitting request's W3C `traceparent`, if traced.
    pub async fn insert(
        &self,
        specs: Vec<JobSpec>,
        who: String,
        trace_parent: Option<String>,
    ) -> StoreResult<Vec<Job>> {
        self.write(move |c| c.tx(|c| insert_jobs(c, specs, &who, trace_parent)))
            .await
    }

    /// Inserts jobs as [`insert`](Self::insert) does, unless `who` already
    /// submitted with idempotency `key`: then the jobs of that submission,
    /// and true (a replay). Keys are `who`'s own (another caller's same key
    /// is another submission); a replay with another number of jobs is
    /// refused.
    pub async fn insert_once(
        &self,
        specs: Vec<JobSpec>,
        who: String,
        trace_parent: Option<String>,
        key: String,
    ) -> StoreResult<(Vec<Job>, bool)> {
        // One key per job, and the one after: a replay must match in number.
        let keys: Vec<String> = (0..=specs.len())
            .map(|i| format!("{who}\n{key}#{i}"))
            .collect();
        let who2 = who.clone();
        let keys2 = keys.clone();
        let key2 = key.clone();
        let first = self
            .write(move |c| {
                c.tx(|c| {
                    if let Some(jobs) = find_submission(c, &keys2, &key2)? {
                        return Ok((jobs, true));
                    }
                    let jobs = insert_jobs(c, specs, &who2, trace_parent)?;
                    for (j, k) in jobs.iter().zip(&keys2[..keys2.len() - 1]) {
                        c.exec(
                            "record idempotency key",
                            "UPDATE jobs SET idempotency_key = ?2 WHERE id = ?1",
                            args![j.id, k.as_str()],
                        )?;
                    }
                    Ok((jobs, false))
                })
            })
            .await;
        match first {
            Ok(v) => Ok(v),
            // Another process inserted the same key meanwhile (unique
            // index): its submission is the one.
            Err(e) => self
                .read(move |c| find_submission(c, &keys, &key))
                .await?
                .map(|jobs| (jobs, true))
                .ok_or(e),
        }
    }

    /// One job.
    pub async fn get(&self, id: i64) -> StoreResult<Option<Job>> {
        self.read(move |c| {
            c.row(
                "get job",
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                args![id],
            )?
            .as_ref()
            .map(job_from_row)
            .transpose()
        })
        .await
    }

    /// Jobs matching `filter`, newest first, a page of `limit` from
    /// `offset`, and how many match in all.
    pub async fn list(
        &self,
        filter: JobFilter,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(Vec<Job>, i64)> {
        self.read(move |c| {
            let mut clauses = Vec::new();
            let mut values = Vec::new();
            if let Some(s) = filter.status {
                values.push(s.as_str().into());
                clauses.push(format!("status = ?{}", values.len()));
            }
            if let Some(p) = filter.provider {
                values.push(p.into());
                clauses.push(format!("provider = ?{}", values.len()));
            }
            if let Some(v) = filter.vm {
                values.push(v.into());
                clauses.push(format!("vm = ?{}", values.len()));
            }
            let filter_sql = if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            };
            let total = c
                .row(
                    "count jobs",
                    &format!("SELECT COUNT(*) FROM jobs {filter_sql}"),
                    &values,
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            let rows = c.rows(
                "list jobs",
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs {filter_sql} ORDER BY id DESC LIMIT {limit} OFFSET {offset}"
                ),
                &values,
            )?;
            Ok((jobs_from_rows(rows)?, total))
        })
        .await
    }

    /// Takes the next queued job to run here (highest priority, then
    /// oldest) if `limits`, counted over every process, leave room for it;
    /// None if there is none.
    pub async fn claim_next(&self, limits: Limits) -> StoreResult<Option<Claim>> {
        let owner = self.owner.clone();
        let lease = self.lease_ms;
        self.write(move |c| {
            c.tx(|c| {
                if c.dialect() == Dialect::Postgres {
                    c.exec("take the claim lock", "SELECT pg_advisory_xact_lock(?1)", args![CLAIM_LOCK])?;
                }
                let mut total = 0usize;
                let mut busy = Vec::new();
                let running = c.rows(
                    "count running jobs",
                    "SELECT provider, COUNT(*) FROM jobs WHERE status = 'running' GROUP BY provider",
                    &[],
                )?;
                for r in &running {
                    let (provider, n) = (r.text(0)?, usize::try_from(r.int(1)?).unwrap_or(0));
                    total += n;
                    if limits.per_provider.iter().any(|(p, max)| *p == provider && n >= *max) {
                        busy.push(provider);
                    }
                }
                if limits.total.is_some_and(|max| total >= max) {
                    return Ok(None);
                }
                let placeholders: Vec<String> = (1..=busy.len()).map(|i| format!("?{i}")).collect();
                let skip = if busy.is_empty() {
                    String::new()
                } else {
                    format!("AND provider NOT IN ({})", placeholders.join(", "))
                };
                let busy: Vec<crate::db::Value> = busy.into_iter().map(Into::into).collect();
                let sql = format!(
                    "SELECT id FROM jobs WHERE status = 'queued' {skip} ORDER BY priority DESC, id LIMIT 1{}",
                    c.skip_locked()
                );
                let Some(next) = c.row("pick job", &sql, &busy)? else {
                    return Ok(None);
                };
                let id = next.int(0)?;
                let at = now();
                let until = c.now_ms()? + lease;
                c.exec(
                    "start job",
                    "UPDATE jobs SET status = 'running', started_at = ?2, attempts = attempts + 1, owner = ?3,
                     fence = fence + 1, lease_until = ?4, cancel_requested = 0, progress = NULL WHERE id = ?1",
                    args![id, at.as_str(), &*owner, until],
                )?;
                let node = owner.split('#').next().unwrap_or_default();
                add_event(c, id, &at, Some(JobStatus::Running), &format!("started on {node}"))?;
                let row = c
                    .row(
                        "read job",
                        &format!("SELECT {JOB_COLUMNS}, fence FROM jobs WHERE id = ?1"),
                        args![id],
                    )?
                    .ok_or_else(|| StoreError(format!("job {id} vanished")))?;
                Ok(Some(Claim {
                    fence: row.int(15)?,
                    job: job_from_row(&row)?,
                }))
            })
        })
        .await
    }

    /// Renews the leases of every job this process runs; what it still
    /// holds (a job missing from the answer was taken from it).
    pub async fn renew_leases(&self) -> StoreResult<Vec<Lease>> {
        let owner = self.owner.clone();
        let lease = self.lease_ms;
        self.write(move |c| {
            let until = c.now_ms()? + lease;
            c.rows(
                "renew leases",
                "UPDATE jobs SET lease_until = ?1 WHERE owner = ?2 AND status = 'running'
                 RETURNING id, fence, cancel_requested",
                args![until, &*owner],
            )?
            .iter()
            .map(|r| {
                Ok(Lease {
                    id: r.int(0)?,
                    fence: r.int(1)?,
                    cancel: r.flag(2)?,
                })
            })
            .collect()
        })
        .await
    }

    /// Queues again the running jobs whose lease ran out (their process
    /// stopped, or lost the database); returns their ids.
    pub async fn reap_expired(&self) -> StoreResult<Vec<i64>> {
        self.write(move |c| {
            c.tx(|c| {
                let now_ms = c.now_ms()?;
                let sql = format!(
                    "SELECT id, owner FROM jobs WHERE status = 'running' AND lease_until < ?1{}",
                    c.skip_locked()
                );
                let rows = c.rows("find expired leases", &sql, args![now_ms])?;
                let at = now();
                let mut ids = Vec::new();
                for r in rows {
                    let id = r.int(0)?;
                    let owner = r.opt_text(1)?.unwrap_or_default();
                    c.exec(
                        "requeue job",
                        "UPDATE jobs SET status = 'queued', lease_until = NULL, progress = NULL WHERE id = ?1",
                        args![id],
                    )?;
                    add_event(
                        c,
                        id,
                        &at,
                        Some(JobStatus::Queued),
                        &format!(
                            "the lease of {owner} ran out (it stopped, or lost the database): \
                             queued again, to continue from its checkpoint"
                        ),
                    )?;
                    ids.push(id);
                }
                Ok(ids)
            })
        })
        .await
    }

    /// Asks the process running job `id` to cancel it (seen at its next
    /// lease renewal); false if the job does not run.
    pub async fn request_cancel(&self, id: i64, who: String) -> StoreResult<bool> {
        self.write(move |c| {
            c.tx(|c| {
                let n = c.exec(
                    "request cancel",
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'",
                    args![id],
                )?;
                if n == 1 {
                    add_event(c, id, &now(), None, &format!("cancel requested by {who}"))?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    /// Records a running job's progress for the other processes' API
    /// (only while this process still owns the run).
    pub async fn save_progress(&self, id: i64, fence: i64, progress: String) -> StoreResult<()> {
        let owner = self.owner.clone();
        self.write(move |c| {
            c.exec(
                "save progress",
                "UPDATE jobs SET progress = ?2 WHERE id = ?1 AND owner = ?3 AND fence = ?4 AND status = 'running'",
                args![id, progress, &*owner, fence],
            )
            .map(drop)
        })
        .await
    }

    /// Jobs running on other processes, with the progress they last
    /// recorded.
    pub async fn running_elsewhere(&self) -> StoreResult<Vec<(i64, Option<String>)>> {
        let owner = self.owner.clone();
        self.read(move |c| {
            c.rows(
                "list running jobs",
                "SELECT id, progress FROM jobs WHERE status = 'running' AND (owner IS NULL OR owner <> ?1)",
                args![&*owner],
            )?
            .iter()
            .map(|r| Ok((r.int(0)?, r.opt_text(1)?)))
            .collect()
        })
        .await
    }

    /// Ends a running job: its result or error, whether a retry may help,
    /// and the partial export it left. With `fence`, only if this process
    /// still holds that run (false otherwise: another took it over).
    pub async fn finish(
        &self,
        id: i64,
        status: JobStatus,
        end: JobEnd,
        fence: Option<i64>,
    ) -> StoreResult<bool> {
        let owner = self.owner.clone();
        self.write(move |c| {
            c.tx(|c| {
                let at = now();
                let JobEnd {
                    result,
                    error,
                    retryable,
                    partial,
                } = end;
                let result = result.map(|r| r.to_string());
                let partial = partial.and_then(|p| serde_json::to_string(&p).ok());
                let mut sql = String::from(
                    "UPDATE jobs SET status = ?2, finished_at = ?3, result = ?4, error = ?5, retryable = ?6,
                     partial = ?7, lease_until = NULL, progress = NULL WHERE id = ?1",
                );
                let mut values = args![
                    id,
                    status.as_str(),
                    at.as_str(),
                    result,
                    error.as_deref(),
                    retryable,
                    partial
                ]
                .to_vec();
                if let Some(f) = fence {
                    sql.push_str(" AND owner = ?8 AND fence = ?9 AND status = 'running'");
                    values.push((&*owner).into());
                    values.push(f.into());
                }
                if c.exec("finish job", &sql, &values)? == 0 {
                    return Ok(false);
                }
                let message = match (&error, status) {
                    (Some(e), _) => e.clone(),
                    (None, s) => s.as_str().to_string(),
                };
                add_event(c, id, &at, Some(status), &message)?;
                Ok(true)
            })
        })
        .await
    }

    /// Records the report of an export about to be published (the job
    /// stays running): after a crash before the job's end is recorded, the
    /// next start knows the artifact at its location is this job's.
    ///
    /// This is the fencing check: true only while this process holds run
    /// `fence` with a lease not yet run out, and then the lease is renewed,
    /// so the publishing that follows happens within a lease of the check.
    /// False: the run must not publish.
    pub async fn save_result(
        &self,
        id: i64,
        fence: i64,
        result: serde_json::Value,
    ) -> StoreResult<bool> {
        let owner = self.owner.clone();
        let lease = self.lease_ms;
        self.write(move |c| {
            let now_ms = c.now_ms()?;
            let n = c.exec(
                "save result",
                "UPDATE jobs SET result = ?2, lease_until = ?3 WHERE id = ?1 AND owner = ?4 AND fence = ?5
                 AND status = 'running' AND lease_until >= ?6",
                args![id, result.to_string(), now_ms + lease, &*owner, fence, now_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Cancels a queued job; false if it is not queued (any more).
    pub async fn cancel_queued(&self, id: i64, who: String) -> StoreResult<bool> {
        self.write(move |c| {
            c.tx(|c| {
                let at = now();
                let n = c.exec(
                    "cancel job",
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?2 WHERE id = ?1 AND status = 'queued'",
                    args![id, at.as_str()],
                )?;
                if n == 1 {
                    add_event(c, id, &at, Some(JobStatus::Cancelled), &format!("cancelled by {who} before it started"))?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    /// Queues a failed (for a cause that may pass) or cancelled job again,
    /// to continue from its checkpoint; false if it is not such a job.
    pub async fn retry(&self, id: i64, who: String) -> StoreResult<bool> {
        self.write(move |c| {
            c.tx(|c| {
                let n = c.exec(
                    "retry job",
                    "UPDATE jobs SET status = 'queued', finished_at = NULL, error = NULL, result = NULL, retryable = 0
                     WHERE id = ?1 AND ((status = 'failed' AND retryable = 1) OR status = 'cancelled')",
                    args![id],
                )?;
                if n == 1 {
                    add_event(c, id, &now(), Some(JobStatus::Queued), &format!("retry requested by {who}: it continues from its checkpoint"))?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    /// Deletes a job that is over, with its log; false if there is no such
    /// job that is over.
    pub async fn delete_job(&self, id: i64) -> StoreResult<bool> {
        self.write(move |c| {
            c.tx(|c| {
                let n = c.exec(
                    "delete job",
                    "DELETE FROM jobs WHERE id = ?1 AND status IN ('succeeded', 'failed', 'cancelled')",
                    args![id],
                )?;
                if n == 1 {
                    c.exec("delete job log", "DELETE FROM job_events WHERE job_id = ?1", args![id])?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    /// Jobs this node ran that are over since before `before` (RFC 3339)
    /// and still record a partial export (another node's partial exports
    /// may lie on its own disks: it sweeps them itself).
    pub async fn stale_partials(&self, before: String) -> StoreResult<Vec<Job>> {
        let mine = format!("{}#", self.node);
        self.read(move |c| {
            let rows = c.rows(
                "find partial exports",
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE partial IS NOT NULL AND status IN ('failed', 'cancelled')
                     AND finished_at < ?1 AND (owner IS NULL OR substr(owner, 1, length(?2)) = ?2)"
                ),
                args![before, mine],
            )?;
            jobs_from_rows(rows)
        })
        .await
    }

    /// Forgets a job's partial export (removed), with a line in its log.
    pub async fn clear_partial(&self, id: i64, message: String) -> StoreResult<()> {
        self.write(move |c| {
            c.tx(|c| {
                c.exec(
                    "clear partial",
                    "UPDATE jobs SET partial = NULL WHERE id = ?1",
                    args![id],
                )?;
                add_event(c, id, &now(), None, &message)
            })
        })
        .await
    }

    /// Puts jobs that were running when this node stopped back in the
    /// queue (they continue from their checkpoints); returns their ids.
    /// On SQLite that is every running job (one process owns the file); on
    /// PostgreSQL the jobs of earlier processes of this node (the others'
    /// run out their leases).
    pub async fn requeue_interrupted(&self) -> StoreResult<Vec<i64>> {
        let mine = format!("{}#", self.node);
        self.write(move |c| {
            c.tx(|c| {
                let sql = match c.dialect() {
                    Dialect::Sqlite => "SELECT id FROM jobs WHERE status = 'running' AND length(?1) > 0".to_string(),
                    Dialect::Postgres => format!(
                        "SELECT id FROM jobs WHERE status = 'running' AND substr(owner, 1, length(?1)) = ?1{}",
                        c.skip_locked()
                    ),
                };
                let ids = c
                    .rows("find running jobs", &sql, args![mine.as_str()])?
                    .iter()
                    .map(|r| r.int(0))
                    .collect::<StoreResult<Vec<i64>>>()?;
                let at = now();
                for id in &ids {
                    c.exec(
                        "requeue job",
                        "UPDATE jobs SET status = 'queued', lease_until = NULL, progress = NULL WHERE id = ?1",
                        args![*id],
                    )?;
                    add_event(c, *id, &at, Some(JobStatus::Queued), "the daemon stopped while this job ran: queued again, to continue from its checkpoint")?;
                }
                Ok(ids)
            })
        })
        .await
    }

    /// Gives back the runs this process holds (a shutdown interrupted
    /// them): queued again at once, for any process to continue.
    pub async fn release_own(&self) -> StoreResult<Vec<i64>> {
        let owner = self.owner.clone();
        self.write(move |c| {
            c.tx(|c| {
                let ids = c
                    .rows(
                        "release jobs",
                        "UPDATE jobs SET status = 'queued', lease_until = NULL, progress = NULL
                         WHERE owner = ?1 AND status = 'running' RETURNING id",
                        args![&*owner],
                    )?
                    .iter()
                    .map(|r| r.int(0))
                    .collect::<StoreResult<Vec<i64>>>()?;
                let at = now();
                for id in &ids {
                    add_event(
                        c,
                        *id,
                        &at,
                        Some(JobStatus::Queued),
                        "its hypervisord shut down: queued again, to continue from its checkpoint",
                    )?;
                }
                Ok(ids)
            })
        })
        .await
    }

    /// Adds a line to a job's log.
    pub async fn log(&self, id: i64, message: String) -> StoreResult<()> {
        self.write(move |c| add_event(c, id, &now(), None, &message))
            .await
    }

    /// A job's log, oldest first.
    pub async fn events(&self, id: i64) -> StoreResult<Vec<JobEvent>> {
        self.read(move |c| {
            c.rows(
                "read events",
                "SELECT at, status, message FROM job_events WHERE job_id = ?1 ORDER BY id",
                args![id],
            )?
            .iter()
            .map(|r| {
                Ok(JobEvent {
                    at: r.text(0)?,
                    status: r.opt_text(1)?.and_then(|s| s.parse().ok()),
                    message: r.text(2)?,
                })
            })
            .collect()
        })
        .await
    }

    /// Jobs per status.
    pub async fn counts(&self) -> StoreResult<Vec<(String, i64)>> {
        self.read(|c| {
            c.rows(
                "count jobs",
                "SELECT status, COUNT(*) FROM jobs GROUP BY status",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?)))
            .collect()
        })
        .await
    }

    /// Records a mutating API call.
    pub async fn audit(
        &self,
        who: String,
        method: String,
        path: String,
        status: u16,
    ) -> StoreResult<()> {
        self.write(move |c| {
            c.exec(
                "audit",
                "INSERT INTO audit (at, who, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![now(), who, method, path, status],
            )
            .map(drop)
        })
        .await
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, limit: i64) -> StoreResult<Vec<serde_json::Value>> {
        self.read(move |c| {
            c.rows(
                "read audit",
                &format!("SELECT at, who, method, path, status FROM audit ORDER BY id DESC LIMIT {limit}"),
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "at": r.text(0)?,
                    "who": r.text(1)?,
                    "method": r.text(2)?,
                    "path": r.text(3)?,
                    "status": r.int(4)?,
                }))
            })
            .collect()
        })
        .await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.row("ping", "SELECT 1", &[]).map(drop))
            .await
    }
}

/// The jobs of an earlier submission with idempotency `keys` (one per job,
/// then the one after the last), if there was one.
fn find_submission(c: &mut dyn Conn, keys: &[String], key: &str) -> StoreResult<Option<Vec<Job>>> {
    let Some((last, each)) = keys.split_last() else {
        return Ok(None);
    };
    let mut jobs = Vec::new();
    for k in each {
        match c.row(
            "find submission",
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?1"),
            args![k.as_str()],
        )? {
            Some(r) => jobs.push(job_from_row(&r)?),
            None => break,
        }
    }
    if jobs.is_empty() {
        return Ok(None);
    }
    let more = c
        .row(
            "find submission",
            "SELECT id FROM jobs WHERE idempotency_key = ?1",
            args![last.as_str()],
        )?
        .is_some();
    if jobs.len() != each.len() || more {
        return Err(StoreError(format!(
            "{KEY_REUSED} {key:?} was used for a submission of another number of jobs"
        )));
    }
    Ok(Some(jobs))
}

/// Inserts queued jobs (in the caller's transaction).
pub(crate) fn insert_jobs(
    c: &mut dyn Conn,
    specs: Vec<JobSpec>,
    who: &str,
    trace_parent: Option<String>,
) -> StoreResult<Vec<Job>> {
    let at = now();
    let mut jobs = Vec::with_capacity(specs.len());
    for spec in specs {
        let text =
            serde_json::to_string(&spec).map_err(|e| StoreError(format!("encode job: {e}")))?;
        let id = c
            .row(
                "insert job",
                "INSERT INTO jobs (spec, vm, provider, priority, status, submitted_by, created_at, trace_parent)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7) RETURNING id",
                args![
                    text,
                    spec.vm.as_str(),
                    spec.provider.as_str(),
                    spec.priority.rank(),
                    who,
                    at.as_str(),
                    trace_parent.as_deref()
                ],
            )?
            .ok_or_else(|| StoreError("insert job: no id".into()))?
            .int(0)?;
        add_event(
            c,
            id,
            &at,
            Some(JobStatus::Queued),
            &format!("submitted by {who}"),
        )?;
        jobs.push(Job {
            id,
            status: JobStatus::Queued,
            spec,
            submitted_by: who.to_string(),
            created_at: at.clone(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            result: None,
            error: None,
            progress: None,
            trace_parent: trace_parent.clone(),
            retryable: false,
            partial: None,
            node: None,
        });
    }
    Ok(jobs)
}
