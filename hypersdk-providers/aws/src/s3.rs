//! The two S3 calls the classic export path needs: reading the file an
//! instance export task wrote (GetObject, from an offset with Range), and
//! deleting it (DeleteObject). Signed with SigV4 (service `s3`, the
//! payload's digest in `x-amz-content-sha256`); virtual-hosted addressing
//! on AWS, path-style on another endpoint (moto, MinIO).

use futures_util::TryStreamExt;
use hypersdk_core::http::read_bounded;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::{Error, Result};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};

use crate::client::{err, Endpoint};
use crate::creds::CredentialSource;
use crate::sigv4;

/// One bucket of S3.
#[derive(Debug)]
pub struct S3 {
    ep: Endpoint,
    bucket: String,
    /// `/BUCKET` for path-style addressing, empty for virtual-hosted.
    base: String,
}

/// Whether `b` is an S3 bucket name (3–63 of a-z 0-9 . -).
pub fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !b.starts_with(['.', '-'])
        && !b.contains("..")
}

impl S3 {
    /// Bucket `bucket` in `region`: at `endpoint` (path-style) if given,
    /// else on AWS (`https://BUCKET.s3.REGION.amazonaws.com`).
    pub fn new(
        bucket: &str,
        endpoint: Option<&str>,
        region: &str,
        creds: CredentialSource,
    ) -> Result<S3> {
        if !valid_bucket(bucket) {
            return Err(Error::InvalidArgument(format!(
                "{bucket:?} is not an S3 bucket name"
            )));
        }
        let (url, base) = match endpoint {
            Some(e) => (e.to_string(), format!("/{bucket}")),
            None => (
                format!("https://{bucket}.s3.{region}.amazonaws.com"),
                String::new(),
            ),
        };
        Ok(S3 {
            ep: Endpoint::new("S3", &url, region, creds)?,
            bucket: bucket.to_string(),
            base,
        })
    }

    fn path(&self, key: &str) -> String {
        let enc: Vec<String> = key.split('/').map(sigv4::encode).collect();
        format!("{}/{}", self.base, enc.join("/"))
    }

    async fn send(&self, method: &str, key: &str, range: Option<u64>) -> Result<reqwest::Response> {
        let path = self.path(key);
        let req = sigv4::Request {
            method,
            host: &self.ep.host,
            path: &path,
            query: &[],
            headers: &[],
            body: b"",
        };
        let signed = self.ep.sign(&req, "s3").await?;
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Internal(format!("method {method}")))?;
        let mut rb = self.ep.http.request(m, format!("{}{path}", self.ep.url));
        if let Some(from) = range.filter(|&o| o > 0) {
            rb = rb.header("range", format!("bytes={from}-"));
        }
        for (k, v) in signed {
            rb = rb.header(k, v);
        }
        let shown = format!("s3://{}/{key}", self.bucket);
        let resp = rb.send().await.map_err(|e| {
            err(
                format!(
                    "S3 {method} {shown}: {}",
                    hypersdk_core::error::chain(&e.without_url())
                ),
                true,
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // <Error><Code/><Message/></Error>
        let body = read_bounded(resp, 64 << 10).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let pick = |tag: &str| {
            text.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|t| t.split(&format!("</{tag}>")).next())
                .unwrap_or("")
                .to_string()
        };
        let (code, message) = (
            pick("Code"),
            display_text(&pick("Message"), MAX_SHOWN_MESSAGE),
        );
        if status.as_u16() == 403 {
            return Err(Error::Auth {
                provider: "aws".into(),
                target: shown,
                user: self.ep.creds.who(),
                message: format!("{code}: {message}"),
            });
        }
        Err(err(
            format!("S3 {method} {shown}: HTTP {status} {code}: {message}"),
            status.is_server_error() || status.as_u16() == 429,
        ))
    }

    /// Object `key` from byte `offset`, as it arrives; a server that
    /// ignores the range is an error.
    pub async fn read(&self, key: &str, offset: u64) -> Result<DiskStream> {
        let resp = self.send("GET", key, Some(offset)).await?;
        if offset > 0 {
            let from = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if resp.status().as_u16() != 206 || from != Some(offset) {
                return Err(err(
                    format!(
                        "S3 GET s3://{}/{key}: the server ignored the range from byte {offset}",
                        self.bucket
                    ),
                    false,
                ));
            }
        }
        let shown = format!("s3://{}/{key}", self.bucket);
        Ok(Box::pin(resp.bytes_stream().map_err(move |e| {
            err(
                format!(
                    "reading {shown}: {}",
                    hypersdk_core::error::chain(&e.without_url())
                ),
                true,
            )
        })))
    }

    /// Deletes object `key` (S3 answers 204 whether it was there or not).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.send("DELETE", key, None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert!(valid_bucket("vm-exports.eu"));
        for bad in ["ab", "Upper", "a/b", "..x", "-x", "a..b", "x?y"] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }
}
