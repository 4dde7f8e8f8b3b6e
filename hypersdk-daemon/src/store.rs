//! The job store: SQLite, embedded, in WAL mode with `synchronous=FULL`, so
//! a job whose submission was answered 201 survives a crash or kill -9.
//!
//! Tables: `jobs` (the full definition, status, times, attempts, result or
//! error), `job_events` (each job's status history and log lines) and
//! `audit` (every mutating API call: who, what, result). Calls run on the
//! blocking pool, one connection for writes and one for reads (WAL lets
//! readers proceed while a write commits).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Job, JobEvent, JobSpec, JobStatus};

/// A store error: what was being done, and SQLite's message.
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

/// The job store.
#[derive(Debug, Clone)]
pub struct Store {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
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
    c: &Connection,
    id: i64,
    at: &str,
    status: Option<JobStatus>,
    message: &str,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO job_events (job_id, at, status, message) VALUES (?1, ?2, ?3, ?4)",
        params![id, at, status.map(JobStatus::as_str), message],
    )
    .map(|_| ())
    .map_err(db_err("insert event"))
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn db_err(what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

/// The columns `job_from_row` reads, in order.
const JOB_COLUMNS: &str = "id, spec, status, submitted_by, created_at, started_at, finished_at, attempts, result, error, trace_parent, retryable, partial";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let spec: String = row.get(1)?;
    let status: String = row.get(2)?;
    let result: Option<String> = row.get(8)?;
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(Job {
        id: row.get(0)?,
        spec: serde_json::from_str::<JobSpec>(&spec).map_err(|e| bad(1, e.to_string()))?,
        status: status.parse().map_err(|e| bad(2, e))?,
        submitted_by: row.get(3)?,
        created_at: row.get(4)?,
        started_at: row.get(5)?,
        finished_at: row.get(6)?,
        attempts: row.get(7)?,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| bad(8, e.to_string()))?,
        error: row.get(9)?,
        progress: None,
        trace_parent: row.get(10)?,
        retryable: row.get::<_, i64>(11)? != 0,
        partial: row
            .get::<_, Option<String>>(12)?
            .and_then(|p| serde_json::from_str(&p).ok()),
    })
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

impl Store {
    /// Opens (creating) the database at `path`.
    ///
    /// The file (and SQLite's `-wal` and `-shm` files beside it) is made
    /// 0600: it holds webhook secrets and every job's definition.
    pub fn open(path: &Path) -> StoreResult<Store> {
        private_files(path)?;
        let open = |what: &str| -> StoreResult<Connection> {
            let c = Connection::open(path)
                .map_err(|e| StoreError(format!("cannot open {} ({what}): {e}", path.display())))?;
            c.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(db_err("busy timeout"))?;
            c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
                .map_err(db_err("pragmas"))?;
            Ok(c)
        };
        let mut writer = open("writer")?;
        crate::migrations::migrate(&mut writer)
            .map_err(|e| StoreError(format!("database {}: {e}", path.display())))?;
        let reader = open("reader")?;
        Ok(Store {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    async fn run<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = crate::lock(&conn);
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError(format!("store thread failed: {e}")))?
    }

    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        Self::run(&self.writer, f).await
    }

    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        Self::run(&self.reader, f).await
    }

    /// Inserts jobs in one transaction (all or none), queued.
    /// `trace_parent`: the submitting request's W3C `traceparent`, if traced.
    pub async fn insert(
        &self,
        specs: Vec<JobSpec>,
        who: String,
        trace_parent: Option<String>,
    ) -> StoreResult<Vec<Job>> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let at = now();
            let mut jobs = Vec::with_capacity(specs.len());
            for spec in specs {
                let text = serde_json::to_string(&spec)
                    .map_err(|e| StoreError(format!("encode job: {e}")))?;
                tx.execute(
                    "INSERT INTO jobs (spec, vm, provider, priority, status, submitted_by, created_at, trace_parent)
                     VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7)",
                    params![text, spec.vm, spec.provider, spec.priority.rank(), who, at, trace_parent],
                )
                .map_err(db_err("insert job"))?;
                let id = tx.last_insert_rowid();
                add_event(&tx, id, &at, Some(JobStatus::Queued), &format!("submitted by {who}"))?;
                jobs.push(Job {
                    id,
                    status: JobStatus::Queued,
                    spec,
                    submitted_by: who.clone(),
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
                });
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(jobs)
        })
        .await
    }

    /// One job.
    pub async fn get(&self, id: i64) -> StoreResult<Option<Job>> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
            .map_err(db_err("get job"))
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
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = filter.status {
                args.push(s.as_str().to_string());
                clauses.push(format!("status = ?{}", args.len()));
            }
            if let Some(p) = filter.provider {
                args.push(p);
                clauses.push(format!("provider = ?{}", args.len()));
            }
            if let Some(v) = filter.vm {
                args.push(v);
                clauses.push(format!("vm = ?{}", args.len()));
            }
            let filter_sql = if clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", clauses.join(" AND "))
            };
            let total: i64 = c
                .query_row(
                    &format!("SELECT COUNT(*) FROM jobs {filter_sql}"),
                    rusqlite::params_from_iter(args.iter()),
                    |r| r.get(0),
                )
                .map_err(db_err("count jobs"))?;
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs {filter_sql} ORDER BY id DESC LIMIT {limit} OFFSET {offset}"
                ))
                .map_err(db_err("list jobs"))?;
            let jobs = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), job_from_row)
                .map_err(db_err("list jobs"))?
                .collect::<rusqlite::Result<Vec<Job>>>()
                .map_err(db_err("read jobs"))?;
            Ok((jobs, total))
        })
        .await
    }

    /// Marks the next queued job running (highest priority, then oldest),
    /// skipping `busy` providers; None if there is none.
    pub async fn claim_next(&self, busy: Vec<String>) -> StoreResult<Option<Job>> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let placeholders: Vec<String> = (1..=busy.len()).map(|i| format!("?{i}")).collect();
            let skip = if busy.is_empty() {
                String::new()
            } else {
                format!("AND provider NOT IN ({})", placeholders.join(", "))
            };
            let next: Option<i64> = tx
                .query_row(
                    &format!(
                        "SELECT id FROM jobs WHERE status = 'queued' {skip} ORDER BY priority DESC, id LIMIT 1"
                    ),
                    rusqlite::params_from_iter(busy.iter()),
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err("pick job"))?;
            let Some(id) = next else {
                return Ok(None);
            };
            let at = now();
            tx.execute(
                "UPDATE jobs SET status = 'running', started_at = ?2, attempts = attempts + 1 WHERE id = ?1",
                params![id, at],
            )
            .map_err(db_err("start job"))?;
            add_event(&tx, id, &at, Some(JobStatus::Running), "started")?;
            let job = tx
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    [id],
                    job_from_row,
                )
                .map_err(db_err("read job"))?;
            tx.commit().map_err(db_err("commit"))?;
            Ok(Some(job))
        })
        .await
    }

    /// Ends a running job: its result or error, whether a retry may help,
    /// and the partial export it left.
    pub async fn finish(&self, id: i64, status: JobStatus, end: JobEnd) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let at = now();
            let JobEnd {
                result,
                error,
                retryable,
                partial,
            } = end;
            let result = result.map(|r| r.to_string());
            let partial = partial.and_then(|p| serde_json::to_string(&p).ok());
            tx.execute(
                "UPDATE jobs SET status = ?2, finished_at = ?3, result = ?4, error = ?5, retryable = ?6, partial = ?7 WHERE id = ?1",
                params![id, status.as_str(), at, result, error, retryable as i64, partial],
            )
            .map_err(db_err("finish job"))?;
            let message = match (&error, status) {
                (Some(e), _) => e.clone(),
                (None, s) => s.as_str().to_string(),
            };
            add_event(&tx, id, &at, Some(status), &message)?;
            tx.commit().map_err(db_err("commit"))
        })
        .await
    }

    /// Records the report of an export about to be published (the job
    /// stays running): after a crash before the job's end is recorded, the
    /// next start knows the artifact at its location is this job's.
    pub async fn save_result(&self, id: i64, result: serde_json::Value) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE jobs SET result = ?2 WHERE id = ?1",
                params![id, result.to_string()],
            )
            .map(|_| ())
            .map_err(db_err("save result"))
        })
        .await
    }

    /// Cancels a queued job; false if it is not queued (any more).
    pub async fn cancel_queued(&self, id: i64, who: String) -> StoreResult<bool> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let at = now();
            let n = tx
                .execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?2 WHERE id = ?1 AND status = 'queued'",
                    params![id, at],
                )
                .map_err(db_err("cancel job"))?;
            if n == 1 {
                add_event(&tx, id, &at, Some(JobStatus::Cancelled), &format!("cancelled by {who} before it started"))?;
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(n == 1)
        })
        .await
    }

    /// Queues a failed (for a cause that may pass) or cancelled job again,
    /// to continue from its checkpoint; false if it is not such a job.
    pub async fn retry(&self, id: i64, who: String) -> StoreResult<bool> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let at = now();
            let n = tx
                .execute(
                    "UPDATE jobs SET status = 'queued', finished_at = NULL, error = NULL, result = NULL, retryable = 0
                     WHERE id = ?1 AND ((status = 'failed' AND retryable = 1) OR status = 'cancelled')",
                    params![id],
                )
                .map_err(db_err("retry job"))?;
            if n == 1 {
                add_event(&tx, id, &at, Some(JobStatus::Queued), &format!("retry requested by {who}: it continues from its checkpoint"))?;
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(n == 1)
        })
        .await
    }

    /// Deletes a job that is over, with its log; false if there is no such
    /// job that is over.
    pub async fn delete_job(&self, id: i64) -> StoreResult<bool> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let n = tx
                .execute(
                    "DELETE FROM jobs WHERE id = ?1 AND status IN ('succeeded', 'failed', 'cancelled')",
                    params![id],
                )
                .map_err(db_err("delete job"))?;
            if n == 1 {
                tx.execute("DELETE FROM job_events WHERE job_id = ?1", params![id])
                    .map_err(db_err("delete job log"))?;
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(n == 1)
        })
        .await
    }

    /// Jobs over since before `before` (RFC 3339) that still record a
    /// partial export.
    pub async fn stale_partials(&self, before: String) -> StoreResult<Vec<Job>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE partial IS NOT NULL AND status IN ('failed', 'cancelled') AND finished_at < ?1"
                ))
                .map_err(db_err("find partial exports"))?;
            let rows = stmt
                .query_map([before], job_from_row)
                .map_err(db_err("find partial exports"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("find partial exports"))
        })
        .await
    }

    /// Forgets a job's partial export (removed), with a line in its log.
    pub async fn clear_partial(&self, id: i64, message: String) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            tx.execute("UPDATE jobs SET partial = NULL WHERE id = ?1", params![id])
                .map_err(db_err("clear partial"))?;
            add_event(&tx, id, &now(), None, &message)?;
            tx.commit().map_err(db_err("commit"))
        })
        .await
    }

    /// Puts jobs that were running when the daemon stopped back in the
    /// queue (they continue from their checkpoints); returns their ids.
    pub async fn requeue_interrupted(&self) -> StoreResult<Vec<i64>> {
        self.write(|c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let ids: Vec<i64> = {
                let mut stmt = tx
                    .prepare("SELECT id FROM jobs WHERE status = 'running'")
                    .map_err(db_err("find running jobs"))?;
                let rows = stmt
                    .query_map([], |r| r.get(0))
                    .map_err(db_err("find running jobs"))?;
                rows.collect::<rusqlite::Result<Vec<i64>>>()
                    .map_err(db_err("find running jobs"))?
            };
            let at = now();
            for id in &ids {
                tx.execute("UPDATE jobs SET status = 'queued' WHERE id = ?1", [id])
                    .map_err(db_err("requeue job"))?;
                add_event(&tx, *id, &at, Some(JobStatus::Queued), "the daemon stopped while this job ran: queued again, to continue from its checkpoint")?;
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(ids)
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
            let mut stmt = c
                .prepare("SELECT at, status, message FROM job_events WHERE job_id = ?1 ORDER BY id")
                .map_err(db_err("read events"))?;
            let rows = stmt
                .query_map([id], |r| {
                    let status: Option<String> = r.get(1)?;
                    Ok(JobEvent {
                        at: r.get(0)?,
                        status: status.and_then(|s| s.parse().ok()),
                        message: r.get(2)?,
                    })
                })
                .map_err(db_err("read events"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("read events"))
        })
        .await
    }

    /// Jobs per status.
    pub async fn counts(&self) -> StoreResult<Vec<(String, i64)>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .map_err(db_err("count jobs"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err("count jobs"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("count jobs"))
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
            c.execute(
                "INSERT INTO audit (at, who, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), who, method, path, status],
            )
            .map(|_| ())
            .map_err(db_err("audit"))
        })
        .await
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, limit: i64) -> StoreResult<Vec<serde_json::Value>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT at, who, method, path, status FROM audit ORDER BY id DESC LIMIT {limit}"
                ))
                .map_err(db_err("read audit"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(serde_json::json!({
                        "at": r.get::<_, String>(0)?,
                        "who": r.get::<_, String>(1)?,
                        "method": r.get::<_, String>(2)?,
                        "path": r.get::<_, String>(3)?,
                        "status": r.get::<_, i64>(4)?,
                    }))
                })
                .map_err(db_err("read audit"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("read audit"))
        })
        .await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(db_err("ping"))
        })
        .await
    }
}
