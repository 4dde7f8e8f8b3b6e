//! How a platform is reached: each provider crate describes its connection
//! settings as one serde type implementing [`ProviderSettings`], and the
//! `hypersdk` facade crate gathers them into one `ProviderConfig` enum
//! tagged by `kind` — the registry the CLI, the daemon, the bindings and the
//! Ansible module all build providers through.
//!
//! Settings arrive as named fields ([`Fields`]) from three places, the first
//! that gives a field winning: what the caller wrote (flags, a config file,
//! a job, a binding's arguments), a URL such as `vsphere://user@vc.example`
//! ([`ProviderUrl`], [`ProviderSettings::url_fields`]), and the environment
//! variables the platform's own tools read ([`ProviderSettings::env_fields`],
//! e.g. govc's `GOVC_URL`). The merged fields are then deserialized with
//! unknown fields refused, so a typo is an error naming the field.

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::provider::Provider;

/// Named settings fields, as JSON values.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// The connection settings of one kind of provider.
#[async_trait]
pub trait ProviderSettings:
    std::fmt::Debug + Clone + DeserializeOwned + Send + Sync + 'static
{
    /// The `kind` tag, which is also the URL scheme: `local`, `vsphere`, …
    const KIND: &'static str;
    /// One line saying what the provider reaches, for help texts.
    const ABOUT: &'static str;

    /// The fields a `KIND://…` URL stands for. The default refuses URLs.
    fn url_fields(url: &ProviderUrl) -> Result<Fields> {
        Err(Error::InvalidArgument(format!(
            "provider '{}' has no URL form ({}); give its settings as fields",
            Self::KIND,
            url
        )))
    }

    /// Fields taken from the environment variables this platform's own
    /// tools read, used where the caller gave none. `env` looks a variable
    /// up (the process environment, or an env file).
    fn env_fields(env: &dyn Fn(&str) -> Option<String>) -> Fields {
        let _ = env;
        Fields::new()
    }

    /// Tightens the settings for a service whose callers are not trusted
    /// with the host's files (the daemon: jobs name VMs, never paths). The
    /// default changes nothing.
    fn confine(&mut self) {}

    /// Connects (logs in where the platform has sessions).
    async fn connect(&self) -> Result<Box<dyn Provider>>;
}

/// A provider URL: `KIND://[USER@]HOST[:PORT][/PATH]`, or `KIND:///PATH`
/// for providers that reach local files. A password in the URL is refused:
/// URLs end up in shell history, process lists and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUrl {
    /// The scheme: a provider kind.
    pub kind: String,
    /// The user before `@`, percent-decoded.
    pub user: Option<String>,
    /// Host and port, empty for `KIND:///PATH`.
    pub host: String,
    /// Everything from the first `/` after the host (empty if none).
    pub path: String,
}

impl ProviderUrl {
    /// Parses `text` if it looks like a provider URL (`word://…`); None
    /// for a plain kind name. Malformed URLs are errors.
    pub fn parse(text: &str) -> Result<Option<ProviderUrl>> {
        let Some((kind, rest)) = text.split_once("://") else {
            return Ok(None);
        };
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        {
            return Err(Error::InvalidArgument(format!(
                "'{text}' is not a provider URL (KIND://[USER@]HOST[/PATH])"
            )));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => {
                if u.contains(':') {
                    return Err(Error::InvalidArgument(format!(
                        "the {kind} URL has a password in it: give it in a password file \
                         or the environment instead (URLs end up in shell history and logs)"
                    )));
                }
                (Some(percent_decode(u)), h)
            }
            None => (None, authority),
        };
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidArgument(format!(
                "the {kind} URL has a malformed host"
            )));
        }
        Ok(Some(ProviderUrl {
            kind: kind.to_ascii_lowercase(),
            user,
            host: host.to_string(),
            path: path.to_string(),
        }))
    }
}

impl std::fmt::Display for ProviderUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://", self.kind)?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}{}", self.host, self.path)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A secret setting (a password): deserialized like a string, zeroed on
/// drop, and never shown by `Debug`.
#[derive(Clone, Default)]
pub struct Secret(zeroize::Zeroizing<String>);

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(zeroize::Zeroizing::new(s.into()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The first line of a secret file (a password file), without its line
/// end; `what` names it in the error.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> Result<Secret> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!("cannot read {what} {}: {e}", path.display()))
    })?);
    Ok(Secret::new(text.lines().next().unwrap_or("")))
}

/// Whether an environment-style value means yes (`1`, `true`, `yes`, `on`).
pub fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// The values of `profile` in an INI file of the AWS CLI's shape
/// (`[name]` in the credentials file, `[profile name]` or `[default]` in
/// the config file), keys lower-cased.
pub fn aws_ini_profile(
    text: &str,
    profile: &str,
    config: bool,
) -> std::collections::HashMap<String, String> {
    let wanted = if config && profile != "default" {
        format!("profile {profile}")
    } else {
        profile.to_string()
    };
    let mut out = std::collections::HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == wanted;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    out
}

/// The values of `profile` in the AWS CLI's shared files: the credentials
/// file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) over the
/// config file (`AWS_CONFIG_FILE`, else `~/.aws/config`).
pub fn aws_shared_profile(profile: &str) -> std::collections::HashMap<String, String> {
    let file = |var: &str, rel: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(rel)))
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    let mut out = file("AWS_CONFIG_FILE", ".aws/config")
        .map(|t| aws_ini_profile(&t, profile, true))
        .unwrap_or_default();
    if let Some(t) = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
        out.extend(aws_ini_profile(&t, profile, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_passwords() {
        let u = ProviderUrl::parse("vsphere://migrator%40vsphere.local@vc.example:8443/sdk")
            .unwrap()
            .unwrap();
        assert_eq!(u.kind, "vsphere");
        assert_eq!(u.user.as_deref(), Some("migrator@vsphere.local"));
        assert_eq!(u.host, "vc.example:8443");
        assert_eq!(u.path, "/sdk");
        let l = ProviderUrl::parse("local:///etc/libvirt/qemu")
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.host.as_str(), l.path.as_str()),
            ("", "/etc/libvirt/qemu")
        );
        assert_eq!(ProviderUrl::parse("vsphere").unwrap(), None);
        let e = ProviderUrl::parse("vsphere://root:secret@vc").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(ProviderUrl::parse("a b://x").is_err());
    }

    #[test]
    fn secrets_do_not_show() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
