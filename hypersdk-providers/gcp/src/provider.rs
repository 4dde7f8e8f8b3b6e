//! Compute Engine instances as a [`Provider`]: described through the
//! Compute API, exported the way `gcloud compute images export` does it —
//! an image of each disk, then Cloud Build's `gce_vm_image_export` writing
//! `disk.raw` in a tar.gz into a staging bucket — and read from the bucket
//! as the export runs, unpacked on the fly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::served::ServedFormat;
use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmInfo, VmSpec,
};
use hypersdk_core::{Error, ExportSource, Provider, Result};
use hypersdk_sinks::gcs::GcsBucket;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{enc, err, last_name, valid_name, Google};

/// The Cloud Build step `gcloud compute images export` runs.
const EXPORTER: &str = "gcr.io/compute-image-tools/gce_vm_image_export:release";
/// How often a long wait says it is still waiting.
const SAY_EVERY: Duration = Duration::from_secs(30);
/// How long closing waits for an export's background work to stop.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Where image exports are staged.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    pub(crate) store: GcsBucket,
    pub(crate) bucket: String,
    /// Object prefix, no trailing `/` (may be empty).
    pub(crate) prefix: String,
}

/// Compute Engine as a provider: one project's instances, or one zone's.
#[derive(Debug)]
pub struct GcpProvider {
    google: Arc<Google>,
    zone: Option<String>,
    staging: Option<Staging>,
    export_timeout: Duration,
}

/// An instance as the Compute API describes it, with what its export needs.
struct Described {
    spec: VmSpec,
    /// Per disk of the spec: (zone, disk name).
    disks: Vec<(String, String)>,
    running: bool,
}

impl GcpProvider {
    pub(crate) fn new(
        google: Google,
        zone: Option<String>,
        staging: Option<Staging>,
        export_timeout: Duration,
    ) -> GcpProvider {
        GcpProvider {
            google: Arc::new(google),
            zone,
            staging,
            export_timeout,
        }
    }

    /// Every instance in scope.
    async fn all_instances(&self) -> Result<Vec<Value>> {
        let all = self.google.aggregated("instances", "instances").await?;
        Ok(all
            .into_iter()
            .filter(|i| {
                self.zone.as_deref().is_none_or(|z| {
                    i["zone"]
                        .as_str()
                        .and_then(last_name)
                        .is_some_and(|iz| iz == z)
                })
            })
            .collect())
    }

    /// The instance `vm`: `NAME`, `ZONE/NAME`, or
    /// `[…/]projects/PROJECT/zones/ZONE/instances/NAME`.
    async fn find(&self, vm: &str) -> Result<Value> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{vm:?} is not an instance name, ZONE/NAME or an instance's resource name"
            ))
        };
        let parts: Vec<&str> = vm.trim_matches('/').split('/').collect();
        let (zone, name) = match parts.as_slice() {
            [name] => (self.zone.clone(), name.to_string()),
            [zone, name] => (Some(zone.to_string()), name.to_string()),
            [.., "projects", p, "zones", zone, "instances", name] if *p == self.google.project => {
                (Some(zone.to_string()), name.to_string())
            }
            _ => return Err(bad()),
        };
        if !valid_name(&name) || name.len() > 63 || zone.as_deref().is_some_and(|z| !valid_name(z))
        {
            return Err(bad());
        }
        let not_found = |detail: String| Error::VmNotFound {
            provider: "gcp".into(),
            vm: vm.to_string(),
            detail,
        };
        if let Some(zone) = zone {
            let url =
                self.google
                    .compute_url(&format!("zones/{}/instances/{}", enc(&zone), enc(&name)));
            return self
                .google
                .call(reqwest::Method::GET, &url, None)
                .await?
                .ok_or_else(|| {
                    not_found(format!(
                        "no instance '{name}' in zone {zone} of project {}",
                        self.google.project
                    ))
                });
        }
        let mut found: Vec<Value> = self
            .all_instances()
            .await?
            .into_iter()
            .filter(|i| i["name"] == name.as_str())
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(not_found(format!(
                "no instance of that name in project {}",
                self.google.project
            ))),
            n => Err(Error::InvalidArgument(format!(
                "{n} instances are named '{name}': give ZONE/NAME ({})",
                found
                    .iter()
                    .filter_map(|i| i["zone"].as_str().and_then(last_name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Machine type `mt` of `zone`: (vCPUs, MiB).
    async fn machine_type(&self, zone: &str, mt: &str) -> Result<(u32, u64)> {
        let v = self
            .google
            .get(
                &self
                    .google
                    .compute_url(&format!("zones/{}/machineTypes/{}", enc(zone), enc(mt))),
                &format!("machine type {mt} of zone {zone}"),
            )
            .await?;
        match (v["guestCpus"].as_u64(), v["memoryMb"].as_u64()) {
            (Some(c), Some(m)) => Ok((c as u32, m)),
            _ => Err(err(
                format!("machine type {mt} has no guestCpus or memoryMb"),
                false,
            )),
        }
    }

    /// The instance `inst` described.
    async fn describe(
        &self,
        inst: Value,
        types: &mut std::collections::HashMap<(String, String), (u32, u64)>,
    ) -> Result<Described> {
        let name = inst["name"].as_str().unwrap_or_default().to_string();
        let zone = inst["zone"]
            .as_str()
            .and_then(last_name)
            .ok_or_else(|| err(format!("instance {name} has no zone"), false))?;
        let mt = inst["machineType"]
            .as_str()
            .and_then(last_name)
            .ok_or_else(|| err(format!("instance {name} has no machine type"), false))?;
        let key = (zone.clone(), mt.clone());
        let (cpus, memory_mib) = match types.get(&key) {
            Some(t) => *t,
            None => {
                let t = self.machine_type(&zone, &mt).await?;
                types.insert(key, t);
                t
            }
        };
        let status = inst["status"].as_str().unwrap_or("");
        let power_state = match status {
            "RUNNING" | "PROVISIONING" | "STAGING" | "REPAIRING" => PowerState::On,
            "TERMINATED" | "STOPPED" | "STOPPING" => PowerState::Off,
            "SUSPENDED" | "SUSPENDING" => PowerState::Suspended,
            _ => PowerState::Unknown,
        };
        let mut attached: Vec<&Value> = inst["disks"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        attached.sort_by_key(|d| (!d["boot"].as_bool().unwrap_or(false), d["index"].as_u64()));
        let mut disks = Vec::new();
        let mut ids = Vec::new();
        let mut skipped = Vec::new();
        let mut uefi = false;
        let mut licenses: Vec<String> = Vec::new();
        for a in attached {
            let device = a["deviceName"].as_str().unwrap_or("disk").to_string();
            if a["type"] == "SCRATCH" {
                // A local SSD cannot be imaged: it is said, not exported.
                skipped.push(device);
                continue;
            }
            // The disk's own zone and name, from its URL: a regional disk
            // (regions/…/disks/…) is read the same way.
            let source = a["source"].as_str().unwrap_or("");
            let segs: Vec<&str> = source.rsplit('/').take(4).collect();
            let (scope_kind, scope, disk) = match segs.as_slice() {
                [disk, "disks", scope, kind] => (*kind, *scope, *disk),
                _ => {
                    return Err(err(
                        format!("instance {name}: disk {device} has no source disk"),
                        false,
                    ))
                }
            };
            if !valid_name(disk) || !valid_name(scope) {
                return Err(err(
                    format!("instance {name}: disk {device} has a malformed source {source:?}"),
                    false,
                ));
            }
            let path = format!("{scope_kind}/{scope}/disks/{disk}");
            if scope_kind != "zones" && scope_kind != "regions" {
                return Err(err(
                    format!("instance {name}: disk {device} has a malformed source {source:?}"),
                    false,
                ));
            }
            let d = self
                .google
                .get(
                    &self.google.compute_url(&path),
                    &format!("disk {disk} of instance {name}"),
                )
                .await?;
            let gb = d["sizeGb"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(d["sizeGb"].as_u64())
                .ok_or_else(|| err(format!("disk {disk} has no sizeGb"), false))?;
            let features = |v: &Value| -> Vec<String> {
                v["guestOsFeatures"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["type"].as_str().map(str::to_string))
                    .collect()
            };
            if a["boot"] == json!(true) {
                uefi = features(a)
                    .iter()
                    .chain(features(&d).iter())
                    .any(|f| f == "UEFI_COMPATIBLE");
                for l in a["licenses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(d["licenses"].as_array().into_iter().flatten())
                {
                    if let Some(l) = l.as_str().and_then(last_name) {
                        if !licenses.contains(&l) {
                            licenses.push(l);
                        }
                    }
                }
            }
            disks.push(DiskSpec {
                name: disk.to_string(),
                capacity: gb << 30,
                format: DiskFormat::Raw,
                controller: if a["interface"] == "NVME" {
                    ControllerKind::Nvme
                } else {
                    ControllerKind::Scsi
                },
                unit: disks.len() as u32,
                location: format!("projects/{}/{path}", self.google.project),
                controller_index: None,
            });
            ids.push((path, disk.to_string()));
        }
        let nics = inst["networkInterfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let net = n["network"].as_str().and_then(last_name);
                let sub = n["subnetwork"].as_str().and_then(last_name);
                NicSpec {
                    network: match (net, sub) {
                        (Some(n), Some(s)) => format!("{n}/{s}"),
                        (Some(n), None) => n,
                        _ => n["name"].as_str().unwrap_or("network").to_string(),
                    },
                    // The Compute API does not report a NIC's MAC address.
                    mac: None,
                    model: if n["nicType"] == "GVNIC" {
                        "gvnic".into()
                    } else {
                        "virtio".into()
                    },
                }
            })
            .collect();
        let os_text = licenses.join(" ");
        let family = OsFamily::guess(&[&os_text]);
        let guest_os = GuestOs {
            id: licenses.first().cloned().unwrap_or_default(),
            family,
            description: if os_text.is_empty() {
                "Unknown operating system".into()
            } else {
                os_text
            },
        };
        let mut labels: Vec<String> = inst["labels"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort();
        let resource = format!(
            "projects/{}/zones/{zone}/instances/{name}",
            self.google.project
        );
        let mut annotation = format!(
            "Compute Engine instance {resource} (id {}, {mt}, {status}",
            inst["id"].as_str().unwrap_or("unknown")
        );
        if let Some(p) = inst["cpuPlatform"].as_str() {
            annotation.push_str(&format!(", {p}"));
        }
        annotation.push(')');
        if let Some(d) = inst["description"].as_str().filter(|d| !d.is_empty()) {
            annotation.push_str(&format!("; {d}"));
        }
        if !labels.is_empty() {
            annotation.push_str(&format!("; labels: {}", labels.join(", ")));
        }
        if !skipped.is_empty() {
            annotation.push_str(&format!(
                "; local SSDs not exported (they cannot be imaged): {}",
                skipped.join(", ")
            ));
        }
        let shielded = &inst["shieldedInstanceConfig"];
        let spec = VmSpec {
            id: resource,
            name,
            power_state,
            cpus: cpus.max(1),
            memory_mib,
            firmware: if uefi { Firmware::Uefi } else { Firmware::Bios },
            guest_os,
            nics,
            disks,
            annotation: Some(annotation),
            hardware: Hardware {
                secure_boot: uefi && shielded["enableSecureBoot"] == json!(true),
                ..Default::default()
            },
        };
        Ok(Described {
            spec,
            disks: ids,
            running: status != "TERMINATED",
        })
    }

    async fn describe_one(&self, vm: &str) -> Result<Described> {
        let inst = self.find(vm).await?;
        self.describe(inst, &mut Default::default()).await
    }

    fn staging(&self) -> Result<&Staging> {
        self.staging.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "an export of a Compute Engine instance is staged in a Cloud Storage bucket: give the provider's bucket (gs://BUCKET[/PREFIX], --provider-opt bucket=…)".into(),
            )
        })
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &str {
        "gcp"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let mut types = Default::default();
        let mut out = Vec::new();
        for i in self.all_instances().await? {
            out.push(VmInfo::from(&self.describe(i, &mut types).await?.spec));
        }
        Ok(out)
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        Ok(self.describe_one(vm).await?.spec)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        let d = self.describe_one(vm).await?;
        self.open(d, None).await
    }

    /// The interrupted export's images and staged objects, where they are
    /// still there (each disk's export is taken up where it got to); a
    /// disk whose image is gone is exported anew.
    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let d = self.describe_one(vm).await?;
        let kept: Vec<Kept> = serde_json::from_str::<Value>(token)
            .ok()
            .and_then(|v| serde_json::from_value(v["exports"].clone()).ok())
            .filter(|k: &Vec<Kept>| k.len() == d.disks.len())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the checkpoint's source token is not one of an export of {}",
                    d.spec.name
                ))
            })?;
        self.open(d, Some(kept)).await
    }
}

/// What an interrupted export left of one disk (its resume token).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Kept {
    image: String,
    object: String,
}

/// How far one disk's export got.
#[derive(Debug, Default)]
struct Progress {
    /// The image was asked for (it may exist).
    image: bool,
    /// The build writing the object, once made.
    build: Option<String>,
    /// The object is complete in the bucket.
    staged: bool,
}

/// One disk's export.
#[derive(Debug)]
struct DiskExport {
    image: String,
    object: String,
    progress: Arc<std::sync::Mutex<Progress>>,
    /// The background work: image, build, wait.
    task: Mutex<Option<JoinHandle<Result<()>>>>,
    /// Its outcome once taken from the task (for a second open of the disk).
    outcome: Mutex<Option<std::result::Result<(), String>>>,
}

/// One instance being exported.
#[derive(Debug)]
struct GcpSource {
    google: Arc<Google>,
    staging: Staging,
    spec: VmSpec,
    exports: Vec<DiskExport>,
    stop: CancellationToken,
}

/// What a disk's background work needs.
struct Job {
    google: Arc<Google>,
    staging: Staging,
    progress: Arc<std::sync::Mutex<Progress>>,
    stop: CancellationToken,
    /// The disk's `zones/Z/disks/D` (or regions/…).
    disk_path: String,
    disk: String,
    vm: String,
    running: bool,
    image: String,
    object: String,
    /// Skip making the image (an interrupted export made it).
    image_made: bool,
    timeout: Duration,
}

impl GcpProvider {
    async fn open(&self, d: Described, kept: Option<Vec<Kept>>) -> Result<Box<dyn ExportSource>> {
        let staging = self.staging()?.clone();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let vm: String = d
            .spec
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(30)
            .collect::<String>()
            .to_ascii_lowercase();
        let dir = format!("hypersdk-{vm}-{stamp}");
        let stop = CancellationToken::new();
        let mut exports = Vec::new();
        for (index, (disk_path, disk)) in d.disks.iter().enumerate() {
            let mut image = format!("hypersdk-{vm}-{index}-{stamp}");
            let mut object = if staging.prefix.is_empty() {
                format!("{dir}/{disk}.tar.gz")
            } else {
                format!("{}/{dir}/{disk}.tar.gz", staging.prefix)
            };
            let mut progress = Progress::default();
            if let Some(k) = kept.as_ref().map(|k| &k[index]) {
                match self.adopt(k, disk_path, &staging).await {
                    Adopted::Staged => {
                        progress.staged = true;
                        progress.image = true;
                    }
                    Adopted::Image => progress.image = true,
                    Adopted::Nothing => {}
                }
                if progress.image {
                    (image, object) = (k.image.clone(), k.object.clone());
                }
                tracing::info!(vm = %d.spec.name, disk, staged = progress.staged, image = progress.image, "taking up the interrupted export");
            }
            let progress = Arc::new(std::sync::Mutex::new(progress));
            exports.push((image, object, progress, disk_path.clone(), disk.clone()));
        }
        let mut source = GcpSource {
            google: self.google.clone(),
            staging: staging.clone(),
            spec: d.spec,
            exports: Vec::new(),
            stop: stop.clone(),
        };
        for (image, object, progress, disk_path, disk) in exports {
            let (image_made, staged) = {
                let p = progress
                    .lock()
                    .map_err(|_| Error::Internal("poisoned".into()))?;
                (p.image, p.staged)
            };
            let task = (!staged).then(|| {
                tokio::spawn(
                    Job {
                        google: self.google.clone(),
                        staging: staging.clone(),
                        progress: progress.clone(),
                        stop: stop.clone(),
                        disk_path,
                        disk,
                        vm: source.spec.name.clone(),
                        running: d.running,
                        image: image.clone(),
                        object: object.clone(),
                        image_made,
                        timeout: self.export_timeout,
                    }
                    .run(),
                )
            });
            source.exports.push(DiskExport {
                image,
                object,
                progress,
                outcome: Mutex::new(task.is_none().then_some(Ok(()))),
                task: Mutex::new(task),
            });
        }
        Ok(Box::new(source))
    }

    /// How much of an interrupted export of disk `disk_path` is usable:
    /// only an image this project's exports made of that disk, and an
    /// object under the staging prefix.
    async fn adopt(&self, k: &Kept, disk_path: &str, staging: &Staging) -> Adopted {
        let ours_object =
            staging.prefix.is_empty() || k.object.starts_with(&format!("{}/", staging.prefix));
        if !valid_name(&k.image)
            || !k.image.starts_with("hypersdk-")
            || !ours_object
            || !k.object.ends_with(".tar.gz")
            || k.object
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Adopted::Nothing;
        }
        let url = self
            .google
            .compute_url(&format!("global/images/{}", enc(&k.image)));
        let image = match self.google.call(reqwest::Method::GET, &url, None).await {
            Ok(Some(v)) => v,
            _ => return Adopted::Nothing,
        };
        let from_disk = image["sourceDisk"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/{disk_path}")));
        if image["labels"]["created-by"] != "hypersdk" || !from_disk {
            return Adopted::Nothing;
        }
        match staging.store.exists(&k.object).await {
            Ok(true) => Adopted::Staged,
            _ => Adopted::Image,
        }
    }
}

enum Adopted {
    Staged,
    Image,
    Nothing,
}

impl Job {
    fn note(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }

    /// Waits `d`, or stops when the export is closing.
    async fn pause(&self, d: Duration) -> Result<()> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(Error::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    async fn run(self) -> Result<()> {
        let g = &self.google;
        if !self.image_made {
            // Held before it exists: a failure after the request still
            // deletes it.
            self.note(|p| p.image = true);
            let body = json!({
                "name": self.image,
                "sourceDisk": format!("projects/{}/{}", g.project, self.disk_path),
                "description": format!("hypersdk export of disk {} of {}", self.disk, self.vm),
                "labels": {"created-by": "hypersdk"},
            });
            // An attached disk of a running instance needs forceCreate
            // (the image is then crash-consistent, like a snapshot).
            let url = g.compute_url(&format!(
                "global/images{}",
                if self.running {
                    "?forceCreate=true"
                } else {
                    ""
                }
            ));
            tracing::info!(vm = %self.vm, disk = %self.disk, image = %self.image, "making an image of the disk");
            let op = g
                .post(&url, &body, &format!("making image {}", self.image))
                .await?;
            let what = format!("making image {}", self.image);
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Error::Cancelled),
                r = g.wait_global(op, &what) => r?,
            }
        }
        let destination = format!("gs://{}/{}", self.staging.bucket, self.object);
        let build = json!({
            "steps": [{
                "name": EXPORTER,
                "args": [
                    format!("-timeout={}s", self.timeout.as_secs().saturating_sub(200).max(60)),
                    format!("-source_image=projects/{}/global/images/{}", g.project, self.image),
                    "-client_id=api",
                    "-format=",
                    format!("-destination_uri={destination}"),
                ],
                "env": ["BUILD_ID=$BUILD_ID"],
            }],
            "tags": ["gce-daisy", "gce-daisy-image-export", "hypersdk"],
            "timeout": format!("{}s", self.timeout.as_secs()),
        });
        if self.stop.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let op = g
            .post(
                &g.build_url("builds"),
                &build,
                &format!("exporting image {}", self.image),
            )
            .await?;
        let id = op["metadata"]["build"]["id"]
            .as_str()
            .filter(|i| {
                !i.is_empty()
                    && i.len() <= 64
                    && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            .ok_or_else(|| err("Cloud Build gave the export no build id".into(), false))?
            .to_string();
        self.note(|p| p.build = Some(id.clone()));
        tracing::info!(vm = %self.vm, disk = %self.disk, build = %id, %destination, "exporting the image to Cloud Storage");
        let start = Instant::now();
        let mut said = start;
        let mut delay = Duration::from_millis(200);
        loop {
            let b = g
                .get(
                    &g.build_url(&format!("builds/{}", enc(&id))),
                    &format!("build {id}"),
                )
                .await?;
            let status = b["status"].as_str().unwrap_or("STATUS_UNKNOWN");
            match status {
                "SUCCESS" => break,
                "QUEUED" | "PENDING" | "WORKING" | "STATUS_UNKNOWN" => {}
                other => {
                    let detail = b["statusDetail"].as_str().unwrap_or("");
                    return Err(err(
                        format!(
                            "the image export of disk {} (build {id}) ended {other}{}{} — see {}",
                            self.disk,
                            if detail.is_empty() { "" } else { ": " },
                            hypersdk_formats::error::display_text(detail, 400),
                            b["logUrl"].as_str().unwrap_or("its log in Cloud Build"),
                        ),
                        false,
                    ));
                }
            }
            if start.elapsed() > self.timeout + Duration::from_secs(300) {
                return Err(err(
                    format!(
                        "the image export of disk {} (build {id}) is still {status} after {} s",
                        self.disk,
                        start.elapsed().as_secs()
                    ),
                    false,
                ));
            }
            if said.elapsed() >= SAY_EVERY {
                tracing::info!(vm = %self.vm, disk = %self.disk, build = %id, status, waited_s = start.elapsed().as_secs(), "the image export is still running");
                said = Instant::now();
            }
            self.pause(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        self.note(|p| p.staged = true);
        Ok(())
    }
}

impl GcpSource {
    /// Waits for disk `index`'s export to be staged.
    async fn staged(&self, index: usize) -> Result<&DiskExport> {
        let e = self
            .exports
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        let mut outcome = e.outcome.lock().await;
        if outcome.is_none() {
            let mut task = e.task.lock().await;
            if let Some(handle) = task.as_mut() {
                let r = match handle.await {
                    Ok(r) => r,
                    Err(j) => Err(Error::Internal(format!("the export's task failed: {j}"))),
                };
                *task = None;
                *outcome = Some(r.as_ref().map(drop).map_err(|e| e.to_string()));
                r?;
            }
        }
        match outcome.as_ref() {
            Some(Err(e)) => Err(err(e.clone(), false)),
            _ => Ok(e),
        }
    }

    /// Stops the background work and removes what the export made: builds
    /// still running are cancelled, staged objects and images deleted.
    /// Failures are logged (the export's own error matters more).
    async fn release(&self) {
        self.stop.cancel();
        for e in &self.exports {
            if let Some(mut handle) = e.task.lock().await.take() {
                if tokio::time::timeout(STOP_WAIT, &mut handle).await.is_err() {
                    handle.abort();
                }
            }
        }
        for e in &self.exports {
            let (image, build, staged) = match e.progress.lock() {
                Ok(p) => (p.image, p.build.clone(), p.staged),
                Err(_) => (true, None, true),
            };
            if let (Some(id), false) = (&build, staged) {
                let url = self.google.build_url(&format!("builds/{}:cancel", enc(id)));
                let body = json!({"projectId": self.google.project, "id": id});
                if let Err(err) = self
                    .google
                    .call(reqwest::Method::POST, &url, Some(&body))
                    .await
                {
                    tracing::warn!(build = %id, error = %err, "cannot cancel the image export: cancel it by hand");
                }
            }
            if build.is_some() || staged {
                match self.staging.store.delete(&e.object).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        tracing::warn!(object = %e.object, error = %err, "cannot delete the staged image export: delete it by hand")
                    }
                }
            }
            if image {
                let url = self
                    .google
                    .compute_url(&format!("global/images/{}", enc(&e.image)));
                let deleted = async {
                    if let Some(op) = self
                        .google
                        .call(reqwest::Method::DELETE, &url, None)
                        .await?
                    {
                        self.google
                            .wait_global(op, &format!("deleting image {}", e.image))
                            .await?;
                    }
                    Ok::<(), Error>(())
                };
                if let Err(err) = deleted.await {
                    tracing::warn!(image = %e.image, error = %err, "cannot delete an image the export made: delete it by hand");
                }
            }
        }
    }
}

/// Breaks of one object's read tolerated before it fails (each reopens it
/// from the byte it broke at, after a pause).
const MAX_BREAKS: u32 = 100;

/// Object `key` from byte `offset` on, read 1 MiB at a time from `first`,
/// reopened with a Range from where it broke when the connection drops.
fn resuming(
    store: GcsBucket,
    key: String,
    shown: String,
    offset: u64,
    first: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    read_err: impl Fn(std::io::Error) -> Error + Send + Sync + 'static,
) -> DiskStream {
    struct State {
        reader: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
        pos: u64,
        breaks: u32,
        done: bool,
    }
    let state = State {
        reader: Some(first),
        pos: offset,
        breaks: 0,
        done: false,
    };
    let read_err = Arc::new(read_err);
    Box::pin(futures_util::stream::unfold(state, move |mut st| {
        let (store, key, shown, read_err) =
            (store.clone(), key.clone(), shown.clone(), read_err.clone());
        async move {
            use tokio::io::AsyncReadExt;
            loop {
                if st.done {
                    return None;
                }
                let failed = match st.reader.as_mut() {
                    Some(r) => {
                        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                        let mut got = Ok(0);
                        while buf.len() < buf.capacity() {
                            got = r.read_buf(&mut buf).await;
                            if !matches!(got, Ok(n) if n > 0) {
                                break;
                            }
                        }
                        match got {
                            Ok(0) if buf.is_empty() => return None,
                            Ok(_) => {
                                st.pos += buf.len() as u64;
                                return Some((Ok(buf.freeze()), st));
                            }
                            Err(e) if !buf.is_empty() => {
                                // Hand out what came, then reopen.
                                st.pos += buf.len() as u64;
                                st.reader = None;
                                st.breaks += 1;
                                tracing::warn!(object = %shown, at = st.pos, error = %e, "the read broke off; resuming from there");
                                return Some((Ok(buf.freeze()), st));
                            }
                            Err(e) => e,
                        }
                    }
                    None => match store.read(&key, st.pos, shown.clone()).await {
                        Ok(r) => {
                            st.reader = Some(r);
                            continue;
                        }
                        Err(e) => e,
                    },
                };
                st.reader = None;
                st.breaks += 1;
                if st.breaks > MAX_BREAKS
                    || matches!(
                        failed.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::InvalidData
                    )
                {
                    st.done = true;
                    return Some((Err(read_err(failed)), st));
                }
                tracing::warn!(object = %shown, at = st.pos, error = %failed, "the read broke off; resuming from there");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(st.breaks.min(10)))).await;
            }
        }
    }))
}

#[async_trait]
impl ExportSource for GcpSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// Each disk's image and staged object.
    fn resume_token(&self) -> Option<String> {
        let kept: Vec<Kept> = self
            .exports
            .iter()
            .map(|e| Kept {
                image: e.image.clone(),
                object: e.object.clone(),
            })
            .collect();
        Some(json!({ "exports": kept }).to_string())
    }

    fn served_format(&self, _index: usize) -> Option<ServedFormat> {
        Some(ServedFormat::TarGz)
    }

    /// The staged tar.gz of disk `index`, once its export has written it
    /// (waited for here, so a cancellation stops the wait).
    async fn open_served(&self, index: usize, offset: u64) -> Result<Option<DiskStream>> {
        let e = self.staged(index).await?;
        let disk = &self.spec.disks[index];
        let shown = format!("gs://{}/{}", self.staging.bucket, e.object);
        let (vm, name, location) = (
            self.spec.name.clone(),
            disk.name.clone(),
            disk.location.clone(),
        );
        let read_err = move |source: std::io::Error| Error::DiskRead {
            vm: vm.clone(),
            disk: name.clone(),
            location: location.clone(),
            source: source.into(),
        };
        // Opened here, so that a missing object fails now; reopened from
        // the byte it broke at if the connection drops.
        let reader = self
            .staging
            .store
            .read(&e.object, offset, shown.clone())
            .await
            .map_err(&read_err)?;
        Ok(Some(resuming(
            self.staging.store.clone(),
            e.object.clone(),
            shown,
            offset,
            reader,
            read_err,
        )))
    }

    async fn close(&self) -> Result<()> {
        self.release().await;
        Ok(())
    }
}
