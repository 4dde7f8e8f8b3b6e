//! Exports through an HttpNfcLease.
//!
//! A powered-off VM is exported with `ExportVm`; a running (or suspended)
//! one through a snapshot: `CreateSnapshot_Task` (no memory, no quiescing),
//! `ExportSnapshot`, and `RemoveSnapshot_Task` afterwards. The lease is
//! awaited until ready, kept alive with `HttpNfcLeaseProgress` at a quarter
//! of its timeout (at most every 60 s), and completed if every disk was read
//! to its end, aborted otherwise — on every path, errors and cancellation
//! included, through [`ExportSource::close`].
//!
//! Each disk's device URL serves a streamOptimized VMDK (as ESXi does): the
//! Exporter stores it as it arrives, or it is decoded ([`StreamDecoder`])
//! into the guest bytes the Exporter encodes. Downloads resume after a
//! dropped connection (see the `download` module): with Range where the
//! server honours it, else by re-reading and dropping the bytes already
//! received. The session cookie is sent only to the host the session is on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hypersdk_core::{DiskStream, Error, ExportSource, PowerState, Result, VmSpec};
use tracing::{debug, warn};

use crate::client::{permanent, Connection};
use crate::download::{download, Target};
use crate::inventory::{self, properties};
use crate::soap::{el, MoRef};
use crate::tasks::{delete_snapshot, take_snapshot};

/// How long a lease may take to become ready, and a snapshot task to run.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// One VM being exported over NFC.
pub(crate) struct NfcSource {
    conn: Arc<Connection>,
    spec: VmSpec,
    lease: MoRef,
    snapshot: Option<MoRef>,
    urls: Vec<String>,
    /// Per disk: read to its end, the VMDK stream sound to its last marker.
    finished: Arc<Vec<AtomicBool>>,
    progress: Arc<AtomicU64>,
    keepalive: Mutex<Option<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for NfcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfcSource")
            .field("vm", &self.spec.name)
            .field("lease", &self.lease.value)
            .field("snapshot", &self.snapshot.as_ref().map(|s| &s.value))
            .finish_non_exhaustive()
    }
}

pub(crate) async fn open(conn: Arc<Connection>, vm: &str) -> Result<Box<dyn ExportSource>> {
    let records = inventory::list(&conn).await?;
    let rec = inventory::pick(&records, vm, conn.host())?.clone();
    let mut snapshot = None;
    let lease = if rec.spec.power_state == PowerState::Off {
        let rv = conn.call("ExportVm", &rec.moref.xml("_this")).await?;
        rv.find("returnval")
            .and_then(MoRef::from_element)
            .ok_or_else(|| permanent("ExportVm returned no lease"))?
    } else {
        let snap = take_snapshot(
            &conn,
            &rec.moref,
            &rec.spec.name,
            &format!("hypersdk-export-{}", std::process::id()),
            "temporary snapshot of a hypersdk export; removed when it ends",
            false,
            false,
            None,
        )
        .await?;
        debug!(vm = %rec.spec.name, snapshot = %snap.value, "snapshot created for the export");
        snapshot = Some(snap.clone());
        match conn.call("ExportSnapshot", &snap.xml("_this")).await {
            Ok(rv) => rv
                .find("returnval")
                .and_then(MoRef::from_element)
                .ok_or_else(|| permanent("ExportSnapshot returned no lease"))?,
            Err(e) => {
                remove_snapshot(&conn, &snap).await;
                return Err(e);
            }
        }
    };
    match ready(&conn, &lease, &rec.spec).await {
        Ok((urls, timeout_secs)) => {
            let progress = Arc::new(AtomicU64::new(0));
            let keepalive = spawn_keepalive(
                conn.clone(),
                lease.clone(),
                progress.clone(),
                rec.spec.disks.iter().map(|d| d.capacity).sum(),
                timeout_secs,
            );
            Ok(Box::new(NfcSource {
                finished: Arc::new(urls.iter().map(|_| AtomicBool::new(false)).collect()),
                conn,
                spec: rec.spec,
                lease,
                snapshot,
                urls,
                progress,
                keepalive: Mutex::new(Some(keepalive)),
                closed: AtomicBool::new(false),
            }))
        }
        Err(e) => {
            let _ = conn.call("HttpNfcLeaseAbort", &lease.xml("_this")).await;
            if let Some(s) = &snapshot {
                remove_snapshot(&conn, s).await;
            }
            Err(e)
        }
    }
}

/// Waits for the lease to be ready; returns the disks' URLs in disk order and
/// the lease timeout in seconds.
async fn ready(conn: &Connection, lease: &MoRef, spec: &VmSpec) -> Result<(Vec<String>, u64)> {
    let start = std::time::Instant::now();
    loop {
        let props = properties(conn, lease, &["state", "error"]).await?;
        let state = props
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.text.trim().to_string())
            .unwrap_or_default();
        match state.as_str() {
            "ready" => break,
            "error" => {
                let msg = props
                    .iter()
                    .find(|(k, _)| k == "error")
                    .and_then(|(_, v)| v.find_text("localizedMessage"))
                    .unwrap_or("")
                    .to_string();
                return Err(permanent(format!(
                    "the export lease of VM '{}' failed: {msg}",
                    spec.name
                )));
            }
            _ if start.elapsed() > READY_TIMEOUT => {
                return Err(permanent(format!(
                    "the export lease of VM '{}' was not ready within {} s",
                    spec.name,
                    READY_TIMEOUT.as_secs()
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let props = properties(conn, lease, &["info"]).await?;
    let info = props
        .into_iter()
        .find(|(k, _)| k == "info")
        .map(|(_, v)| v)
        .ok_or_else(|| permanent("the ready lease has no info"))?;
    let timeout = info
        .find_text("leaseTimeout")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    let urls: Vec<String> = info
        .find_all("deviceUrl")
        .filter(|d| d.find_text("disk") == Some("true"))
        .filter_map(|d| d.find_text("url"))
        .map(|u| device_url(u, conn.base_url()))
        .collect();
    if urls.len() != spec.disks.len() {
        return Err(permanent(format!(
            "the export lease of VM '{}' offers {} disk URLs for its {} disks",
            spec.name,
            urls.len(),
            spec.disks.len()
        )));
    }
    Ok((urls, timeout))
}

/// A lease's device URL with its `*` host (meaning "the host you are
/// talking to") replaced by the session's host — and its port, unless the
/// URL names one.
fn device_url(url: &str, base: &reqwest::Url) -> String {
    let host = base.host_str().unwrap_or("");
    match url.split_once("://*") {
        Some((scheme, rest)) if rest.starts_with(':') => format!("{scheme}://{host}{rest}"),
        Some((scheme, rest)) => match base.port() {
            Some(port) => format!("{scheme}://{host}:{port}{rest}"),
            None => format!("{scheme}://{host}{rest}"),
        },
        None => url.to_string(),
    }
}

fn spawn_keepalive(
    conn: Arc<Connection>,
    lease: MoRef,
    progress: Arc<AtomicU64>,
    total: u64,
    timeout_secs: u64,
) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_secs((timeout_secs / 4).clamp(5, 60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let done = progress.load(Ordering::Relaxed);
            let percent = (done.saturating_mul(100) / total.max(1)).min(99);
            let body = format!(
                "{}{}",
                lease.xml("_this"),
                el("percent", &percent.to_string())
            );
            if let Err(e) = conn.call("HttpNfcLeaseProgress", &body).await {
                warn!(error = %e, "could not extend the export lease");
            }
        }
    })
}

async fn remove_snapshot(conn: &Connection, snap: &MoRef) {
    if let Err(e) = delete_snapshot(conn, snap, "removing the export snapshot", false, None).await {
        warn!(snapshot = %snap.value, error = %e, "could not remove the export snapshot");
    }
}

impl NfcSource {
    /// What disk `index`'s download fetches.
    fn target(&self, index: usize) -> Result<Target> {
        let disk = self
            .spec
            .disks
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        Ok(Target {
            url: self.urls[index].clone(),
            vm: self.spec.name.clone(),
            disk: disk.name.clone(),
            location: disk.location.clone(),
        })
    }
}

#[async_trait]
impl ExportSource for NfcSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    // open_disk: the trait's default, which decodes open_served's VMDK
    // (hypersdk_core::served) from its first byte and skips to the offset.

    fn served_format(&self, _index: usize) -> Option<hypersdk_core::ServedFormat> {
        Some(hypersdk_core::ServedFormat::StreamOptimizedVmdk)
    }

    async fn open_served(&self, index: usize, offset: u64) -> Result<Option<DiskStream>> {
        let body = download(self.conn.clone(), self.target(index)?, offset);
        let progress = self.progress.clone();
        let finished = self.finished.clone();
        let stream = futures_util::stream::unfold(Some(body), move |body| {
            let progress = progress.clone();
            let finished = finished.clone();
            async move {
                let mut body = body?;
                match body.next().await {
                    Some(Ok(b)) => {
                        progress.fetch_add(b.len() as u64, Ordering::Relaxed);
                        Some((Ok(b), Some(body)))
                    }
                    Some(Err(e)) => Some((Err(e), None)),
                    None => {
                        finished[index].store(true, Ordering::SeqCst);
                        None
                    }
                }
            }
        });
        Ok(Some(Box::pin(stream)))
    }

    async fn close(&self) -> Result<()> {
        self.close_after(true).await
    }

    /// Completes the lease if the export succeeded and every disk was read
    /// to its end, else aborts it; removes the export's snapshot.
    async fn close_after(&self, succeeded: bool) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(k) = self
            .keepalive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            k.abort();
        }
        let all_done = self.finished.iter().all(|f| f.load(Ordering::SeqCst));
        let lease_result = if all_done && succeeded {
            self.conn
                .call("HttpNfcLeaseComplete", &self.lease.xml("_this"))
                .await
                .map(|_| ())
        } else {
            self.conn
                .call("HttpNfcLeaseAbort", &self.lease.xml("_this"))
                .await
                .map(|_| ())
        };
        if let Some(s) = &self.snapshot {
            remove_snapshot(&self.conn, s).await;
        }
        lease_result
    }
}

#[cfg(test)]
mod tests {
    use super::device_url;

    #[test]
    fn star_host_becomes_the_session_host() {
        let base = reqwest::Url::parse("https://vc.example:8443/sdk").unwrap();
        assert_eq!(
            device_url("https://*/nfc/52/disk-0.vmdk", &base),
            "https://vc.example:8443/nfc/52/disk-0.vmdk"
        );
        assert_eq!(
            device_url("https://*:902/nfc/52/disk-0.vmdk", &base),
            "https://vc.example:902/nfc/52/disk-0.vmdk"
        );
        assert_eq!(
            device_url("https://esx1.example/nfc/52/disk-0.vmdk", &base),
            "https://esx1.example/nfc/52/disk-0.vmdk"
        );
        let base = reqwest::Url::parse("https://vc.example/sdk").unwrap();
        assert_eq!(
            device_url("https://*/nfc/x", &base),
            "https://vc.example/nfc/x"
        );
    }
}
