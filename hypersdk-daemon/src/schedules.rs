//! Schedules: a cron expression in a time zone that submits a job template
//! (one job or a list, which may name a profile).
//!
//! ```yaml
//! # POST /api/v1/schedules
//! name: nightly-web
//! cron: "30 1 * * MON-FRI"      # minute hour day month weekday; a 6th leading field is seconds
//! timezone: Europe/Berlin       # IANA name; default UTC
//! job: { vm: web-01, profile: nightly, output: nightly }
//! ```
//!
//! The scheduler looks every second for schedules that are due. An
//! occurrence is run if it is found within [`GRACE`] of its time; older
//! ones — the daemon was down, or the machine asleep — are recorded in the
//! schedule's run history as `missed` (each, up to [`MAX_MISSED`] listed),
//! not run and not dropped silently. Each run records the jobs it submitted,
//! or why it could not (e.g. its profile was deleted).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::{db_err, now, Store, StoreError, StoreResult};
use crate::submit::Submitter;

/// How late an occurrence may be found and still run.
pub const GRACE: Duration = Duration::from_secs(60);

/// Most missed occurrences listed one by one per check.
pub const MAX_MISSED: usize = 100;

/// A new schedule (JSON or YAML). Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// Cron expression: `minute hour day-of-month month day-of-week`, with an
    /// optional leading seconds field.
    pub cron: String,
    /// IANA time zone the expression is read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The job template: one job or a list (may name a profile).
    #[schema(value_type = Object)]
    pub job: Value,
    /// Whether it runs (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// Time zone.
    pub timezone: String,
    /// The job template.
    #[schema(value_type = Object)]
    pub job: Value,
    /// Whether it runs.
    pub enabled: bool,
    /// When it was made.
    pub created_at: String,
    /// Its next occurrence (UTC), if enabled.
    pub next_run_at: Option<String>,
    /// When it last ran.
    pub last_run_at: Option<String>,
}

/// One entry of a schedule's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRun {
    /// When it was recorded.
    pub at: String,
    /// The occurrence it is for (none for a manual trigger).
    pub due_at: Option<String>,
    /// submitted, missed or failed.
    pub status: String,
    /// Jobs submitted.
    pub jobs: Vec<i64>,
    /// Details.
    pub message: String,
}

/// A parsed cron expression and time zone.
#[derive(Debug, Clone)]
pub struct When {
    cron: Cron,
    tz: chrono_tz::Tz,
}

impl When {
    /// Parses `cron` and `timezone`; the message names the field.
    pub fn parse(cron: &str, timezone: &str) -> Result<When, String> {
        let c = Cron::from_str(cron)
            .map_err(|e| format!("cron: '{cron}' is not a valid cron expression: {e}"))?;
        let tz = chrono_tz::Tz::from_str(timezone)
            .map_err(|_| format!("timezone: unknown time zone '{timezone}' (an IANA name such as Europe/Berlin or UTC)"))?;
        Ok(When { cron: c, tz })
    }

    /// The first occurrence after `t` (strictly).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

const COLUMNS: &str =
    "id, name, cron, timezone, job, enabled, created_at, next_run_at, last_run_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Schedule> {
    let job: String = r.get(4)?;
    Ok(Schedule {
        id: r.get(0)?,
        name: r.get(1)?,
        cron: r.get(2)?,
        timezone: r.get(3)?,
        job: serde_json::from_str(&job).unwrap_or(Value::Null),
        enabled: r.get::<_, i64>(5)? != 0,
        created_at: r.get(6)?,
        next_run_at: r.get(7)?,
        last_run_at: r.get(8)?,
    })
}

impl Store {
    /// Adds a schedule; None if the name is taken.
    pub async fn add_schedule(
        &self,
        s: ScheduleSpec,
        next: Option<String>,
    ) -> StoreResult<Option<Schedule>> {
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO schedules (name, cron, timezone, job, enabled, created_at, next_run_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![s.name, s.cron, s.timezone, s.job.to_string(), s.enabled as i64, now(), next],
                )
                .map_err(db_err("add schedule"))?;
            if n == 0 {
                return Ok(None);
            }
            let id = c.last_insert_rowid();
            c.query_row(&format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"), [id], from_row)
                .map(Some)
                .map_err(db_err("read schedule"))
        })
        .await
    }

    /// Every schedule, or one.
    pub async fn schedules(&self, id: Option<i64>) -> StoreResult<Vec<Schedule>> {
        self.read(move |c| {
            let (sql, args): (String, Vec<i64>) = match id {
                Some(id) => (
                    format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"),
                    vec![id],
                ),
                None => (
                    format!("SELECT {COLUMNS} FROM schedules ORDER BY id"),
                    vec![],
                ),
            };
            let mut stmt = c.prepare(&sql).map_err(db_err("list schedules"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), from_row)
                .map_err(db_err("list schedules"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("list schedules"))
        })
        .await
    }

    /// Enables (with its next occurrence) or disables a schedule.
    pub async fn set_schedule_enabled(
        &self,
        id: i64,
        enabled: bool,
        next: Option<String>,
    ) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE schedules SET enabled = ?2, next_run_at = ?3 WHERE id = ?1",
                rusqlite::params![id, enabled as i64, next],
            )
            .map(|_| ())
            .map_err(db_err("update schedule"))
        })
        .await
    }

    /// Deletes a schedule and its history; false if there was none.
    pub async fn delete_schedule(&self, id: i64) -> StoreResult<bool> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            let n = tx
                .execute("DELETE FROM schedules WHERE id = ?1", [id])
                .map_err(db_err("delete schedule"))?;
            tx.execute("DELETE FROM schedule_runs WHERE schedule_id = ?1", [id])
                .map_err(db_err("delete schedule runs"))?;
            tx.commit().map_err(db_err("commit"))?;
            Ok(n == 1)
        })
        .await
    }

    /// Records runs of a schedule and moves its next occurrence.
    pub async fn record_runs(
        &self,
        id: i64,
        runs: Vec<ScheduleRun>,
        next: Option<String>,
        ran: bool,
    ) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction().map_err(db_err("begin"))?;
            for r in &runs {
                tx.execute(
                    "INSERT INTO schedule_runs (schedule_id, at, due_at, status, jobs, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![id, r.at, r.due_at, r.status, serde_json::to_string(&r.jobs).unwrap_or_default(), r.message],
                )
                .map_err(db_err("record schedule run"))?;
            }
            if ran {
                tx.execute("UPDATE schedules SET last_run_at = ?2 WHERE id = ?1", rusqlite::params![id, now()])
                    .map_err(db_err("update schedule"))?;
            }
            tx.execute("UPDATE schedules SET next_run_at = ?2 WHERE id = ?1", rusqlite::params![id, next])
                .map_err(db_err("update schedule"))?;
            tx.commit().map_err(db_err("commit"))
        })
        .await
    }

    /// A schedule's history, oldest first.
    pub async fn schedule_runs(&self, id: i64) -> StoreResult<Vec<ScheduleRun>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare("SELECT at, due_at, status, jobs, message FROM schedule_runs WHERE schedule_id = ?1 ORDER BY id")
                .map_err(db_err("read schedule runs"))?;
            let rows = stmt
                .query_map([id], |r| {
                    let jobs: String = r.get(3)?;
                    Ok(ScheduleRun {
                        at: r.get(0)?,
                        due_at: r.get(1)?,
                        status: r.get(2)?,
                        jobs: serde_json::from_str(&jobs).unwrap_or_default(),
                        message: r.get(4)?,
                    })
                })
                .map_err(db_err("read schedule runs"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err("read schedule runs"))
        })
        .await
    }
}

/// Submits a schedule's job template now; the run record says what came
/// of it.
pub async fn submit(
    sub: &Submitter,
    s: &Schedule,
    due: Option<DateTime<Utc>>,
    why: &str,
) -> ScheduleRun {
    let at = now();
    let due_at = due.map(rfc3339);
    match sub
        .submit(s.job.clone(), format!("schedule:{}", s.name))
        .await
    {
        Ok(jobs) => ScheduleRun {
            at,
            due_at,
            status: "submitted".into(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            message: why.to_string(),
        },
        Err(e) => ScheduleRun {
            at,
            due_at,
            status: "failed".into(),
            jobs: vec![],
            message: e.to_string(),
        },
    }
}

/// Runs due schedules until `stop` fires.
pub async fn run(st: Arc<Submitter>, stop: hypersdk_core::CancellationToken) {
    loop {
        if let Err(e) = tick(&st, Utc::now()).await {
            tracing::warn!(error = %e, "scheduler check failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One check at time `t`.
async fn tick(st: &Submitter, t: DateTime<Utc>) -> Result<(), StoreError> {
    for s in st.store().schedules(None).await? {
        let Some(next) = s.next_run_at.as_deref().and_then(parse_time) else {
            continue;
        };
        if !s.enabled || next > t {
            continue;
        }
        let Ok(when) = When::parse(&s.cron, &s.timezone) else {
            continue;
        };
        // Every occurrence from `next` up to `t`.
        let mut due = vec![next];
        let mut more = false;
        loop {
            match when.next_after(*due.last().unwrap_or(&next)) {
                Some(d) if d <= t && due.len() > MAX_MISSED => {
                    more = true;
                    break;
                }
                Some(d) if d <= t => due.push(d),
                _ => break,
            }
        }
        let latest = *due.last().unwrap_or(&next);
        let late = (t - latest).to_std().unwrap_or_default();
        let mut runs = Vec::new();
        let run_latest = late <= GRACE;
        let missed = if run_latest {
            &due[..due.len() - 1]
        } else {
            &due[..]
        };
        for d in missed {
            runs.push(ScheduleRun {
                at: now(),
                due_at: Some(rfc3339(*d)),
                status: "missed".into(),
                jobs: vec![],
                message: "not run: the daemon was not running (or checking) at this time".into(),
            });
        }
        if more {
            runs.push(ScheduleRun {
                at: now(),
                due_at: None,
                status: "missed".into(),
                jobs: vec![],
                message: format!(
                    "not run: more occurrences after {} up to {} (only the first {MAX_MISSED} are listed)",
                    rfc3339(latest),
                    rfc3339(t)
                ),
            });
        }
        if run_latest && !more {
            runs.push(submit(st, &s, Some(latest), "on schedule").await);
        }
        let next = when.next_after(t).map(rfc3339);
        st.store()
            .record_runs(s.id, runs, next, run_latest && !more)
            .await?;
    }
    Ok(())
}
