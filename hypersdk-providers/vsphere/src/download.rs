//! Disk downloads of an NFC lease: core's Range-resuming HTTP download
//! ([`hypersdk_core::http`]) with the session cookie, sent only to the host
//! the session belongs to.

use std::sync::Arc;

use hypersdk_core::http::Download;
use hypersdk_core::DiskStream;

use crate::client::Connection;

/// What a download fetches, for its requests and error messages.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
    pub vm: String,
    pub disk: String,
    pub location: String,
}

/// Downloads `t` from byte `offset` on, resuming after breaks.
pub(crate) fn download(conn: Arc<Connection>, t: Target, offset: u64) -> DiskStream {
    let same_host = reqwest::Url::parse(&t.url)
        .ok()
        .is_some_and(|u| u.host_str() == conn.base_url().host_str());
    let session = conn.clone();
    Download {
        client: conn.http().clone(),
        url: t.url,
        prepare: Some(Arc::new(move |req| match (same_host, session.cookie()) {
            (true, Some(c)) => req.header(reqwest::header::COOKIE, c),
            _ => req,
        })),
        retry: conn.retry_policy().clone(),
        what: "its NFC URL".into(),
        vm: t.vm,
        disk: t.disk,
        location: t.location,
    }
    .stream(offset)
}
