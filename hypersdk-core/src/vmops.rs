//! VM operations a migration needs around an export — snapshots, power,
//! CD-ROM media — as an optional capability of a [`Provider`](crate::Provider).
//!
//! Platforms differ in what they offer, so this is not part of the
//! `Provider` trait itself: a provider that can do these things returns
//! itself from [`Provider::vm_ops`](crate::Provider::vm_ops), and callers
//! ask at run time (`hyperctl vms snapshot` says "this provider has no VM
//! operations" where it returns None).

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::Result;

/// Task progress in percent, for callers that show it.
pub type TaskProgress<'a> = Option<&'a (dyn Fn(u32) + Send + Sync)>;

/// One snapshot in a VM's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The platform's id of it (vSphere: its moref value, `snapshot-12`).
    pub id: String,
    /// Its description.
    pub description: String,
    /// When it was taken (ISO 8601, as the platform reports it).
    pub created: String,
    /// Depth in the tree (0 for a root snapshot).
    pub depth: usize,
    /// The name of its parent, if any.
    pub parent: Option<String>,
}

/// How a snapshot is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Its description.
    pub description: String,
    /// Include the memory of a running VM.
    pub memory: bool,
    /// Quiesce the guest file systems first (needs the platform's guest agent).
    pub quiesce: bool,
}

/// Snapshots, power and removable media of a platform's VMs. Every method
/// names the VM by name or id, as [`Provider::vm_spec`](crate::Provider::vm_spec) does.
#[async_trait]
pub trait VmOps: Send + Sync {
    /// The VM's snapshots as a tree, depth first.
    async fn snapshot_tree(&self, vm: &str) -> Result<Vec<SnapshotInfo>>;

    /// Takes a snapshot called `name` and returns its id.
    async fn create_snapshot(
        &self,
        vm: &str,
        name: &str,
        options: &SnapshotOptions,
        progress: TaskProgress<'_>,
    ) -> Result<String>;

    /// Reverts the VM to `snapshot` (name or id).
    async fn revert_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        progress: TaskProgress<'_>,
    ) -> Result<()>;

    /// Removes `snapshot` (name or id), and its children with
    /// `remove_children`; the platform consolidates the disks.
    async fn remove_snapshot(
        &self,
        vm: &str,
        snapshot: &str,
        remove_children: bool,
        progress: TaskProgress<'_>,
    ) -> Result<()>;

    /// Powers the VM off (hard), waiting for it; a VM already off is left so.
    async fn power_off(&self, vm: &str, progress: TaskProgress<'_>) -> Result<()>;

    /// Asks the guest OS to shut down and waits up to `timeout` for the VM
    /// to be off.
    async fn shutdown_guest(&self, vm: &str, timeout: Duration) -> Result<()>;

    /// The media (ISO paths) in the VM's CD-ROM drives.
    async fn cdrom_media(&self, vm: &str) -> Result<Vec<String>>;

    /// Empties every CD-ROM drive, so the exported VM does not reference
    /// media that will not travel with it; returns how many were changed.
    async fn eject_cdroms(&self, vm: &str, progress: TaskProgress<'_>) -> Result<usize>;
}
