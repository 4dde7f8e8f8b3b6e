//! A deduplicating, encrypted repository of VM backups.
//!
//! Each backup of a VM is a *snapshot*: the VM's hardware (what its OVF
//! descriptor is written from) and, per disk, an *index* naming the disk's
//! fixed-size, aligned *chunks* by digest. A chunk is stored once however
//! many disks and snapshots hold it, so unchanged ranges of a disk cost
//! nothing the second time; with a platform's change tracking
//! ([`hypersdk_core::tracking`]) a second backup also *reads* only the
//! chunks that changed. In the spirit of Proxmox Backup Server's fixed
//! indexes and restic's repository.
//!
//! ```no_run
//! # async fn demo(provider: &dyn hypersdk_core::Provider) -> hypersdk_core::Result<()> {
//! use std::sync::Arc;
//! use hypersdk_repo::{BackupOptions, LocalDir, Repository};
//! let key = hypersdk_core::transforms::encrypt::KeySource::passphrase("correct horse");
//! let repo = Repository::init(Arc::new(LocalDir::new("/srv/repo")), Some(&key), None).await?;
//! let snap = repo.backup(provider, "web01", &BackupOptions { track_changes: true, ..Default::default() }).await?;
//! println!("snapshot {}", snap.id);
//! # Ok(()) }
//! ```
//!
//! # Format, version 1
//!
//! A repository is a flat set of named objects on a [`Backend`]: a local
//! directory ([`LocalDir`], which files chunks under `chunks/<2 hex>/`) or
//! any [`Sink`](hypersdk_core::Sink) ([`SinkBackend`]: S3, Azure Blob, GCS,
//! SFTP, SMB, …). Every object is written whole or not at all. All
//! integers are big-endian.
//!
//! | object | content |
//! |---|---|
//! | `config` | JSON, not encrypted: `format` = "hypersdk-repository", `version` = 1, `id` (32 hex), `chunk_size` (a power of two, 1–64 MiB; 4 MiB by default), `encryption` ("aes-256-gcm" or "none"), `compression` ("zstd"), `digest` ("hmac-sha256" or "sha256"), `created` |
//! | `key-<16 hex>` | the repository's keys, wrapped under the user's key file or passphrase in the hypersdk encrypted file format ([`hypersdk_core::transforms::encrypt`]: AES-256-GCM STREAM, argon2id for passphrases). Plaintext, 88 bytes: `"HSRKEY01"`, the repository id (16 bytes), the encryption key (32), the id key (32) |
//! | `chunk-<64 hex>` | a blob of kind 1 holding one chunk of a disk; the name is its content's digest |
//! | `index-<64 hex>` | a blob of kind 2 holding a disk index; the name is the digest of the index's plaintext |
//! | `snapshot-<32 hex>` | a blob of kind 3 holding a snapshot's JSON; the name holds its random id |
//! | `lock-<16 hex>` | JSON, not encrypted: a lock ([`lock`]) |
//!
//! A repository made without a key has no `key-` objects, and a repository
//! whose `config` says "none" while key objects exist is refused (someone
//! may be trying to make a client write unencrypted data into it).
//!
//! ## Digests
//!
//! A chunk's digest is HMAC-SHA256 of its content under the id key in an
//! encrypted repository (so names reveal nothing about content: no one
//! without the key can test whether a repository holds a known file),
//! SHA-256 of its content otherwise. A chunk of only zero bytes is never
//! stored: indexes name it by 32 zero bytes.
//!
//! ## Blobs
//!
//! ```text
//! offset size  field
//!  0      4    magic "HSRB"
//!  4      1    version = 1
//!  5      1    kind: 1 chunk, 2 index, 3 snapshot
//!  6      1    flags: bit 0 = payload zstd-compressed, bit 1 = encrypted (AES-256-GCM)
//!  7      1    reserved, 0
//!  8     12    nonce (random per blob; zeros when not encrypted)
//! 20      …    body
//! ```
//!
//! The payload is the content, zstd-compressed (level 3) when that saves at
//! least 1/32 of it, else as is (incompressible chunks cost no time to
//! read back). Encrypted, the body is AES-256-GCM of the payload under the
//! encryption key with that nonce, followed by the 16-byte tag, and the
//! additional authenticated data is the 20-byte header followed by the
//! object's name: a blob moved to another name, or given another kind or
//! flags, fails authentication. Not encrypted, the body is the payload
//! followed by SHA-256 of header ‖ name ‖ payload. Readers then check a
//! chunk's content against its digest, and cap decompression at the chunk
//! size (indexes: 64 MiB of digests; snapshots: 16 MiB).
//!
//! ## Indexes
//!
//! ```text
//! offset size  field
//!  0      8    magic "HSRIDX01"
//!  8      8    the disk's capacity in bytes
//! 16      4    chunk size in bytes
//! 20      4    reserved, 0
//! 24      8    number of chunks n = ceil(capacity / chunk size)
//! 32   32·n    the digest of each chunk in order (32 zero bytes: a chunk of zeros)
//! ```
//!
//! Chunk i covers bytes `i·size .. min((i+1)·size, capacity)`; the last may
//! be shorter. An index in memory costs 8 MiB per TiB of disk (4 MiB chunks).
//!
//! ## Snapshots
//!
//! JSON ([`Snapshot`]): `id`, `time` (RFC 3339), `vm`, `provider`, `host`,
//! `tags`, `parent` (the snapshot it was incremental to), `spec` (the
//! VM's hardware as [`hypersdk_core::VmSpec`] serializes it), and `disks`:
//! per disk of `spec.disks`, `name`, `capacity`, `index` (object name),
//! `token` (the platform's change-tracking token for the next backup),
//! `mode` ("full", "incremental", or "full (why)"), `bytes_read`,
//! `new_chunks`, `new_bytes`.
//!
//! # Crash safety
//!
//! A backup writes chunks, then indexes, syncs, then the snapshot object,
//! and syncs again: an interrupted backup leaves chunks no snapshot names
//! (garbage collection frees them) and never a snapshot naming something
//! missing. The next backup lists the stored chunks first and skips those,
//! so it resumes at the cost of hashing only. A platform's change-tracking
//! point is released only after the snapshot that holds the newer one is
//! stored.
//!
//! # Concurrency
//!
//! Backups, restores, verify and prune share the repository; garbage
//! collection takes it alone (see [`lock`]), so it never deletes a chunk a
//! running backup counts on.

pub mod backend;
pub mod blob;
mod backup;
pub mod index;
pub mod lock;
mod maintain;
mod repo;
mod restore;

pub use backend::{Backend, LocalDir, SinkBackend};
pub use backup::BackupOptions;
pub use index::DiskIndex;
pub use maintain::{GcReport, PruneReport, Retention, VerifyReport};
pub use repo::{Config, Repository, Snapshot, SnapshotDisk, DEFAULT_CHUNK_SIZE};
pub use restore::{SnapshotImage, SnapshotSource};
