//! The EBS direct APIs (EBS API Reference: `ListSnapshotBlocks`,
//! `GetSnapshotBlock`): a snapshot's allocated blocks, each read with its
//! SHA-256 checked.

use hypersdk_core::{Error, Result};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};

use crate::client::{err, Endpoint};
use crate::sigv4;
use hypersdk_core::http::read_bounded;

/// Blocks asked for per ListSnapshotBlocks page (the API's maximum).
const PAGE: u32 = 10_000;
/// Pages read at most (16 TiB volumes of 512 KiB blocks need 3 356).
const MAX_PAGES: usize = 100_000;
/// The longest ListSnapshotBlocks page read (10 000 blocks of about 200
/// bytes of JSON each).
const MAX_PAGE_BYTES: usize = 16 << 20;
/// The largest block accepted (AWS serves 512 KiB).
const MAX_BLOCK: usize = 8 << 20;

/// An EBS direct API endpoint with credentials.
pub struct Ebs {
    ep: Endpoint,
}

impl std::fmt::Debug for Ebs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ebs").field("endpoint", &self.ep).finish()
    }
}

/// A snapshot's allocated blocks (ListSnapshotBlocks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Blocks {
    /// Bytes per block (AWS: 524 288).
    pub block_size: u64,
    /// The volume's size in GiB.
    pub volume_gib: u64,
    /// Allocated blocks: index and the token that reads it.
    pub blocks: Vec<(u64, String)>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    blocks: Vec<PageBlock>,
    block_size: Option<u64>,
    volume_size: Option<u64>,
    next_token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PageBlock {
    block_index: u64,
    block_token: String,
}

impl Ebs {
    /// A client of `endpoint` (`https://ebs.REGION.amazonaws.com`, or an
    /// `http://` test server) in `region`.
    pub fn new(
        endpoint: &str,
        region: &str,
        creds: impl Into<crate::creds::CredentialSource>,
    ) -> Result<Ebs> {
        Ok(Ebs {
            ep: Endpoint::new("EBS", endpoint, region, creds.into())?,
        })
    }

    fn err(&self, message: String, retryable: bool) -> Error {
        err(message, retryable)
    }

    /// A signed GET of `path` with `query`.
    async fn get(
        &self,
        what: &str,
        path: &str,
        query: &[(String, String)],
    ) -> Result<reqwest::Response> {
        let req = sigv4::Request {
            method: "GET",
            host: &self.ep.host,
            path,
            query,
            headers: &[],
            body: b"",
        };
        let signed = self.ep.sign(&req, "ebs").await?;
        let q = sigv4::canonical_query(query);
        let url = if q.is_empty() {
            format!("{}{path}", self.ep.url)
        } else {
            format!("{}{path}?{q}", self.ep.url)
        };
        let mut rb = self.ep.http.get(url);
        for (k, v) in signed {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.map_err(|e| {
            self.err(
                format!(
                    "EBS {what}: {}",
                    hypersdk_core::error::chain(&e.without_url())
                ),
                true,
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_bounded(resp, 64 << 10).await.unwrap_or_default();
        let said: String = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let said = display_text(&said, MAX_SHOWN_MESSAGE);
        if matches!(status.as_u16(), 401 | 403) {
            return Err(Error::Auth {
                provider: "aws".into(),
                target: self.ep.url.clone(),
                user: self.ep.creds.who(),
                message: format!("EBS {what}: HTTP {status} {said}"),
            });
        }
        Err(self.err(
            format!("EBS {what}: HTTP {status} {said}"),
            status.is_server_error() || status.as_u16() == 429,
        ))
    }

    /// The allocated blocks of `snapshot`.
    pub async fn blocks(&self, snapshot: &str) -> Result<Blocks> {
        check_id(snapshot)?;
        let path = format!("/snapshots/{snapshot}/blocks");
        let mut out = Blocks::default();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut q = vec![("maxResults".to_string(), PAGE.to_string())];
            if let Some(t) = &token {
                q.push(("pageToken".into(), t.clone()));
            }
            let resp = self.get("ListSnapshotBlocks", &path, &q).await?;
            let body = read_bounded(resp, MAX_PAGE_BYTES)
                .await
                .map_err(|e| self.err(format!("EBS ListSnapshotBlocks: {e}"), true))?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.err(format!("EBS ListSnapshotBlocks: {e}"), false))?;
            if let Some(b) = page.block_size {
                out.block_size = b;
            }
            if let Some(v) = page.volume_size {
                out.volume_gib = v;
            }
            let before = out.blocks.len();
            out.blocks.extend(
                page.blocks
                    .into_iter()
                    .map(|b| (b.block_index, b.block_token)),
            );
            // A block list never holds more blocks than the volume has, nor
            // one past its end: memory stays bounded by the volume's size
            // whatever the server sends.
            if out.block_size > 0 && out.volume_gib > 0 {
                let count = (out.volume_gib << 30).div_ceil(out.block_size);
                if out.blocks.len() as u64 > count
                    || out.blocks[before..].iter().any(|&(i, _)| i >= count)
                {
                    return Err(self.err(
                        format!(
                            "EBS ListSnapshotBlocks: {snapshot} lists blocks past its {} GiB",
                            out.volume_gib
                        ),
                        false,
                    ));
                }
            }
            token = page.next_token.filter(|t| !t.is_empty());
            if token.is_none() {
                if out.block_size == 0 || out.block_size as usize > MAX_BLOCK {
                    return Err(self.err(
                        format!(
                            "EBS ListSnapshotBlocks: block size {} of {snapshot}",
                            out.block_size
                        ),
                        false,
                    ));
                }
                out.blocks.sort_by_key(|b| b.0);
                return Ok(out);
            }
        }
        Err(self.err(
            format!("EBS ListSnapshotBlocks: more than {MAX_PAGES} pages for {snapshot}"),
            false,
        ))
    }

    /// Block `index` of `snapshot` (its token from [`blocks`](Self::blocks)),
    /// `len` bytes, its SHA-256 checked against the `x-amz-Checksum` the
    /// service sends.
    pub async fn block(
        &self,
        snapshot: &str,
        index: u64,
        token: &str,
        len: u64,
    ) -> Result<Vec<u8>> {
        check_id(snapshot)?;
        let path = format!("/snapshots/{snapshot}/blocks/{index}");
        let resp = self
            .get(
                "GetSnapshotBlock",
                &path,
                &[("blockToken".to_string(), token.to_string())],
            )
            .await?;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let checksum = header("x-amz-Checksum");
        let algorithm = header("x-amz-Checksum-Algorithm");
        // A block longer than asked for is an error, never buffered whole.
        let data = read_bounded(resp, len as usize)
            .await
            .map_err(|e| Error::Integrity {
                file: format!("{snapshot} block {index}"),
                detail: format!("{e} (the block holds {len})"),
            })?;
        if data.len() as u64 != len {
            return Err(Error::Integrity {
                file: format!("{snapshot} block {index}"),
                detail: format!("{} bytes where the block holds {len}", data.len()),
            });
        }
        match (algorithm.as_deref(), checksum) {
            (Some("SHA256"), Some(sum)) => {
                use base64::Engine as _;
                let got = base64::engine::general_purpose::STANDARD
                    .encode(ring::digest::digest(&ring::digest::SHA256, &data));
                if got != sum {
                    return Err(Error::Integrity {
                        file: format!("{snapshot} block {index}"),
                        detail: format!("SHA-256 {got}, the service says {sum}"),
                    });
                }
            }
            (a, _) => {
                return Err(Error::Integrity {
                    file: format!("{snapshot} block {index}"),
                    detail: format!("no SHA-256 checksum sent (algorithm {a:?})"),
                })
            }
        }
        Ok(data)
    }
}

/// A snapshot id is `snap-` and hex: nothing else goes into a request path.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let ok = id.strip_prefix("snap-").is_some_and(|h| {
        !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{id:?} is not an EBS snapshot id (snap-…)"
        )))
    }
}
