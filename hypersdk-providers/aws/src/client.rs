//! What the EC2 and EBS clients share: an endpoint, its HTTP client and
//! credentials, errors, bounded reads.

use std::time::Duration;

use hypersdk_core::{Error, Result};

use crate::creds::CredentialSource;
use crate::sigv4;

/// One service endpoint of a region, with credentials.
pub(crate) struct Endpoint {
    pub(crate) http: reqwest::Client,
    /// `https://ec2.eu-west-1.amazonaws.com` or another server, no trailing `/`.
    pub(crate) url: String,
    /// Its `host[:port]`.
    pub(crate) host: String,
    pub(crate) region: String,
    pub(crate) creds: CredentialSource,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("creds", &self.creds)
            .finish()
    }
}

impl Endpoint {
    /// `endpoint` of `service` ("EC2", "EBS") in `region`. No overall
    /// timeout (a block may be slow to come), a 120 s idle limit, no
    /// redirects followed.
    pub(crate) fn new(
        service: &str,
        endpoint: &str,
        region: &str,
        creds: CredentialSource,
    ) -> Result<Endpoint> {
        let url = endpoint.trim_end_matches('/').to_string();
        let host = host_of(service, &url)?;
        // reqwest uses the process's rustls provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Endpoint {
            http,
            url,
            host,
            region: region.to_string(),
            creds,
        })
    }

    /// The signing headers of `req` for `service` (`ec2`, `ebs`, `s3`),
    /// now (S3 also wants the payload's digest as a header).
    pub(crate) async fn sign(
        &self,
        req: &sigv4::Request<'_>,
        service: &str,
    ) -> Result<Vec<(String, String)>> {
        let creds = self.creds.get().await?;
        Ok(sigv4::sign(
            req,
            &creds,
            (&self.region, service),
            &sigv4::amz_date_now(),
            service == "s3",
        ))
    }
}

/// A provider error of AWS.
pub(crate) fn err(message: String, retryable: bool) -> Error {
    Error::Provider {
        provider: "aws".into(),
        message,
        retryable,
        source: None,
    }
}

/// The `host[:port]` of an `http(s)://host[:port]` endpoint of `service`.
fn host_of(service: &str, endpoint: &str) -> Result<String> {
    endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@']))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{service} endpoint {endpoint:?} is not an http(s)://host[:port] URL"
            ))
        })
}
