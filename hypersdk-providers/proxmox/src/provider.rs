//! The provider: inventory through the API, exports through a snapshot
//! (for running VMs) and SFTP reads of the volumes' files.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hypersdk_core::vm::{DiskFormat, PowerState, VmInfo, VmSpec};
use hypersdk_core::{DiskStream, Error, ExportSource, Provider, Result};
use hypersdk_formats::qcow2::Qcow2Reader;
use hypersdk_formats::raw::RawImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{seg, Api};
use crate::describe::{describe, Described};
use crate::sftp::{BlockingFile, Sftp, SshSettings};

/// Proxmox VE VMs through the API and the nodes' SFTP.
#[derive(Debug)]
pub struct ProxmoxProvider {
    api: Api,
    ssh: SshSettings,
    task_timeout: Duration,
}

fn provider_err(message: String) -> Error {
    Error::Provider {
        provider: "proxmox".into(),
        message,
        retryable: false,
        source: None,
    }
}

/// A VM found in the cluster.
#[derive(Debug, Clone)]
struct Found {
    node: String,
    vmid: u64,
}

/// What an export made, kept in its checkpoint to reopen it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Made {
    node: String,
    vmid: u64,
    snapshot: Option<String>,
}

impl ProxmoxProvider {
    pub(crate) fn new(api: Api, ssh: SshSettings, task_timeout: Duration) -> Self {
        ProxmoxProvider {
            api,
            ssh,
            task_timeout,
        }
    }

    /// The cluster's QEMU VMs (not templates): `GET /cluster/resources?type=vm`.
    async fn resources(&self) -> Result<Vec<Value>> {
        let all = self.api.get("/cluster/resources?type=vm").await?;
        Ok(all
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["type"] == "qemu" && r["template"].as_u64().unwrap_or(0) == 0)
            .collect())
    }

    /// The VM `vm` names: `NODE/VMID`, a VMID, or a name (which must be
    /// unique in the cluster).
    async fn find(&self, vm: &str) -> Result<Found> {
        let all = self.resources().await?;
        let found = |r: &Value| Found {
            node: r["node"].as_str().unwrap_or_default().to_string(),
            vmid: r["vmid"].as_u64().unwrap_or(0),
        };
        let (node, id) = match vm.split_once('/') {
            Some((n, i)) => (Some(n), i),
            None => (None, vm),
        };
        if let Ok(vmid) = id.parse::<u64>() {
            if let Some(r) = all
                .iter()
                .find(|r| r["vmid"].as_u64() == Some(vmid) && node.is_none_or(|n| r["node"] == n))
            {
                return Ok(found(r));
            }
        } else if node.is_none() {
            let named: Vec<&Value> = all.iter().filter(|r| r["name"] == vm).collect();
            match named.as_slice() {
                [one] => return Ok(found(one)),
                [] => {}
                many => {
                    let ids: Vec<String> = many
                        .iter()
                        .map(|r| format!("{}/{}", r["node"].as_str().unwrap_or("?"), r["vmid"]))
                        .collect();
                    return Err(Error::InvalidArgument(format!(
                        "{} VMs are named {}: name one by NODE/VMID ({})",
                        many.len(),
                        hypersdk_formats::error::display_name(vm),
                        ids.join(", ")
                    )));
                }
            }
        }
        Err(Error::VmNotFound {
            provider: "proxmox".into(),
            vm: hypersdk_formats::error::display_name(vm),
            detail: format!(
                "no QEMU VM of that name, VMID or NODE/VMID in the cluster at {}",
                self.api.host()
            ),
        })
    }

    async fn describe(&self, f: &Found) -> Result<Described> {
        let base = format!("/nodes/{}/qemu/{}", seg(&f.node), f.vmid);
        let config = self.api.get(&format!("{base}/config")).await?;
        let status = self.api.get(&format!("{base}/status/current")).await?;
        describe(
            &f.node,
            f.vmid,
            &config,
            status["status"].as_str().unwrap_or(""),
        )
    }

    /// Opens the export of `f`, reusing `made.snapshot` when resuming.
    async fn open(&self, f: Found, resumed: Option<String>) -> Result<Box<dyn ExportSource>> {
        // The kept partial holds bytes of a snapshot this export reopens.
        let reopened = resumed.is_some();
        let described = self.describe(&f).await?;
        let running = described.spec.power_state != PowerState::Off;
        if described.volumes.is_empty() {
            return Err(provider_err(format!(
                "VM {} ({}) has no disk on a storage volume to export",
                f.vmid, described.spec.name
            )));
        }
        // Where each volume's file is, checked against its storage.
        let mut files = Vec::new();
        for (v, d) in described.volumes.iter().zip(&described.spec.disks) {
            files.push(self.volume_file(&f.node, &v.volid, &d.name).await?);
        }
        if running && resumed.is_none() {
            if let Some((i, _)) = files
                .iter()
                .enumerate()
                .find(|(_, (_, fmt))| *fmt != DiskFormat::Qcow2)
            {
                return Err(provider_err(format!(
                    "VM {} ({}) runs and its disk {} ({}) is not qcow2: Proxmox VE cannot snapshot it on this storage, so no consistent copy can be read. Stop the VM, or move the disk to qcow2 (Move disk), then export again",
                    f.vmid, described.spec.name, described.spec.disks[i].name, described.volumes[i].volid
                )));
            }
        }
        let snapshot = match resumed {
            Some(s) => Some(s),
            None if running => Some(self.snapshot(&f).await?),
            None => None,
        };
        let made = Made {
            node: f.node.clone(),
            vmid: f.vmid,
            snapshot: snapshot.clone(),
        };
        let session = match self.session(&f.node).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.release(&made).await;
                return Err(e);
            }
        };
        Ok(Box::new(ProxmoxSource {
            spec: described.spec,
            files,
            session,
            made,
            api: self.api.clone(),
            task_timeout: self.task_timeout,
            read_any: std::sync::atomic::AtomicBool::new(reopened),
        }))
    }

    /// The path and format of volume `volid` of disk `disk` on `node`:
    /// `GET /nodes/{node}/storage/{storage}/content/{volume}`, which must lie
    /// under its directory storage's images (`GET /storage/{storage}`).
    async fn volume_file(
        &self,
        node: &str,
        volid: &str,
        disk: &str,
    ) -> Result<(String, DiskFormat)> {
        let storage = volid.split(':').next().unwrap_or_default();
        let conf = self.api.get(&format!("/storage/{}", seg(storage))).await?;
        let kind = conf["type"].as_str().unwrap_or_default();
        let root = conf["path"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string();
        if !matches!(kind, "dir" | "nfs" | "cifs" | "glusterfs" | "cephfs") || root.is_empty() {
            return Err(provider_err(format!(
                "disk {disk} is on storage {storage} of type {kind}: only file-based storages (dir, nfs, cifs, glusterfs, cephfs) are read over SFTP; move the disk to one, or export it another way"
            )));
        }
        let v = self
            .api
            .get(&format!(
                "/nodes/{}/storage/{}/content/{}",
                seg(node),
                seg(storage),
                seg(volid)
            ))
            .await?;
        let path = v["path"].as_str().unwrap_or_default().to_string();
        let inside = path
            .strip_prefix(&format!("{root}/images/"))
            .is_some_and(|rest| {
                !rest
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            });
        if !inside {
            return Err(provider_err(format!(
                "the API says disk {disk} ({volid}) is at {}, which is not below {root}/images/ of storage {storage}: refused",
                hypersdk_formats::error::display_name(&path)
            )));
        }
        let format = match v["format"].as_str() {
            Some("qcow2") => DiskFormat::Qcow2,
            Some("raw") => DiskFormat::Raw,
            other => {
                return Err(provider_err(format!(
                    "disk {disk} ({volid}) is in format {}: qcow2 and raw are read",
                    other.unwrap_or("unknown")
                )))
            }
        };
        Ok((path, format))
    }

    /// Takes a snapshot of the VM (no RAM state) and waits for its task.
    async fn snapshot(&self, f: &Found) -> Result<String> {
        let name = format!(
            "hypersdk-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        let base = format!("/nodes/{}/qemu/{}/snapshot", seg(&f.node), f.vmid);
        // Snapshots kept with partial exports that were never resumed are
        // named, not deleted: another export may still resume from one.
        if let Ok(list) = self.api.get(&base).await {
            for s in list.as_array().into_iter().flatten() {
                if let Some(old) = s["name"].as_str().filter(|n| n.starts_with("hypersdk-")) {
                    tracing::warn!(
                        vmid = f.vmid,
                        snapshot = old,
                        "the VM has a snapshot kept for an interrupted export: export with --resume to finish and delete it, or delete it in Proxmox if that export is abandoned"
                    );
                }
            }
        }
        let upid = self
            .api
            .post(
                &base,
                &[
                    ("snapname", &name),
                    (
                        "description",
                        "made by hypersdk for an export; deleted after it",
                    ),
                    ("vmstate", "0"),
                ],
            )
            .await?;
        let upid = upid.as_str().unwrap_or_default().to_string();
        tracing::info!(vmid = f.vmid, node = %f.node, snapshot = %name, "snapshot of the running VM");
        if let Err(e) = self
            .api
            .wait_task(&f.node, &upid, self.task_timeout, "the snapshot")
            .await
        {
            // A snapshot that half-happened is removed too.
            let _ = self.api.delete(&format!("{base}/{}", seg(&name))).await;
            return Err(e);
        }
        Ok(name)
    }

    async fn release(&self, made: &Made) {
        release(&self.api, made, self.task_timeout).await;
    }

    /// An SFTP session on `node`, at the address the cluster reports for it
    /// (`GET /cluster/status`) unless ssh_hosts says otherwise.
    async fn session(&self, node: &str) -> Result<Sftp> {
        let status = self.api.get("/cluster/status").await.unwrap_or(Value::Null);
        let reported = status
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["type"] == "node" && s["name"] == node)
            .and_then(|s| s["ip"].as_str())
            .map(str::to_string);
        let host = self.ssh.address(node, reported.as_deref());
        self.ssh.connect(&host).await
    }
}

/// Deletes the snapshot an export made, waiting for the task; failures are
/// logged (the snapshot is then named so an operator can remove it).
async fn release(api: &Api, made: &Made, timeout: Duration) {
    let Some(snap) = &made.snapshot else { return };
    let path = format!(
        "/nodes/{}/qemu/{}/snapshot/{}",
        seg(&made.node),
        made.vmid,
        seg(snap)
    );
    let done = match api.delete(&path).await {
        Ok(upid) => {
            api.wait_task(
                &made.node,
                upid.as_str().unwrap_or_default(),
                timeout,
                "deleting the snapshot",
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        tracing::warn!(vmid = made.vmid, node = %made.node, snapshot = %snap, error = %e,
            "cannot delete the export's snapshot: delete it by hand (qm delsnapshot)");
    }
}

#[async_trait]
impl Provider for ProxmoxProvider {
    fn name(&self) -> &str {
        "proxmox"
    }

    /// Every QEMU VM of the cluster, each described from its configuration
    /// (one call per VM) so the listing agrees with [`vm_spec`](Provider::vm_spec).
    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let mut out = Vec::new();
        for r in self.resources().await? {
            let f = Found {
                node: r["node"].as_str().unwrap_or_default().to_string(),
                vmid: r["vmid"].as_u64().unwrap_or(0),
            };
            let mut info = VmInfo::from(&self.describe(&f).await?.spec);
            info.folder = Some(format!("/{}", f.node));
            out.push(info);
        }
        Ok(out)
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        let f = self.find(vm).await?;
        Ok(self.describe(&f).await?.spec)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        let f = self.find(vm).await?;
        self.open(f, None).await
    }

    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let made: Made = serde_json::from_str(token)
            .map_err(|e| Error::InvalidArgument(format!("proxmox resume token: {e}")))?;
        let f = self.find(vm).await?;
        if f.vmid != made.vmid {
            return Err(Error::InvalidArgument(format!(
                "the interrupted export was of VM {}, not {}",
                made.vmid, f.vmid
            )));
        }
        // The snapshot must still be there; without it, a new one is taken
        // and the export's disks start over (the checkpoint names the old
        // snapshot, so kept bytes of another moment are never mixed in).
        if let Some(snap) = &made.snapshot {
            let list = self
                .api
                .get(&format!("/nodes/{}/qemu/{}/snapshot", seg(&f.node), f.vmid))
                .await?;
            let there = list
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == snap.as_str());
            if !there {
                tracing::warn!(
                    vmid = f.vmid,
                    snapshot = %snap,
                    "the interrupted export's snapshot is gone: taking a new one, the disks start over"
                );
                return self.open(f, None).await;
            }
        }
        self.open(f, made.snapshot).await
    }
}

/// One VM being exported.
#[derive(Debug)]
struct ProxmoxSource {
    spec: VmSpec,
    /// Per disk: its file on the node and format.
    files: Vec<(String, DiskFormat)>,
    session: Arc<Sftp>,
    made: Made,
    api: Api,
    task_timeout: Duration,
    /// Whether the partial export can hold bytes of the snapshot (a disk
    /// was opened, or this export reopened it): only then is the
    /// snapshot worth keeping for a resume.
    read_any: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ExportSource for ProxmoxSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    fn resume_token(&self) -> Option<String> {
        serde_json::to_string(&self.made).ok()
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let (Some(disk), Some((path, format))) =
            (self.spec.disks.get(index), self.files.get(index))
        else {
            return Err(Error::InvalidArgument(format!("no disk {index}")));
        };
        let file = BlockingFile::open(self.session.clone(), path).await?;
        let (format, snapshot) = (*format, self.made.snapshot.clone());
        let location = format!("{}:{path}", self.session.host);
        self.read_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(hypersdk_core::provider::image_stream(
            move || -> std::result::Result<Box<dyn hypersdk_formats::DiskImage>, hypersdk_core::BoxError> {
                Ok(match format {
                    DiskFormat::Qcow2 => {
                        let mut r = Qcow2Reader::open(file)?;
                        if let Some(s) = &snapshot {
                            r.select_snapshot(s)?;
                        }
                        Box::new(r)
                    }
                    _ => Box::new(RawImage::open(file)?),
                })
            },
            disk.capacity,
            offset,
            (self.spec.name.clone(), disk.name.clone(), location),
        ))
    }

    async fn close(&self) -> Result<()> {
        release(&self.api, &self.made, self.task_timeout).await;
        Ok(())
    }

    /// The partial export is kept for `--resume`: so is the snapshot it
    /// read, which the resumed export reopens and then deletes. A
    /// snapshot nothing was read from is deleted as on any other path.
    async fn close_kept(&self) -> Result<()> {
        if !self.read_any.load(std::sync::atomic::Ordering::Relaxed) {
            return self.close().await;
        }
        if let Some(s) = &self.made.snapshot {
            tracing::warn!(
                vmid = self.made.vmid,
                snapshot = %s,
                "the snapshot is kept with the partial export: the export with --resume reads it on and deletes it"
            );
        }
        Ok(())
    }
}
