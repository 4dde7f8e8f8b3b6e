//! Jobs as the API and the store see them.

use std::path::{Component, Path};
use std::str::FromStr;

use hypersdk_core::ExportSettings;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How soon a job runs: higher first, then in order of submission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Before everything else.
    Critical,
    /// Before normal jobs.
    High,
    /// The default.
    #[default]
    Normal,
    /// After everything else.
    Low,
}

impl Priority {
    /// Rank in the queue (higher runs first).
    pub fn rank(self) -> i64 {
        match self {
            Priority::Critical => 3,
            Priority::High => 2,
            Priority::Normal => 1,
            Priority::Low => 0,
        }
    }
}

/// What to export and how: the body of a submission (JSON or YAML; a list
/// submits a batch). Besides the job's own fields, every export option of
/// the library's [`ExportSettings`] (the same names as `hyperctl export`'s
/// flags and the bindings' options) sits flat beside them. Unknown fields
/// are refused. Encryption takes a key or passphrase *file on the daemon
/// host*, below one of the configured `key_dirs`, or a named key of the
/// daemon's `encryption_keys` (`encryption_key`) — never key material.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobSpec {
    /// VM name or id.
    pub vm: String,
    /// A provider name from the daemon's configuration.
    pub provider: String,
    /// A profile whose options fill in what this job does not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Directory below the daemon's output root, or below the named sink's
    /// prefix (relative; default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A sink from the daemon's `sinks` (an object store; its credentials
    /// stay in the daemon's configuration); default: the output root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Queue priority.
    #[serde(default)]
    pub priority: Priority,
    /// Encrypt with this named key of the daemon's `encryption_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    /// The export options.
    #[serde(flatten)]
    pub settings: ExportSettings,
}

/// The job's own fields (the rest of a submission is export settings).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFields {
    vm: String,
    provider: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    sink: Option<String>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    encryption_key: Option<String>,
}

const JOB_FIELDS: [&str; 7] = [
    "vm",
    "provider",
    "profile",
    "output",
    "sink",
    "priority",
    "encryption_key",
];

impl<'de> Deserialize<'de> for JobSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let all = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let (job, settings): (serde_json::Map<_, _>, serde_json::Map<_, _>) = all
            .into_iter()
            .partition(|(k, _)| JOB_FIELDS.contains(&k.as_str()));
        let job: JobFields =
            serde_json::from_value(serde_json::Value::Object(job)).map_err(D::Error::custom)?;
        let settings: ExportSettings = serde_json::from_value(serde_json::Value::Object(settings))
            .map_err(D::Error::custom)?;
        Ok(JobSpec {
            vm: job.vm,
            provider: job.provider,
            profile: job.profile,
            output: job.output,
            sink: job.sink,
            priority: job.priority,
            encryption_key: job.encryption_key,
            settings,
        })
    }
}

impl JobSpec {
    /// Checks everything that can be checked before the job runs; the
    /// message names the field. `providers` are the configured names.
    pub fn validate(&self, providers: &[String]) -> Result<(), String> {
        if self.vm.trim().is_empty() {
            return Err("vm: must not be empty".into());
        }
        for (field, value) in [
            ("vm", Some(&self.vm)),
            ("provider", Some(&self.provider)),
            ("output", self.output.as_ref()),
            ("sink", self.sink.as_ref()),
            ("name", self.settings.name.as_ref()),
            ("profile", self.profile.as_ref()),
        ] {
            if let Some(v) = value {
                if v.chars().any(char::is_control) {
                    return Err(format!(
                        "{field}: \"{}\" holds a NUL or control character",
                        hypersdk_formats::error::display_name(v)
                    ));
                }
                if v.len() > 4096 {
                    return Err(format!("{field}: longer than 4096 bytes"));
                }
            }
        }
        if !providers.iter().any(|p| p == &self.provider) {
            return Err(format!(
                "provider: unknown provider '{}' (configured: {})",
                hypersdk_formats::error::display_name(&self.provider),
                if providers.is_empty() {
                    "none".to_string()
                } else {
                    providers.join(", ")
                }
            ));
        }
        if let Some(o) = &self.output {
            let p = Path::new(o);
            if p.components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(format!(
                    "output: '{}' must be a relative path below the output root, without '..'",
                    hypersdk_formats::error::display_name(o)
                ));
            }
        }
        if let Some(n) = &self.settings.name {
            if n.is_empty() || n.contains(['/', '\\', '\0']) || n == "." || n == ".." {
                return Err(format!(
                    "name: '{}' is not a plain file name",
                    hypersdk_formats::error::display_name(n)
                ));
            }
        }
        if self.settings.resume {
            return Err(
                "resume: a job always continues its own partial export; to run a failed job again, \
                 POST /api/v1/jobs/{id}/retry"
                    .into(),
            );
        }
        let files = [
            self.settings.encrypt_key_file.is_some(),
            self.settings.encrypt_passphrase_file.is_some(),
            self.encryption_key.is_some(),
        ];
        if files.iter().filter(|x| **x).count() > 1 {
            return Err(
                "give one of encryption_key, encrypt_key_file and encrypt_passphrase_file".into(),
            );
        }
        self.settings.validate().map_err(|e| match e {
            hypersdk_core::Error::InvalidArgument(m) => m,
            e => e.to_string(),
        })?;
        Ok(())
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a slot.
    Queued,
    /// Exporting.
    Running,
    /// Exported and published.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

impl JobStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => {
                return Err(format!(
                    "unknown status '{other}' (queued, running, succeeded, failed, cancelled)"
                ))
            }
        })
    }
}

/// Live progress of a running job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// Phase: disk, packaging, verify, done, ...
    pub phase: String,
    /// Disk (or file) being worked on.
    pub disk: String,
    /// The disk's index in the VM (0 for packaging and verify).
    #[serde(default)]
    pub disk_index: usize,
    /// Bytes done and in all of this phase.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes_total: u64,
    /// Of `bytes_done`, those a previous run of the job did (kept).
    #[serde(default)]
    pub bytes_resumed: u64,
    /// Bytes per second over the last seconds (0 for the first second),
    /// kept bytes never counted.
    pub rate_bps: f64,
    /// Seconds left at that rate, once there is one.
    #[serde(default)]
    pub eta_secs: Option<f64>,
}

impl Progress {
    /// Whether this is a job's last update: its phase is its final status.
    pub fn is_end(&self) -> bool {
        self.phase.parse::<JobStatus>().is_ok_and(|s| s.is_final())
    }
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// Where it is.
    pub status: JobStatus,
    /// What it exports.
    pub spec: JobSpec,
    /// Who submitted it.
    pub submitted_by: String,
    /// RFC 3339 times.
    pub created_at: String,
    /// When it last started running.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Times it started running (more than 1 after a daemon restart).
    pub attempts: i64,
    /// The export report, once succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether it failed for a cause that may pass (full disk, network)
    /// and can be retried (`POST /api/v1/jobs/{id}/retry`), continuing
    /// from its checkpoint. Cancelled jobs can be retried too.
    #[serde(default)]
    pub retryable: bool,
    /// The partial export it left for a retry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<crate::outputs::PartialExport>,
    /// Live progress while running.
    pub progress: Option<Progress>,
    /// The hypervisord that runs it, or ran it last (its `node` name, with
    /// the process after `#`): several may share a PostgreSQL store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// W3C `traceparent` of the request that submitted it, when traces are
    /// exported: its runs are spans of that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    /// RFC 3339 time.
    pub at: String,
    /// Status from then on, if it changed.
    pub status: Option<JobStatus>,
    /// What happened.
    pub message: String,
}
