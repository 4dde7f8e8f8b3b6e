//! EC2 instances as a [`Provider`]: described from EC2, exported by
//! snapshotting each EBS volume and reading the snapshot's blocks through
//! the EBS direct APIs.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmInfo, VmSpec,
};
use hypersdk_core::{Error, ExportSource, Provider, Result};

use crate::ebs::{Blocks, Ebs};
use crate::ec2::{Ec2, Instance, TypeInfo, Volume};
use crate::export_task::{self, Classic};
use crate::s3::S3;

/// Blocks read at once per disk (512 KiB each on AWS: 8 MiB in flight).
const IN_FLIGHT: usize = 16;
/// Zeros for the blocks a snapshot does not hold.
static ZEROS: [u8; 524_288] = [0; 524_288];

/// AWS as a provider: one region's instances.
#[derive(Debug)]
pub struct AwsProvider {
    ec2: Arc<Ec2>,
    ebs: Arc<Ebs>,
    /// Export through VM Import/Export's instance export tasks instead of
    /// the EBS direct APIs.
    classic: Option<Classic>,
}

impl AwsProvider {
    /// A provider over these clients (same region and credentials).
    pub fn new(ec2: Ec2, ebs: Ebs) -> AwsProvider {
        AwsProvider {
            ec2: Arc::new(ec2),
            ebs: Arc::new(ebs),
            classic: None,
        }
    }

    /// Exports through VM Import/Export's instance export tasks
    /// (`CreateInstanceExportTask`), writing into `bucket` (reached with
    /// `s3`) under `prefix`, instead of reading EBS snapshots: for
    /// accounts that require it. Only the root volume is exported, so
    /// instances with data volumes are refused.
    pub fn with_export_tasks(mut self, s3: S3, bucket: &str, prefix: &str) -> AwsProvider {
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        self.classic = Some(Classic {
            s3: Arc::new(s3),
            bucket: bucket.to_string(),
            prefix,
        });
        self
    }

    /// The instance named `vm`: its id (`i-…`), or its `Name` tag.
    async fn find(&self, vm: &str) -> Result<Instance> {
        let by_id = vm.starts_with("i-") && vm[2..].chars().all(|c| c.is_ascii_alphanumeric());
        let all = if by_id {
            match self.ec2.instances(&[vm]).await {
                Ok(v) => v,
                Err(e) if e.to_string().contains("InvalidInstanceID") => Vec::new(),
                Err(e) => return Err(e),
            }
        } else {
            self.ec2.instances(&[]).await?
        };
        let mut found: Vec<Instance> = all
            .into_iter()
            .filter(|i| i.state != "terminated" && (i.id == vm || i.name.as_deref() == Some(vm)))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::VmNotFound {
                provider: "aws".into(),
                vm: vm.to_string(),
                detail: "no instance with that id or Name tag in the region".into(),
            }),
            n => Err(Error::InvalidArgument(format!(
                "{n} instances are named '{vm}': give the instance id ({})",
                found
                    .iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The sizes of `types`, each asked once.
    async fn types(&self, instances: &[Instance]) -> Result<HashMap<String, TypeInfo>> {
        let mut out = HashMap::new();
        for i in instances {
            if !out.contains_key(&i.instance_type) {
                let t = self.ec2.instance_type(&i.instance_type).await?;
                out.insert(i.instance_type.clone(), t);
            }
        }
        Ok(out)
    }

    /// The volumes of `instances`, by id.
    async fn volumes(&self, instances: &[Instance]) -> Result<HashMap<String, Volume>> {
        let ids: Vec<&str> = instances
            .iter()
            .flat_map(|i| i.volumes.iter().map(|(_, v)| v.as_str()))
            .collect();
        Ok(self
            .ec2
            .volumes(&ids)
            .await?
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect())
    }
}

fn power(state: &str) -> PowerState {
    match state {
        "running" | "pending" => PowerState::On,
        "stopped" | "stopping" | "shutting-down" => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

fn guest(i: &Instance) -> GuestOs {
    let details = i.platform_details.clone().unwrap_or_default();
    let family = if i.platform.as_deref() == Some("windows") {
        OsFamily::Windows
    } else if details.is_empty() {
        OsFamily::Other
    } else {
        match OsFamily::guess(&[&details]) {
            OsFamily::Other if details.contains("UNIX") => OsFamily::Linux,
            f => f,
        }
    };
    GuestOs {
        id: details.clone(),
        family,
        description: match (details.is_empty(), family) {
            (false, _) => details,
            (true, OsFamily::Windows) => "Windows".into(),
            (true, _) => "Unknown operating system".into(),
        },
    }
}

/// The instance's CPUs: cores × threads when EC2 reports them, else the
/// type's default vCPUs.
fn cpus(i: &Instance, t: &TypeInfo) -> u32 {
    i.cpu.map_or(t.vcpus, |(c, th)| c * th).max(1)
}

/// The volumes in disk order: the root device first, then by device name.
fn ordered(i: &Instance) -> Vec<(String, String)> {
    let mut v = i.volumes.clone();
    v.sort_by_key(|(dev, _)| (Some(dev) != i.root_device.as_ref(), dev.clone()));
    v
}

fn spec_of(i: &Instance, t: &TypeInfo, vols: &HashMap<String, Volume>) -> Result<VmSpec> {
    let name = i.name.clone().unwrap_or_else(|| i.id.clone());
    let mut disks = Vec::new();
    for (unit, (dev, vol)) in ordered(i).into_iter().enumerate() {
        let v = vols.get(&vol).ok_or_else(|| Error::Provider {
            provider: "aws".into(),
            message: format!("volume {vol} of {} is not described by EC2", i.id),
            retryable: false,
            source: None,
        })?;
        let short = dev.trim_start_matches("/dev/");
        disks.push(DiskSpec {
            name: format!("{name}-{short}"),
            capacity: v.size_gib << 30,
            format: DiskFormat::Raw,
            // EBS volumes reach Nitro instances as NVMe devices.
            controller: ControllerKind::Nvme,
            unit: unit as u32,
            location: vol.clone(),
            controller_index: None,
        });
    }
    let nics = i
        .nics
        .iter()
        .map(|n| NicSpec {
            network: n.subnet.clone().unwrap_or_else(|| n.id.clone()),
            mac: n.mac.clone(),
            model: "ena".into(),
        })
        .collect();
    let tags: Vec<String> = i.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(VmSpec {
        id: i.id.clone(),
        name,
        power_state: power(&i.state),
        cpus: cpus(i, t),
        memory_mib: t.memory_mib,
        firmware: if i.boot_mode.as_deref().is_some_and(|m| m.contains("uefi")) {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        guest_os: guest(i),
        nics,
        disks,
        annotation: (!tags.is_empty()).then(|| {
            format!(
                "EC2 instance {} ({}); tags: {}",
                i.id,
                i.instance_type,
                tags.join(", ")
            )
        }),
        hardware: Hardware {
            cores_per_socket: i.cpu.map(|(c, _)| c),
            ..Default::default()
        },
    })
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let all: Vec<Instance> = self
            .ec2
            .instances(&[])
            .await?
            .into_iter()
            .filter(|i| i.state != "terminated")
            .collect();
        let types = self.types(&all).await?;
        let vols = self.volumes(&all).await?;
        all.iter()
            .map(|i| Ok(VmInfo::from(&spec_of(i, &types[&i.instance_type], &vols)?)))
            .collect()
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        if let Some(spec) = self.stored(vm).await? {
            return Ok(spec);
        }
        let i = self.find(vm).await?;
        let types = self.types(std::slice::from_ref(&i)).await?;
        let vols = self.volumes(std::slice::from_ref(&i)).await?;
        spec_of(&i, &types[&i.instance_type], &vols)
    }

    /// The interrupted export's snapshots, when they all still exist;
    /// else (a warning) new ones, and the export's disks start over.
    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let spec = self.vm_spec(vm).await?;
        if let Some(classic) = &self.classic {
            let task = serde_json::from_str::<serde_json::Value>(token)
                .ok()
                .and_then(|v| v["export_task"].as_str().map(str::to_string));
            return export_task::open(self.ec2.clone(), classic.clone(), spec, task.as_deref())
                .await;
        }
        let Some(snaps) = self.kept_snapshots(&spec, token).await? else {
            tracing::warn!(
                vm,
                "the snapshots of the interrupted export are gone: taking new ones"
            );
            return self.snapshot_and_open(spec).await;
        };
        // On failure they stay (tagged): a later resume takes them again.
        self.opened(spec, snaps, true).await.map_err(|(_, e)| e)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        if let Some(classic) = &self.classic {
            if vm.starts_with("ami-") || vm.starts_with("snap-") {
                return Err(Error::InvalidArgument(format!(
                    "{vm}: VM Import/Export's instance export takes instances; an AMI or a snapshot is read through the EBS direct APIs (the default export_method)"
                )));
            }
            let spec = self.vm_spec(vm).await?;
            return export_task::open(self.ec2.clone(), classic.clone(), spec, None).await;
        }
        if let Some(spec) = self.stored(vm).await? {
            // An AMI's snapshots, or one snapshot: read in place, kept.
            let snaps = spec.disks.iter().map(|d| d.location.clone()).collect();
            return self.opened(spec, snaps, false).await.map_err(|(_, e)| e);
        }
        self.snapshot_and_open(self.vm_spec(vm).await?).await
    }
}

impl AwsProvider {
    /// The source reading `snapshots` (one per disk of `spec`) once they
    /// are complete and listed; `owned` ones are deleted when it closes.
    /// On failure, the source too, so that the caller may delete them.
    async fn opened(
        &self,
        spec: VmSpec,
        snapshots: Vec<String>,
        owned: bool,
    ) -> std::result::Result<Box<dyn ExportSource>, (AwsSource, Error)> {
        let mut source = AwsSource {
            spec,
            ec2: self.ec2.clone(),
            ebs: self.ebs.clone(),
            snapshots: snapshots.into_iter().map(|s| (s, None)).collect(),
            owned,
        };
        match source.wait_completed().await {
            Ok(()) => Ok(Box::new(source)),
            Err(e) => Err((source, e)),
        }
    }

    /// A new export of the instance `spec` describes: one snapshot per
    /// volume, made now (crash-consistent per volume), deleted when the
    /// export closes — or at once if it cannot start.
    async fn snapshot_and_open(&self, spec: VmSpec) -> Result<Box<dyn ExportSource>> {
        let mut snaps = Vec::new();
        for d in &spec.disks {
            match self
                .ec2
                .create_snapshot(
                    &d.location,
                    &format!("hypersdk export of {} ({})", spec.name, d.name),
                )
                .await
            {
                Ok(snap) => snaps.push(snap),
                Err(e) => {
                    delete_snapshots(&self.ec2, &snaps).await;
                    return Err(e);
                }
            }
        }
        match self.opened(spec, snaps, true).await {
            Ok(source) => Ok(source),
            Err((source, e)) => {
                source.delete_snapshots().await;
                Err(e)
            }
        }
    }
}

impl AwsProvider {
    /// The VM an AMI (`ami-…`) or a snapshot (`snap-…`) holds, read in
    /// place; None for other names (instances). An AMI has no instance
    /// type: 1 vCPU and 1 GiB are written, and the annotation says so.
    async fn stored(&self, vm: &str) -> Result<Option<VmSpec>> {
        let not_found = |what: &str| Error::VmNotFound {
            provider: "aws".into(),
            vm: vm.to_string(),
            detail: format!("no {what} of that id in the region"),
        };
        let (kind, (inst, vols)) = if let Some(hex) = vm.strip_prefix("ami-") {
            if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(Error::InvalidArgument(format!("{vm:?} is not an AMI id")));
            }
            (
                "AMI",
                self.ec2.image(vm).await?.ok_or_else(|| not_found("AMI"))?,
            )
        } else if vm.starts_with("snap-") {
            crate::ebs::check_id(vm)?;
            let v = self
                .ec2
                .snapshot(vm)
                .await?
                .ok_or_else(|| not_found("snapshot"))?;
            let inst = Instance {
                id: vm.to_string(),
                root_device: Some("/dev/sda1".into()),
                volumes: vec![("/dev/sda1".into(), vm.to_string())],
                ..Default::default()
            };
            ("snapshot", (inst, vec![v]))
        } else {
            return Ok(None);
        };
        if inst.volumes.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{kind} {vm} has no EBS snapshot to export"
            )));
        }
        let vols: HashMap<String, Volume> = vols.into_iter().map(|v| (v.id.clone(), v)).collect();
        let unknown = TypeInfo {
            vcpus: 1,
            memory_mib: 1024,
        };
        let mut spec = spec_of(&inst, &unknown, &vols)?;
        spec.power_state = PowerState::Off;
        let tags: Vec<String> = inst.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        spec.annotation = Some(format!(
            "{kind} {}{}: no instance type, so 1 vCPU and 1 GiB of memory are written: set them on import{}",
            inst.id,
            inst.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            if tags.is_empty() { String::new() } else { format!("; tags: {}", tags.join(", ")) }
        ));
        Ok(Some(spec))
    }

    /// The snapshots of resume token `token` if they still exist, each of
    /// the volume of its disk in `spec`; None when any is gone.
    async fn kept_snapshots(&self, spec: &VmSpec, token: &str) -> Result<Option<Vec<String>>> {
        let snaps: Vec<String> = serde_json::from_str::<serde_json::Value>(token)
            .ok()
            .and_then(|v| serde_json::from_value(v["snapshots"].clone()).ok())
            .filter(|s: &Vec<String>| {
                s.len() == spec.disks.len() && s.iter().all(|id| crate::ebs::check_id(id).is_ok())
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the checkpoint's source token is not one of an export of {}",
                    spec.name
                ))
            })?;
        // Only snapshots hypersdk made are taken (and deleted at the end).
        let states = match self.ec2.own_snapshot_states(&snaps).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("InvalidSnapshot.NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        for (snap, disk) in snaps.iter().zip(&spec.disks) {
            match states.iter().find(|(id, ..)| id == snap) {
                Some((_, state, _, volume)) if volume == &disk.location && state != "error" => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(snaps))
    }
}

/// One instance being exported: a snapshot per disk.
#[derive(Debug)]
struct AwsSource {
    spec: VmSpec,
    ec2: Arc<Ec2>,
    ebs: Arc<Ebs>,
    /// Per disk: its snapshot and, once listed, its blocks.
    snapshots: Vec<(String, Option<Arc<Blocks>>)>,
    /// Whether the export made the snapshots (and deletes them): not when
    /// it reads an AMI's or a snapshot named by the user.
    owned: bool,
}

/// Deletes snapshots the export made; failures are logged (the export's
/// own error matters more).
async fn delete_snapshots(ec2: &Ec2, snaps: &[String]) {
    for snap in snaps {
        if let Err(e) = ec2.delete_snapshot(snap).await {
            tracing::warn!(snapshot = %snap, error = %e, "cannot delete a snapshot the export made: delete it by hand");
        }
    }
}

impl AwsSource {
    async fn delete_snapshots(&self) {
        if self.owned {
            let snaps: Vec<String> = self.snapshots.iter().map(|(s, _)| s.clone()).collect();
            delete_snapshots(&self.ec2, &snaps).await;
        }
    }

    /// Waits for every snapshot to complete, then lists its blocks.
    async fn wait_completed(&mut self) -> Result<()> {
        let ids: Vec<String> = self.snapshots.iter().map(|(s, _)| s.clone()).collect();
        self.ec2.wait_snapshots(&ids).await?;
        for (snap, blocks) in &mut self.snapshots {
            let listed = RetryPolicy::default()
                .run("EBS ListSnapshotBlocks", |_| {
                    let (ebs, snap) = (self.ebs.clone(), snap.clone());
                    async move { ebs.blocks(&snap).await }
                })
                .await?;
            *blocks = Some(Arc::new(listed));
        }
        Ok(())
    }
}

#[async_trait]
impl ExportSource for AwsSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The snapshots' ids, in disk order (when the export made them).
    fn resume_token(&self) -> Option<String> {
        if !self.owned {
            return None;
        }
        let ids: Vec<&str> = self.snapshots.iter().map(|(s, _)| s.as_str()).collect();
        Some(serde_json::json!({ "snapshots": ids }).to_string())
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let disk = self
            .spec
            .disks
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        let (snap, blocks) = &self.snapshots[index];
        let blocks = blocks
            .clone()
            .ok_or_else(|| Error::Internal(format!("snapshot {snap} not listed")))?;
        let bs = blocks.block_size;
        if bs as usize > ZEROS.len() {
            return Err(Error::Provider {
                provider: "aws".into(),
                message: format!("snapshot {snap}: blocks of {bs} bytes"),
                retryable: false,
                source: None,
            });
        }
        let capacity = disk.capacity;
        let tokens: HashMap<u64, String> = blocks.blocks.iter().cloned().collect();
        let first = offset / bs;
        let last = capacity.div_ceil(bs);
        let (ebs, snap) = (self.ebs.clone(), snap.clone());
        let stream = futures_util::stream::iter(first..last)
            .map(move |i| {
                let (ebs, snap, token) = (ebs.clone(), snap.clone(), tokens.get(&i).cloned());
                let len = bs.min(capacity - i * bs);
                async move {
                    let data = match token {
                        Some(t) => Bytes::from(
                            RetryPolicy::default()
                                .run("EBS GetSnapshotBlock", |_| {
                                    let (ebs, snap, t) = (ebs.clone(), snap.clone(), t.clone());
                                    async move { ebs.block(&snap, i, &t, bs).await }
                                })
                                .await?,
                        ),
                        None => Bytes::from_static(&ZEROS[..bs as usize]),
                    };
                    let mut data = data.slice(..len as usize);
                    if i == offset / bs {
                        data = data.slice((offset - i * bs) as usize..);
                    }
                    Ok::<Bytes, Error>(data)
                }
            })
            .buffered(IN_FLIGHT);
        Ok(stream.boxed())
    }

    async fn allocated_ranges(&self, index: usize) -> Result<Option<Vec<std::ops::Range<u64>>>> {
        let Some((_, Some(blocks))) = self.snapshots.get(index) else {
            return Ok(None);
        };
        let capacity = self.spec.disks[index].capacity;
        let bs = blocks.block_size;
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for (i, _) in &blocks.blocks {
            let (start, end) = (i * bs, ((i + 1) * bs).min(capacity));
            if start >= end {
                continue;
            }
            match out.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => out.push(start..end),
            }
        }
        Ok(Some(out))
    }

    async fn close(&self) -> Result<()> {
        self.delete_snapshots().await;
        Ok(())
    }
}
