//! Disk downloads that survive a dropped connection.
//!
//! A download is a GET of a lease's device URL. When the body breaks off (a
//! reset, a cut, a read that stalls past the client's read timeout) the rest
//! is asked for from the byte it broke at, with `Range: bytes=N-`, after a
//! backoff from the connection's [`RetryPolicy`](hypersdk_core::retry::RetryPolicy);
//! each break starts the policy afresh, since the download made progress,
//! and at most [`MAX_BREAKS`] breaks are tolerated per download.
//!
//! A 206 answer must start at byte N (its Content-Range) and is appended. A
//! 200 answer means the server ignored Range: it is never appended — its
//! first N bytes, which the download already has, are read and dropped, and
//! a warning says so. Any other answer ends the download with an error: 5xx
//! and connection failures are retried by the policy, 4xx (e.g. 404 once the
//! lease is gone) is final.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use hypersdk_core::{DiskStream, Error, Result};
use tokio::sync::mpsc;
use tracing::warn;

use crate::client::Connection;

/// Breaks tolerated in one download before it fails.
pub(crate) const MAX_BREAKS: u32 = 1000;

/// What a download fetches, for its requests and error messages.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
    pub vm: String,
    pub disk: String,
    pub location: String,
}

impl Target {
    fn err(&self, msg: String, transient: bool) -> Error {
        let source: Box<dyn std::error::Error + Send + Sync> = if transient {
            Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                msg,
            ))
        } else {
            msg.into()
        };
        Error::DiskRead {
            vm: self.vm.clone(),
            disk: self.disk.clone(),
            location: self.location.clone(),
            source,
        }
    }
}

/// The answer's first byte, from its Content-Range (`bytes START-END/TOTAL`).
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?;
    let v = v.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// One GET from byte `pos`: the response and how many of its first bytes
/// to drop (the server ignored the Range).
async fn request(conn: &Connection, t: &Target, pos: u64) -> Result<(reqwest::Response, u64)> {
    let mut req = conn.http().get(&t.url);
    let same_host = reqwest::Url::parse(&t.url)
        .ok()
        .is_some_and(|u| u.host_str() == conn.base_url().host_str());
    if let (true, Some(c)) = (same_host, conn.cookie()) {
        req = req.header(reqwest::header::COOKIE, c);
    }
    if pos > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={pos}-"));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| t.err(format!("GET of its NFC URL failed: {e}"), true))?;
    let status = resp.status();
    match status.as_u16() {
        206 if pos > 0 => match range_start(&resp) {
            Some(start) if start == pos => Ok((resp, 0)),
            other => Err(t.err(
                format!(
                    "asked its NFC URL for the bytes from {pos} on, got a partial answer starting at {}",
                    other.map_or("an unknown byte".into(), |s| s.to_string())
                ),
                false,
            )),
        },
        200 => {
            if pos > 0 {
                warn!(
                    vm = %t.vm, disk = %t.disk, bytes = pos,
                    "the NFC server ignored the Range request: re-reading the {pos} bytes already received and dropping them"
                );
            }
            Ok((resp, pos))
        }
        _ => Err(t.err(
            format!("its NFC URL answered HTTP {status}"),
            status.is_server_error(),
        )),
    }
}

/// Downloads `t` from byte `offset` on, resuming after breaks. The stream
/// ends with an error if the download cannot go on; dropping it stops the
/// download.
pub(crate) fn download(conn: Arc<Connection>, t: Target, offset: u64) -> DiskStream {
    let (tx, rx) = mpsc::channel::<Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut pos = offset;
        let mut breaks = 0u32;
        let mut total: Option<u64> = None;
        loop {
            let opened = tokio::select! {
                _ = tx.closed() => return,
                r = conn.retry_policy().run("NFC disk download", |_| request(&conn, &t, pos)) => r,
            };
            let (resp, mut skip) = match opened {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if let Some(len) = resp.content_length() {
                total = Some(pos - skip + len);
            }
            let mut body = resp.bytes_stream();
            let broke = loop {
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    i = body.next() => i,
                };
                match item {
                    Some(Ok(mut b)) => {
                        if skip > 0 {
                            let drop = skip.min(b.len() as u64);
                            skip -= drop;
                            b = b.slice(drop as usize..);
                            if b.is_empty() {
                                continue;
                            }
                        }
                        pos += b.len() as u64;
                        if tx.send(Ok(b)).await.is_err() {
                            return; // the export stopped reading
                        }
                    }
                    Some(Err(e)) => break format!("{e}"),
                    None if total.is_some_and(|t| pos < t) || skip > 0 => {
                        break format!("the answer ended at byte {pos} of {total:?}")
                    }
                    None => return,
                }
            };
            breaks += 1;
            if breaks > MAX_BREAKS {
                let _ = tx
                    .send(Err(t.err(
                        format!("the NFC download broke off {breaks} times; last at byte {pos}: {broke}"),
                        false,
                    )))
                    .await;
                return;
            }
            warn!(
                vm = %t.vm, disk = %t.disk,
                "the NFC download broke off at byte {pos} ({broke}); resuming from there"
            );
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Box::pin(stream)
}
