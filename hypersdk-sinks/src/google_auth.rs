//! Google Cloud credentials, found the way Google's own clients find
//! them, first match wins:
//!
//! 1. what the caller gives (the daemon's named sinks and providers, the
//!    bindings): a credentials file, or its JSON text;
//! 2. `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key or an
//!    `authorized_user` file);
//! 3. the gcloud CLI's application default credentials
//!    (`~/.config/gcloud/application_default_credentials.json`, or under
//!    `CLOUDSDK_CONFIG`);
//! 4. on Compute Engine (or with `GCE_METADATA_HOST`), the instance's
//!    service account through the metadata server.
//!
//! A service account's key signs an assertion (RFC 7523) traded for an
//! access token at its `token_uri`; a user's refresh token is traded the
//! same way. Tokens are kept until a minute before they expire. Nothing
//! here logs or shows a secret: errors about a key file say where it is
//! and what is wrong, never what it holds. The Cloud Storage sink and the
//! Compute Engine provider share this.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hypersdk_core::http::read_bounded;
use hypersdk_core::{Error, Result};
use serde_json::json;

use crate::gcs::{enc, refused, unanswered};
use crate::object::endpoint_is_http;

/// Where user credentials are refreshed unless their file says otherwise
/// (and the audience of every service-account assertion).
const OAUTH_TOKEN: &str = "https://oauth2.googleapis.com/token";

/// Where access tokens come from.
enum Credentials {
    /// A service account's key: a signed assertion traded for a token.
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        key: Box<ring::signature::RsaKeyPair>,
        token_uri: String,
    },
    /// A user's refresh token (`gcloud auth application-default login`).
    User {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    /// The Compute Engine metadata server.
    Metadata { base: String },
}

/// Access tokens of one set of Google Cloud credentials, fetched when
/// needed and kept until a minute before they expire. See the module.
pub struct GoogleAuth {
    credentials: Credentials,
    /// Where they were found, for errors.
    from: String,
    /// What the tokens are asked for.
    scope: String,
    /// The key file's `project_id` (or `quota_project_id`).
    project: Option<String>,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// The key file's fields this module reads.
#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    project_id: Option<String>,
    quota_project_id: Option<String>,
}

impl std::fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleAuth")
            .field("from", &self.from)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl GoogleAuth {
    /// The first credentials found (see the module), for tokens of `scope`:
    /// a key file's JSON text (`json`), a key file (`file`), then the
    /// usual places. `needed_by` names what wants them, for the error when
    /// there are none.
    pub fn find(
        json: Option<&str>,
        file: Option<&Path>,
        scope: &str,
        needed_by: &str,
    ) -> Result<GoogleAuth> {
        let read = |p: &std::path::Path, what: &str| -> Result<(String, String)> {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot read the Google Cloud credentials file {} ({what}): {e}",
                    p.display()
                ))
            })?;
            Ok((text, p.display().to_string()))
        };
        let found = if let Some(j) = json {
            Some((j.to_string(), "the settings' credentials_json".to_string()))
        } else if let Some(p) = file {
            Some(read(p, "the settings' credentials")?)
        } else if let Some(p) =
            std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty())
        {
            Some(read(
                std::path::Path::new(&p),
                "GOOGLE_APPLICATION_CREDENTIALS",
            )?)
        } else {
            let dir = std::env::var_os("CLOUDSDK_CONFIG")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud"))
                });
            match dir.map(|d| d.join("application_default_credentials.json")) {
                Some(p) if p.exists() => {
                    Some(read(&p, "gcloud's application default credentials")?)
                }
                _ => None,
            }
        };
        let mut project = None;
        let (credentials, from) = match found {
            Some((text, from)) => {
                let (c, p) = parse_key(&text, &from)?;
                project = p;
                (c, from)
            }
            None => {
                let host = std::env::var("GCE_METADATA_HOST").ok();
                let on_gce = std::fs::read_to_string("/sys/class/dmi/id/product_name")
                    .is_ok_and(|n| n.contains("Google"));
                if host.is_none() && !on_gce {
                    return Err(Error::InvalidArgument(format!(
                        "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run `gcloud auth application-default login`, or give the {needed_by}'s credentials"
                    )));
                }
                let host = host.unwrap_or_else(|| "metadata.google.internal".into());
                (
                    Credentials::Metadata {
                        base: format!("http://{host}"),
                    },
                    "the Compute Engine metadata server".to_string(),
                )
            }
        };
        Ok(GoogleAuth {
            credentials,
            from,
            scope: scope.to_string(),
            project,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// Where the credentials were found (a file, the metadata server).
    pub fn source(&self) -> &str {
        &self.from
    }

    /// The project the key file names, if it names one.
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// A valid access token.
    pub async fn token(&self, http: &reqwest::Client) -> io::Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = &*cached {
            if Instant::now() + Duration::from_secs(60) < *until {
                return Ok(t.clone());
            }
        }
        let (token, lifetime) = self.fetch(http).await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot get an access token with {}: {e}", self.from),
            )
        })?;
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    async fn fetch(&self, http: &reqwest::Client) -> io::Result<(String, Duration)> {
        let form = |pairs: &[(&str, &str)]| -> String {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", enc(v)))
                .collect::<Vec<_>>()
                .join("&")
        };
        let req = match &self.credentials {
            Credentials::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
            } => {
                // The audience is Google's token endpoint wherever the
                // assertion goes.
                let assertion = jwt(email, key_id.as_deref(), key, OAUTH_TOKEN, &self.scope)?;
                http.post(token_uri)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &assertion),
                    ]))
            }
            Credentials::User {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => http
                .post(token_uri)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("refresh_token", refresh_token),
                ])),
            Credentials::Metadata { base } => http
                .get(format!(
                    "{base}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
                    enc(&self.scope)
                ))
                .header("Metadata-Flavor", "Google"),
        };
        let resp = req.send().await.map_err(|e| unanswered(e).error)?;
        if !resp.status().is_success() {
            return Err(refused(resp).await.error);
        }
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        let t: Token =
            serde_json::from_slice(&read_bounded(resp, 64 << 10).await?).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("token answer: {e}"))
            })?;
        Ok((
            t.access_token,
            Duration::from_secs(t.expires_in.unwrap_or(3600)),
        ))
    }
}

/// Credentials from the text of a key file found at `from`, and the
/// project it names.
fn parse_key(text: &str, from: &str) -> Result<(Credentials, Option<String>)> {
    let bad =
        |what: &str| Error::InvalidArgument(format!("Google Cloud credentials in {from}: {what}"));
    let k: KeyFile = serde_json::from_str(text).map_err(|e| {
        // serde's message may quote the file: say only where it went wrong.
        bad(&format!(
            "not a credentials file (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let project = k.project_id.clone().or(k.quota_project_id.clone());
    let c = match k.kind.as_str() {
        "service_account" => {
            let pem = k.private_key.ok_or_else(|| bad("no private_key"))?;
            let der = match rustls_pemfile::private_key(&mut pem.as_bytes()) {
                Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(d))) => d,
                _ => return Err(bad("private_key is not a PKCS#8 PEM key")),
            };
            let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map(Box::new)
                .map_err(|_| bad("private_key is not an RSA key"))?;
            let token_uri = k.token_uri.unwrap_or_else(|| OAUTH_TOKEN.into());
            endpoint_is_http("token", &token_uri)?;
            Credentials::ServiceAccount {
                email: k.client_email.ok_or_else(|| bad("no client_email"))?,
                key_id: k.private_key_id,
                key,
                token_uri,
            }
        }
        "authorized_user" => {
            let token_uri = k.token_uri.unwrap_or_else(|| OAUTH_TOKEN.into());
            endpoint_is_http("token", &token_uri)?;
            Credentials::User {
                client_id: k.client_id.ok_or_else(|| bad("no client_id"))?,
                client_secret: k.client_secret.ok_or_else(|| bad("no client_secret"))?,
                refresh_token: k.refresh_token.ok_or_else(|| bad("no refresh_token"))?,
                token_uri,
            }
        }
        other => {
            return Err(bad(&format!(
                "type {other:?} is not supported (service_account or authorized_user)"
            )))
        }
    };
    Ok((c, project))
}

/// A service account's signed assertion (RFC 7523), valid for an hour.
fn jwt(
    email: &str,
    key_id: Option<&str>,
    key: &ring::signature::RsaKeyPair,
    audience: &str,
    scope: &str,
) -> io::Result<String> {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(id) = key_id {
        header["kid"] = json!(id);
    }
    let claims = json!({
        "iss": email,
        "scope": scope,
        "aud": audience,
        "iat": now,
        "exp": now + 3600,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .map_err(|_| io::Error::other("cannot sign the token request"))?;
    Ok(format!("{signed}.{}", b64(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_checked_and_never_echoed() {
        let e = parse_key(
            r#"{"type":"service_account","client_email":"a@b","private_key":"secret-material"}"#,
            "k.json",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("PKCS#8") && !e.contains("secret-material"),
            "{e}"
        );
        let e = parse_key("{\"type\": \"external_account\"}", "k.json")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("external_account"), "{e}");
        let e = parse_key("not json secret", "k.json")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
