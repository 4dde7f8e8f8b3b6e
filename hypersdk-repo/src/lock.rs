//! Repository locks: backups, restores, verify and prune share the
//! repository; garbage collection needs it alone.
//!
//! A lock is an object `lock-<16 hex>` holding JSON (`kind`, `operation`,
//! `host`, `pid`, `time`, `refreshed`). To lock, an operation writes its
//! own lock object first and lists the others second; if any live lock
//! conflicts (either one exclusive), it deletes its own and fails with
//! [`Error::Locked`] naming the holder. Two operations racing both see each
//! other and both back off, never both proceed. A lock is refreshed every
//! 5 minutes while held; one not refreshed for 30 minutes, or held by a
//! process of this host that no longer exists, is stale and ignored
//! (`hyperctl repo unlock` removes stale locks).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use hypersdk_core::{Error, Result};

use crate::backend::Backend;
use crate::blob;

/// How often a held lock is refreshed.
const REFRESH: Duration = Duration::from_secs(300);
/// A lock not refreshed for this long is stale.
const STALE_AFTER: i64 = 30 * 60;

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    /// "shared" or "exclusive".
    pub kind: String,
    /// What holds it: "backup", "gc", …
    pub operation: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// RFC 3339 time taken.
    pub time: String,
    /// RFC 3339 time last refreshed.
    pub refreshed: String,
}

impl LockInfo {
    fn now(exclusive: bool, operation: &str) -> Self {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        LockInfo {
            kind: if exclusive { "exclusive" } else { "shared" }.into(),
            operation: operation.into(),
            host: hostname(),
            pid: std::process::id(),
            time: now.clone(),
            refreshed: now,
        }
    }

    /// Whether its holder is gone.
    pub fn is_stale(&self) -> bool {
        let old = chrono::DateTime::parse_from_rfc3339(&self.refreshed)
            .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > STALE_AFTER)
            .unwrap_or(true);
        old || (self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of a {} by pid {} on host {} since {}",
            self.kind, self.operation, self.pid, self.host, self.time
        )
    }
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A held lock. Call [`release`](Self::release) when done; dropped, it
/// stops refreshing and is left to go stale.
#[derive(Debug)]
pub struct Lock {
    backend: Arc<dyn Backend>,
    name: String,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Lock {
    /// Takes a lock of `backend` for `operation`.
    pub async fn acquire(backend: Arc<dyn Backend>, exclusive: bool, operation: &str) -> Result<Lock> {
        let name = format!("lock-{}", blob::hex(&blob::random::<8>()?));
        let mine = LockInfo::now(exclusive, operation);
        let json = serde_json::to_vec(&mine).map_err(|e| Error::Internal(e.to_string()))?;
        backend.put(&name, &json).await?;
        let conflict = async {
            for (other, _) in backend.list("lock-").await? {
                if other == name {
                    continue;
                }
                let Some(info) = read_lock(backend.as_ref(), &other).await? else {
                    continue;
                };
                if info.is_stale() {
                    continue;
                }
                if exclusive || info.kind != "shared" {
                    return Ok(Some(info));
                }
            }
            Ok::<_, Error>(None)
        }
        .await;
        match conflict {
            Ok(None) => {}
            Ok(Some(holder)) => {
                let _ = backend.delete(&name).await;
                return Err(Error::Locked {
                    target: format!("repository {}", backend.describe()),
                    holder: format!(
                        "{} (try again when it ends; `hyperctl repo unlock` removes locks of processes that are gone)",
                        holder.describe()
                    ),
                });
            }
            Err(e) => {
                let _ = backend.delete(&name).await;
                return Err(e);
            }
        }
        let refresher = {
            let backend = backend.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let mut info = mine;
                loop {
                    tokio::time::sleep(REFRESH).await;
                    info.refreshed = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    if let Ok(json) = serde_json::to_vec(&info) {
                        if let Err(e) = backend.put(&name, &json).await {
                            tracing::warn!(lock = %name, "cannot refresh the repository lock: {e}");
                        }
                    }
                }
            })
        };
        Ok(Lock {
            backend,
            name,
            refresher,
        })
    }

    /// Releases the lock.
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        self.backend.delete(&self.name).await.map(|_| ())
    }
}

async fn read_lock(backend: &dyn Backend, name: &str) -> Result<Option<LockInfo>> {
    let Some(bytes) = backend.get(name, 64 << 10).await? else {
        return Ok(None);
    };
    // An unreadable lock is treated as a live exclusive one held by nobody
    // known: safer than ignoring it.
    Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| LockInfo {
        kind: "exclusive".into(),
        operation: "unknown operation (unreadable lock object)".into(),
        host: "?".into(),
        pid: 0,
        time: "?".into(),
        refreshed: chrono::Utc::now().to_rfc3339(),
    })))
}

/// The locks of `backend`: name, and content when readable.
pub async fn locks(backend: &dyn Backend) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for (name, _) in backend.list("lock-").await? {
        let info = backend
            .get(&name, 64 << 10)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push((name, info));
    }
    Ok(out)
}

/// Removes stale locks (every lock with `all`); returns how many.
pub async fn unlock(backend: &dyn Backend, all: bool) -> Result<usize> {
    let mut n = 0;
    for (name, info) in locks(backend).await? {
        if all || info.as_ref().is_some_and(LockInfo::is_stale) {
            if backend.delete(&name).await? {
                n += 1;
            }
        }
    }
    Ok(n)
}
