//! A managed disk's data: the page blob behind a read SAS (a fixed VHD:
//! the guest's bytes, then a 512-byte footer), read with ranged GETs
//! (`x-ms-range`), each range's Content-MD5 checked, and its allocated
//! pages listed (Get Page Ranges) so that holes are never fetched.

use std::ops::Range;

use base64::Engine;
use bytes::Bytes;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{Error, Result};
use hypersdk_formats::vhd::Footer;
use md5::Digest;

use crate::arm::{err, origin, read_bounded};

/// The Blob service version asked for (page ranges with markers).
const VERSION: &str = "2021-08-06";
/// Largest page-list answer read at once.
const MAX_PAGE_LIST: usize = 32 << 20;
/// Pages of page ranges followed.
const MAX_PAGE_LISTS: usize = 100_000;
/// The grid allocated ranges are kept on (1 MiB). A page list may hold a
/// range per 512-byte page; on this grid a disk has at most one range per
/// 2 MiB, 16 bytes each (8 MiB per TiB of disk, 256 MiB for Azure's
/// largest, 32 TiB, disk), whatever the server sends.
pub(crate) const GRID: u64 = 1 << 20;

/// One page blob, by its SAS URL (a secret: never shown).
pub(crate) struct PageBlob {
    http: reqwest::Client,
    url: String,
    /// The blob's length (the guest size plus the footer).
    pub(crate) size: u64,
    /// The guest size, from the VHD footer.
    pub(crate) capacity: u64,
    /// What it is, in messages: "snapshot hypersdk-…".
    pub(crate) what: String,
}

impl std::fmt::Debug for PageBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlob")
            .field("what", &self.what)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PageBlob {
    /// Opens the blob at `url`: its length, and its footer checked to be a
    /// fixed VHD's. `plain_http` allows an `http://` URL (an emulator).
    /// Requests go through `http` (ARM's client: its timeouts, no redirects).
    pub(crate) async fn open(
        http: reqwest::Client,
        url: &str,
        what: &str,
        plain_http: bool,
    ) -> Result<PageBlob> {
        if origin(url).is_none() || (!plain_http && !url.starts_with("https://")) {
            return Err(err(
                format!("the access URL of {what} is not an https:// URL: refused"),
                false,
            ));
        }
        let mut blob = PageBlob {
            http,
            url: url.to_string(),
            size: 0,
            capacity: 0,
            what: what.to_string(),
        };
        let head = blob
            .retry("HEAD", || async {
                let r = blob
                    .http
                    .head(&blob.url)
                    .header("x-ms-version", VERSION)
                    .send()
                    .await
                    .map_err(|e| blob.broke("HEAD", e))?;
                if !r.status().is_success() {
                    return Err(blob.status("HEAD", r.status().as_u16()));
                }
                Ok(r)
            })
            .await?;
        let header = |n: &str| head.headers().get(n).and_then(|v| v.to_str().ok());
        if header("x-ms-blob-type").is_some_and(|t| t != "PageBlob") {
            return Err(err(
                format!(
                    "{what} is a {} blob, not a page blob",
                    header("x-ms-blob-type").unwrap_or("")
                ),
                false,
            ));
        }
        blob.size = header("content-length")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(format!("{what}: no Content-Length"), false))?;
        if blob.size < 1024 || !blob.size.is_multiple_of(512) {
            return Err(err(
                format!("{what} is {} bytes long: not a fixed VHD", blob.size),
                false,
            ));
        }
        let tail = blob.read(blob.size - 512..blob.size).await?;
        let mut f = [0u8; 512];
        f.copy_from_slice(&tail);
        let footer = Footer::parse(&f).map_err(|(at, why)| {
            err(
                format!("{what}: its VHD footer is invalid at byte {at}: {why}"),
                false,
            )
        })?;
        if footer.disk_type != 2 || footer.size != blob.size - 512 {
            return Err(err(
                format!(
                    "{what} is not a fixed VHD of its blob's size (footer: type {}, {} bytes; blob: {} bytes)",
                    footer.disk_type, footer.size, blob.size
                ),
                false,
            ));
        }
        blob.capacity = footer.size;
        Ok(blob)
    }

    /// The allocated guest ranges (the footer's page left out), merged.
    /// The blob's allocated ranges (Get Page Ranges, every page list),
    /// widened to [`GRID`] and merged, within the disk's capacity.
    pub(crate) async fn ranges(&self) -> Result<Vec<Range<u64>>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PAGE_LISTS {
            let mut url = format!("{}&comp=pagelist", self.url);
            if let Some(m) = &marker {
                url.push_str("&marker=");
                url.push_str(
                    &percent_encoding::utf8_percent_encode(m, percent_encoding::NON_ALPHANUMERIC)
                        .to_string(),
                );
            }
            let body = self
                .retry("Get Page Ranges", || async {
                    let r = self
                        .http
                        .get(&url)
                        .header("x-ms-version", VERSION)
                        .send()
                        .await
                        .map_err(|e| self.broke("Get Page Ranges", e))?;
                    if r.status().as_u16() != 200 {
                        return Err(self.status("Get Page Ranges", r.status().as_u16()));
                    }
                    read_bounded(r, MAX_PAGE_LIST).await
                })
                .await?;
            let text = String::from_utf8_lossy(&body);
            let doc = hypersdk_formats::xml::parse(&text).map_err(|e| {
                err(
                    format!("{}: the page list is not XML: {e}", self.what),
                    false,
                )
            })?;
            for r in doc.children_named("PageRange") {
                let num = |n: &str| r.child_text(n).and_then(|s| s.trim().parse::<u64>().ok());
                let (Some(start), Some(end)) = (num("Start"), num("End")) else {
                    return Err(err(
                        format!("{}: a page range without Start and End", self.what),
                        false,
                    ));
                };
                if end < start || end >= self.size {
                    return Err(err(
                        format!(
                            "{}: page range {start}-{end} outside the blob's {} bytes",
                            self.what, self.size
                        ),
                        false,
                    ));
                }
                // Widened to the grid: a superset of the allocated bytes
                // (what lies outside still reads as zeros).
                let r = widen(start, end, self.capacity);
                if r.is_empty() {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                    Some(last) if last.start > r.start => {
                        return Err(err(
                            format!("{}: page ranges out of order", self.what),
                            false,
                        ))
                    }
                    _ => out.push(r),
                }
            }
            match doc
                .child_text("NextMarker")
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                Some(m) => marker = Some(m.to_string()),
                None => return Ok(out),
            }
        }
        Err(err(
            format!("{}: more than {MAX_PAGE_LISTS} page lists", self.what),
            false,
        ))
    }
}

/// Page range `start..=end` (Get Page Ranges' inclusive ends) widened to
/// [`GRID`], within `capacity`.
fn widen(start: u64, end: u64, capacity: u64) -> Range<u64> {
    let from = (start / GRID * GRID).min(capacity);
    let to = end
        .saturating_add(1)
        .div_ceil(GRID)
        .saturating_mul(GRID)
        .min(capacity);
    from..to.max(from)
}

impl PageBlob {
    /// The bytes of `range` (at most 4 MiB, so that the service sends their
    /// MD5), checked against it.
    pub(crate) async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        let len = range.end - range.start;
        self.retry("GET", || async {
            let r = self
                .http
                .get(&self.url)
                .header("x-ms-version", VERSION)
                .header(
                    "x-ms-range",
                    format!("bytes={}-{}", range.start, range.end - 1),
                )
                .header("x-ms-range-get-content-md5", "true")
                .send()
                .await
                .map_err(|e| self.broke("GET", e))?;
            let status = r.status().as_u16();
            if status != 206 && !(status == 200 && range.start == 0 && len == self.size) {
                return Err(self.status("GET", status));
            }
            let md5 = r
                .headers()
                .get("content-md5")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let data = read_bounded(r, len as usize).await?;
            if data.len() as u64 != len {
                return Err(err(
                    format!(
                        "{}: {} bytes came for bytes {}-{} ({len} asked)",
                        self.what,
                        data.len(),
                        range.start,
                        range.end - 1
                    ),
                    true,
                ));
            }
            if let Some(want) = md5 {
                let got = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&data));
                if got != want {
                    return Err(err(
                        format!(
                            "{}: bytes {}-{} do not match their Content-MD5 ({got} vs {want})",
                            self.what,
                            range.start,
                            range.end - 1
                        ),
                        true,
                    ));
                }
            }
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        RetryPolicy::default()
            .run(&format!("{what} of {}", self.what), |_| op())
            .await
    }

    fn broke(&self, what: &str, e: reqwest::Error) -> Error {
        err(
            format!(
                "{what} of {} failed: {}",
                self.what,
                hypersdk_core::error::chain(&e.without_url())
            ),
            true,
        )
    }

    fn status(&self, what: &str, status: u16) -> Error {
        let hint = if status == 403 {
            " (the access SAS expired or was revoked)"
        } else {
            ""
        };
        err(
            format!("{what} of {} answered HTTP {status}{hint}", self.what),
            status >= 500 || status == 429,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_ranges_widen_to_the_grid_within_the_disk() {
        const M: u64 = 1 << 20;
        assert_eq!(widen(512, 1023, 10 * M), 0..M);
        assert_eq!(widen(M, 2 * M - 1, 10 * M), M..2 * M);
        assert_eq!(widen(3 * M - 1, 3 * M, 10 * M), 2 * M..4 * M);
        // The last MiB of a disk that is not a whole number of them.
        assert_eq!(
            widen(10 * M, 10 * M + 511, 10 * M + 512),
            10 * M..10 * M + 512
        );
        // Past the capacity (the footer's pages): nothing.
        assert_eq!(widen(11 * M, 11 * M + 511, 10 * M), 10 * M..10 * M);
        assert_eq!(widen(u64::MAX - 1, u64::MAX, 10 * M), 10 * M..10 * M);
    }
}
