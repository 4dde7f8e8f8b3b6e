//! `verify`, `prune` and garbage collection.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use hypersdk_core::{Error, Result};

use crate::blob::{self, DIGEST};
use crate::index::ZERO;
use crate::lock::Lock;
use crate::repo::{Repository, Snapshot};

/// What [`Repository::verify`] found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Distinct chunks read and checked.
    pub chunks: usize,
    /// Bytes of chunk content checked.
    pub bytes: u64,
    /// Every problem: object name and what is wrong with it.
    pub errors: Vec<(String, String)>,
    /// Ids of the snapshots a problem affects.
    pub damaged_snapshots: Vec<String>,
}

/// A retention policy for [`Repository::prune`]: per VM, the newest
/// `last` snapshots, and the newest snapshot of each of the newest
/// `daily` days, `weekly` ISO weeks, `monthly` months and `yearly` years
/// that have one (the rules of restic's `forget`). Times are UTC.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest snapshots kept.
    pub last: usize,
    /// Days kept.
    pub daily: usize,
    /// ISO weeks kept.
    pub weekly: usize,
    /// Months kept.
    pub monthly: usize,
    /// Years kept.
    pub yearly: usize,
}

impl Retention {
    /// Whether it keeps nothing (refused: it would delete everything).
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }

    /// Which of one VM's snapshots (any order) to keep: their ids.
    pub fn keep(&self, snaps: &[&Snapshot]) -> HashSet<String> {
        let mut sorted: Vec<&Snapshot> = snaps.to_vec();
        sorted.sort_by(|a, b| (b.when(), &b.id).cmp(&(a.when(), &a.id)));
        let mut keep = HashSet::new();
        for s in sorted.iter().take(self.last) {
            keep.insert(s.id.clone());
        }
        let rules: [(usize, fn(&chrono::DateTime<chrono::Utc>) -> String); 4] = [
            (self.daily, |t| t.format("%Y-%m-%d").to_string()),
            (self.weekly, |t| t.format("%G-W%V").to_string()),
            (self.monthly, |t| t.format("%Y-%m").to_string()),
            (self.yearly, |t| t.format("%Y").to_string()),
        ];
        for (count, bucket) in rules {
            let mut seen = HashSet::new();
            for s in &sorted {
                if seen.len() >= count {
                    break;
                }
                let Some(t) = s.when() else { continue };
                if seen.insert(bucket(&t.with_timezone(&chrono::Utc))) {
                    keep.insert(s.id.clone());
                }
            }
        }
        keep
    }
}

/// What [`Repository::prune`] did (or would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Ids of the snapshots kept.
    pub kept: Vec<String>,
    /// Ids of the snapshots removed (or that would be, on a dry run).
    pub removed: Vec<String>,
}

/// What [`Repository::gc`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    /// Chunks still referenced.
    pub chunks_kept: usize,
    /// Chunks deleted.
    pub chunks_deleted: usize,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Indexes deleted.
    pub indexes_deleted: usize,
}

impl Repository {
    /// Reads and checks every snapshot, index and referenced chunk once
    /// (decrypted, decompressed, digest recomputed): damage is reported,
    /// not an error. Holds a shared lock.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let lock = Lock::acquire(self.backend.clone(), false, "verify").await?;
        let r = self.verify_locked().await;
        let released = lock.release().await;
        let r = r?;
        released?;
        Ok(r)
    }

    async fn verify_locked(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut users: HashMap<[u8; DIGEST], Vec<String>> = HashMap::new();
        let mut damaged: HashSet<String> = HashSet::new();
        for id in self.snapshot_ids().await? {
            report.snapshots += 1;
            let snap = match self.load_snapshot(&id).await {
                Ok(s) => s,
                Err(e) => {
                    report.errors.push((format!("snapshot-{id}"), e.to_string()));
                    damaged.insert(id);
                    continue;
                }
            };
            for d in &snap.disks {
                match self.load_index(&d.index).await {
                    Ok(ix) if ix.capacity == d.capacity => {
                        for c in ix.chunks.iter().filter(|c| **c != ZERO) {
                            users.entry(*c).or_default().push(id.clone());
                        }
                    }
                    Ok(ix) => {
                        report.errors.push((
                            d.index.clone(),
                            format!("covers {} bytes, the disk has {}", ix.capacity, d.capacity),
                        ));
                        damaged.insert(id.clone());
                    }
                    Err(e) => {
                        report.errors.push((d.index.clone(), e.to_string()));
                        damaged.insert(id.clone());
                    }
                }
            }
        }
        let results: Vec<_> = stream::iter(users.keys().copied())
            .map(|d| async move { (d, self.load_chunk(&d).await) })
            .buffer_unordered(4)
            .collect()
            .await;
        for (digest, r) in results {
            report.chunks += 1;
            match r {
                Ok(data) => report.bytes += data.len() as u64,
                Err(e) => {
                    let detail = match e {
                        Error::Integrity { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    report.errors.push((blob::chunk_name(&digest), detail));
                    damaged.extend(users.get(&digest).into_iter().flatten().cloned());
                }
            }
        }
        report.errors.sort();
        report.damaged_snapshots = damaged.into_iter().collect();
        report.damaged_snapshots.sort();
        Ok(report)
    }

    /// Removes the snapshots `policy` does not keep, per VM (only those of
    /// VM `vm` when given); nothing on a dry run. Their chunks are freed by
    /// [`gc`](Self::gc). Holds a shared lock.
    pub async fn prune(&self, policy: &Retention, vm: Option<&str>, dry_run: bool) -> Result<PruneReport> {
        if policy.is_empty() {
            return Err(Error::InvalidArgument(
                "a retention policy that keeps nothing: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly".into(),
            ));
        }
        let lock = Lock::acquire(self.backend.clone(), false, "prune").await?;
        let r = async {
            let all = self.snapshots().await?;
            let mut by_vm: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
            for s in all.iter().filter(|s| vm.is_none_or(|v| s.vm == v)) {
                by_vm.entry(&s.vm).or_default().push(s);
            }
            let mut report = PruneReport::default();
            for snaps in by_vm.values() {
                let keep = policy.keep(snaps);
                for s in snaps {
                    if keep.contains(&s.id) {
                        report.kept.push(s.id.clone());
                    } else {
                        report.removed.push(s.id.clone());
                    }
                }
            }
            if !dry_run {
                for id in &report.removed {
                    self.backend.delete(&format!("snapshot-{id}")).await?;
                }
                self.backend.sync().await?;
            }
            Ok(report)
        }
        .await;
        let released = lock.release().await;
        let r = r?;
        released?;
        Ok(r)
    }

    /// Deletes every index and chunk no snapshot references. Holds the
    /// repository alone (an exclusive lock), so no backup writes meanwhile;
    /// refuses to sweep when any snapshot or index cannot be read (its
    /// chunks would look unreferenced).
    pub async fn gc(&self) -> Result<GcReport> {
        let lock = Lock::acquire(self.backend.clone(), true, "gc").await?;
        let r = self.gc_locked().await;
        let released = lock.release().await;
        let r = r?;
        released?;
        Ok(r)
    }

    async fn gc_locked(&self) -> Result<GcReport> {
        let mut live_chunks: HashSet<[u8; DIGEST]> = HashSet::new();
        let mut live_indexes: HashSet<String> = HashSet::new();
        for id in self.snapshot_ids().await? {
            let snap = self.load_snapshot(&id).await.map_err(|e| {
                Error::InvalidArgument(format!(
                    "garbage collection stopped before deleting anything: snapshot {id} cannot be read ({e}); run `hyperctl repo verify`, and remove that snapshot with `hyperctl repo forget` if it is lost"
                ))
            })?;
            for d in &snap.disks {
                if live_indexes.insert(d.index.clone()) {
                    let ix = self.load_index(&d.index).await.map_err(|e| {
                        Error::InvalidArgument(format!(
                            "garbage collection stopped before deleting anything: index {} of snapshot {id} cannot be read ({e})",
                            d.index
                        ))
                    })?;
                    live_chunks.extend(ix.chunks.iter().filter(|c| **c != ZERO));
                }
            }
        }
        let mut report = GcReport::default();
        for (name, size) in self.backend.list("chunk-").await? {
            match blob::parse_digest(&name, "chunk-") {
                Some(d) if live_chunks.contains(&d) => report.chunks_kept += 1,
                _ => {
                    if self.backend.delete(&name).await? {
                        report.chunks_deleted += 1;
                        report.bytes_freed += size;
                    }
                }
            }
        }
        for (name, size) in self.backend.list("index-").await? {
            if !live_indexes.contains(&name) && self.backend.delete(&name).await? {
                report.indexes_deleted += 1;
                report.bytes_freed += size;
            }
        }
        self.backend.sync().await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, time: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            time: time.into(),
            vm: "vm".into(),
            provider: "local".into(),
            host: "h".into(),
            tags: vec![],
            parent: None,
            spec: serde_json::from_value(serde_json::json!({
                "name": "vm", "id": "vm", "power_state": "off", "cpus": 1, "memory_mib": 1, "firmware": "bios",
                "guest_os": {"family": "linux", "id": "x", "description": "x"},
                "disks": [], "nics": []
            }))
            .unwrap_or_else(|e| panic!("spec: {e}")),
            disks: vec![],
        }
    }

    #[test]
    fn retention_buckets() {
        let s = [
            snap("a", "2026-01-01T10:00:00Z"),
            snap("b", "2026-01-01T11:00:00Z"),
            snap("c", "2026-01-02T10:00:00Z"),
            snap("d", "2026-02-10T10:00:00Z"),
            snap("e", "2026-02-11T10:00:00Z"),
        ];
        let refs: Vec<&Snapshot> = s.iter().collect();
        let keep = |r: Retention| {
            let mut k: Vec<_> = r.keep(&refs).into_iter().collect();
            k.sort();
            k
        };
        assert_eq!(keep(Retention { last: 2, ..Default::default() }), ["d", "e"]);
        assert_eq!(keep(Retention { daily: 3, ..Default::default() }), ["c", "d", "e"]);
        assert_eq!(keep(Retention { monthly: 2, ..Default::default() }), ["c", "e"]);
        assert_eq!(keep(Retention { last: 1, yearly: 5, ..Default::default() }), ["e"]);
    }
}
