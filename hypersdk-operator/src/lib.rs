//! The hypersdk Kubernetes operator: each `VMExport` (namespaced, group
//! `hypersdk.io`, version `v1alpha1`) becomes a job in hypervisord's shared
//! queue, and the job's state comes back into the resource's status.
//!
//! - **Submit.** A new `VMExport` gets the finalizer
//!   `hypersdk.io/cancel-job`, then its job is submitted to hypervisord
//!   (`POST /api/v1/jobs`, any node of the cluster: they share one
//!   PostgreSQL queue, and workers inside or outside Kubernetes run it). The
//!   job is the spec's `vm`, `provider` (a provider configured on the
//!   workers, whose credentials are the workers' — mounted from Secrets),
//!   `sink`, `output` (default `NAMESPACE/NAME` below the output root),
//!   `priority`, and `options`, the export options as the daemon's job
//!   takes them (`format`, `compress`, `verify`, `bwlimit`, …).
//! - **Mirror.** Until the job is over its state is read every `interval`
//!   and written into the status: `phase` (Queued, Running, Succeeded,
//!   Failed, Cancelled), `jobId`, `node`, `progress`, `artifact` (where the
//!   export was published), `digests` (each file's digest, as in its
//!   manifest), `message` and the conditions `Ready` and `Failed`, with an
//!   Event at each change of phase (Warning for failures).
//! - **Refuse.** A job hypervisord refuses (unknown provider, bad option)
//!   sets phase Failed with condition reason `InvalidSpec` and the daemon's
//!   message, and a Warning Event; it is tried again only when the spec
//!   changes (`metadata.generation`).
//! - **Cancel.** Deleting a `VMExport` whose job is not over cancels the
//!   job (the worker stops the export), then releases the finalizer.
//! - **Leader election.** Replicas compete for a `coordination.k8s.io/v1`
//!   Lease (optimistic concurrency on its resourceVersion); only the holder
//!   reconciles, and it stops acting when it cannot renew within the
//!   lease. A passive replica takes over once the lease runs out.
//!
//! The API key for hypervisord comes from a Secret (as the environment
//! variable `HYPERSDK_API_KEY`, or a file), never from a resource.
//!
//! Submissions carry an `Idempotency-Key` (the resource's uid and
//! generation): if the operator dies after hypervisord accepted a job and
//! before the status records its id, the next pass gets that same job back
//! rather than queueing a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

/// The finalizer that holds a `VMExport` until its job is cancelled.
pub const FINALIZER: &str = "hypersdk.io/cancel-job";

/// What to export, and how.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hypersdk.io",
    version = "v1alpha1",
    kind = "VMExport",
    namespaced,
    status = "VMExportStatus",
    shortname = "vmx",
    printcolumn = r#"{"name": "VM", "type": "string", "jsonPath": ".spec.vm"}"#,
    printcolumn = r#"{"name": "Provider", "type": "string", "jsonPath": ".spec.provider"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Job", "type": "integer", "jsonPath": ".status.jobId"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VMExportSpec {
    /// The VM: its name (or id) as the provider knows it.
    pub vm: String,
    /// A provider configured on the hypervisord workers (by name).
    pub provider: String,
    /// A named object-store sink of the workers; none: their output root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// Directory below the output root or the sink's prefix (default
    /// `NAMESPACE/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// low, normal, high or critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Export options as hypervisord's job takes them (`format`,
    /// `compress`, `verify`, `bwlimit`, `encryption_key`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "open_object")]
    pub options: BTreeMap<String, Value>,
}

fn open_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Progress of the export while it runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportProgress {
    /// Guest bytes done (all disks).
    pub bytes_done: u64,
    /// Guest bytes in all.
    pub bytes_total: u64,
    /// Percent done.
    pub percent: f64,
}

/// A condition, as Kubernetes conventions have them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Details.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// What became of the export.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VMExportStatus {
    /// Pending, Queued, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The hypervisord job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    /// The worker that runs it (or ran it last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// While it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ExportProgress>,
    /// Where the export was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Each file of the package and its digest (`ALGORITHM:HEX`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
    /// The last thing worth saying (an error, the job's refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` and `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How the operator reaches hypervisord and Kubernetes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// hypervisord's base URL (any node).
    pub daemon: String,
    /// Its API key (operator role), if it has keys.
    pub api_key: Option<String>,
    /// CA certificates (PEM) of hypervisord's TLS certificate.
    pub daemon_ca: Option<Vec<u8>>,
    /// Only this namespace's `VMExport`s; none: every namespace.
    pub namespace: Option<String>,
    /// Where the leader-election Lease lives.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's name (the pod's).
    pub identity: String,
    /// How long a leader's Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often resources and jobs are looked at.
    pub interval: Duration,
}

/// The hypervisord API, as the operator uses it.
#[derive(Debug, Clone)]
struct Daemon {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// What hypervisord answered.
enum Answer {
    Ok(Value),
    /// 4xx: the request is wrong (its message).
    Refused(u16, String),
}

impl Daemon {
    fn new(s: &Settings) -> anyhow::Result<Daemon> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(pem) = &s.daemon_ca {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Daemon {
            http: b.build()?,
            base: s.daemon.trim_end_matches('/').to_string(),
            key: s.api_key.clone(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        self.call_keyed(method, path, body, None).await
    }

    /// A call; `idempotency`: the submission's key (hypervisord answers a
    /// repeat with the first submission's jobs).
    async fn call_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idempotency: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut r = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(k) = idempotency {
            r = r.header("Idempotency-Key", k);
        }
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = r
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("hypervisord {method} {path}: {e}"))?;
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match code {
            200..=299 => Ok(Answer::Ok(
                serde_json::from_str(&text).unwrap_or(Value::Null),
            )),
            401 | 403 => {
                anyhow::bail!("hypervisord refused the operator's API key ({code}): {text}")
            }
            400..=499 => {
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Ok(Answer::Refused(code, msg))
            }
            _ => anyhow::bail!("hypervisord {method} {path} answered {code}: {text}"),
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The job a `VMExport` asks for.
pub fn job_of(vx: &VMExport) -> Value {
    let mut job: serde_json::Map<String, Value> = vx.spec.options.clone().into_iter().collect();
    job.insert("vm".into(), vx.spec.vm.clone().into());
    job.insert("provider".into(), vx.spec.provider.clone().into());
    if let Some(s) = &vx.spec.sink {
        job.insert("sink".into(), s.clone().into());
    }
    let output = vx
        .spec
        .output
        .clone()
        .unwrap_or_else(|| format!("{}/{}", vx.namespace().unwrap_or_default(), vx.name_any()));
    job.insert("output".into(), output.into());
    if let Some(p) = &vx.spec.priority {
        job.insert("priority".into(), p.clone().into());
    }
    Value::Object(job)
}

/// The status a job's state (hypervisord's JSON) makes, from `old`.
pub fn status_of(old: &VMExportStatus, job: &Value, generation: Option<i64>) -> VMExportStatus {
    let phase = match job["status"].as_str().unwrap_or("") {
        "queued" => "Queued",
        "running" => "Running",
        "succeeded" => "Succeeded",
        "failed" => "Failed",
        "cancelled" => "Cancelled",
        _ => "Pending",
    };
    let mut s = VMExportStatus {
        phase: Some(phase.into()),
        job_id: job["id"].as_i64(),
        node: job["node"]
            .as_str()
            .map(|n| n.split('#').next().unwrap_or(n).to_string()),
        observed_generation: generation,
        ..VMExportStatus::default()
    };
    if phase == "Running" {
        let p = &job["progress"];
        let (done, total) = (
            p["bytes_done"].as_u64().unwrap_or(0),
            p["bytes_total"].as_u64().unwrap_or(0),
        );
        s.progress = Some(ExportProgress {
            bytes_done: done,
            bytes_total: total,
            percent: if total > 0 {
                (done as f64 * 1000.0 / total as f64).round() / 10.0
            } else {
                0.0
            },
        });
    }
    let r = &job["result"];
    if phase == "Succeeded" {
        s.artifact = r["location"].as_str().map(str::to_string);
        let alg = r["digest_algorithm"].as_str().unwrap_or("SHA256");
        for f in r["files"].as_array().into_iter().flatten() {
            if let (Some(n), Some(d)) = (f["name"].as_str(), f["digest"].as_str()) {
                s.digests.insert(n.to_string(), format!("{alg}:{d}"));
            }
        }
    }
    s.message = job["error"].as_str().map(str::to_string);
    let (ready, ready_reason) = match phase {
        "Succeeded" => ("True", "Succeeded"),
        p => ("False", p),
    };
    let failed = if phase == "Failed" { "True" } else { "False" };
    s.conditions = vec![
        condition(old, "Ready", ready, ready_reason, ""),
        condition(
            old,
            "Failed",
            failed,
            if phase == "Failed" {
                "ExportFailed"
            } else {
                "NoFailure"
            },
            s.message.as_deref().unwrap_or(""),
        ),
    ];
    s
}

/// Condition `type_` with `status`, keeping its transition time when the
/// status did not change.
fn condition(
    old: &VMExportStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Condition {
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
    }
}

/// The operator: reconciles while it holds the Lease.
pub struct Operator {
    client: kube::Client,
    settings: Settings,
    daemon: Daemon,
    recorder: Recorder,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("identity", &self.settings.identity)
            .finish()
    }
}

impl Operator {
    /// An operator on `client` with `settings`.
    pub fn new(client: kube::Client, settings: Settings) -> anyhow::Result<Operator> {
        let daemon = Daemon::new(&settings)?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hypersdk-operator".into(),
                instance: Some(settings.identity.clone()),
            },
        );
        Ok(Operator {
            client,
            settings,
            daemon,
            recorder,
        })
    }

    fn exports(&self) -> Api<VMExport> {
        match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Runs until `stop` resolves: competes for the Lease and, while it
    /// holds it, reconciles every `interval`.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut leading = false;
        let mut last_renewed = std::time::Instant::now();
        let renew_every = self.settings.lease_duration / 3;
        let mut last_try: Option<std::time::Instant> = None;
        loop {
            if last_try.is_none_or(|t| t.elapsed() >= renew_every) {
                last_try = Some(std::time::Instant::now());
                match self.try_lead().await {
                    Ok(true) => {
                        if !leading {
                            info!(identity = %self.settings.identity, "leading: this replica reconciles");
                        }
                        leading = true;
                        last_renewed = std::time::Instant::now();
                    }
                    Ok(false) => {
                        if leading {
                            warn!(identity = %self.settings.identity, "another replica holds the lease: standing by");
                        }
                        leading = false;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the lease");
                        if last_renewed.elapsed() >= self.settings.lease_duration * 2 / 3 {
                            leading = false;
                        }
                    }
                }
            }
            if leading {
                if let Err(e) = self.reconcile_all().await {
                    warn!(error = %e, "reconcile failed");
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// Takes or renews the Lease; whether this replica holds it now.
    pub async fn try_lead(&self) -> anyhow::Result<bool> {
        use k8s_openapi::api::coordination::v1::Lease;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.lease_namespace);
        let me = &self.settings.identity;
        let secs = self.settings.lease_duration.as_secs().max(1);
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let Some(current) = api.get_opt(&self.settings.lease_name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.settings.lease_name},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": secs,
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}
            }))?;
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let v = serde_json::to_value(&current)?;
        let spec = &v["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("");
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(15);
        let expired =
            renewed.is_none_or(|r| r + chrono::Duration::seconds(duration) < chrono::Utc::now());
        if holder != me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let mut next = v.clone();
        next["spec"]["holderIdentity"] = json!(me);
        next["spec"]["leaseDurationSeconds"] = json!(secs);
        next["spec"]["renewTime"] = json!(stamp);
        if holder != me {
            next["spec"]["acquireTime"] = json!(stamp);
            let t = spec["leaseTransitions"].as_i64().unwrap_or(0);
            next["spec"]["leaseTransitions"] = json!(t + 1);
        }
        // Replaced with the resourceVersion read: a replica that raced us
        // gets 409 and stays passive.
        let lease: Lease = serde_json::from_value(next)?;
        match api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One pass over every `VMExport`.
    pub async fn reconcile_all(&self) -> anyhow::Result<()> {
        let list = self.exports().list(&ListParams::default()).await?;
        for vx in list.items {
            let name = format!("{}/{}", vx.namespace().unwrap_or_default(), vx.name_any());
            if let Err(e) = self.reconcile(&vx).await {
                warn!(export = %name, error = %e, "cannot reconcile");
            }
        }
        Ok(())
    }

    async fn event(&self, vx: &VMExport, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Export".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &vx.object_ref(&())).await {
            warn!(error = %e, "cannot publish an event");
        }
    }

    async fn set_status(&self, vx: &VMExport, status: &VMExportStatus) -> anyhow::Result<()> {
        let api: Api<VMExport> =
            Api::namespaced(self.client.clone(), &vx.namespace().unwrap_or_default());
        api.patch_status(
            &vx.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        Ok(())
    }

    async fn set_finalizers(&self, vx: &VMExport, finalizers: Vec<String>) -> anyhow::Result<()> {
        let api: Api<VMExport> =
            Api::namespaced(self.client.clone(), &vx.namespace().unwrap_or_default());
        // With the resourceVersion read: a concurrent change makes this fail
        // (409) rather than lose the other's finalizers.
        api.patch(
            &vx.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": vx.resource_version(),
            }})),
        )
        .await?;
        Ok(())
    }

    /// Brings one `VMExport` and its job together.
    pub async fn reconcile(&self, vx: &VMExport) -> anyhow::Result<()> {
        let status = vx.status.clone().unwrap_or_default();
        let has_finalizer = vx.finalizers().iter().any(|f| f == FINALIZER);
        if vx.meta().deletion_timestamp.is_some() {
            if !has_finalizer {
                return Ok(());
            }
            if let Some(id) = status.job_id {
                let over = matches!(
                    status.phase.as_deref(),
                    Some("Succeeded" | "Failed" | "Cancelled")
                );
                if !over {
                    match self
                        .daemon
                        .call(
                            reqwest::Method::POST,
                            &format!("/api/v1/jobs/{id}/cancel"),
                            None,
                        )
                        .await?
                    {
                        Answer::Ok(_) => info!(job = id, "VMExport deleted: job cancelled"),
                        // 404: gone; 409: over meanwhile.
                        Answer::Refused(code, m) => info!(job = id, code, "VMExport deleted: {m}"),
                    }
                }
            }
            let rest: Vec<String> = vx
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            return self.set_finalizers(vx, rest).await;
        }
        if !has_finalizer {
            let mut all = vx.finalizers().to_vec();
            all.push(FINALIZER.into());
            // The next pass sees the finalizer and submits.
            return self.set_finalizers(vx, all).await;
        }
        let generation = vx.meta().generation;
        let Some(id) = status.job_id else {
            let refused_before = status.phase.as_deref() == Some("Failed")
                && status.observed_generation == generation;
            if refused_before {
                return Ok(());
            }
            // Keyed by the resource's uid and generation: if an earlier
            // pass (or replica) submitted and died before recording the job,
            // this answers that job instead of queueing a second.
            let key = format!(
                "vmexport/{}/{}",
                vx.uid().unwrap_or_default(),
                generation.unwrap_or(0)
            );
            return match self
                .daemon
                .call_keyed(
                    reqwest::Method::POST,
                    "/api/v1/jobs",
                    Some(job_of(vx)),
                    Some(&key),
                )
                .await?
            {
                Answer::Ok(v) => {
                    let id = v["jobs"][0]["id"].as_i64();
                    let s = VMExportStatus {
                        phase: Some("Queued".into()),
                        job_id: id,
                        observed_generation: generation,
                        conditions: vec![condition(&status, "Ready", "False", "Queued", "")],
                        ..VMExportStatus::default()
                    };
                    self.set_status(vx, &s).await?;
                    self.event(
                        vx,
                        false,
                        "Submitted",
                        format!("hypervisord job {}", id.unwrap_or(0)),
                    )
                    .await;
                    Ok(())
                }
                Answer::Refused(_, m) => {
                    let s = VMExportStatus {
                        phase: Some("Failed".into()),
                        message: Some(m.clone()),
                        observed_generation: generation,
                        conditions: vec![
                            condition(&status, "Ready", "False", "InvalidSpec", ""),
                            condition(&status, "Failed", "True", "InvalidSpec", &m),
                        ],
                        ..VMExportStatus::default()
                    };
                    self.set_status(vx, &s).await?;
                    self.event(vx, true, "InvalidSpec", m).await;
                    Ok(())
                }
            };
        };
        if matches!(
            status.phase.as_deref(),
            Some("Succeeded" | "Failed" | "Cancelled")
        ) {
            return Ok(());
        }
        let job = match self
            .daemon
            .call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None)
            .await?
        {
            Answer::Ok(j) => j,
            Answer::Refused(404, _) => json!({"id": id, "status": "failed",
                "error": format!("job {id} no longer exists in hypervisord")}),
            Answer::Refused(code, m) => anyhow::bail!("job {id}: {code} {m}"),
        };
        let next = status_of(&status, &job, status.observed_generation);
        if next == status {
            return Ok(());
        }
        self.set_status(vx, &next).await?;
        if next.phase != status.phase {
            let phase = next.phase.clone().unwrap_or_default();
            let (warning, note) = match phase.as_str() {
                "Running" => (
                    false,
                    format!(
                        "job {id} runs on {}",
                        next.node.as_deref().unwrap_or("a worker")
                    ),
                ),
                "Succeeded" => (
                    false,
                    format!("exported to {}", next.artifact.as_deref().unwrap_or("?")),
                ),
                "Failed" => (
                    true,
                    next.message
                        .clone()
                        .unwrap_or_else(|| "the export failed".into()),
                ),
                p => (false, format!("job {id} is {}", p.to_lowercase())),
            };
            self.event(vx, warning, &phase, note).await;
        }
        Ok(())
    }
}

/// The CustomResourceDefinition, as YAML (what `deploy/operator/crd.yaml`
/// holds).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = VMExport::crd();
    format!(
        "# Generated by `hypersdk-operator crd`; do not edit.\n{}",
        serde_yaml_ng::to_string(&crd).unwrap_or_default()
    )
}
