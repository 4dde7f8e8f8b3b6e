//! The classic export path, for accounts that require VM Import/Export:
//! `CreateInstanceExportTask` writes the instance as a streamOptimized
//! VMDK into an S3 bucket; the export polls the task, then streams the
//! file from S3, decoding it to the guest bytes on the fly and encoding
//! them as every other export does — so the package is byte for byte the
//! one the EBS direct path makes of the same disk (VM Import/Export's own
//! VMDK differs from run to run: its content id is random). On every path
//! the task is cancelled if still running and the file deleted. VM
//! Import/Export writes only the root volume, so an instance with data
//! volumes is refused (the EBS direct path exports every volume).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::served::ServedFormat;
use hypersdk_core::vm::VmSpec;
use hypersdk_core::{Error, ExportSource, Result};

use crate::client::err;
use crate::ec2::{Ec2, ExportTask};
use crate::s3::S3;

/// How long an export task may stay active.
const MAX_WAIT: Duration = Duration::from_secs(12 * 3600);
/// How often a wait says it is still waiting.
const SAY_EVERY: Duration = Duration::from_secs(30);

/// Where the classic path's files go.
#[derive(Debug, Clone)]
pub(crate) struct Classic {
    pub(crate) s3: Arc<S3>,
    pub(crate) bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub(crate) prefix: String,
}

/// One instance exported through an export task.
#[derive(Debug)]
pub(crate) struct ExportTaskSource {
    spec: VmSpec,
    ec2: Arc<Ec2>,
    classic: Classic,
    task: ExportTask,
    /// Whether the task was seen completed.
    completed: tokio::sync::Mutex<bool>,
}

/// The source of instance `spec` through a new export task, or through
/// `kept` (an interrupted export's task) when EC2 still has it for the
/// same instance and bucket.
pub(crate) async fn open(
    ec2: Arc<Ec2>,
    classic: Classic,
    spec: VmSpec,
    kept: Option<&str>,
) -> Result<Box<dyn ExportSource>> {
    if spec.disks.len() != 1 {
        return Err(Error::InvalidArgument(format!(
            "instance {} has {} volumes: VM Import/Export's instance export writes only the root volume; export it through the EBS direct APIs (the default export_method) to keep every volume",
            spec.id,
            spec.disks.len()
        )));
    }
    let mut task = None;
    if let Some(id) = kept {
        match ec2.export_task(id).await {
            Ok(Some(t))
                if t.instance == spec.id
                    && t.bucket == classic.bucket
                    && t.key.starts_with(&classic.prefix)
                    && matches!(t.state.as_str(), "active" | "completed") =>
            {
                tracing::info!(task = %t.id, state = %t.state, "taking up the interrupted export task");
                task = Some(t);
            }
            _ => tracing::warn!(
                task = id,
                "the interrupted export task is gone: starting a new one"
            ),
        }
    }
    let task = match task {
        Some(t) => t,
        None => {
            let t = ec2
                .create_instance_export_task(
                    &spec.id,
                    &classic.bucket,
                    &classic.prefix,
                    &format!("hypersdk export of {}", spec.name),
                )
                .await?;
            tracing::info!(instance = %spec.id, task = %t.id, key = %t.key, "VM Import/Export is writing the instance to S3");
            t
        }
    };
    Ok(Box::new(ExportTaskSource {
        completed: tokio::sync::Mutex::new(task.state == "completed"),
        spec,
        ec2,
        classic,
        task,
    }))
}

impl ExportTaskSource {
    /// Waits for the task to complete.
    async fn completed(&self) -> Result<()> {
        let mut done = self.completed.lock().await;
        let id = &self.task.id;
        let start = Instant::now();
        let mut said = start;
        let mut delay = Duration::from_millis(250);
        while !*done {
            let t = self
                .ec2
                .export_task(id)
                .await?
                .ok_or_else(|| err(format!("the export task {id} is gone"), false))?;
            match t.state.as_str() {
                "completed" => *done = true,
                "active" => {
                    if start.elapsed() > MAX_WAIT {
                        return Err(err(
                            format!(
                                "the export task {id} is still active after {} s",
                                start.elapsed().as_secs()
                            ),
                            false,
                        ));
                    }
                    if said.elapsed() >= SAY_EVERY {
                        tracing::info!(task = %id, status = %t.status, waited_s = start.elapsed().as_secs(), "the export task is still running");
                        said = Instant::now();
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                other => {
                    return Err(err(
                        format!(
                            "the export task {id} is {other}{}{}",
                            if t.status.is_empty() { "" } else { ": " },
                            t.status
                        ),
                        false,
                    ))
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ExportSource for ExportTaskSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The export task's id.
    fn resume_token(&self) -> Option<String> {
        Some(serde_json::json!({ "export_task": self.task.id }).to_string())
    }

    /// The guest bytes of the task's VMDK from byte `offset` (read from
    /// its start, the bytes before `offset` dropped), once the task
    /// completed.
    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let disk = self
            .spec
            .disks
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        self.completed().await?;
        let served = self.classic.s3.read(&self.task.key, 0).await?;
        let guest = hypersdk_core::served::guest_bytes(
            ServedFormat::StreamOptimizedVmdk,
            served,
            disk.capacity,
            (&self.spec.name, &disk.name, &disk.location),
        );
        Ok(hypersdk_core::provider::skip_bytes(guest, offset))
    }

    /// Cancels the task if it still runs and deletes its file; failures
    /// are logged (the export's own error matters more).
    async fn close(&self) -> Result<()> {
        let done = match self.ec2.export_task(&self.task.id).await {
            Ok(Some(t)) => t.state != "active",
            Ok(None) => true,
            Err(_) => false,
        };
        if !done {
            if let Err(e) = self.ec2.cancel_export_task(&self.task.id).await {
                tracing::warn!(task = %self.task.id, error = %e, "cannot cancel the export task: cancel it by hand");
            }
        }
        if let Err(e) = self.classic.s3.delete(&self.task.key).await {
            tracing::warn!(key = %self.task.key, error = %e, "cannot delete the export task's file: delete it by hand");
        }
        Ok(())
    }
}
