//! Durable checkpoints, so that an interrupted export continues instead of
//! starting over (`ExportOptions::resume`, `hyperctl export --resume`).
//!
//! A resumable export stages its files in a place that survives the
//! process ([`Sink::begin_resumable`](crate::Sink::begin_resumable)) and
//! keeps there a small JSON checkpoint, replaced atomically
//! ([`CheckpointStore`]): what the export is (VM, disks, the options that
//! shape the bytes); per disk where it is written ([`Place`]: its own object,
//! a spool in the exporter's scratch area, or a member of an OVA written in
//! place), the sink's saved state of that upload ([`UploadState`]: its
//! durable size and what the sink needs to go on, e.g. an upload id and its
//! parts), and, once the disk is done, its report; for an OVA written in
//! place, the archive's own upload state, its reserved prefix and its
//! members ([`ArchiveState`]). It is saved when a disk starts and ends, and
//! while one is written every
//! [`ExportOptions::checkpoint_every`](crate::ExportOptions::checkpoint_every)
//! bytes or two seconds, whichever comes first.
//!
//! Nothing stored is read back to continue: as a disk's VMDK goes out, its
//! record structure is followed ([`StreamChecker`](hypersdk_formats::vmdk::StreamChecker)),
//! and each save records a [`ResumePoint`] — the last record boundary
//! before it, with the digest state and the record structure there. A
//! resumed export rebuilds the VMDK writer's tables from that structure
//! ([`WriterResume`](hypersdk_formats::vmdk::WriterResume)), continues the
//! upload there ([`Staging::resume`](crate::Staging::resume), keeping what
//! precedes the boundary), and opens the source again where those bytes
//! end: at that guest offset, or, for a disk the platform serves as a VMDK,
//! at that byte of the VMDK (after checking that the platform serves the
//! 64 KiB before it again with the recorded digest). The result is
//! the same, byte for byte, as an uninterrupted export's. Disks already
//! done are kept as they are; an OVA's whole members are kept and the
//! member in progress continued. Compressed or encrypted disk files (OVF
//! directory output) are written again from their start.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::ExportOptions;
use crate::report::FileReport;
use crate::sink::{CheckpointStore, Reserved, UploadState};
use crate::vm::VmSpec;

/// Format version of the checkpoint document.
pub const VERSION: u32 = 2;

/// The longest a written disk goes without a checkpoint.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What an export is: a partial export continues only if this is equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// VM name.
    pub vm: String,
    /// VM id on the platform.
    pub vm_id: String,
    /// Disks: name and capacity.
    pub disks: Vec<(String, u64)>,
    /// Package format.
    pub format: String,
    /// Manifest digest algorithm.
    pub digest: String,
    /// Compression of stored files.
    pub compression: Option<String>,
    /// Whether stored files are encrypted.
    pub encrypted: bool,
    /// zlib level of the VMDK grains.
    pub vmdk_level: u32,
    /// Whether served VMDKs are re-encoded.
    pub reencode: bool,
    /// Pipeline chunk (compression frame) size.
    pub chunk_size: usize,
}

impl Identity {
    /// The identity of exporting `spec` with `options`.
    pub fn of(spec: &VmSpec, options: &ExportOptions) -> Identity {
        Identity {
            vm: spec.name.clone(),
            vm_id: spec.id.clone(),
            disks: spec
                .disks
                .iter()
                .map(|d| (d.name.clone(), d.capacity))
                .collect(),
            format: format!("{:?}", options.format),
            digest: options.digest.manifest_name().to_string(),
            compression: options.compression.map(|c| c.to_string()),
            encrypted: options.encryption.is_some(),
            vmdk_level: options.compression_level,
            reencode: options.reencode,
            chunk_size: options.chunk_size,
        }
    }
}

/// A finished disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneDisk {
    /// Its file.
    pub file: FileReport,
    /// Guest bytes in non-zero grains.
    pub populated: u64,
    /// Guest bytes read for it.
    pub bytes_read: u64,
}

/// One disk's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    /// The object it is written to: a file of the package, a spool in the
    /// exporter's scratch area, or the OVA it is a member of.
    pub stored_name: String,
    /// Bytes of this disk's file known to be durable.
    pub durable: u64,
    /// Whether the bytes are the VMDK as the platform served it.
    pub served: bool,
    /// Where the bytes go.
    #[serde(default)]
    pub place: Place,
    /// What the sink (or scratch area) said continuing its object needs,
    /// as of the last save (not for archive members: see [`ArchiveState`]).
    #[serde(default)]
    pub upload: Option<UploadState>,
    /// Where its bytes can be continued without reading them back, as of
    /// the last save.
    #[serde(default)]
    pub resume: Option<ResumePoint>,
    /// Set once the disk is done.
    pub done: Option<DoneDisk>,
}

/// Where a disk's VMDK can be continued without reading back what was
/// stored: a record boundary at or before the last save, with the digest
/// and the VMDK's record structure up to it, recorded as the bytes went
/// out. (The VMDK writer's state follows from the structure:
/// [`StreamChecker::writer_resume`](hypersdk_formats::vmdk::StreamChecker::writer_resume).)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// Bytes of the disk's VMDK kept.
    pub offset: u64,
    /// The digest state after them ([`Hasher::state`](hypersdk_formats::manifest::Hasher::state), hex).
    pub digest: String,
    /// The VMDK's record structure up to them.
    pub vmdk: hypersdk_formats::vmdk::CheckerState,
    /// How many bytes before `offset` `tail_digest` covers (up to 64 KiB).
    pub tail: u64,
    /// Their digest: a platform serving the VMDK itself must serve them
    /// again unchanged for the rest to fit.
    pub tail_digest: String,
}

/// Where a disk's bytes go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Its own object in the sink (OVF directory).
    #[default]
    Object,
    /// A spool in the exporter's scratch area, copied into the OVA later.
    Spool,
    /// Straight into the OVA, as a member written in place.
    Member,
}

/// An OVA written in place: its upload, the region kept for the
/// descriptor and manifest, and the disks appended so far, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveState {
    /// The OVA's object name.
    pub name: String,
    /// The region left at its start for the descriptor and manifest.
    pub prefix: Reserved,
    /// Members written (the last one perhaps in part), in disk order.
    pub members: Vec<MemberState>,
    /// The OVA upload as of the last save.
    pub upload: Option<UploadState>,
}

/// One disk in an OVA written in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The disk.
    pub disk: usize,
    /// Its tar header's region.
    pub header: Reserved,
    /// Where its bytes start.
    pub start: u64,
    /// Its size once whole (header filled, padding written).
    pub size: Option<u64>,
}

/// The checkpoint document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`VERSION`].
    pub version: u32,
    /// What is exported.
    pub identity: Identity,
    /// Per disk, in the VM's order.
    pub disks: Vec<DiskState>,
    /// The OVA being written in place, if it is.
    #[serde(default)]
    pub archive: Option<ArchiveState>,
    /// The host's boot id when saved ([`boot_id`]): spools in the scratch
    /// area are not synced to disk, so after a restart of the host they
    /// are not trusted.
    #[serde(default)]
    pub boot: Option<String>,
    /// The source's resume token ([`crate::ExportSource::resume_token`]):
    /// which snapshots the disks' bytes come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The runs of this export so far, oldest first (the report lists them).
    #[serde(default)]
    pub attempts: Vec<crate::report::Attempt>,
}

/// This boot of the host (Linux `/proc/sys/kernel/random/boot_id`), None
/// where unknown.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Checkpoint {
    /// A fresh checkpoint for `identity`.
    pub fn new(identity: Identity) -> Checkpoint {
        let n = identity.disks.len();
        Checkpoint {
            version: VERSION,
            identity,
            disks: vec![DiskState::default(); n],
            archive: None,
            boot: boot_id(),
            source: None,
            attempts: Vec::new(),
        }
    }

    /// The source token in saved checkpoint `bytes`, read loosely (the
    /// checkpoint is checked in full later).
    pub fn source_token(bytes: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        v.get("source")?.as_str().map(str::to_string)
    }

    /// Reads a saved checkpoint and checks it is one for `identity`.
    pub fn parse(bytes: &[u8], identity: &Identity, location: &str) -> Result<Checkpoint> {
        let c: Checkpoint = serde_json::from_slice(bytes).map_err(|e| {
            Error::InvalidArgument(format!(
                "the checkpoint {location} is damaged ({e}); export without --resume to start over"
            ))
        })?;
        if c.version != VERSION {
            return Err(Error::InvalidArgument(format!(
                "the checkpoint {location} has format version {}, this build reads {VERSION}; export without --resume to start over",
                c.version
            )));
        }
        if &c.identity != identity || c.disks.len() != identity.disks.len() {
            return Err(Error::InvalidArgument(format!(
                "the partial export at {location} is of something else: it was {:?}, now {:?}; export without --resume to start over",
                c.identity, identity
            )));
        }
        let mut c = c;
        let now = boot_id();
        if c.boot.is_none() || c.boot != now {
            // The host restarted (or cannot tell): spools were not synced.
            for d in c.disks.iter_mut().filter(|d| d.place == Place::Spool) {
                *d = DiskState::default();
            }
            c.boot = now;
        }
        Ok(c)
    }
}

/// The checkpoint of a running export, shared by its disks; the store
/// always ends up holding the newest.
///
/// No lock is ever held across an `await`: the disks of an export are
/// futures polled by one loop, which also updates the checkpoint between
/// polls — a disk suspended while holding an async lock would never be
/// polled again to release it. The state sits behind a plain mutex, taken
/// only to change and serialize it; saves run on a blocking thread, in
/// order of their changes (an older one arriving after a newer is dropped).
#[derive(Debug, Clone)]
pub(crate) struct Checkpointer {
    store: Arc<dyn CheckpointStore>,
    state: Arc<std::sync::Mutex<(Checkpoint, u64)>>,
    saved: Arc<std::sync::Mutex<u64>>,
    pub every: u64,
}

impl Checkpointer {
    pub(crate) fn new(store: Arc<dyn CheckpointStore>, state: Checkpoint, every: u64) -> Self {
        Checkpointer {
            store,
            state: Arc::new(std::sync::Mutex::new((state, 0))),
            saved: Arc::new(std::sync::Mutex::new(0)),
            every: every.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Checkpoint, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Disk `index` as last recorded.
    pub(crate) async fn disk(&self, index: usize) -> DiskState {
        self.lock().0.disks.get(index).cloned().unwrap_or_default()
    }

    /// The checkpoint as last recorded.
    pub(crate) async fn snapshot(&self) -> Checkpoint {
        self.lock().0.clone()
    }

    /// Changes the checkpoint with `f` and saves it.
    pub(crate) async fn update(&self, f: impl FnOnce(&mut Checkpoint)) -> Result<()> {
        let (seq, bytes) = {
            let mut state = self.lock();
            f(&mut state.0);
            state.1 += 1;
            let bytes = serde_json::to_vec_pretty(&state.0)
                .map_err(|e| Error::Internal(format!("cannot encode the checkpoint: {e}")))?;
            (state.1, bytes)
        };
        let (store, saved) = (self.store.clone(), self.saved.clone());
        tokio::task::spawn_blocking(move || {
            let mut last = saved.lock().unwrap_or_else(|p| p.into_inner());
            if seq > *last {
                store.save(&bytes)?;
                *last = seq;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("checkpoint thread failed: {e}")))?
    }

    /// Removes the checkpoint (the export is about to be published).
    pub(crate) async fn clear(&self) -> Result<()> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.clear())
            .await
            .map_err(|e| Error::Internal(format!("checkpoint thread failed: {e}")))?
    }
}

/// Whether an export that failed with `e` is worth continuing later
/// ([`Error::worth_resuming`]).
pub fn keeps_partial(e: &Error) -> bool {
    e.worth_resuming()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            vm: "vm".into(),
            vm_id: "1".into(),
            disks: vec![("a".into(), 1 << 20), ("b".into(), 1 << 20)],
            format: "Ova".into(),
            digest: "SHA256".into(),
            compression: None,
            encrypted: false,
            vmdk_level: 1,
            reencode: false,
            chunk_size: 1 << 20,
        }
    }

    #[test]
    fn spools_are_not_trusted_after_the_host_restarted() {
        let mut c = Checkpoint::new(identity());
        c.disks[0] = DiskState {
            stored_name: "vm.ova".into(),
            durable: 100,
            place: Place::Member,
            ..Default::default()
        };
        c.disks[1] = DiskState {
            stored_name: "vm-disk2.vmdk".into(),
            durable: 200,
            place: Place::Spool,
            ..Default::default()
        };
        let same = Checkpoint::parse(&serde_json::to_vec(&c).unwrap(), &identity(), "x").unwrap();
        if boot_id().is_some() {
            assert_eq!(same.disks, c.disks, "same boot: everything kept");
        }
        c.boot = Some("another boot".into());
        let after = Checkpoint::parse(&serde_json::to_vec(&c).unwrap(), &identity(), "x").unwrap();
        assert_eq!(after.disks[0], c.disks[0], "members were synced: kept");
        assert_eq!(after.disks[1], DiskState::default(), "the spool is redone");
        assert_eq!(after.boot, boot_id());
    }
}
