//! The VM operations a migration needs: snapshots (create, list, revert,
//! remove), power off, guest shutdown, and ejecting CD-ROM media. Tasks are
//! awaited; their progress goes to an optional callback.

use std::time::Duration;

use hypersdk_core::vmops::{SnapshotInfo, SnapshotOptions, TaskProgress, VmOps};
use hypersdk_core::{Error, PowerState, Result};
use hypersdk_formats::xml::Element;

use crate::client::permanent;
use crate::inventory::{self, properties, VmRecord};
use crate::provider::VsphereProvider;
use crate::soap::{el, escape, MoRef};
use crate::tasks::{delete_snapshot, run_task};

impl VsphereProvider {
    async fn record(&self, vm: &str) -> Result<VmRecord> {
        let records = inventory::list(self.connection()).await?;
        Ok(inventory::pick(&records, vm, self.connection().host())?.clone())
    }

    /// `vm`'s snapshots, depth first (parents before children).
    pub async fn snapshot_tree(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        let rec = self.record(vm).await?;
        let props = properties(
            self.connection(),
            &rec.moref,
            &["snapshot.rootSnapshotList"],
        )
        .await?;
        fn walk(e: &Element, depth: usize, parent: Option<&str>, out: &mut Vec<SnapshotInfo>) {
            for tree in e.children.iter().filter(|c| {
                matches!(
                    c.local_name(),
                    "VirtualMachineSnapshotTree" | "childSnapshotList"
                )
            }) {
                let name = tree.find_text("name").unwrap_or("").to_string();
                out.push(SnapshotInfo {
                    name: name.clone(),
                    id: tree
                        .find("snapshot")
                        .map(|s| s.text.trim().to_string())
                        .unwrap_or_default(),
                    description: tree.find_text("description").unwrap_or("").to_string(),
                    created: tree.find_text("createTime").unwrap_or("").to_string(),
                    depth,
                    parent: parent.map(str::to_string),
                });
                walk(tree, depth + 1, Some(&name), out);
            }
        }
        let mut out = Vec::new();
        for (_, val) in &props {
            walk(val, 0, None, &mut out);
        }
        Ok(out)
    }

    /// The names of `vm`'s snapshots, depth first.
    pub async fn snapshots(&self, vm: &str) -> Result<Vec<String>> {
        Ok(self
            .snapshot_tree(vm)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect())
    }

    /// Takes a snapshot of `vm`; with `memory`, of a running VM's memory too;
    /// with `quiesce`, after quiescing the guest file systems (VMware Tools).
    /// Returns its id.
    pub async fn create_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
        memory: bool,
        quiesce: bool,
        progress: TaskProgress<'_>,
    ) -> Result<String> {
        let rec = self.record(vm).await?;
        let body = format!(
            "{}{}{}{}{}",
            rec.moref.xml("_this"),
            el("name", name),
            el("description", description),
            el("memory", &memory.to_string()),
            el("quiesce", &quiesce.to_string())
        );
        let what = format!("snapshot '{name}' of VM '{}'", rec.spec.name);
        let result = run_task(
            self.connection(),
            "CreateSnapshot_Task",
            &body,
            &what,
            progress,
        )
        .await?;
        result
            .as_ref()
            .and_then(MoRef::from_element)
            .map(|m| m.value)
            .ok_or_else(|| permanent(format!("{what}: the task returned no snapshot")))
    }

    async fn snapshot_ref(&self, vm: &str, snapshot: &str) -> Result<(MoRef, String)> {
        let tree = self.snapshot_tree(vm).await?;
        let hits: Vec<&SnapshotInfo> = tree
            .iter()
            .filter(|s| s.id == snapshot || s.name == snapshot)
            .collect();
        match hits[..] {
            [one] => Ok((
                MoRef::new("VirtualMachineSnapshot", &one.id),
                one.name.clone(),
            )),
            [] => Err(Error::InvalidArgument(format!(
                "VM '{vm}' has no snapshot named or with id '{snapshot}'"
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "VM '{vm}' has {} snapshots named '{snapshot}'; give the id ({})",
                hits.len(),
                hits.iter()
                    .map(|h| h.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Reverts `vm` to `snapshot` (name or id).
    pub async fn revert_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        progress: TaskProgress<'_>,
    ) -> Result<()> {
        let (snap, name) = self.snapshot_ref(vm, snapshot).await?;
        run_task(
            self.connection(),
            "RevertToSnapshot_Task",
            &snap.xml("_this"),
            &format!("reverting VM '{vm}' to snapshot '{name}'"),
            progress,
        )
        .await
        .map(|_| ())
    }

    /// Removes `snapshot` (name or id) of `vm`, and its children if asked;
    /// the disks are consolidated.
    pub async fn remove_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        remove_children: bool,
        progress: TaskProgress<'_>,
    ) -> Result<()> {
        let (snap, name) = self.snapshot_ref(vm, snapshot).await?;
        delete_snapshot(
            self.connection(),
            &snap,
            &format!("removing snapshot '{name}' of VM '{vm}'"),
            remove_children,
            progress,
        )
        .await
    }

    /// Powers `vm` off (hard), waiting for it. A VM already off is left so.
    pub async fn power_off(&self, vm: &str, progress: TaskProgress<'_>) -> Result<()> {
        let rec = self.record(vm).await?;
        if rec.spec.power_state == PowerState::Off {
            return Ok(());
        }
        run_task(
            self.connection(),
            "PowerOffVM_Task",
            &rec.moref.xml("_this"),
            &format!("powering off VM '{}'", rec.spec.name),
            progress,
        )
        .await
        .map(|_| ())
    }

    /// Asks the guest OS to shut down (VMware Tools) and waits up to
    /// `timeout` for the VM to be powered off.
    pub async fn shutdown_guest(&self, vm: &str, timeout: Duration) -> Result<()> {
        let rec = self.record(vm).await?;
        if rec.spec.power_state == PowerState::Off {
            return Ok(());
        }
        self.connection()
            .call("ShutdownGuest", &rec.moref.xml("_this"))
            .await?;
        let start = std::time::Instant::now();
        loop {
            let props = properties(self.connection(), &rec.moref, &["runtime.powerState"]).await?;
            if props.iter().any(|(_, v)| v.text.trim() == "poweredOff") {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::Provider {
                    provider: "vsphere".into(),
                    message: format!(
                        "VM '{}' did not power off within {} s of the guest shutdown request",
                        rec.spec.name,
                        timeout.as_secs()
                    ),
                    retryable: true,
                    source: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The ISO images (datastore paths) in `vm`'s CD-ROM drives.
    pub async fn cdrom_media(&self, vm: &str) -> Result<Vec<String>> {
        let rec = self.record(vm).await?;
        let props = properties(self.connection(), &rec.moref, &["config.hardware.device"]).await?;
        Ok(props
            .iter()
            .flat_map(|(_, v)| v.children.iter())
            .filter(|d| d.attr_local("type") == Some("VirtualCdrom"))
            .filter_map(|d| d.find("backing"))
            .filter(|b| b.attr_local("type") == Some("VirtualCdromIsoBackingInfo"))
            .filter_map(|b| b.find_text("fileName").map(str::to_string))
            .collect())
    }

    /// Empties every CD-ROM drive of `vm` (disconnects it from its ISO or
    /// host device), so the exported VM does not reference media that will
    /// not travel with it. Returns how many drives were changed.
    pub async fn eject_cdroms(&self, vm: &str, progress: TaskProgress<'_>) -> Result<usize> {
        let rec = self.record(vm).await?;
        let props = properties(self.connection(), &rec.moref, &["config.hardware.device"]).await?;
        let mut changes = String::new();
        let mut n = 0;
        for d in props
            .iter()
            .flat_map(|(_, v)| v.children.iter())
            .filter(|d| d.attr_local("type") == Some("VirtualCdrom"))
        {
            let backing = d.find("backing").and_then(|b| b.attr_local("type"));
            if backing == Some("VirtualCdromRemotePassthroughBackingInfo")
                && d.find("backing").and_then(|b| b.find_text("deviceName")) == Some("")
            {
                continue; // already empty
            }
            let key = d.find_text("key").unwrap_or("");
            let controller = d.find_text("controllerKey").unwrap_or("");
            let unit = d.find_text("unitNumber").unwrap_or("0");
            changes.push_str(&format!(
                "<deviceChange><operation>edit</operation><device xsi:type=\"VirtualCdrom\">\
                 <key>{}</key>\
                 <backing xsi:type=\"VirtualCdromRemotePassthroughBackingInfo\"><deviceName></deviceName><useAutoDetect>false</useAutoDetect><exclusive>false</exclusive></backing>\
                 <connectable><startConnected>false</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected></connectable>\
                 <controllerKey>{}</controllerKey><unitNumber>{}</unitNumber></device></deviceChange>",
                escape(key),
                escape(controller),
                escape(unit)
            ));
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let body = format!("{}<spec>{changes}</spec>", rec.moref.xml("_this"));
        run_task(
            self.connection(),
            "ReconfigVM_Task",
            &body,
            &format!("ejecting the CD-ROM media of VM '{}'", rec.spec.name),
            progress,
        )
        .await?;
        Ok(n)
    }
}

#[async_trait::async_trait]
impl VmOps for VsphereProvider {
    async fn snapshot_tree(&self, vm: &str) -> Result<Vec<SnapshotInfo>> {
        VsphereProvider::snapshot_tree(self, vm).await
    }

    async fn create_snapshot(
        &self,
        vm: &str,
        name: &str,
        options: &SnapshotOptions,
        progress: TaskProgress<'_>,
    ) -> Result<String> {
        VsphereProvider::create_snapshot(
            self,
            vm,
            name,
            &options.description,
            options.memory,
            options.quiesce,
            progress,
        )
        .await
    }

    async fn revert_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        progress: TaskProgress<'_>,
    ) -> Result<()> {
        VsphereProvider::revert_snapshot(self, vm, snapshot, progress).await
    }

    async fn remove_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        remove_children: bool,
        progress: TaskProgress<'_>,
    ) -> Result<()> {
        VsphereProvider::remove_snapshot(self, vm, snapshot, remove_children, progress).await
    }

    async fn power_off(&self, vm: &str, progress: TaskProgress<'_>) -> Result<()> {
        VsphereProvider::power_off(self, vm, progress).await
    }

    async fn shutdown_guest(&self, vm: &str, timeout: Duration) -> Result<()> {
        VsphereProvider::shutdown_guest(self, vm, timeout).await
    }

    async fn cdrom_media(&self, vm: &str) -> Result<Vec<String>> {
        VsphereProvider::cdrom_media(self, vm).await
    }

    async fn eject_cdroms(&self, vm: &str, progress: TaskProgress<'_>) -> Result<usize> {
        VsphereProvider::eject_cdroms(self, vm, progress).await
    }
}
