//! AWS Signature Version 4 ("Signing AWS API requests", AWS General
//! Reference: "Create a signed AWS API request"), for the EC2 Query API and
//! the EBS direct APIs. Checked against botocore's signer in the tests.

use ring::{digest, hmac};

/// Credentials a request is signed with. Debug never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// A request to sign: what goes into the canonical request.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The host (and `:port` unless default), as the `Host` header sends it.
    pub host: &'a str,
    /// The path, already URI-encoded as sent (`/snapshots/snap-1/blocks`).
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(String, String)],
    /// Headers to sign besides `host` and `x-amz-*` (lower-case names).
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// What SigV4 leaves as it is in a URI component: RFC 3986's unreserved
/// characters; every other byte is `%XX` (upper-case hex).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// URI-encodes `s` as SigV4 wants it (every byte but the unreserved ones).
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The query string as sent and as signed: sorted, encoded.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The headers to add to `req` for `service` in `region` at `amz_date`
/// (`20261130T120000Z`): `x-amz-date`, `x-amz-content-sha256` when
/// `content_sha256` (services that want the payload's digest as a header),
/// the session token if any, and `authorization`.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials,
    (region, service): (&str, &str),
    amz_date: &str,
    content_sha256: bool,
) -> Vec<(String, String)> {
    let date = &amz_date[..8];
    let payload = sha256_hex(req.body);
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.push(("host".into(), req.host.to_string()));
    headers.push(("x-amz-date".into(), amz_date.to_string()));
    if content_sha256 {
        headers.push(("x-amz-content-sha256".into(), payload.clone()));
    }
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        req.method,
        req.path,
        canonical_query(req.query)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let signature = hex(&hmac(&k, to_sign.as_bytes()));
    let mut out: Vec<(String, String)> = vec![("x-amz-date".into(), amz_date.to_string())];
    if content_sha256 {
        out.push(("x-amz-content-sha256".into(), payload));
    }
    if let Some(t) = &creds.session_token {
        out.push(("x-amz-security-token".into(), t.clone()));
    }
    out.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

/// Now as SigV4 writes it (`20261130T120000Z`).
pub fn amz_date_now() -> String {
    chrono::Utc::now().format(AMZ_DATE).to_string()
}

/// Seconds since the epoch as SigV4 writes them.
pub fn amz_date(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .format(AMZ_DATE)
        .to_string()
}

/// SigV4's timestamp format.
const AMZ_DATE: &str = "%Y%m%dT%H%M%SZ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_796_036_645), "20261130T110405Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn secrets_are_hidden() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok-secret".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("AKID") && !s.contains("very-secret") && !s.contains("tok-secret"));
    }
}
