//! `backup`: one VM of any provider into the repository, incrementally
//! when its platform tracks changes, deduplicated by content always.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tracing::{info, warn};

use hypersdk_core::{Error, ExportSource, Provider, Result};

use crate::blob::{self, Kind, DIGEST};
use crate::index::{DiskIndex, ZERO};
use crate::lock::{hostname, Lock};
use crate::repo::{Repository, Snapshot, SnapshotDisk};

/// Options of [`Repository::backup`].
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Read every allocated byte even when an earlier snapshot's
    /// change-tracking token could be used (chunks are still deduplicated).
    pub full: bool,
    /// Start change tracking on disks that offer it (a qcow2 bitmap, vSphere
    /// CBT) so the next backup reads only what changed. Once started, later
    /// backups continue it without being asked.
    pub track_changes: bool,
    /// Tags stored with the snapshot.
    pub tags: Vec<String>,
    /// Chunks hashed, compressed and encrypted at once; memory is about
    /// `2 × workers × chunk size` for them plus one chunk being read.
    pub workers: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            full: false,
            track_changes: false,
            tags: Vec::new(),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8),
        }
    }
}

/// What reading one disk did.
#[derive(Debug, Default)]
struct DiskOutcome {
    bytes_read: u64,
    new_chunks: u64,
    new_bytes: u64,
}

/// Chunks known to be stored (listed at the start, plus those this backup
/// stores), shared by the workers.
type Known = Arc<Mutex<HashSet<[u8; DIGEST]>>>;

/// The chunk indices touching `ranges`, sorted and distinct.
fn chunks_of(ranges: &[Range<u64>], chunk: u64, capacity: u64) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for r in ranges {
        let end = r.end.min(capacity);
        if r.start >= end {
            continue;
        }
        let (a, b) = (r.start / chunk, (end - 1) / chunk);
        for c in a..=b {
            if out.last().is_none_or(|&l| l < c as usize) {
                out.push(c as usize);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Runs of consecutive chunk indices.
fn runs(chunks: &[usize]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &c in chunks {
        match out.last_mut() {
            Some(r) if r.end == c => r.end += 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

impl Repository {
    /// Backs up VM `vm` of `provider`: a new snapshot, incremental to the
    /// latest one of the same VM where the platform's change tracking
    /// allows, and storing only chunks the repository does not hold.
    pub async fn backup(&self, provider: &dyn Provider, vm: &str, options: &BackupOptions) -> Result<Snapshot> {
        let lock = Lock::acquire(self.backend.clone(), false, "backup").await?;
        let result = async {
            let source = provider.open_export(vm).await?;
            let r = self.backup_source(source.as_ref(), provider.name(), options).await;
            let closed = source.close_after(r.is_ok()).await;
            let snap = r?;
            if let Err(e) = closed {
                warn!(vm, "closing the source after the backup failed: {e}");
            }
            Ok(snap)
        }
        .await;
        let released = lock.release().await;
        let snap = result?;
        released?;
        Ok(snap)
    }

    /// The latest readable snapshot of VM `vm`; unreadable ones are
    /// skipped with a warning (verify names them).
    async fn latest_of(&self, vm: &str) -> Result<Option<Snapshot>> {
        let mut best: Option<Snapshot> = None;
        for id in self.snapshot_ids().await? {
            match self.load_snapshot(&id).await {
                Ok(s) if s.vm == vm => {
                    if best.as_ref().is_none_or(|b| (b.when(), &b.id) < (s.when(), &s.id)) {
                        best = Some(s);
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(snapshot = %id, "skipping an unreadable snapshot: {e}"),
            }
        }
        Ok(best)
    }

    /// [`backup`](Self::backup) of an open source; the caller holds a lock
    /// and closes the source.
    pub async fn backup_source(&self, source: &dyn ExportSource, provider: &str, options: &BackupOptions) -> Result<Snapshot> {
        let started = chrono::Utc::now();
        let spec = source.spec().clone();
        let parent = if options.full { None } else { self.latest_of(&spec.name).await? };
        let known: Known = Arc::new(Mutex::new(self.chunk_set().await?));
        let tracking = source.change_tracking();
        let mut disks = Vec::new();
        let mut indexes = Vec::new();
        let mut releases = Vec::new();
        for (i, disk) in spec.disks.iter().enumerate() {
            let earlier = parent
                .as_ref()
                .and_then(|p| p.disks.iter().find(|d| d.name == disk.name && d.capacity == disk.capacity));
            let tracker = tracking.filter(|t| t.tracks(i));
            let earlier_token = earlier.and_then(|d| d.token.clone());
            let (ranges, token, mode, base) = match (tracker, &earlier_token) {
                (Some(t), Some(tok)) if !options.full => match t.changes_since(i, Some(tok)).await {
                    Ok(c) => {
                        let base = self.load_index(&earlier.map(|d| d.index.clone()).unwrap_or_default()).await?;
                        (c.ranges, Some(c.token), "incremental".to_owned(), Some(base))
                    }
                    Err(Error::TrackingLost { why, .. }) => {
                        warn!(disk = %disk.name, "change tracking lost ({why}): reading the whole disk");
                        let c = t.changes_since(i, None).await?;
                        (c.ranges, Some(c.token), format!("full (change tracking lost: {why})"), None)
                    }
                    Err(e) => return Err(e),
                },
                (Some(t), prior) if options.track_changes || prior.is_some() => {
                    let c = t.changes_since(i, None).await?;
                    (c.ranges, Some(c.token), "full".to_owned(), None)
                }
                _ => {
                    let ranges = source.allocated_ranges(i).await?.unwrap_or_else(|| vec![0..disk.capacity]);
                    (ranges, None, "full".to_owned(), None)
                }
            };
            if let (Some(prev), Some(_)) = (&earlier_token, &token) {
                releases.push((i, prev.clone()));
            }
            let mut index = match base {
                Some(b) if b.capacity == disk.capacity && b.chunk_size == self.config.chunk_size => b,
                _ => DiskIndex::zeros(disk.capacity, self.config.chunk_size),
            };
            info!(vm = %spec.name, disk = %disk.name, mode = %mode, "backing up");
            let outcome = self.read_disk(source, i, &ranges, &mut index, &known, options).await?;
            let index_name = self.put_index(&index).await?;
            disks.push(SnapshotDisk {
                name: disk.name.clone(),
                capacity: disk.capacity,
                index: index_name,
                token,
                mode,
                bytes_read: outcome.bytes_read,
                new_chunks: outcome.new_chunks,
                new_bytes: outcome.new_bytes,
            });
            indexes.push(index);
        }
        // Chunks and indexes are durable before the snapshot naming them
        // appears (put_snapshot syncs after writing it).
        self.backend.sync().await?;
        let snap = Snapshot {
            id: blob::hex(&blob::random::<16>()?),
            time: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            vm: spec.name.clone(),
            provider: provider.to_owned(),
            host: hostname(),
            tags: options.tags.clone(),
            parent: parent.map(|p| p.id),
            spec,
            disks,
        };
        self.put_snapshot(&snap).await?;
        // Only now may the platform forget the earlier point in time.
        if let Some(t) = tracking {
            for (i, prev) in releases {
                if let Err(e) = t.release(i, &prev).await {
                    warn!(disk = i, "cannot release the earlier change-tracking point {prev}: {e}");
                }
            }
        }
        Ok(snap)
    }

    /// Reads the chunks of disk `i` touching `ranges` into `index`.
    async fn read_disk(
        &self,
        source: &dyn ExportSource,
        i: usize,
        ranges: &[Range<u64>],
        index: &mut DiskIndex,
        known: &Known,
        options: &BackupOptions,
    ) -> Result<DiskOutcome> {
        let cs = u64::from(self.config.chunk_size);
        let capacity = index.capacity;
        let wanted = chunks_of(ranges, cs, capacity);
        // A source that can only stream from the start (a download decoded
        // as it arrives) is read once, keeping the wanted chunks.
        let runs = if source.served_format(i).is_some() && !wanted.is_empty() {
            vec![wanted[0]..wanted[wanted.len() - 1] + 1]
        } else {
            runs(&wanted)
        };
        let wanted: HashSet<usize> = wanted.into_iter().collect();
        let mut outcome = DiskOutcome::default();
        let limit = options.workers.max(1) * 2;
        let mut pending = FuturesUnordered::new();
        let finish = |r: Result<(usize, [u8; DIGEST], u64)>, index: &mut DiskIndex, outcome: &mut DiskOutcome| -> Result<()> {
            let (ci, digest, stored) = r?;
            index.chunks[ci] = digest;
            if stored > 0 {
                outcome.new_chunks += 1;
                outcome.new_bytes += stored;
            }
            Ok(())
        };
        for run in runs {
            let start = run.start as u64 * cs;
            let end = (run.end as u64 * cs).min(capacity);
            let mut stream = source.open_disk(i, start).await?;
            let mut ci = run.start;
            let mut buf: Vec<u8> = Vec::with_capacity(cs as usize);
            let mut at = start;
            while at < end {
                let Some(piece) = stream.next().await else {
                    return Err(Error::DiskLength {
                        vm: source.spec().name.clone(),
                        disk: source.spec().disks[i].name.clone(),
                        expected: capacity,
                        actual: at,
                    });
                };
                let mut piece = piece?;
                outcome.bytes_read += piece.len() as u64;
                while !piece.is_empty() && at < end {
                    let chunk_end = index.range(ci).end;
                    let take = ((chunk_end - at) as usize).min(piece.len());
                    buf.extend_from_slice(&piece.split_to(take));
                    at += take as u64;
                    if at == chunk_end {
                        let data = std::mem::replace(&mut buf, Vec::with_capacity(cs as usize));
                        if wanted.contains(&ci) {
                            pending.push(self.store_chunk(ci, data, known.clone()));
                            while pending.len() >= limit {
                                if let Some(r) = pending.next().await {
                                    finish(r, index, &mut outcome)?;
                                }
                            }
                        }
                        ci += 1;
                    }
                }
            }
        }
        while let Some(r) = pending.next().await {
            finish(r, index, &mut outcome)?;
        }
        Ok(outcome)
    }

    /// Hashes chunk `ci` and stores it unless it is zeros or known;
    /// returns its digest and the bytes stored.
    async fn store_chunk(&self, ci: usize, data: Vec<u8>, known: Known) -> Result<(usize, [u8; DIGEST], u64)> {
        let codec = self.codec.clone();
        let encoded = tokio::task::spawn_blocking(move || -> Result<_> {
            if data.iter().all(|&b| b == 0) {
                return Ok((ZERO, None));
            }
            let digest = codec.digest(&data);
            let fresh = known.lock().map(|mut k| k.insert(digest)).unwrap_or(true);
            if !fresh {
                return Ok((digest, None));
            }
            let name = blob::chunk_name(&digest);
            Ok((digest, Some((name.clone(), codec.encode(Kind::Chunk, &name, &data)?))))
        })
        .await
        .map_err(|e| Error::Internal(format!("chunk task failed: {e}")))??;
        match encoded {
            (digest, Some((name, blob))) => {
                self.backend.put(&name, &blob).await?;
                Ok((ci, digest, blob.len() as u64))
            }
            (digest, None) => Ok((ci, digest, 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_runs() {
        let m = 1u64 << 20;
        let c = chunks_of(&[0..1, (4 * m - 1)..(4 * m + 1), (10 * m)..(12 * m)], 4 * m, 13 * m);
        assert_eq!(c, vec![0, 1, 2]);
        assert_eq!(runs(&[0, 1, 3, 5, 6]), vec![0..2, 3..4, 5..7]);
        assert!(chunks_of(&[5..5], 4 * m, 8 * m).is_empty());
    }
}
