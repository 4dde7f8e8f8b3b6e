//! Changed-block tracking: an optional capability of an [`ExportSource`](crate::ExportSource).
//!
//! A platform that records which parts of a disk were written (vSphere CBT,
//! qcow2 persistent dirty bitmaps, EBS snapshot block lists, Azure page-range
//! diffs) lets an incremental export read only those parts. The exchange is
//! a token per disk, kept by the caller with what it stored:
//!
//! 1. The first export asks [`ChangeTracking::changes_since`] with `None`:
//!    tracking is started if it was not (a bitmap added, CBT enabled), and
//!    the answer is the disk's allocated ranges with a token naming this
//!    point in time.
//! 2. A later export passes the earlier token and gets the ranges written
//!    since, and a new token. The token's point in time is taken *before*
//!    the disk is read, so a write during the read is counted again next time,
//!    never lost.
//! 3. Once what the later export read is stored safely, the caller calls
//!    [`ChangeTracking::release`] with the earlier token: the platform may
//!    drop what it kept for it (Forklift's lesson: record the new change id
//!    before removing the old snapshot). A failure between 2 and 3 leaves the
//!    earlier token usable.
//!
//! A token that is no longer valid (the bitmap was removed, CBT was reset)
//! fails with [`Error::TrackingLost`](crate::Error::TrackingLost): the caller
//! reads the whole disk instead and starts again from the token it is given
//! by `changes_since(disk, None)`.

use std::ops::Range;

use async_trait::async_trait;

use crate::error::Result;

/// The ranges of one disk to read for an export, and the token of this
/// export's point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Byte ranges that changed since the earlier token (or, for a first
    /// export, hold data): sorted, disjoint, within the capacity. Bytes
    /// outside them are as the earlier export stored them (for a first
    /// export: zeros).
    pub ranges: Vec<Range<u64>>,
    /// Names this export's point in time; pass it to the next export.
    /// Never a secret: it is stored with the backup.
    pub token: String,
}

/// Changed-block tracking of a source's disks; see the [module docs](self).
#[async_trait]
pub trait ChangeTracking: Send + Sync + std::fmt::Debug {
    /// Whether disk `disk` can be tracked at all (a qcow2 file can, a raw
    /// one cannot); an untracked disk is read whole and deduplicated.
    fn tracks(&self, disk: usize) -> bool {
        let _ = disk;
        true
    }

    /// The ranges of disk `disk` (an index into the spec's disks) changed
    /// since `since`, or its allocated ranges with tracking started when
    /// `since` is None; and the token of now.
    async fn changes_since(&self, disk: usize, since: Option<&str>) -> Result<Changes>;

    /// What was read with the token after `previous` is stored: drop what
    /// the platform keeps for `previous`. The default does nothing.
    async fn release(&self, disk: usize, previous: &str) -> Result<()> {
        let _ = (disk, previous);
        Ok(())
    }
}
