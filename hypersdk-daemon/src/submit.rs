//! Submitting jobs: the one path by which API calls and schedules queue
//! work — resolve each job against its profile, check it, store it, announce
//! it (webhooks) and wake the runner.

use std::sync::Arc;

use crate::model::{Job, JobSpec};
use crate::runner::Runner;
use crate::store::{Store, StoreError};

/// Most jobs one submission may hold.
pub const MAX_BATCH: usize = 1000;

/// Why a submission was refused.
#[derive(Debug)]
pub enum SubmitError {
    /// A job is malformed or invalid; the message names the job and field.
    Invalid(String),
    /// More jobs than [`MAX_BATCH`] at once.
    TooMany(String),
    /// An idempotency key reused for another submission.
    Conflict(String),
    /// The store failed.
    Store(StoreError),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Invalid(m) | SubmitError::TooMany(m) | SubmitError::Conflict(m) => {
                f.write_str(m)
            }
            SubmitError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Queues jobs.
#[derive(Debug, Clone)]
pub struct Submitter {
    store: Store,
    runner: Arc<Runner>,
}

impl Submitter {
    /// A submitter over `store` whose jobs `runner` runs.
    pub fn new(store: Store, runner: Arc<Runner>) -> Self {
        Submitter { store, runner }
    }

    /// The job store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A submission's jobs: one job (an object) or a list, each resolved
    /// against its profile and checked; messages name the job and the field.
    pub async fn resolve(&self, value: serde_json::Value) -> Result<Vec<JobSpec>, SubmitError> {
        let (items, batch) = match value {
            serde_json::Value::Array(items) => {
                if items.is_empty() {
                    return Err(SubmitError::Invalid("an empty list of jobs".into()));
                }
                if items.len() > MAX_BATCH {
                    return Err(SubmitError::TooMany(format!(
                        "{} jobs in one submission; at most {MAX_BATCH}",
                        items.len()
                    )));
                }
                (items, true)
            }
            v @ serde_json::Value::Object(_) => (vec![v], false),
            _ => {
                return Err(SubmitError::Invalid(
                    "expected a job (an object) or a list of jobs".into(),
                ))
            }
        };
        let providers = self.runner.providers.names();
        let sinks = self.runner.sink_names();
        let mut specs = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let spec = crate::profiles::resolve(&self.store, item, &providers)
                .await
                .and_then(|spec| match &spec.sink {
                    Some(s) if !sinks.contains(s) => Err(format!(
                        "sink: unknown sink '{}' (configured: {})",
                        hypersdk_formats::error::display_name(s),
                        if sinks.is_empty() {
                            "none".to_string()
                        } else {
                            sinks.join(", ")
                        }
                    )),
                    _ => Ok(spec),
                })
                .map_err(|e| {
                    SubmitError::Invalid(if batch {
                        format!("job {}: {e}", i + 1)
                    } else {
                        format!("job: {e}")
                    })
                })?;
            specs.push(spec);
        }
        Ok(specs)
    }

    /// Resolves, stores and announces a submission by `by`.
    pub async fn submit(
        &self,
        value: serde_json::Value,
        by: String,
    ) -> Result<Vec<Job>, SubmitError> {
        let specs = self.resolve(value).await?;
        let jobs = self
            .store
            .insert(specs, by, crate::telemetry::current_traceparent())
            .await
            .map_err(SubmitError::Store)?;
        self.announce(&jobs);
        Ok(jobs)
    }

    /// Resolves and stores a submission by `by` made with idempotency
    /// `key`, once: submitted again with the same key, the jobs of the first
    /// submission come back (true: a replay) and nothing new is queued.
    pub async fn submit_once(
        &self,
        value: serde_json::Value,
        by: String,
        key: String,
    ) -> Result<(Vec<Job>, bool), SubmitError> {
        let specs = self.resolve(value).await?;
        let (jobs, replayed) = self
            .store
            .insert_once(specs, by, crate::telemetry::current_traceparent(), key)
            .await
            .map_err(|e| {
                if e.0.starts_with(crate::store::KEY_REUSED) {
                    SubmitError::Conflict(e.0)
                } else {
                    SubmitError::Store(e)
                }
            })?;
        if !replayed {
            self.announce(&jobs);
        }
        Ok((jobs, replayed))
    }

    /// Announces new jobs (webhooks) and wakes the runner.
    pub fn announce(&self, jobs: &[Job]) {
        for j in jobs {
            self.runner.webhooks.emit(
                "job.created",
                j.id,
                serde_json::to_value(j).unwrap_or_default(),
            );
        }
        self.runner.wake();
    }
}
