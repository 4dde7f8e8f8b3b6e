//! Opening and creating repositories; snapshots and indexes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use hypersdk_core::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};
use hypersdk_core::{Error, Result, VmSpec};

use crate::backend::Backend;
use crate::blob::{self, Codec, Keys, Kind, DIGEST};
use crate::index::DiskIndex;

/// Format name in `config`.
pub const FORMAT: &str = "hypersdk-repository";
/// Repository format version.
pub const REPO_VERSION: u32 = 1;
/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Largest `config`, key or lock object read.
const SMALL_MAX: usize = 64 << 10;
/// Largest snapshot description read.
pub(crate) const SNAPSHOT_MAX: usize = 16 << 20;
/// Plaintext of a key object: magic ‖ repository id ‖ encryption key ‖ id key.
const KEY_MAGIC: &[u8; 8] = b"HSRKEY01";

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Always "hypersdk-repository".
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Random id, 32 hex digits.
    pub id: String,
    /// Chunk size in bytes (a power of two, 1 MiB..=64 MiB).
    pub chunk_size: u32,
    /// "aes-256-gcm" or "none".
    pub encryption: String,
    /// "zstd".
    pub compression: String,
    /// "hmac-sha256" (encrypted) or "sha256".
    pub digest: String,
    /// RFC 3339 time of `init`.
    pub created: String,
}

/// One disk of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// The disk's name in the VM (`vda`, `disk-0`).
    pub name: String,
    /// Guest size in bytes.
    pub capacity: u64,
    /// Object name of its index (`index-…`).
    pub index: String,
    /// Change-tracking token to pass to the next backup, if tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How it was read: "full", "incremental", "full (…why…)".
    pub mode: String,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks stored by this backup (not in the repository before).
    pub new_chunks: u64,
    /// Bytes of those chunks as stored (compressed, encrypted).
    pub new_bytes: u64,
}

/// A snapshot: one backup of one VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Random id, 32 hex digits (its object is `snapshot-<id>`).
    pub id: String,
    /// RFC 3339 time the backup started.
    pub time: String,
    /// VM name as the provider reported it.
    pub vm: String,
    /// Provider that read it ("local", "vsphere", …).
    pub provider: String,
    /// The host that ran the backup.
    pub host: String,
    /// User tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The snapshot this one was incremental to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The VM's hardware: what its OVF descriptor is written from.
    pub spec: VmSpec,
    /// Its disks, in the order of `spec.disks`.
    pub disks: Vec<SnapshotDisk>,
}

impl Snapshot {
    /// Its time, parsed.
    pub fn when(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(&self.time).ok()
    }

    /// The first 8 hex digits of its id, as lists show it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(8)]
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
    pub(crate) codec: Arc<Codec>,
}

fn parse_config(backend: &dyn Backend, bytes: &[u8]) -> Result<Config> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| Error::Integrity {
        file: format!("{}/config", backend.describe()),
        detail: format!("not a repository configuration: {e}"),
    })?;
    if config.format != FORMAT {
        return Err(Error::InvalidArgument(format!(
            "{} is not a hypersdk repository (format '{}')",
            backend.describe(),
            config.format
        )));
    }
    if config.version != REPO_VERSION {
        return Err(Error::InvalidArgument(format!(
            "repository {} has format version {}; this hypersdk reads version {REPO_VERSION}",
            backend.describe(),
            config.version
        )));
    }
    if !config.chunk_size.is_power_of_two() || !(1 << 20..=64 << 20).contains(&config.chunk_size) {
        return Err(Error::Integrity {
            file: format!("{}/config", backend.describe()),
            detail: format!("chunk size {} is not a power of two in 1 MiB..=64 MiB", config.chunk_size),
        });
    }
    Ok(config)
}

impl Repository {
    /// Creates a repository in an empty `backend`, encrypted under `key`
    /// unless it is None. `chunk_size` None: 4 MiB.
    pub async fn init(backend: Arc<dyn Backend>, key: Option<&KeySource>, chunk_size: Option<u32>) -> Result<Repository> {
        if backend.get("config", SMALL_MAX).await?.is_some() {
            return Err(Error::AlreadyExists {
                target: format!("repository {}", backend.describe()),
            });
        }
        let chunk_size = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        if !chunk_size.is_power_of_two() || !(1 << 20..=64 << 20).contains(&chunk_size) {
            return Err(Error::InvalidArgument(format!(
                "chunk size {chunk_size} is not a power of two from 1 MiB to 64 MiB"
            )));
        }
        let id: [u8; 16] = blob::random()?;
        let keys = match key {
            Some(source) => {
                let keys = Keys {
                    enc: Zeroizing::new(blob::random()?),
                    id: Zeroizing::new(blob::random()?),
                };
                let mut plain = Zeroizing::new(Vec::with_capacity(88));
                plain.extend_from_slice(KEY_MAGIC);
                plain.extend_from_slice(&id);
                plain.extend_from_slice(&keys.enc[..]);
                plain.extend_from_slice(&keys.id[..]);
                let mut w = EncryptWriter::new(Vec::new(), source)?;
                w.write_all(&plain)
                    .map_err(|e| Error::Crypto(format!("cannot encrypt the repository key: {e}")))?;
                let wrapped = w.finish()?;
                let name = format!("key-{}", blob::hex(&blob::random::<8>()?));
                backend.put(&name, &wrapped).await?;
                Some(keys)
            }
            None => None,
        };
        let encrypted = keys.is_some();
        let config = Config {
            format: FORMAT.into(),
            version: REPO_VERSION,
            id: blob::hex(&id),
            chunk_size,
            encryption: if encrypted { "aes-256-gcm" } else { "none" }.into(),
            compression: "zstd".into(),
            digest: if encrypted { "hmac-sha256" } else { "sha256" }.into(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let text = serde_json::to_vec_pretty(&config).map_err(|e| Error::Internal(e.to_string()))?;
        backend.sync().await?;
        // The config last: a repository appears once its key is stored.
        backend.put("config", &text).await?;
        backend.sync().await?;
        Ok(Repository {
            backend,
            config,
            codec: Arc::new(Codec::new(keys)?),
        })
    }

    /// Opens the repository in `backend` with `key` (None for one made
    /// without a key).
    pub async fn open(backend: Arc<dyn Backend>, key: Option<&KeySource>) -> Result<Repository> {
        let Some(bytes) = backend.get("config", SMALL_MAX).await? else {
            return Err(Error::InvalidArgument(format!(
                "no repository at {} (create one with `hyperctl repo init`)",
                backend.describe()
            )));
        };
        let config = parse_config(backend.as_ref(), &bytes)?;
        let key_objects = backend.list("key-").await?;
        let keys = match (config.encryption.as_str(), key) {
            ("none", None) => {
                if !key_objects.is_empty() {
                    return Err(Error::Integrity {
                        file: format!("{}/config", backend.describe()),
                        detail: "says the repository is not encrypted, yet key objects exist: refusing to write unencrypted data into it".into(),
                    });
                }
                None
            }
            ("none", Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "repository {} is not encrypted: give no key (its data would not be encrypted with it)",
                    backend.describe()
                )))
            }
            ("aes-256-gcm", None) => {
                return Err(Error::Crypto(format!(
                    "repository {} is encrypted: pass --key-file or --passphrase-file",
                    backend.describe()
                )))
            }
            ("aes-256-gcm", Some(source)) => Some(unlock_keys(backend.as_ref(), &config, &key_objects, source).await?),
            (other, _) => {
                return Err(Error::InvalidArgument(format!(
                    "repository {} uses encryption '{other}', which this hypersdk does not know",
                    backend.describe()
                )))
            }
        };
        Ok(Repository {
            backend,
            config,
            codec: Arc::new(Codec::new(keys)?),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where it lives.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Its backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        u64::from(self.config.chunk_size)
    }

    /// Ids of every snapshot.
    pub async fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("snapshot-")
            .await?
            .into_iter()
            .filter_map(|(n, _)| n.strip_prefix("snapshot-").map(str::to_owned))
            .collect())
    }

    /// Snapshot `id`.
    pub async fn load_snapshot(&self, id: &str) -> Result<Snapshot> {
        let name = format!("snapshot-{id}");
        let data = self.backend.get(&name, SNAPSHOT_MAX + 1024).await?.ok_or_else(|| {
            Error::InvalidArgument(format!("no snapshot {id} in repository {}", self.describe()))
        })?;
        let plain = self.codec.decode(Kind::Snapshot, &name, data, SNAPSHOT_MAX)?;
        let snap: Snapshot = serde_json::from_slice(&plain).map_err(|e| Error::Integrity {
            file: name.clone(),
            detail: format!("not a snapshot description: {e}"),
        })?;
        if snap.id != id || snap.disks.len() != snap.spec.disks.len() {
            return Err(Error::Integrity {
                file: name,
                detail: "its id or disks do not match its name and VM".into(),
            });
        }
        Ok(snap)
    }

    /// Every snapshot, oldest first; an unreadable one fails the call.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for id in self.snapshot_ids().await? {
            out.push(self.load_snapshot(&id).await?);
        }
        out.sort_by(|a, b| (a.when(), &a.id).cmp(&(b.when(), &b.id)));
        Ok(out)
    }

    /// The snapshot `reference` names: an id or a unique prefix of one
    /// (at least 4 hex digits), or `latest` (of VM `vm` when given).
    pub async fn find_snapshot(&self, reference: &str, vm: Option<&str>) -> Result<Snapshot> {
        if reference == "latest" {
            let all = self.snapshots().await?;
            return all
                .into_iter()
                .rev()
                .find(|s| vm.is_none_or(|v| s.vm == v))
                .ok_or_else(|| {
                    Error::InvalidArgument(match vm {
                        Some(v) => format!("repository {} has no snapshot of VM '{v}'", self.describe()),
                        None => format!("repository {} has no snapshots", self.describe()),
                    })
                });
        }
        let r = reference.to_ascii_lowercase();
        if r.len() < 4 || blob::unhex(&r[..r.len() & !1]).is_none() {
            return Err(Error::InvalidArgument(format!(
                "'{reference}' is not a snapshot id (hex, at least 4 digits) or 'latest'"
            )));
        }
        let ids: Vec<String> = self.snapshot_ids().await?.into_iter().filter(|i| i.starts_with(&r)).collect();
        match ids.as_slice() {
            [one] => self.load_snapshot(one).await,
            [] => Err(Error::InvalidArgument(format!(
                "no snapshot {reference} in repository {}",
                self.describe()
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "'{reference}' names {} snapshots: give more digits",
                ids.len()
            ))),
        }
    }

    /// Stores snapshot `snap` (after its indexes and chunks are durable).
    pub(crate) async fn put_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let name = format!("snapshot-{}", snap.id);
        let json = serde_json::to_vec(snap).map_err(|e| Error::Internal(e.to_string()))?;
        let codec = self.codec.clone();
        let blob = tokio::task::spawn_blocking(move || codec.encode(Kind::Snapshot, &name, &json))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.backend.put(&format!("snapshot-{}", snap.id), &blob).await?;
        self.backend.sync().await
    }

    /// Deletes snapshot `id` (its chunks stay until a garbage collection).
    pub async fn forget(&self, id: &str) -> Result<bool> {
        let gone = self.backend.delete(&format!("snapshot-{id}")).await?;
        self.backend.sync().await?;
        Ok(gone)
    }

    /// The index stored as `name`.
    pub async fn load_index(&self, name: &str) -> Result<DiskIndex> {
        if blob::parse_digest(name, "index-").is_none() {
            return Err(Error::Integrity {
                file: name.into(),
                detail: "not an index name".into(),
            });
        }
        let data = self
            .backend
            .get(name, crate::index::MAX_INDEX + 1024)
            .await?
            .ok_or_else(|| Error::Integrity {
                file: name.into(),
                detail: format!("missing from repository {}", self.describe()),
            })?;
        let codec = self.codec.clone();
        let owned = name.to_owned();
        let plain = tokio::task::spawn_blocking(move || codec.decode(Kind::Index, &owned, data, crate::index::MAX_INDEX))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        DiskIndex::decode(&plain).map_err(|detail| Error::Integrity {
            file: name.into(),
            detail,
        })
    }

    /// Stores `index`; returns its object name.
    pub(crate) async fn put_index(&self, index: &DiskIndex) -> Result<String> {
        let plain = index.encode();
        let name = format!("index-{}", blob::hex(&self.codec.digest(&plain)));
        let codec = self.codec.clone();
        let n = name.clone();
        let blob = tokio::task::spawn_blocking(move || codec.encode(Kind::Index, &n, &plain))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        self.backend.put(&name, &blob).await?;
        Ok(name)
    }

    /// The content of chunk `digest`, checked.
    pub async fn load_chunk(&self, digest: &[u8; DIGEST]) -> Result<Vec<u8>> {
        let name = blob::chunk_name(digest);
        let max = self.config.chunk_size as usize;
        let data = self
            .backend
            .get(&name, max + 1024)
            .await?
            .ok_or_else(|| Error::Integrity {
                file: name.clone(),
                detail: format!("missing from repository {}", self.describe()),
            })?;
        let codec = self.codec.clone();
        let d = *digest;
        tokio::task::spawn_blocking(move || codec.decode_chunk(&d, data, max))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Digests of every stored chunk.
    pub async fn chunk_set(&self) -> Result<HashSet<[u8; DIGEST]>> {
        Ok(self
            .backend
            .list("chunk-")
            .await?
            .into_iter()
            .filter(|(_, size)| *size > 0)
            .filter_map(|(n, _)| blob::parse_digest(&n, "chunk-"))
            .collect())
    }
}

async fn unlock_keys(backend: &dyn Backend, config: &Config, objects: &[(String, u64)], source: &KeySource) -> Result<Keys> {
    if objects.is_empty() {
        return Err(Error::Integrity {
            file: format!("{}/config", backend.describe()),
            detail: "says the repository is encrypted, but it holds no key object".into(),
        });
    }
    let mut last = None;
    for (name, _) in objects {
        let Some(wrapped) = backend.get(name, SMALL_MAX).await? else {
            continue;
        };
        let opened = DecryptReader::new(&wrapped[..], source).and_then(|mut r| {
            let mut plain = Zeroizing::new(Vec::new());
            r.read_to_end(&mut plain)
                .map_err(|e| Error::Crypto(e.to_string()))?;
            Ok(plain)
        });
        match opened {
            Ok(plain) => {
                if plain.len() != 88 || &plain[..8] != KEY_MAGIC || blob::hex(&plain[8..24]) != config.id {
                    return Err(Error::Integrity {
                        file: name.clone(),
                        detail: "is not a key of this repository".into(),
                    });
                }
                let mut enc = Zeroizing::new([0u8; 32]);
                let mut id = Zeroizing::new([0u8; 32]);
                enc.copy_from_slice(&plain[24..56]);
                id.copy_from_slice(&plain[56..88]);
                return Ok(Keys { enc, id });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Crypto(format!(
        "wrong key or passphrase for repository {}: {}",
        backend.describe(),
        last.map(|e| e.to_string()).unwrap_or_else(|| "no key object could be read".into())
    )))
}
