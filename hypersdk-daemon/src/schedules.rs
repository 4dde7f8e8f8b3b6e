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

use crate::args;
use crate::db::{Conn, Row};
use crate::store::{now, Store, StoreError, StoreResult};
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

fn from_row(r: &Row) -> StoreResult<Schedule> {
    Ok(Schedule {
        id: r.int(0)?,
        name: r.text(1)?,
        cron: r.text(2)?,
        timezone: r.text(3)?,
        job: serde_json::from_str(&r.text(4)?).unwrap_or(Value::Null),
        enabled: r.flag(5)?,
        created_at: r.text(6)?,
        next_run_at: r.opt_text(7)?,
        last_run_at: r.opt_text(8)?,
    })
}

fn insert_runs(c: &mut dyn Conn, id: i64, runs: &[ScheduleRun]) -> StoreResult<()> {
    for r in runs {
        c.exec(
            "record schedule run",
            "INSERT INTO schedule_runs (schedule_id, at, due_at, status, jobs, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![
                id,
                r.at.as_str(),
                r.due_at.as_deref(),
                r.status.as_str(),
                serde_json::to_string(&r.jobs).unwrap_or_default(),
                r.message.as_str()
            ],
        )?;
    }
    Ok(())
}

/// An occurrence of a schedule to fire: what it submits.
#[derive(Debug)]
pub struct Firing {
    /// The jobs of the template, resolved and checked.
    pub specs: Vec<crate::model::JobSpec>,
    /// Who submits them (`schedule:NAME`).
    pub who: String,
    /// When the occurrence was due.
    pub due_at: Option<String>,
}

impl Store {
    /// Adds a schedule; None if the name is taken.
    pub async fn add_schedule(
        &self,
        s: ScheduleSpec,
        next: Option<String>,
    ) -> StoreResult<Option<Schedule>> {
        self.write(move |c| {
            let row = c.row(
                "add schedule",
                &format!(
                    "INSERT INTO schedules (name, cron, timezone, job, enabled, created_at, next_run_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
                ),
                args![s.name, s.cron, s.timezone, s.job.to_string(), s.enabled, now(), next],
            )?;
            row.as_ref().map(from_row).transpose()
        })
        .await
    }

    /// Every schedule, or one.
    pub async fn schedules(&self, id: Option<i64>) -> StoreResult<Vec<Schedule>> {
        self.read(move |c| {
            let rows = match id {
                Some(id) => c.rows(
                    "list schedules",
                    &format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"),
                    args![id],
                )?,
                None => c.rows(
                    "list schedules",
                    &format!("SELECT {COLUMNS} FROM schedules ORDER BY id"),
                    &[],
                )?,
            };
            rows.iter().map(from_row).collect()
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
            c.exec(
                "update schedule",
                "UPDATE schedules SET enabled = ?2, next_run_at = ?3 WHERE id = ?1",
                args![id, enabled, next],
            )
            .map(drop)
        })
        .await
    }

    /// Deletes a schedule and its history; false if there was none.
    pub async fn delete_schedule(&self, id: i64) -> StoreResult<bool> {
        self.write(move |c| {
            c.tx(|c| {
                let n = c.exec(
                    "delete schedule",
                    "DELETE FROM schedules WHERE id = ?1",
                    args![id],
                )?;
                c.exec(
                    "delete schedule runs",
                    "DELETE FROM schedule_runs WHERE schedule_id = ?1",
                    args![id],
                )?;
                Ok(n == 1)
            })
        })
        .await
    }

    /// Records runs of a schedule made outside its timetable (a trigger).
    pub async fn record_runs(&self, id: i64, runs: Vec<ScheduleRun>, ran: bool) -> StoreResult<()> {
        self.write(move |c| {
            c.tx(|c| {
                insert_runs(c, id, &runs)?;
                if ran {
                    c.exec(
                        "update schedule",
                        "UPDATE schedules SET last_run_at = ?2 WHERE id = ?1",
                        args![id, now()],
                    )?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Fires the occurrences of schedule `id` due at `expected` (its
    /// `next_run_at` as read): moves it to `next`, records `runs` (missed
    /// occurrences) and inserts the jobs of `firing`, all in one
    /// transaction, and only if no other process moved it first. None when
    /// another did (so each occurrence fires once, however many processes
    /// share the store); else the jobs inserted.
    pub async fn fire_schedule(
        &self,
        id: i64,
        expected: String,
        next: Option<String>,
        mut runs: Vec<ScheduleRun>,
        firing: Option<Firing>,
    ) -> StoreResult<Option<Vec<crate::model::Job>>> {
        self.write(move |c| {
            c.tx(|c| {
                let moved = c.exec(
                    "move schedule",
                    "UPDATE schedules SET next_run_at = ?3 WHERE id = ?1 AND next_run_at = ?2",
                    args![id, expected, next],
                )?;
                if moved == 0 {
                    return Ok(None);
                }
                let mut jobs = Vec::new();
                if let Some(f) = firing {
                    jobs = crate::store::insert_jobs(c, f.specs, &f.who, None)?;
                    runs.push(ScheduleRun {
                        at: now(),
                        due_at: f.due_at,
                        status: "submitted".into(),
                        jobs: jobs.iter().map(|j| j.id).collect(),
                        message: "on schedule".into(),
                    });
                    c.exec(
                        "update schedule",
                        "UPDATE schedules SET last_run_at = ?2 WHERE id = ?1",
                        args![id, now()],
                    )?;
                }
                insert_runs(c, id, &runs)?;
                Ok(Some(jobs))
            })
        })
        .await
    }

    /// A schedule's history, oldest first.
    pub async fn schedule_runs(&self, id: i64) -> StoreResult<Vec<ScheduleRun>> {
        self.read(move |c| {
            c.rows(
                "read schedule runs",
                "SELECT at, due_at, status, jobs, message FROM schedule_runs WHERE schedule_id = ?1 ORDER BY id",
                args![id],
            )?
            .iter()
            .map(|r| {
                Ok(ScheduleRun {
                    at: r.text(0)?,
                    due_at: r.opt_text(1)?,
                    status: r.text(2)?,
                    jobs: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
                    message: r.text(4)?,
                })
            })
            .collect()
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
        let mut firing = None;
        if run_latest && !more {
            let who = format!("schedule:{}", s.name);
            match st.resolve(s.job.clone()).await {
                Ok(specs) => {
                    firing = Some(Firing {
                        specs,
                        who,
                        due_at: Some(rfc3339(latest)),
                    })
                }
                Err(e) => runs.push(ScheduleRun {
                    at: now(),
                    due_at: Some(rfc3339(latest)),
                    status: "failed".into(),
                    jobs: vec![],
                    message: e.to_string(),
                }),
            }
        }
        let next = when.next_after(t).map(rfc3339);
        let expected = s.next_run_at.clone().unwrap_or_default();
        if let Some(jobs) = st
            .store()
            .fire_schedule(s.id, expected, next, runs, firing)
            .await?
        {
            st.announce(&jobs);
        }
    }
    Ok(())
}
