//! Disk downloads over HTTP that survive a dropped connection, for every
//! HTTP-based provider (vSphere NFC leases, cloud snapshot and SAS URLs,
//! KubeVirt's export server).
//!
//! A download is a GET of a URL. When the body breaks off (a reset, a cut,
//! a read that stalls past the client's read timeout) the rest is asked for
//! from the byte it broke at, with `Range: bytes=N-`, after a backoff from
//! the download's [`RetryPolicy`]; each break starts the policy afresh,
//! since the download made progress, and at most [`MAX_BREAKS`] breaks are
//! tolerated per download.
//!
//! A 206 answer must start at byte N (its Content-Range) and is appended. A
//! 200 answer means the server ignored Range: it is never appended — its
//! first N bytes, which the download already has, are read and dropped, and
//! a warning says so. Any other answer ends the download with an error: 5xx
//! and connection failures are retried by the policy, 4xx (e.g. 404 once a
//! lease is gone) is final. Errors are [`Error::DiskRead`] naming the VM,
//! the disk and its location (never the URL, which may carry a token).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use crate::provider::DiskStream;
use crate::retry::RetryPolicy;
use crate::{Error, Result};

/// Breaks tolerated in one download before it fails.
pub const MAX_BREAKS: u32 = 1000;

/// Adds what a request needs (a session cookie, an authorization header).
pub type PrepareRequest =
    Arc<dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync>;

/// What a download fetches and how.
#[derive(Clone)]
pub struct Download {
    /// The client (its TLS settings and timeouts apply).
    pub client: reqwest::Client,
    /// The URL. Never shown in errors or logs.
    pub url: String,
    /// Called on every request before it is sent.
    pub prepare: Option<PrepareRequest>,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// What the URL is, in messages: "its NFC URL", "its snapshot block URL".
    pub what: String,
    /// The VM, for errors.
    pub vm: String,
    /// The disk, for errors.
    pub disk: String,
    /// Where the disk lives (a datastore path, a snapshot id), for errors.
    pub location: String,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("what", &self.what)
            .field("vm", &self.vm)
            .field("disk", &self.disk)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Download {
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

    /// One GET from byte `pos`: the response and how many of its first
    /// bytes to drop (the server ignored the Range).
    async fn request(&self, pos: u64) -> Result<(reqwest::Response, u64)> {
        let mut req = self.client.get(&self.url);
        if let Some(p) = &self.prepare {
            req = p(req);
        }
        if pos > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={pos}-"));
        }
        let what = &self.what;
        let resp = req
            .send()
            .await
            .map_err(|e| self.err(format!("GET of {what} failed: {}", without_url(&e)), true))?;
        let status = resp.status();
        match status.as_u16() {
            206 if pos > 0 => match range_start(&resp) {
                Some(start) if start == pos => Ok((resp, 0)),
                other => Err(self.err(
                    format!(
                        "asked {what} for the bytes from {pos} on, got a partial answer starting at {}",
                        other.map_or("an unknown byte".into(), |s| s.to_string())
                    ),
                    false,
                )),
            },
            200 => {
                if pos > 0 {
                    warn!(
                        vm = %self.vm, disk = %self.disk, bytes = pos,
                        "the server ignored the Range request: re-reading the {pos} bytes already received and dropping them"
                    );
                }
                Ok((resp, pos))
            }
            _ => Err(self.err(
                format!("{what} answered HTTP {status}"),
                status.is_server_error(),
            )),
        }
    }

    /// The bytes from `offset` on, resuming after breaks. The stream ends
    /// with an error if the download cannot go on; dropping it stops the
    /// download.
    pub fn stream(self, offset: u64) -> DiskStream {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(4);
        tokio::spawn(async move {
            let mut pos = offset;
            let mut breaks = 0u32;
            let mut total: Option<u64> = None;
            loop {
                let opened = tokio::select! {
                    _ = tx.closed() => return,
                    r = self.retry.run("disk download", |_| self.request(pos)) => r,
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
                        Some(Err(e)) => break without_url(&e),
                        None if total.is_some_and(|t| pos < t) || skip > 0 => {
                            break format!("the answer ended at byte {pos} of {total:?}")
                        }
                        None => return,
                    }
                };
                breaks += 1;
                if breaks > MAX_BREAKS {
                    let _ = tx
                        .send(Err(self.err(
                            format!(
                                "the download of {} broke off {breaks} times; last at byte {pos}: {broke}",
                                self.what
                            ),
                            false,
                        )))
                        .await;
                    return;
                }
                warn!(
                    vm = %self.vm, disk = %self.disk,
                    "the download broke off at byte {pos} ({broke}); resuming from there"
                );
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Box::pin(stream)
    }
}

/// At most `limit` bytes of an answer's body, for the small documents
/// API clients read (JSON, XML, a token): a longer one — by its
/// Content-Length or as it arrives — is an `InvalidData` error, never
/// buffered whole; a body that breaks off is any other error.
pub async fn read_bounded(resp: reqwest::Response, limit: usize) -> std::io::Result<Vec<u8>> {
    use futures_util::TryStreamExt;
    let too_long = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("answer longer than {limit} bytes"),
        )
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(|e| std::io::Error::other(e.without_url()))?
    {
        if out.len() + b.len() > limit {
            return Err(too_long());
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// A reqwest error's text without its URL (which may carry a token).
fn without_url(e: &reqwest::Error) -> String {
    let mut shown = e.to_string();
    if let Some(u) = e.url() {
        shown = shown.replace(u.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        shown.push_str(": ");
        shown.push_str(&s.to_string());
        source = s.source();
    }
    shown
}

/// The answer's first byte, from its Content-Range (`bytes START-END/TOTAL`).
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?;
    let v = v.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}
