//! Azure VMs as a [`Provider`]: described through ARM (VM, size, managed
//! disks, NICs), exported by granting read access to each managed disk (or
//! to a snapshot of it, taken first unless the VM is deallocated) and
//! reading its page blob.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmInfo, VmSpec,
};
use hypersdk_core::{Error, ExportSource, Provider, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Value};

use crate::arm::{err, Arm};
use crate::blob::PageBlob;

/// Compute API version of VMs and sizes.
const API_VM: &str = "2024-07-01";
/// Compute API version of disks and snapshots.
const API_DISK: &str = "2024-03-02";
/// Network API version.
const API_NETWORK: &str = "2024-05-01";
/// Bytes per ranged GET: 4 MiB, the most the Blob service sends an MD5 for.
const CHUNK: u64 = 4 << 20;
/// GETs in flight per disk (32 MiB buffered).
const IN_FLIGHT: usize = 8;
/// How long a read SAS is asked for (renewed by nothing: a longer export
/// of one disk fails with a 403 naming the expiry).
const ACCESS_SECONDS: u64 = 8 * 3600;
/// Zeros for the chunks that hold no allocated page.
static ZEROS: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// Characters escaped in a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'%')
    .add(b'"')
    .add(b'<')
    .add(b'>');

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Azure as a provider: one subscription's VMs, or one resource group's.
#[derive(Debug)]
pub struct AzureProvider {
    arm: Arc<Arm>,
    subscription: String,
    resource_group: Option<String>,
}

/// A VM as ARM describes it, with what its export needs.
struct Described {
    vm: Value,
    spec: VmSpec,
    /// Per disk of the spec: its resource id and location.
    disks: Vec<(String, String)>,
    deallocated: bool,
}

impl AzureProvider {
    /// A provider of `subscription` (and only `resource_group`, if given).
    pub fn new(
        arm: Arm,
        subscription: &str,
        resource_group: Option<&str>,
    ) -> Result<AzureProvider> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 90
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c))
        };
        if !ok(subscription) {
            return Err(Error::InvalidArgument(format!(
                "{subscription:?} is not an Azure subscription id"
            )));
        }
        if let Some(rg) = resource_group.filter(|rg| !ok(rg)) {
            return Err(Error::InvalidArgument(format!(
                "{rg:?} is not an Azure resource group name"
            )));
        }
        Ok(AzureProvider {
            arm: Arc::new(arm),
            subscription: subscription.to_string(),
            resource_group: resource_group.map(str::to_string),
        })
    }

    fn sub(&self) -> String {
        format!("/subscriptions/{}", seg(&self.subscription))
    }

    /// Every VM in scope, with its power state.
    async fn all_vms(&self) -> Result<Vec<Value>> {
        let path = match &self.resource_group {
            Some(rg) => format!(
                "{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines",
                self.sub(),
                seg(rg)
            ),
            None => format!("{}/providers/Microsoft.Compute/virtualMachines", self.sub()),
        };
        self.arm
            .list(&format!("{path}?statusOnly=true"), API_VM)
            .await
    }

    /// The VM named `vm`: `NAME`, `RESOURCE_GROUP/NAME`, or its resource id.
    async fn find(&self, vm: &str) -> Result<Value> {
        let not_found = |detail: String| Error::VmNotFound {
            provider: "azure".into(),
            vm: vm.to_string(),
            detail,
        };
        let parts: Vec<&str> = vm.trim_matches('/').split('/').collect();
        let (rg, name) = match parts.as_slice() {
            [name] => (self.resource_group.clone(), name.to_string()),
            [rg, name] => (Some(rg.to_string()), name.to_string()),
            ["subscriptions", _, "resourceGroups", rg, "providers", p, "virtualMachines", name]
                if p.eq_ignore_ascii_case("Microsoft.Compute") =>
            {
                (Some(rg.to_string()), name.to_string())
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{vm:?} is not a VM name, RESOURCE_GROUP/NAME or a VM resource id"
                )))
            }
        };
        // Names of resource groups and VMs: letters, digits, - _ . ( ),
        // never "." or ".." (which a URL would resolve as a path step).
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 90
                && n != "."
                && n != ".."
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c))
        };
        if !valid(&name) || rg.as_deref().is_some_and(|g| !valid(g)) {
            return Err(Error::InvalidArgument(format!(
                "{vm:?} is not a VM name, RESOURCE_GROUP/NAME or a VM resource id"
            )));
        }
        if let Some(rg) = rg {
            let path = format!(
                "{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}?$expand=instanceView",
                self.sub(),
                seg(&rg),
                seg(&name)
            );
            return self
                .arm
                .get(&path, API_VM)
                .await?
                .ok_or_else(|| not_found(format!("no VM '{name}' in resource group '{rg}'")));
        }
        let mut found: Vec<Value> = self
            .all_vms()
            .await?
            .into_iter()
            .filter(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&name))
            })
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(not_found("no VM of that name in the subscription".into())),
            n => Err(Error::InvalidArgument(format!(
                "{n} VMs are named '{name}': give RESOURCE_GROUP/NAME ({})",
                found
                    .iter()
                    .filter_map(|v| resource_group_of(v["id"].as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The sizes offered in `location`: name → (cores, MiB).
    async fn sizes(&self, location: &str) -> Result<Vec<(String, u32, u64)>> {
        let path = format!(
            "{}/providers/Microsoft.Compute/locations/{}/vmSizes",
            self.sub(),
            seg(location)
        );
        Ok(self
            .arm
            .list(&path, API_VM)
            .await?
            .iter()
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_string(),
                    s["numberOfCores"].as_u64()? as u32,
                    s["memoryInMB"].as_u64()?,
                ))
            })
            .collect())
    }

    /// A resource by its id (which must be in this subscription).
    async fn resource(&self, id: &str, api: &str) -> Result<Value> {
        let prefix = format!("{}/", self.sub());
        if !id
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase())
            || id.contains(['?', '#'])
            || id.contains("/../")
        {
            return Err(err(
                format!(
                    "resource {id:?} is not in subscription {}",
                    self.subscription
                ),
                false,
            ));
        }
        self.arm
            .get(id, api)
            .await?
            .ok_or_else(|| err(format!("resource {id} is not found"), false))
    }

    /// The VM `vm` described: its spec, and its disks' ids.
    async fn describe(&self, vm: Value, sizes: &[(String, u32, u64)]) -> Result<Described> {
        let name = vm["name"].as_str().unwrap_or_default().to_string();
        let p = &vm["properties"];
        let size = p["hardwareProfile"]["vmSize"].as_str().unwrap_or_default();
        let (cpus, memory_mib) = sizes
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(size))
            .map(|(_, c, m)| (*c, *m))
            .ok_or_else(|| {
                err(
                    format!("VM {name}: size {size:?} is not among the sizes of its location"),
                    false,
                )
            })?;
        let statuses = p["instanceView"]["statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let power_code = statuses
            .iter()
            .filter_map(|s| s["code"].as_str())
            .find_map(|c| c.strip_prefix("PowerState/"))
            .unwrap_or("")
            .to_string();
        let power_state = match power_code.as_str() {
            "running" | "starting" => PowerState::On,
            "stopped" | "deallocated" | "deallocating" | "stopping" => PowerState::Off,
            _ => PowerState::Unknown,
        };
        let storage = &p["storageProfile"];
        let mut refs: Vec<(Option<u64>, &Value)> = vec![(None, &storage["osDisk"])];
        let mut data: Vec<(Option<u64>, &Value)> = storage["dataDisks"]
            .as_array()
            .map(|a| a.iter().map(|d| (d["lun"].as_u64(), d)).collect())
            .unwrap_or_default();
        data.sort_by_key(|(lun, _)| *lun);
        refs.extend(data);
        let security = p["securityProfile"]["securityType"].as_str().unwrap_or("");
        let mut generation2 = !security.is_empty();
        let mut disks = Vec::new();
        let mut ids = Vec::new();
        for (unit, (lun, r)) in refs.into_iter().enumerate() {
            let Some(id) = r["managedDisk"]["id"].as_str() else {
                return Err(err(
                    format!(
                        "VM {name}: disk {} is not a managed disk (unmanaged VHDs in storage accounts are not supported)",
                        r["name"].as_str().unwrap_or("?")
                    ),
                    false,
                ));
            };
            let d = self.resource(id, API_DISK).await?;
            let dp = &d["properties"];
            if lun.is_none() && dp["hyperVGeneration"].as_str() == Some("V2") {
                generation2 = true;
            }
            let capacity = dp["diskSizeBytes"]
                .as_u64()
                .or_else(|| dp["diskSizeGB"].as_u64().map(|g| g << 30))
                .ok_or_else(|| err(format!("disk {id} has no size"), false))?;
            let disk_name = d["name"].as_str().unwrap_or("disk").to_string();
            disks.push(DiskSpec {
                name: disk_name,
                capacity,
                format: DiskFormat::Raw,
                controller: ControllerKind::Scsi,
                unit: unit as u32,
                location: id.to_string(),
                controller_index: None,
            });
            ids.push((
                id.to_string(),
                d["location"].as_str().unwrap_or_default().to_string(),
            ));
        }
        // Generation 1 VMs boot from IDE; generation 2 from SCSI.
        if !generation2 {
            if let Some(os) = disks.first_mut() {
                os.controller = ControllerKind::Ide;
                os.unit = 0;
            }
        }
        let mut nics = Vec::new();
        for n in p["networkProfile"]["networkInterfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let Some(id) = n["id"].as_str() else { continue };
            let nic = self.resource(id, API_NETWORK).await?;
            let np = &nic["properties"];
            let subnet = np["ipConfigurations"][0]["properties"]["subnet"]["id"]
                .as_str()
                .unwrap_or("");
            // …/virtualNetworks/VNET/subnets/SUBNET → VNET/SUBNET.
            let network = match subnet.split_once("/virtualNetworks/") {
                Some((_, tail)) => tail.replace("/subnets/", "/"),
                None => nic["name"].as_str().unwrap_or("network").to_string(),
            };
            nics.push(NicSpec {
                network,
                mac: np["macAddress"]
                    .as_str()
                    .map(|m| m.replace('-', ":").to_ascii_lowercase()),
                model: "netvsc".into(),
            });
        }
        let os_type = storage["osDisk"]["osType"].as_str().unwrap_or("");
        let image = &storage["imageReference"];
        let image_text = [&image["publisher"], &image["offer"], &image["sku"]]
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let family = match os_type {
            "Windows" => OsFamily::Windows,
            "Linux" => match OsFamily::guess(&[&image_text]) {
                OsFamily::Other => OsFamily::Linux,
                f => f,
            },
            _ => OsFamily::Other,
        };
        let guest_os = GuestOs {
            id: os_type.to_ascii_lowercase(),
            family,
            description: if image_text.is_empty() {
                if os_type.is_empty() {
                    "Unknown operating system".into()
                } else {
                    os_type.to_string()
                }
            } else {
                image_text
            },
        };
        let mut tags: Vec<String> = vm["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        let location = vm["location"].as_str().unwrap_or("");
        let mut annotation = format!(
            "Azure VM {} (vmId {}, {size}, {location}",
            vm["id"].as_str().unwrap_or(&name),
            p["vmId"].as_str().unwrap_or("unknown")
        );
        if !security.is_empty() {
            annotation.push_str(&format!(", security type {security}"));
        }
        annotation.push(')');
        if !tags.is_empty() {
            annotation.push_str(&format!("; tags: {}", tags.join(", ")));
        }
        let spec = VmSpec {
            // The resource id: unique, and what `find` takes back.
            id: vm["id"].as_str().unwrap_or(&name).to_string(),
            name,
            power_state,
            cpus: cpus.max(1),
            memory_mib,
            firmware: if generation2 {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            guest_os,
            nics,
            disks,
            annotation: Some(annotation),
            hardware: Hardware {
                secure_boot: p["securityProfile"]["uefiSettings"]["secureBootEnabled"]
                    == json!(true),
                ..Default::default()
            },
        };
        Ok(Described {
            vm,
            spec,
            disks: ids,
            deallocated: power_code == "deallocated",
        })
    }

    async fn describe_one(&self, vm: &str) -> Result<Described> {
        let v = self.find(vm).await?;
        let sizes = self
            .sizes(v["location"].as_str().unwrap_or_default())
            .await?;
        self.describe(v, &sizes).await
    }
}

/// The resource group in a resource id.
fn resource_group_of(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split('/').collect();
    parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("resourceGroups"))
        .and_then(|i| parts.get(i + 1))
        .map(|s| s.to_string())
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        "azure"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let all = self.all_vms().await?;
        let mut sizes: std::collections::HashMap<String, Vec<(String, u32, u64)>> =
            Default::default();
        let mut out = Vec::new();
        for v in all {
            let location = v["location"].as_str().unwrap_or_default().to_string();
            if !sizes.contains_key(&location) {
                let s = self.sizes(&location).await?;
                sizes.insert(location.clone(), s);
            }
            out.push(VmInfo::from(
                &self.describe(v, &sizes[&location]).await?.spec,
            ));
        }
        Ok(out)
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        Ok(self.describe_one(vm).await?.spec)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        self.open(self.describe_one(vm).await?, None).await
    }

    /// The interrupted export's snapshots, when they all still exist;
    /// else (a warning) a new export, whose disks start over.
    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let d = self.describe_one(vm).await?;
        let snaps: Vec<String> = serde_json::from_str::<Value>(token)
            .ok()
            .and_then(|v| serde_json::from_value(v["snapshots"].clone()).ok())
            .filter(|s: &Vec<String>| s.len() == d.disks.len())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the checkpoint's source token is not one of an export of {}",
                    d.spec.name
                ))
            })?;
        for (snap, (disk, _)) in snaps.iter().zip(&d.disks) {
            let ours = match self.resource(snap, API_DISK).await {
                Ok(v) => {
                    v["tags"]["created-by"] == "hypersdk"
                        && v["properties"]["creationData"]["sourceResourceId"]
                            .as_str()
                            .is_some_and(|s| s.eq_ignore_ascii_case(disk))
                }
                Err(_) => false,
            };
            if !ours {
                tracing::warn!(vm, snapshot = %snap, "the snapshots of the interrupted export are gone: taking new ones");
                return self.open(d, None).await;
            }
        }
        self.open(d, Some(&snaps)).await
    }
}

impl AzureProvider {
    /// Opens the export of the VM `d` describes, through `kept` snapshots
    /// if given.
    async fn open(&self, d: Described, kept: Option<&[String]>) -> Result<Box<dyn ExportSource>> {
        let mut source = AzureSource {
            arm: self.arm.clone(),
            spec: d.spec,
            held: Vec::new(),
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let vm_id = d.vm["id"].as_str().unwrap_or_default().to_string();
        let how = |i: usize| match kept {
            Some(k) => Snapshot::Kept(k[i].as_str()),
            None if d.deallocated => Snapshot::Direct,
            None => Snapshot::Take,
        };
        for (index, (disk_id, location)) in d.disks.iter().enumerate() {
            match source
                .take(index, disk_id, location, &vm_id, how(index), stamp)
                .await
            {
                Ok(h) => source.held.push(h),
                Err(e) => {
                    source.release().await;
                    return Err(e);
                }
            }
        }
        Ok(Box::new(source))
    }
}

/// How a disk is read.
#[derive(Debug, Clone, Copy)]
enum Snapshot<'a> {
    /// Directly (a deallocated VM).
    Direct,
    /// Through a new snapshot.
    Take,
    /// Through this snapshot an interrupted export made.
    Kept(&'a str),
}

/// What an export holds of one disk.
#[derive(Debug)]
struct Held {
    /// The disk's, or the snapshot's, resource id.
    resource: String,
    /// Whether `resource` is a snapshot the export made.
    snapshot: bool,
    /// Whether read access is granted (and must be revoked).
    granted: bool,
    blob: Option<Arc<PageBlob>>,
    ranges: Arc<Vec<Range<u64>>>,
}

/// One VM being exported.
#[derive(Debug)]
struct AzureSource {
    arm: Arc<Arm>,
    spec: VmSpec,
    held: Vec<Held>,
}

impl AzureSource {
    /// Read access to disk `index`: through a snapshot of it when
    /// `snapshot`, else directly.
    async fn take(
        &mut self,
        index: usize,
        disk_id: &str,
        location: &str,
        vm_id: &str,
        snapshot: Snapshot<'_>,
        stamp: u64,
    ) -> Result<Held> {
        let disk = self.spec.disks[index].name.clone();
        let mut held = Held {
            resource: disk_id.to_string(),
            snapshot: false,
            granted: false,
            blob: None,
            ranges: Arc::new(Vec::new()),
        };
        if let Snapshot::Kept(id) = snapshot {
            held.resource = id.to_string();
            held.snapshot = true;
            // The killed run's access may still be granted: end it first,
            // since a snapshot being exported may refuse another grant.
            if let Err(e) = self
                .arm
                .operation(
                    reqwest::Method::POST,
                    &format!("{id}/endGetAccess"),
                    API_DISK,
                    None,
                )
                .await
            {
                tracing::debug!(snapshot = %id, error = %e, "no earlier access to end");
            }
        }
        if let Snapshot::Take = snapshot {
            // Snapshot names: 1–80 of letters, digits, _ . -
            let vm: String = self
                .spec
                .name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            let name = format!("hypersdk-{vm}-{index}-{stamp}");
            let rg = resource_group_of(disk_id).unwrap_or_default();
            let sub = disk_id.split('/').nth(2).unwrap_or_default();
            let id = format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/snapshots/{}",
                seg(sub),
                seg(&rg),
                seg(&name)
            );
            let body = json!({
                "location": location,
                "tags": {"created-by": "hypersdk", "source-vm": vm_id},
                "properties": {
                    "creationData": {"createOption": "Copy", "sourceResourceId": disk_id},
                    "incremental": false
                }
            });
            tracing::info!(vm = %self.spec.name, disk = %disk, snapshot = %name, "snapshotting the disk of a running VM");
            // Held before it exists: a failure after the request still deletes it.
            held.resource = id.clone();
            held.snapshot = true;
            if let Err(e) = self
                .arm
                .operation(reqwest::Method::PUT, &id, API_DISK, Some(&body))
                .await
            {
                self.drop_held(&held).await;
                return Err(e);
            }
        }
        let grant = self
            .arm
            .operation(
                reqwest::Method::POST,
                &format!("{}/beginGetAccess", held.resource),
                API_DISK,
                Some(&json!({"access": "Read", "durationInSeconds": ACCESS_SECONDS})),
            )
            .await;
        held.granted = true;
        let opened = async {
            let grant = grant?;
            let sas = grant
                .as_ref()
                .and_then(|g| {
                    g["accessSAS"]
                        .as_str()
                        .or(g["properties"]["output"]["accessSAS"].as_str())
                })
                .ok_or_else(|| {
                    err(
                        format!("granting access to {} gave no accessSAS", held.resource),
                        false,
                    )
                })?;
            let what = if held.snapshot {
                format!("the snapshot of disk {disk}")
            } else {
                format!("disk {disk}")
            };
            let blob =
                PageBlob::open(self.arm.http.clone(), sas, &what, self.arm.plain_http()).await?;
            let ranges = blob.ranges().await?;
            Ok::<_, Error>((blob, ranges))
        }
        .await;
        match opened {
            Ok((blob, ranges)) => {
                let d = &mut self.spec.disks[index];
                if blob.capacity != d.capacity {
                    tracing::warn!(disk = %d.name, arm = d.capacity, vhd = blob.capacity, "the disk's VHD footer and ARM disagree on its size: the footer's is used");
                    d.capacity = blob.capacity;
                }
                held.blob = Some(Arc::new(blob));
                held.ranges = Arc::new(ranges);
                Ok(held)
            }
            Err(e) => {
                self.drop_held(&held).await;
                Err(e)
            }
        }
    }

    /// Revokes access to `h` and deletes it if it is the export's snapshot;
    /// failures are logged (the export's own error matters more).
    async fn drop_held(&self, h: &Held) {
        if h.granted {
            if let Err(e) = self
                .arm
                .operation(
                    reqwest::Method::POST,
                    &format!("{}/endGetAccess", h.resource),
                    API_DISK,
                    None,
                )
                .await
            {
                tracing::warn!(resource = %h.resource, error = %e, "cannot revoke the export's read access: revoke it by hand");
            }
        }
        if h.snapshot {
            if let Err(e) = self
                .arm
                .operation(reqwest::Method::DELETE, &h.resource, API_DISK, None)
                .await
            {
                tracing::warn!(snapshot = %h.resource, error = %e, "cannot delete a snapshot the export made: delete it by hand");
            }
        }
    }

    async fn release(&self) {
        for h in &self.held {
            self.drop_held(h).await;
        }
    }
}

#[async_trait]
impl ExportSource for AzureSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The snapshots' resource ids in disk order, when the export made them.
    fn resume_token(&self) -> Option<String> {
        let ids: Vec<&str> = self
            .held
            .iter()
            .filter(|h| h.snapshot)
            .map(|h| h.resource.as_str())
            .collect();
        (!ids.is_empty() && ids.len() == self.held.len())
            .then(|| json!({ "snapshots": ids }).to_string())
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let h = self
            .held
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        let blob = h
            .blob
            .clone()
            .ok_or_else(|| Error::Internal(format!("disk {index} not opened")))?;
        let ranges = h.ranges.clone();
        let capacity = blob.capacity;
        let first = offset / CHUNK;
        let last = capacity.div_ceil(CHUNK);
        let stream = futures_util::stream::iter(first..last)
            .map(move |i| {
                let (blob, ranges) = (blob.clone(), ranges.clone());
                async move {
                    let chunk = i * CHUNK..((i + 1) * CHUNK).min(capacity);
                    // The first allocated range ending after the chunk's start.
                    let at = ranges.partition_point(|r| r.end <= chunk.start);
                    let allocated = ranges.get(at).is_some_and(|r| r.start < chunk.end);
                    let data = if allocated {
                        blob.read(chunk.clone()).await?
                    } else {
                        Bytes::from_static(&ZEROS[..(chunk.end - chunk.start) as usize])
                    };
                    let skip = offset.saturating_sub(chunk.start) as usize;
                    Ok::<Bytes, Error>(data.slice(skip.min(data.len())..))
                }
            })
            .buffered(IN_FLIGHT);
        Ok(stream.boxed())
    }

    async fn allocated_ranges(&self, index: usize) -> Result<Option<Vec<Range<u64>>>> {
        Ok(self.held.get(index).map(|h| h.ranges.as_ref().clone()))
    }

    async fn close(&self) -> Result<()> {
        self.release().await;
        Ok(())
    }
}
