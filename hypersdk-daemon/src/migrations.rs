//! The job store's schema as numbered migrations. A database records the
//! last one applied in SQLite's `user_version`; opening it applies the
//! ones after that, each in its own transaction. A database from before
//! numbering (version 0 with tables) is placed by the columns it has. A
//! database of a newer hypervisord (a version this one does not know) is
//! refused rather than guessed at. Add a step at the end; never edit one.

use rusqlite::Connection;

/// The steps, in order: (what it does, SQL). Step N sets `user_version` N.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "jobs, job events, profiles, schedules, webhooks, the audit log",
        "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    vm TEXT NOT NULL,
    provider TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, id);
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    status TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    job TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    next_run_at TEXT,
    last_run_at TEXT
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id INTEGER NOT NULL,
    at TEXT NOT NULL,
    due_at TEXT,
    status TEXT NOT NULL,
    jobs TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS schedule_runs_schedule ON schedule_runs (schedule_id, id);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id INTEGER NOT NULL,
    delivery TEXT NOT NULL,
    event TEXT NOT NULL,
    job_id INTEGER,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    status INTEGER,
    ok INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL
)
",
    ),
    (
        "jobs keep the trace that submitted them",
        "ALTER TABLE jobs ADD COLUMN trace_parent TEXT;",
    ),
    (
        "jobs say whether a failure may pass on a retry",
        "ALTER TABLE jobs ADD COLUMN retryable INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        "jobs keep the place of their partial export, indexed for the age sweep",
        "ALTER TABLE jobs ADD COLUMN partial TEXT;
         CREATE INDEX IF NOT EXISTS jobs_partial ON jobs (finished_at) WHERE partial IS NOT NULL;",
    ),
];

fn has_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// The version of a database made before migrations were numbered.
fn placed(c: &Connection) -> rusqlite::Result<usize> {
    let tables: i64 = c.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        return Ok(0);
    }
    let mut v = 1;
    for (step, column) in [(2, "trace_parent"), (3, "retryable"), (4, "partial")] {
        if has_column(c, "jobs", column)? {
            v = step;
        } else {
            break;
        }
    }
    Ok(v)
}

/// Brings the database up to the last migration; returns the version it
/// had and the one it has.
pub fn migrate(c: &mut Connection) -> Result<(usize, usize), String> {
    let err = |what: &str, e: rusqlite::Error| format!("{what}: {e}");
    let recorded: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err("read the schema version", e))?;
    let mut version = usize::try_from(recorded).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(format!(
            "the database has schema version {recorded}, newer than this hypervisord knows ({}): \
             it was used by a newer hypervisord; run that one, or restore a backup",
            MIGRATIONS.len()
        ));
    }
    if version == 0 {
        version = placed(c).map_err(|e| err("read the schema", e))?;
    }
    let from = version;
    for (i, (what, sql)) in MIGRATIONS.iter().enumerate().skip(version) {
        let step = i + 1;
        let tx = c
            .transaction()
            .map_err(|e| err(&format!("migration {step} ({what})"), e))?;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", step as i64))
            .and_then(|()| tx.commit())
            .map_err(|e| err(&format!("migration {step} ({what})"), e))?;
        tracing::info!(step, what, "database schema migrated");
        version = step;
    }
    if from == version && recorded == 0 && version > 0 {
        // Placed by its columns: record where it stands.
        c.pragma_update(None, "user_version", version as i64)
            .map_err(|e| err("record the schema version", e))?;
    }
    Ok((from, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_every_step() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c).unwrap(), (0, MIGRATIONS.len()));
        assert_eq!(version(&c), MIGRATIONS.len() as i64);
        assert!(has_column(&c, "jobs", "partial").unwrap());
        assert_eq!(
            migrate(&mut c).unwrap(),
            (MIGRATIONS.len(), MIGRATIONS.len())
        );
    }

    #[test]
    fn a_database_from_before_numbering_is_placed_by_its_columns_and_upgraded() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(MIGRATIONS[0].1).unwrap();
        c.execute_batch(MIGRATIONS[1].1).unwrap();
        c.execute(
            "INSERT INTO jobs (spec, vm, provider, priority, status, submitted_by, created_at) \
             VALUES ('{}', 'v', 'p', 1, 'queued', 'x', 'now')",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut c).unwrap(), (2, MIGRATIONS.len()));
        assert!(has_column(&c, "jobs", "retryable").unwrap());
        let kept: i64 = c
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "migrations keep the data");
    }

    #[test]
    fn a_database_of_a_newer_daemon_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        let e = migrate(&mut c).unwrap_err();
        assert!(
            e.contains("schema version 99") && e.contains("newer"),
            "{e}"
        );
    }
}
