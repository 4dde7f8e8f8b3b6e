//! Google Cloud Storage as a sink, through the JSON API's resumable
//! uploads.
//!
//! `gs://bucket/prefix/` names the destination. Credentials come the way
//! Google Cloud users already give them, first match wins:
//!
//! 1. [`GcsSettings`] fields (the daemon's named sinks, the bindings): a
//!    credentials file, or its JSON text;
//! 2. `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key or an
//!    `authorized_user` file);
//! 3. the gcloud CLI's application default credentials
//!    (`~/.config/gcloud/application_default_credentials.json`, or under
//!    `CLOUDSDK_CONFIG`);
//! 4. on Compute Engine, the instance's service account (metadata server).
//!
//! `STORAGE_EMULATOR_HOST` (what Google's own clients read) or an explicit
//! endpoint points the sink at another server; the emulator is used
//! without credentials, as Google's clients do. Secrets are never logged or
//! shown: [`GcsSettings`]' Debug hides them, and a session URI (which lets
//! anyone holding it write the object) stays in the local state directory,
//! never in the checkpoint, a log line or an error.
//!
//! # Why not Google's crate
//!
//! `google-cloud-storage` (1.x) pulls tonic, prost and the gax stack (about
//! 540 crates) and uploads a whole source in one call: it can neither hand
//! back a session to continue after the process dies nor hold an object's
//! last bytes until the export is published. This module speaks the
//! documented protocol over the project's one HTTP client (reqwest, rustls
//! with ring), as object_store does for S3 and Azure.
//!
//! # What a reader of the bucket sees
//!
//! Each object is one resumable upload session: its chunks are sent as they
//! are produced, but GCS creates the object only when the last request
//! (with the total size) arrives. That request carries the object's last
//! bytes (less than 256 KiB, kept in the staging area's registry) and is
//! sent at [`Staging::commit`](hypersdk_core::Staging::commit), an OVF
//! directory's manifest last, with the object's CRC32C
//! (`x-goog-hash`), which GCS checks over the whole object; the CRC32C GCS
//! reports back is compared too. Abandoned sessions hold no object and are
//! not billed; they expire after a week, and an aborted export cancels
//! them.
//!
//! # Memory and parallelism
//!
//! A session takes its chunks in order, one at a time: an upload keeps one
//! chunk in flight while it fills the next (64 MiB each by default, a
//! multiple of 256 KiB), so about 128 MiB per object being written.
//!
//! # Resume
//!
//! A save waits for the chunks sent so far (cutting one at a 256 KiB
//! boundary at or past the exporter's resume point, if needed) and records
//! how many bytes the session holds and their CRC32C. Continuing asks the
//! session how much it holds (which may be more than was saved), skips
//! that much of what the exporter produces again, and sends the rest.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use hypersdk_core::http::read_bounded;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{Error, Result, Upload, UploadState};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncRead;

use crate::google_auth::GoogleAuth;
use crate::object::{endpoint_is_http, hidden, plain_prefix, Finished, Kept, Store, UploadOf};
use crate::ObjectStoreSink;

/// The public endpoint.
const GOOGLE: &str = "https://storage.googleapis.com";
/// Chunks of a session (but its last) are multiples of this.
const ALIGN: usize = 256 << 10;
/// The default chunk size. A session takes one request at a time, each
/// answered before the next starts, so a chunk costs a round trip: larger
/// chunks waste less of the link (Google's Python client sends 100 MiB,
/// its Go client 16 MiB). See benches/README.md, sink-bench.
pub const DEFAULT_CHUNK: usize = 64 << 20;
/// The scope an access token asks for.
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// Pages of an object list read at most (1000 objects each).
const MAX_PAGES: usize = 100_000;

/// How to reach a bucket, beyond what its URL says.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsSettings {
    /// Endpoint of another server (an emulator: `http://127.0.0.1:9023`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A credentials file: a service-account key, or `authorized_user`
    /// credentials as `gcloud auth application-default login` writes.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// The same as JSON text.
    #[serde(default)]
    pub credentials_json: Option<String>,
    /// Send no credentials (a public bucket, or an emulator at `endpoint`).
    #[serde(default)]
    pub anonymous: bool,
    /// Chunk size in bytes (rounded up to a multiple of 256 KiB; default
    /// 64 MiB).
    #[serde(default)]
    pub part_size: Option<usize>,
}

impl std::fmt::Debug for GcsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSettings")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("credentials_json", &hidden(&self.credentials_json))
            .field("anonymous", &self.anonymous)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// The bucket and prefix of `gs://bucket/prefix`.
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("gs://")
        .ok_or_else(|| Error::InvalidArgument(format!("{url}: not a gs:// URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // Bucket names: 3 to 222 lower-case letters, digits, '-', '_' and '.'.
    let plain = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if bucket.len() < 3 || bucket.len() > 222 || !plain || bucket.starts_with('.') {
        return Err(Error::InvalidArgument(format!(
            "{url}: {bucket:?} is not a Cloud Storage bucket name"
        )));
    }
    Ok((bucket.to_string(), plain_prefix(url, prefix)?))
}

/// A sink writing under `url` (`gs://bucket/prefix`), keeping resume state
/// under `state_dir`.
pub fn sink(url: &str, settings: &GcsSettings, state_dir: PathBuf) -> Result<ObjectStoreSink> {
    let (bucket, prefix) = parse_url(url)?;
    let emulator = emulator_host();
    let endpoint = settings.endpoint.clone().or(emulator.clone());
    let auth = if settings.anonymous || (settings.endpoint.is_none() && emulator.is_some()) {
        None
    } else {
        Some(Arc::new(GoogleAuth::find(
            settings.credentials_json.as_deref(),
            settings.credentials.as_deref(),
            SCOPE,
            "sink",
        )?))
    };
    let mut gcs = Gcs::new(&bucket, endpoint.as_deref(), auth)?;
    gcs.chunk = settings
        .part_size
        .unwrap_or(DEFAULT_CHUNK)
        .max(ALIGN)
        .div_ceil(ALIGN)
        * ALIGN;
    let gcs = Arc::new(gcs);
    Ok(ObjectStoreSink::over(
        Arc::new(GcsStore(gcs)),
        &format!("gs://{bucket}"),
        &prefix,
        state_dir,
        None,
    ))
}

/// `STORAGE_EMULATOR_HOST` (what Google's own clients read) as a URL.
pub fn emulator_host() -> Option<String> {
    std::env::var("STORAGE_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains("://") {
                h
            } else {
                format!("http://{h}")
            }
        })
}

/// One bucket, for reading and deleting objects others wrote (the
/// Compute Engine provider reads its image exports with it).
#[derive(Clone)]
pub struct GcsBucket(Arc<Gcs>);

impl std::fmt::Debug for GcsBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsBucket")
            .field("bucket", &self.0.bucket)
            .field("endpoint", &self.0.base)
            .finish()
    }
}

impl GcsBucket {
    /// Bucket `bucket` at `endpoint` (Cloud Storage if None), with tokens
    /// from `auth` (none sent if None: an emulator, a public bucket).
    pub fn new(
        bucket: &str,
        endpoint: Option<&str>,
        auth: Option<Arc<GoogleAuth>>,
    ) -> Result<GcsBucket> {
        parse_url(&format!("gs://{bucket}"))?;
        Ok(GcsBucket(Arc::new(Gcs::new(bucket, endpoint, auth)?)))
    }

    /// Object `key`'s bytes from byte `offset` (a server that ignores the
    /// range is an error); `shown` names it in errors.
    pub async fn read(
        &self,
        key: &str,
        offset: u64,
        shown: String,
    ) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        GcsStore(self.0.clone()).read(key, offset, shown).await
    }

    /// Whether object `key` exists.
    pub async fn exists(&self, key: &str) -> io::Result<bool> {
        GcsStore(self.0.clone()).exists(key).await
    }

    /// Deletes object `key` (an error if there is none).
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        GcsStore(self.0.clone()).delete(key).await
    }
}

/// Characters of an object name sent as they are in a URL path.
const NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, NAME).to_string()
}

/// The HTTP side of one bucket.
struct Gcs {
    http: reqwest::Client,
    /// `https://storage.googleapis.com` or another server, no trailing `/`.
    base: String,
    bucket: String,
    auth: Option<Arc<GoogleAuth>>,
    retry: RetryPolicy,
    /// Chunk size, a multiple of [`ALIGN`].
    chunk: usize,
}

/// What a request's answer says went wrong, as an I/O error: transient
/// kinds for what is worth trying again, with how long the server asked
/// to wait.
pub(crate) struct Failure {
    pub(crate) error: io::Error,
    wait: Option<Duration>,
}

impl Failure {
    fn transient(&self) -> bool {
        matches!(
            self.error.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::TimedOut
        )
    }
}

/// A request that never got an answer (the URL left out: a session URI is
/// a secret).
pub(crate) fn unanswered(e: reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::ConnectionReset
    };
    Failure {
        error: io::Error::new(kind, e.without_url()),
        wait: None,
    }
}

/// An answer with a status that is not success.
pub(crate) async fn refused(resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let wait = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(300)));
    let body = read_bounded(resp, 64 << 10).await.unwrap_or_default();
    let said = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error_description"))
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    let said = display_text(said.trim(), MAX_SHOWN_MESSAGE);
    let kind = match status.as_u16() {
        404 | 410 => io::ErrorKind::NotFound,
        401 | 403 => io::ErrorKind::PermissionDenied,
        409 | 412 => io::ErrorKind::AlreadyExists,
        408 | 429 | 500..=599 => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::Other,
    };
    let text = if said.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {said}")
    };
    Failure {
        error: io::Error::new(kind, text),
        wait,
    }
}

/// How a request's answer is taken.
#[derive(Clone, Copy, PartialEq)]
enum Accept {
    /// 2xx only.
    Success,
    /// 2xx, or 308 (a session's "resume incomplete").
    Session,
}

impl Gcs {
    fn new(bucket: &str, endpoint: Option<&str>, auth: Option<Arc<GoogleAuth>>) -> Result<Gcs> {
        if let Some(e) = endpoint {
            endpoint_is_http("Cloud Storage", e)?;
        }
        // reqwest uses the process's rustls provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Gcs {
            http,
            base: endpoint.unwrap_or(GOOGLE).trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            auth,
            retry: RetryPolicy::default(),
            chunk: DEFAULT_CHUNK,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn object_url(&self, key: &str) -> String {
        self.url(&format!(
            "/storage/v1/b/{}/o/{}",
            enc(&self.bucket),
            enc(key)
        ))
    }

    /// One try of a request: `build` makes it, credentials are added.
    async fn once(
        &self,
        build: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync),
        accept: Accept,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let mut rb = build(&self.http);
        if let Some(auth) = &self.auth {
            let token = auth
                .token(&self.http)
                .await
                .map_err(|error| Failure { error, wait: None })?;
            rb = rb.bearer_auth(token);
        }
        let resp = rb.send().await.map_err(unanswered)?;
        let s = resp.status();
        if s.is_success() || (accept == Accept::Session && s == StatusCode::PERMANENT_REDIRECT) {
            Ok(resp)
        } else {
            Err(refused(resp).await)
        }
    }

    /// A request, tried again on transient failures (the core retry
    /// policy; a server's Retry-After is waited for).
    async fn call(
        &self,
        build: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync),
        accept: Accept,
    ) -> io::Result<reqwest::Response> {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            match self.once(build, accept).await {
                Ok(r) => return Ok(r),
                Err(f) => {
                    self.backoff(&f, attempt, start).await?;
                    attempt += 1;
                }
            }
        }
    }

    /// Waits before try `attempt + 1` after failure `f`, or gives up with it.
    async fn backoff(&self, f: &Failure, attempt: u32, start: Instant) -> io::Result<()> {
        let delay = self
            .retry
            .delay(attempt, 0.5)
            .max(f.wait.unwrap_or_default());
        if !f.transient()
            || attempt >= self.retry.max_attempts
            || start.elapsed() + delay > self.retry.max_elapsed
        {
            return Err(io::Error::new(f.error.kind(), f.error.to_string()));
        }
        tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %f.error, "Cloud Storage: transient failure; retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Bytes the session holds, or the object it made if it is finished.
    async fn status(&self, session: &str) -> io::Result<Held> {
        let s = session.to_string();
        let resp = self
            .call(
                &move |c| {
                    c.put(&s)
                        .header("Content-Range", "bytes */*")
                        .header("Content-Length", "0")
                },
                Accept::Session,
            )
            .await?;
        held(resp).await
    }

    /// One request putting `body` at `range` of `session` (with the
    /// object's `x-goog-hash`, if given), and what the session holds after
    /// it: from its answer (true), or, after a failure and the retry
    /// policy's wait, from a status query (false). `attempt` counts the
    /// failures of a series of requests begun at `start`.
    async fn session_put(
        &self,
        session: &str,
        range: String,
        body: Bytes,
        hash: Option<String>,
        attempt: &mut u32,
        start: Instant,
    ) -> io::Result<(bool, Held)> {
        let s = session.to_string();
        let tried = self
            .once(
                &move |c| {
                    let r = c
                        .put(&s)
                        .header("Content-Range", range.clone())
                        .body(body.clone());
                    match &hash {
                        Some(h) => r.header("x-goog-hash", h.clone()),
                        None => r,
                    }
                },
                Accept::Session,
            )
            .await;
        match tried {
            Ok(resp) => Ok((true, held(resp).await?)),
            Err(f) => {
                self.backoff(&f, *attempt, start).await?;
                *attempt += 1;
                Ok((false, self.status(session).await?))
            }
        }
    }

    /// Sends `data`, the bytes of the session from `offset` on, in one or
    /// more requests (the session may keep less than a request carried).
    async fn send_chunk(&self, session: &str, offset: u64, data: Bytes) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        let mut start = Instant::now();
        let mut attempt = 1;
        while at < end {
            let range = format!("bytes {at}-{}/*", end - 1);
            let body = data.slice((at - offset) as usize..);
            let (answered, now) = self
                .session_put(session, range, body, None, &mut attempt, start)
                .await?;
            match now {
                Held::Bytes(n) if n < at || n > end => {
                    return Err(io::Error::other(format!(
                        "the upload session holds {n} bytes, not between the {at} it took and the {end} sent"
                    )))
                }
                Held::Bytes(n) if n == at && answered => {
                    // An answer without progress: the server keeps
                    // refusing the bytes.
                    return Err(io::Error::other(format!(
                        "the upload session took none of the bytes from {at} on"
                    )));
                }
                Held::Bytes(n) => {
                    if n > at && !answered {
                        // Progress despite the failure: a flaky link that
                        // still carries bytes is not given up on.
                        attempt = 1;
                        start = Instant::now();
                    }
                    at = n;
                }
                Held::Object(_) => {
                    return Err(io::Error::other(
                        "the upload session ended before the object's last bytes",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// What a session holds.
enum Held {
    /// Bytes persisted.
    Bytes(u64),
    /// The finished object's resource.
    Object(serde_json::Value),
}

async fn held(resp: reqwest::Response) -> io::Result<Held> {
    if resp.status() == StatusCode::PERMANENT_REDIRECT {
        let n = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes=0-"))
            .and_then(|v| v.parse::<u64>().ok())
            // gcp-storage-emulator answers `bytes=0-0` for an empty
            // session, where GCS sends no Range: taken as nothing held
            // (were it one byte, the next request would be refused, and
            // the CRC32C checked at publication catches any mix-up).
            .map_or(0, |last| if last == 0 { 0 } else { last.saturating_add(1) });
        return Ok(Held::Bytes(n));
    }
    let body = read_bounded(resp, 1 << 20).await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("object resource: {e}")))?;
    Ok(Held::Object(v))
}

/// The CRC32C of `data` continuing `crc` (of the bytes before).
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let more = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data);
    crc_fast::checksum_combine(
        crc_fast::CrcAlgorithm::Crc32Iscsi,
        u64::from(crc),
        more,
        data.len() as u64,
    ) as u32
}

/// A CRC32C as GCS writes it: base64 of its four big-endian bytes.
fn crc_b64(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// Cloud Storage behind the object-store sink.
struct GcsStore(Arc<Gcs>);

#[async_trait]
impl Store for GcsStore {
    async fn exists(&self, key: &str) -> io::Result<bool> {
        let url = format!("{}?fields=name", self.0.object_url(key));
        match self.0.call(&move |c| c.get(&url), Accept::Success).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: Option<&str>) -> io::Result<Vec<(String, u64)>> {
        let g = &self.0;
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = g.url(&format!(
                "/storage/v1/b/{}/o?fields=items(name,size),nextPageToken",
                enc(&g.bucket)
            ));
            if let Some(p) = prefix {
                url.push_str(&format!("&prefix={}", enc(&format!("{p}/"))));
            }
            if let Some(t) = &page {
                url.push_str(&format!("&pageToken={}", enc(t)));
            }
            let resp = g.call(&move |c| c.get(&url), Accept::Success).await?;
            let v: serde_json::Value = serde_json::from_slice(&read_bounded(resp, 32 << 20).await?)
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("object list: {e}"))
                })?;
            for item in v
                .get("items")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
            {
                let name = item.get("name").and_then(|n| n.as_str());
                let size = item
                    .get("size")
                    .and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or(s.as_u64()));
                if let (Some(n), Some(s)) = (name, size) {
                    out.push((n.to_string(), s));
                }
            }
            page = v
                .get("nextPageToken")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if page.is_none() {
                return Ok(out);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the object list goes on past {MAX_PAGES} pages"),
        ))
    }

    async fn read(
        &self,
        key: &str,
        offset: u64,
        shown: String,
    ) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let g = &self.0;
        let url = g.url(&format!(
            "/download/storage/v1/b/{}/o/{}?alt=media",
            enc(&g.bucket),
            enc(key)
        ));
        let resp = g
            .call(
                &move |c| {
                    let r = c.get(&url);
                    if offset > 0 {
                        r.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                    } else {
                        r
                    }
                },
                Accept::Success,
            )
            .await?;
        if offset > 0 {
            let from = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if resp.status() != StatusCode::PARTIAL_CONTENT || from != Some(offset) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{shown}: the server ignored the range from byte {offset}"),
                ));
            }
        }
        let stream = resp
            .bytes_stream()
            .map_err(move |e| io::Error::other(format!("reading {shown}: {}", e.without_url())));
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let url = self.0.object_url(key);
        self.0
            .call(&move |c| c.delete(&url), Accept::Success)
            .await
            .map(drop)
    }

    async fn create(&self, key: &str) -> io::Result<String> {
        let g = &self.0;
        let url = g.url(&format!(
            "/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            enc(&g.bucket),
            enc(key)
        ));
        let body = json!({ "name": key, "contentType": "application/octet-stream" }).to_string();
        let resp = g
            .call(
                &move |c| {
                    c.post(&url)
                        .header("Content-Type", "application/json; charset=UTF-8")
                        .header("X-Upload-Content-Type", "application/octet-stream")
                        .body(body.clone())
                },
                Accept::Success,
            )
            .await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| io::Error::other("the server gave no upload session"))?;
        // The session must be on the server asked: a hostile answer cannot
        // send the export's bytes elsewhere.
        if origin(location) != origin(&g.base) || origin(location).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server gave an upload session on another host",
            ));
        }
        Ok(location.to_string())
    }

    async fn abort(&self, _key: &str, id: &str) -> io::Result<()> {
        let s = id.to_string();
        match self.0.once(&move |c| c.delete(&s), Accept::Success).await {
            Ok(_) => Ok(()),
            // Real GCS answers a cancelled session with 499.
            Err(f) if f.error.to_string().starts_with("HTTP 499") => Ok(()),
            Err(f) => Err(f.error),
        }
    }

    async fn upload(&self, of: UploadOf, kept: Option<Kept<'_>>) -> Result<Box<dyn Upload>> {
        let mut up = GcsUpload {
            gcs: self.0.clone(),
            sent: 0,
            in_flight: None,
            buf: BytesMut::new(),
            skip: 0,
            pos: 0,
            crc: 0,
            hashed: 0,
            of,
        };
        if let Some(k) = kept {
            let saved: Saved = serde_json::from_value(k.saved.clone()).map_err(|e| {
                Error::InvalidArgument(format!(
                    "saved state of upload {} is not this sink's: {e}",
                    up.of.name
                ))
            })?;
            let held = self
                .0
                .status(&up.of.id)
                .await
                .map_err(|e| Error::sink("cannot continue uploading", up.of.shown(), e))?;
            let tail = base64::engine::general_purpose::STANDARD
                .decode(&saved.tail)
                .ok()
                .filter(|t| saved.sent + t.len() as u64 >= k.size)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "saved state of upload {} does not cover its {} bytes",
                        up.of.name, k.size
                    ))
                })?;
            let n = match held {
                Held::Bytes(n) if n >= saved.sent => n,
                Held::Bytes(n) => {
                    return Err(Error::InvalidArgument(format!(
                        "upload {}: the session holds {n} bytes, not the {} saved",
                        up.of.name, saved.sent
                    )))
                }
                Held::Object(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "upload {}: its session already ended",
                        up.of.name
                    )))
                }
            };
            up.crc = saved.crc32c;
            up.hashed = saved.sent;
            up.sent = n;
            if k.keep <= n {
                // The session holds all that is kept, maybe more: what is
                // put again up to what it holds is dropped.
                up.pos = k.keep;
                up.skip = n - k.keep;
            } else {
                // It holds less than is kept: the rest comes from the
                // state's tail.
                let (had, more) =
                    tail[..(k.keep - saved.sent) as usize].split_at((n - saved.sent) as usize);
                up.crc = crc32c(up.crc, had);
                up.hashed = n;
                up.buf.extend_from_slice(more);
                up.pos = k.keep;
            }
        }
        Ok(Box::new(up))
    }

    async fn publish(&self, key: &str, id: &str, finished: &Finished) -> io::Result<()> {
        let f: Last = serde_json::from_value(serde_json::Value::Object(finished.detail.clone()))
            .map_err(|e| {
                io::Error::other(format!("the upload's last bytes are not recorded: {e}"))
            })?;
        let tail = Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(&f.tail)
                .map_err(|e| io::Error::other(format!("the upload's last bytes: {e}")))?,
        );
        let total = finished.size;
        if f.sent + tail.len() as u64 != total {
            return Err(io::Error::other("the upload's record does not add up"));
        }
        let g = &self.0;
        let start = Instant::now();
        let mut attempt = 1;
        // Bytes the session holds: the last request sends the rest.
        let mut at = f.sent;
        let object = loop {
            let range = if at == total {
                format!("bytes */{total}")
            } else {
                format!("bytes {at}-{}/{total}", total - 1)
            };
            let body = tail.slice((at - f.sent) as usize..);
            let hash = format!("crc32c={}", crc_b64(f.crc32c));
            let (answered, now) = g
                .session_put(id, range, body, Some(hash), &mut attempt, start)
                .await?;
            match now {
                Held::Object(v) => break v,
                // Interrupted: the session says what it holds.
                Held::Bytes(n) if !answered && n >= f.sent && n <= total => at = n,
                Held::Bytes(n) => {
                    return Err(io::Error::other(format!(
                        "the upload session holds {n} bytes, not the {total} of the object"
                    )))
                }
            }
        };
        let size = object.get("size").and_then(|s| {
            s.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(s.as_u64())
        });
        let crc = object.get("crc32c").and_then(|c| c.as_str());
        if size != Some(total) || crc.is_some_and(|c| c != crc_b64(f.crc32c)) {
            // Not what was sent: it does not stay under the key.
            if let Err(e) = self.delete(key).await {
                tracing::warn!(key, error = %e, "cannot delete an object that differs from what was sent");
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the object stored is not what was sent ({} bytes, CRC32C {}; sent {total} bytes, CRC32C {})",
                    size.map_or("?".into(), |s| s.to_string()),
                    crc.unwrap_or("?"),
                    crc_b64(f.crc32c)
                ),
            ));
        }
        Ok(())
    }

    /// A session URI lets anyone write the object: the checkpoint names it
    /// by a digest.
    fn public_id(&self, id: &str) -> String {
        session_digest(id)
    }
}

fn session_digest(session: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(session.as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Scheme, host and port of an http(s) URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.contains('@') || host.is_empty() {
        return None;
    }
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// What an upload saves into the export's checkpoint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The session, by [`Store::public_id`].
    upload_id: String,
    /// Bytes the session held (whole 256 KiB units).
    sent: u64,
    /// Their CRC32C.
    crc32c: u32,
    /// The saved bytes after those (less than 256 KiB, base64): a session
    /// takes only whole units but the last.
    #[serde(default)]
    tail: String,
}

/// What a finished upload publishes with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Last {
    /// Bytes the session holds.
    sent: u64,
    /// The rest (base64), sent at publication.
    tail: String,
    /// CRC32C of the whole object.
    crc32c: u32,
}

/// One object being uploaded through a resumable session.
struct GcsUpload {
    gcs: Arc<Gcs>,
    /// The upload; its id is the session URI.
    of: UploadOf,
    /// Bytes handed to the session (all taken once `in_flight` is done).
    sent: u64,
    in_flight: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// Bytes after `sent`.
    buf: BytesMut,
    /// Bytes still to drop from what is put: a continued upload's session
    /// already holds them.
    skip: u64,
    /// Bytes of the object put so far (continuing: from the bytes kept).
    pos: u64,
    /// CRC32C of the object's first `hashed` bytes: those sent, or (while
    /// a continued upload skips) put.
    crc: u32,
    hashed: u64,
}

impl std::fmt::Debug for GcsUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsUpload")
            .field("key", &self.of.key)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl GcsUpload {
    /// Waits for the chunk in flight.
    async fn join(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            h.await
                .map_err(|e| Error::Internal(format!("chunk upload task failed: {e}")))?
                .map_err(|e| Error::sink("cannot upload a chunk of", self.of.shown(), e))?;
        }
        Ok(())
    }

    /// Sends the first `len` buffered bytes (a multiple of 256 KiB) as the
    /// next chunk, after the one in flight.
    async fn send(&mut self, len: usize) -> Result<()> {
        self.join().await?;
        let data = self.buf.split_to(len).freeze();
        // The next chunk in an allocation of its own, sized once: no
        // doubling past the chunk size as bytes come in.
        let mut next = BytesMut::with_capacity(self.gcs.chunk.max(self.buf.len()));
        next.extend_from_slice(&self.buf);
        self.buf = next;
        debug_assert_eq!(self.hashed, self.sent);
        self.crc = crc32c(self.crc, &data);
        self.hashed += len as u64;
        let (gcs, session, offset) = (self.gcs.clone(), self.of.id.clone(), self.sent);
        self.sent += len as u64;
        self.in_flight = Some(tokio::spawn(async move {
            gcs.send_chunk(&session, offset, data).await
        }));
        Ok(())
    }

    /// Sends every whole 256 KiB unit buffered and waits: `sent` bytes are
    /// then with the session.
    async fn flush_aligned(&mut self) -> Result<()> {
        let whole = self.buf.len() / ALIGN * ALIGN;
        if whole > 0 {
            self.send(whole).await?;
        }
        self.join().await
    }
}

#[async_trait]
impl Upload for GcsUpload {
    async fn put(&mut self, mut data: &[u8]) -> Result<()> {
        // What a continued session already holds: dropped, but counted in
        // the CRC from where the saved one ends.
        if self.skip > 0 {
            let n = (self.skip.min(data.len() as u64)) as usize;
            let (dropped, rest) = data.split_at(n);
            let from = self.hashed.saturating_sub(self.pos).min(n as u64) as usize;
            self.crc = crc32c(self.crc, &dropped[from..]);
            self.pos += n as u64;
            self.hashed = self.hashed.max(self.pos);
            self.skip -= n as u64;
            data = rest;
        }
        if data.is_empty() {
            return Ok(());
        }
        self.pos += data.len() as u64;
        self.buf.extend_from_slice(data);
        let chunk = self.gcs.chunk;
        while self.buf.len() >= chunk {
            self.send(chunk).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.pos
    }

    async fn save(&mut self) -> Result<Option<UploadState>> {
        let end = self.size();
        self.save_to(end).await
    }

    /// Sends every whole 256 KiB unit and waits for the session to hold
    /// them; the bytes up to `end` past the last unit go into the state.
    /// None while a continued upload still skips.
    async fn save_to(&mut self, end: u64) -> Result<Option<UploadState>> {
        if end > self.pos || self.skip > 0 {
            return Ok(None);
        }
        self.flush_aligned().await?;
        // The session now holds whole units; the bytes up to `end` past
        // them are saved with the state.
        let tail = &self.buf[..end.saturating_sub(self.sent) as usize];
        Ok(Some(UploadState {
            size: end,
            sink: json!(Saved {
                upload_id: session_digest(&self.of.id),
                sent: self.sent,
                crc32c: self.crc,
                tail: base64::engine::general_purpose::STANDARD.encode(tail),
            }),
        }))
    }

    async fn complete(mut self: Box<Self>) -> Result<u64> {
        if self.skip > 0 {
            return Err(Error::sink(
                "cannot finish",
                self.of.shown(),
                io::Error::other(format!(
                    "the object ends {} bytes before what its upload session already holds",
                    self.skip
                )),
            ));
        }
        self.flush_aligned().await?;
        let size = self.pos;
        let last = Last {
            sent: self.sent,
            tail: base64::engine::general_purpose::STANDARD.encode(&self.buf),
            crc32c: crc32c(self.crc, &self.buf),
        };
        self.of.finish(size, json!(last))?;
        Ok(size)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
        self.of.abandon().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("gs://my-bucket/exports/wave1/").unwrap(),
            ("my-bucket".into(), "exports/wave1".into())
        );
        assert_eq!(parse_url("gs://b.example").unwrap().1, "");
        for bad in [
            "gs://",
            "gs://AB",
            "gs://x",
            "gs://b/../etc",
            "gs://bucket/a?x=1",
            "s3://bucket",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crc32c_continues_and_names_as_gcs_does() {
        // RFC 3720's test vector: 32 bytes of zeros.
        assert_eq!(crc32c(0, &[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(crc32c(0, &[0; 20]), &[0; 12]), 0x8a91_36aa);
        assert_eq!(crc32c(0, b""), 0);
        assert_eq!(crc_b64(0x8a91_36aa), "ipE2qg==");
    }

    #[test]
    fn sessions_stay_on_their_server() {
        assert_eq!(
            origin("https://storage.googleapis.com/upload/storage/v1/b/x/o?upload_id=1"),
            origin("https://storage.googleapis.com")
        );
        assert_ne!(origin("http://127.0.0.1:1/x"), origin("http://127.0.0.1:2"));
        assert_eq!(origin("http://user@127.0.0.1:1/x"), None);
    }
}
