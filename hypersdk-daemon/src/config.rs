//! The daemon's configuration file (YAML).
//!
//! ```yaml
//! listen: 127.0.0.1:8080          # a port of 0 lets the OS pick
//! database: /var/lib/hypersdk/jobs.db    # or postgres://USER@HOST/DB, shared by a cluster
//! # database_password_file: /etc/hypersdk/db.pass   # PostgreSQL: the password (or PGPASSWORD)
//! # database_ca_file: /etc/hypersdk/db-ca.pem       # PostgreSQL: CA of the server's certificate
//! # node: worker-1                # this hypervisord's name in a cluster (default: the host name)
//! # lease_secs: 30                # a running job's lease (PostgreSQL clusters)
//! # cluster_max_concurrent: 40    # exports at once over every hypervisord sharing the database
//! output_root: /srv/exports       # every job writes below this directory
//! max_concurrent: 4               # exports at once, all providers
//! bwlimit: "08:00,200M 20:00,off" # all jobs together (each job's own bwlimit applies too)
//! providers:
//!   kvm:   { kind: local, dir: /etc/libvirt/qemu, max_concurrent: 2,
//!            disk_roots: [/var/lib/libvirt/images] }   # where disk images may lie
//!   vc1:   { kind: vsphere, url: https://vc.example/sdk, user: migrator@vsphere.local,
//!            password_file: /etc/hypersdk/vc1.pass, thumbprint: "AB:CD:…" }
//! api_keys:                      # SHA-256 of each key, never the key
//!   - { name: ops, role: operator, sha256: 9f86d0… }
//! tls: { cert: /etc/hypersdk/cert.pem, key: /etc/hypersdk/key.pem }
//! rate_limit: { per_second: 50, burst: 100 }     # per key (or address)
//! webhooks: { attempts: 5, initial_delay_ms: 500, breaker_failures: 5, breaker_cooldown_secs: 60,
//!             allow_private: [10.20.0.0/16] }  # internal targets are refused otherwise
//! max_body_bytes: 1048576
//! artifact_mode: "0600"          # files of exports (directories: 0700); "0640" for group read
//! partial_max_age_hours: 168      # partial exports of failed jobs kept this long for a retry
//! key_dirs: [/etc/hypersdk/keys]   # where a job's encrypt_key_file / encrypt_passphrase_file / sign_key_file / sign_cert_file may lie
//! encryption_keys:               # or jobs name a key: encryption_key: archive
//!   archive: { passphrase_file: /etc/hypersdk/archive.pass }
//! telemetry:                     # OpenTelemetry traces over OTLP/HTTP (protobuf)
//!   otlp_endpoint: http://collector:4318   # base URL; spans go to /v1/traces
//!   service_name: hypervisord
//!   headers: { x-api-key: "…" }
//! ```
//!
//! Without `api_keys` the daemon serves everyone as admin, and so refuses
//! to listen anywhere but on a loopback address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use hypersdk::ProviderConfig;
use serde::Deserialize;

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads jobs, VMs, logs, metrics.
    Viewer,
    /// Also submits and cancels jobs.
    Operator,
    /// Everything, including the audit log.
    Admin,
}

/// One API key, stored as the SHA-256 (hex) of the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (for the audit log).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the key, hex.
    pub sha256: String,
}

/// A configured provider: the settings of its kind (the `hypersdk`
/// registry's [`ProviderConfig`], e.g. `kind: vsphere, url: …`), confined
/// for jobs from callers who are not trusted with this host's files, plus
/// the daemon's own `max_concurrent`.
#[derive(Debug, Clone)]
pub struct ProviderEntry {
    /// The provider's settings.
    pub config: ProviderConfig,
    /// Exports of this provider at once (default: no own bound).
    pub max_concurrent: Option<usize>,
}

impl<'de> Deserialize<'de> for ProviderEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut fields = hypersdk::Fields::deserialize(d)?;
        let max_concurrent = match fields.remove("max_concurrent") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<usize>(v)
                    .map_err(|e| D::Error::custom(format!("max_concurrent: {e}")))?,
            ),
        };
        let mut config = ProviderConfig::from_fields(fields).map_err(D::Error::custom)?;
        config.confine();
        Ok(ProviderEntry {
            config,
            max_concurrent,
        })
    }
}

impl ProviderEntry {
    /// The provider's own bound on concurrent exports.
    pub fn max_concurrent(&self) -> Option<usize> {
        self.max_concurrent
    }
}

/// A named object-store destination.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    /// `s3://bucket/prefix/`, `az://container/prefix/`,
    /// `azure://account/container/prefix/` or `gs://bucket/prefix/`.
    pub url: String,
    /// S3 settings: endpoint, region, credentials (else the daemon's
    /// environment, `~/.aws`, the instance role).
    #[serde(default)]
    pub s3: hypersdk::sinks::s3::S3Settings,
    /// Azure settings: account, key, SAS token or connection string,
    /// endpoint (else the daemon's environment, its managed identity).
    #[serde(default)]
    pub azure: hypersdk::sinks::azure::AzureSettings,
    /// Cloud Storage settings: endpoint, credentials file or JSON (else the
    /// daemon's environment, gcloud's files, the instance's account).
    #[serde(default)]
    pub gcs: hypersdk::sinks::gcs::GcsSettings,
}

impl std::fmt::Debug for SinkEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkEntry")
            .field("url", &self.url)
            .field("s3", &self.s3)
            .field("azure", &self.azure)
            .field("gcs", &self.gcs)
            .finish()
    }
}

impl SinkEntry {
    /// The sink for a job's `output` below this destination.
    pub fn open(
        &self,
        output: Option<&str>,
        state_dir: PathBuf,
    ) -> hypersdk_core::Result<Box<dyn hypersdk_core::Sink>> {
        let mut url = self.url.trim_end_matches('/').to_string();
        if let Some(sub) = output {
            let shown = hypersdk_formats::error::display_name(sub);
            for c in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
                if c == ".." || c.starts_with('.') || c.contains('\\') {
                    return Err(hypersdk_core::Error::InvalidArgument(format!(
                        "output: '{shown}' must be plain names below the sink's prefix"
                    )));
                }
                url.push('/');
                url.push_str(c);
            }
        }
        hypersdk::open_output(
            &url,
            &hypersdk::OutputOptions {
                file_mode: None,
                state_dir: Some(state_dir),
                s3: self.s3.clone(),
                azure: self.azure.clone(),
                gcs: self.gcs.clone(),
            },
        )
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// SQLite database file (created if missing), or a `postgres://` URL
    /// of a PostgreSQL database that several hypervisord share.
    pub database: PathBuf,
    /// PostgreSQL: a file whose first line is the password.
    #[serde(default)]
    pub database_password_file: Option<PathBuf>,
    /// PostgreSQL: the CA certificates (PEM) the server's certificate is
    /// checked against (default: the system's).
    #[serde(default)]
    pub database_ca_file: Option<PathBuf>,
    /// This hypervisord's name among those sharing a database (default: the
    /// host name); each must have its own.
    #[serde(default)]
    pub node: Option<String>,
    /// Seconds a running job's lease lasts without renewal (renewed every
    /// third of it); after that another hypervisord may take the job over.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Exports at once over every hypervisord sharing the database.
    #[serde(default)]
    pub cluster_max_concurrent: Option<usize>,
    /// Directory all exports are written below.
    pub output_root: PathBuf,
    /// Exports running at once, all providers together (0 with a shared
    /// PostgreSQL database: this process serves the API and runs nothing).
    #[serde(default = "default_concurrency")]
    pub max_concurrent: usize,
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
    /// Object-store destinations by name, which jobs choose with `sink`
    /// (their credentials stay here, on the daemon host).
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkEntry>,
    /// Where exports into object stores keep what resuming needs (default:
    /// `uploads` next to the database).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// API keys; none means no authentication (loopback only).
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// How webhook deliveries are retried and when an endpoint is paused.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Requests per client (API key, or address without keys); none: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Permission bits of the files exports create (artifacts, staged
    /// files, checkpoints), as an octal string; directories get search
    /// where read is given. Default "0600" (directories 0700): exported
    /// disks hold whatever the guests held.
    #[serde(default)]
    pub artifact_mode: Option<String>,
    /// Hours a failed or cancelled job keeps its partial export for a
    /// retry before it is removed (default 168, a week; 0: removed at the
    /// next sweep, within a minute of the job's end).
    #[serde(default = "default_partial_max_age")]
    pub partial_max_age_hours: u64,
    /// Export traces to an OpenTelemetry collector; none: no traces (unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    /// Directories a job's `encrypt_key_file` / `encrypt_passphrase_file`
    /// may lie in (links followed). None configured: jobs may encrypt only
    /// with a named key of `encryption_keys`.
    #[serde(default)]
    pub key_dirs: Vec<PathBuf>,
    /// Bandwidth limit over all jobs together (a rate or an rclone-style
    /// timetable, as a job's `bwlimit`); each job's own limit applies too.
    #[serde(default)]
    pub bwlimit: Option<String>,
    /// Named encryption keys jobs may ask for with `encryption_key: NAME`.
    #[serde(default)]
    pub encryption_keys: BTreeMap<String, NamedKey>,
}

/// A named encryption key: a file of the daemon host's, given by its
/// administrator (never by a job).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKey {
    /// A 32-byte key file (raw, hex or base64).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file whose first line is a passphrase (argon2id).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

impl NamedKey {
    /// The key it names (the file is read now).
    pub fn key_source(
        &self,
    ) -> hypersdk_core::Result<hypersdk_core::transforms::encrypt::KeySource> {
        use hypersdk_core::transforms::encrypt::KeySource;
        match (&self.key_file, &self.passphrase_file) {
            (Some(k), None) => KeySource::from_key_file(k),
            (None, Some(p)) => KeySource::from_passphrase_file(p),
            _ => Err(hypersdk_core::Error::InvalidArgument(
                "a named key has key_file or passphrase_file, one of them".into(),
            )),
        }
    }
}

/// OpenTelemetry trace export (OTLP over HTTP, protobuf encoding).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://host:4318`); spans are posted to
    /// `<base>/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Extra request headers (authentication to a hosted collector).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-export timeout (seconds).
    #[serde(default = "default_telemetry_timeout")]
    pub timeout_secs: u64,
}

fn default_service_name() -> String {
    "hypervisord".into()
}

fn default_telemetry_timeout() -> u64 {
    10
}

/// HTTPS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A token bucket per client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: f64,
}

/// Webhook delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Tries per delivery (the first included).
    pub attempts: u32,
    /// Delay before the first retry, doubling per retry (milliseconds).
    pub initial_delay_ms: u64,
    /// Longest delay between tries (milliseconds).
    pub max_delay_ms: u64,
    /// Consecutive failed deliveries after which an endpoint's circuit opens.
    pub breaker_failures: u32,
    /// How long an open circuit stays open (seconds); deliveries meanwhile
    /// are logged as not sent.
    pub breaker_cooldown_secs: u64,
    /// Least time between two job.progress events of one job (seconds).
    pub progress_every_secs: u64,
    /// Per-request timeout (seconds).
    pub timeout_secs: u64,
    /// Internal networks webhooks may reach (CIDRs such as `10.20.0.0/16`,
    /// or single addresses); loopback, private, link-local and other
    /// internal targets are refused otherwise.
    pub allow_private: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            attempts: 5,
            initial_delay_ms: 500,
            max_delay_ms: 30_000,
            breaker_failures: 5,
            breaker_cooldown_secs: 60,
            progress_every_secs: 10,
            timeout_secs: 10,
            allow_private: Vec::new(),
        }
    }
}

fn default_partial_max_age() -> u64 {
    168
}

/// Parses an octal permission string ("0640", "640", "0o640").
fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.trim().trim_start_matches("0o");
    let m = u32::from_str_radix(digits, 8).ok()?;
    (m <= 0o777).then_some(m)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_lease_secs() -> u64 {
    30
}

fn default_concurrency() -> usize {
    2
}

fn default_body_limit() -> usize {
    1 << 20
}

impl Config {
    /// The mode of files exports create (`artifact_mode`, default 0600).
    pub fn file_mode(&self) -> u32 {
        self.artifact_mode
            .as_deref()
            .and_then(parse_mode)
            .unwrap_or(hypersdk_sinks::DEFAULT_FILE_MODE)
    }

    /// The PostgreSQL URL `database` holds, if it holds one.
    pub fn postgres_url(&self) -> Option<&str> {
        self.database
            .to_str()
            .filter(|d| crate::db::is_postgres_url(d))
    }

    /// This hypervisord's node name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "hypervisord".into())
        })
    }

    /// Reads and checks a YAML configuration.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        let c: Config = serde_yaml_ng::from_str(text)
            .map_err(|e| anyhow::anyhow!("bad configuration {origin}: {e}"))?;
        c.check()?;
        Ok(c)
    }

    /// Where object-store exports keep their resume state.
    pub fn uploads_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            self.database
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("uploads")
        })
    }

    /// Refuses settings that cannot work or are unsafe.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(node) = &self.node {
            if node.is_empty()
                || node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                anyhow::bail!("node: 1 to 64 letters, digits, '-', '_' or '.'");
            }
        }
        if self.lease_secs < 3 {
            anyhow::bail!("lease_secs: at least 3");
        }
        if self.postgres_url().is_some() && !self.sinks.is_empty() && self.state_dir.is_none() {
            anyhow::bail!(
                "state_dir: with a PostgreSQL database and sinks, say where object-store exports keep what resuming needs \
                 (a directory every hypervisord of the cluster reaches, for one to continue another's upload)"
            );
        }
        if self.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {} without authentication: configure api_keys, or listen on a loopback address",
                self.listen
            );
        }
        crate::egress::Policy::new(&self.webhooks.allow_private).map_err(anyhow::Error::msg)?;
        if let Some(m) = &self.artifact_mode {
            let mode = parse_mode(m).ok_or_else(|| {
                anyhow::anyhow!("artifact_mode: '{m}' is not an octal mode such as \"0640\"")
            })?;
            if mode & 0o600 != 0o600 {
                anyhow::bail!(
                    "artifact_mode: '{m}' must let the daemon read and write (0600 at least)"
                );
            }
            if mode & 0o002 != 0 {
                anyhow::bail!("artifact_mode: '{m}' makes exports writable by everyone");
            }
        }
        if self.max_concurrent == 0 && self.postgres_url().is_none() {
            anyhow::bail!(
                "max_concurrent must be at least 1 (0, a hypervisord that serves the API and runs nothing, \
                 is for a cluster sharing a PostgreSQL database)"
            );
        }
        for (name, s) in &self.sinks {
            if hypersdk::output_scheme(&s.url).is_none() {
                anyhow::bail!("sinks.{name}: url '{}' is not an object-store URL (s3://bucket/prefix/, az://container/prefix/); local exports go below output_root", s.url);
            }
            s.open(None, self.uploads_dir())
                .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?;
        }
        if let Some(b) = &self.bwlimit {
            hypersdk_core::transforms::ratelimit::RateLimiter::from_spec(b)
                .map_err(|e| anyhow::anyhow!("bwlimit: {e}"))?;
        }
        for (name, k) in &self.encryption_keys {
            if k.key_file.is_some() == k.passphrase_file.is_some() {
                anyhow::bail!(
                    "encryption_keys.{name}: give key_file or passphrase_file, one of them"
                );
            }
        }
        if let Some(t) = &self.telemetry {
            let url = t.otlp_endpoint.as_str();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "telemetry.otlp_endpoint must be an http:// or https:// URL, not '{url}'"
                );
            }
        }
        for k in &self.api_keys {
            if k.sha256.len() != 64 || !k.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                anyhow::bail!(
                    "api key '{}': sha256 must be 64 hex digits (the SHA-256 of the key, e.g. from `printf %s KEY | sha256sum`)",
                    k.name
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> anyhow::Result<Config> {
        Config::parse(
            &format!(
                "database: /tmp/x.db\noutput_root: /tmp/out\nproviders:\n  kvm: {{ kind: local, dir: /tmp/vms, max_concurrent: 2 }}\n{extra}"
            ),
            "test",
        )
    }

    #[test]
    fn providers_are_registry_settings_confined_for_jobs() {
        let c = parse("").unwrap();
        let kvm = &c.providers["kvm"];
        assert_eq!(kvm.max_concurrent(), Some(2));
        let local: &hypersdk::local::LocalConfig = kvm.config.settings().unwrap();
        assert!(
            local.disk_roots.is_some(),
            "jobs get a confined local provider"
        );
        let e = Config::parse(
            "database: /x\noutput_root: /o\nproviders:\n  k: { kind: local, dri: /v }\n",
            "test",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `dri`"), "{e:#}");
    }

    #[test]
    fn shared_limits_and_named_keys_are_checked() {
        assert!(parse("bwlimit: 08:00,20M 18:00,off\n").is_ok());
        let e = parse("bwlimit: fast\n").unwrap_err();
        assert!(format!("{e:#}").contains("bwlimit"), "{e:#}");
        let e =
            parse("encryption_keys:\n  a: { key_file: /k, passphrase_file: /p }\n").unwrap_err();
        assert!(format!("{e:#}").contains("encryption_keys.a"), "{e:#}");
    }
}
