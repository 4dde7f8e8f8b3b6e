//! The provider registry: [`ProviderConfig`] has one variant per provider
//! crate compiled in, generated from the one list in `providers!` below.

use hypersdk_core::{Error, Fields, Provider, ProviderSettings, ProviderUrl, Result};
use serde::Deserialize;

/// A provider kind this build carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProviderKind {
    /// The `kind` tag and URL scheme.
    pub kind: &'static str,
    /// What it reaches.
    pub about: &'static str,
}

macro_rules! providers {
    ($( $kind:literal => $variant:ident($settings:ty), )*) => {
        /// The settings of one provider, tagged by `kind`: what a config file,
        /// a daemon's `providers:` entry or a binding's `connect` hands over.
        /// Unknown fields are refused.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind")]
        #[non_exhaustive]
        // Settings read once per connection: the variants' sizes differ
        // (AWS's has the most fields) and boxing them buys nothing.
        #[allow(clippy::large_enum_variant)]
        pub enum ProviderConfig {
            $(
                #[doc = concat!("`kind: ", $kind, "`")]
                #[cfg(feature = $kind)]
                #[serde(rename = $kind)]
                $variant($settings),
            )*
        }

        /// Every provider kind this build carries.
        pub fn kinds() -> Vec<ProviderKind> {
            vec![$(
                #[cfg(feature = $kind)]
                ProviderKind {
                    kind: <$settings as ProviderSettings>::KIND,
                    about: <$settings as ProviderSettings>::ABOUT,
                },
            )*]
        }

        /// Every kind the registry knows, compiled in or not.
        const ALL_KINDS: &[&str] = &[$($kind,)*];

        impl ProviderConfig {
            /// Its kind.
            pub fn kind(&self) -> &'static str {
                match *self {$(
                    #[cfg(feature = $kind)]
                    ProviderConfig::$variant(_) => <$settings as ProviderSettings>::KIND,
                )*}
            }

            /// Tightens the settings for callers not trusted with the
            /// host's files ([`ProviderSettings::confine`]).
            pub fn confine(&mut self) {
                match *self {$(
                    #[cfg(feature = $kind)]
                    ProviderConfig::$variant(ref mut s) => s.confine(),
                )*}
            }

            /// Connects the provider.
            pub async fn connect(&self) -> Result<Box<dyn Provider>> {
                match *self {$(
                    #[cfg(feature = $kind)]
                    ProviderConfig::$variant(ref s) => s.connect().await,
                )*}
            }

            /// The settings as the settings type of one provider, if
            /// they are of that kind.
            #[allow(unreachable_code, unused_variables)] // a build without providers
            pub fn settings<S: ProviderSettings>(&self) -> Option<&S> {
                let any: &dyn std::any::Any = match *self {$(
                    #[cfg(feature = $kind)]
                    ProviderConfig::$variant(ref s) => s,
                )*};
                any.downcast_ref()
            }

            fn url_fields(url: &ProviderUrl) -> Result<Fields> {
                match url.kind.as_str() {
                    $(
                        #[cfg(feature = $kind)]
                        $kind => <$settings as ProviderSettings>::url_fields(url),
                    )*
                    other => Err(unknown_kind(other)),
                }
            }

            #[allow(unused_variables)] // a build without providers
            fn env_fields(kind: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Fields> {
                match kind {
                    $(
                        #[cfg(feature = $kind)]
                        $kind => Ok(<$settings as ProviderSettings>::env_fields(env)),
                    )*
                    other => Err(unknown_kind(other)),
                }
            }
        }
    };
}

// The registry: one line per provider crate (its feature has the kind's name).
providers! {
    "local" => Local(hypersdk_local::LocalConfig),
    "vsphere" => Vsphere(hypersdk_vsphere::VsphereConfig),
    "aws" => Aws(hypersdk_aws::AwsConfig),
    "azure" => Azure(hypersdk_azure::AzureConfig),
    "gcp" => Gcp(hypersdk_gcp::GcpConfig),
    "kubevirt" => Kubevirt(hypersdk_kubevirt::KubevirtConfig),
    "proxmox" => Proxmox(hypersdk_proxmox::ProxmoxConfig),
    "hyperv" => Hyperv(hypersdk_hyperv::HypervConfig),
}

/// A variable of this process's environment, None if unset or empty: the
/// `env` to hand [`ProviderConfig::resolve`] where the platform's own
/// variables (GOVC_*, …) should count.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn unknown_kind(kind: &str) -> Error {
    let have: Vec<&str> = kinds().iter().map(|k| k.kind).collect();
    if ALL_KINDS.contains(&kind) {
        Error::InvalidArgument(format!(
            "provider kind '{kind}' is not in this build: enable the cargo feature \"{kind}\" \
             of the hypersdk crate (this build has: {})",
            have.join(", ")
        ))
    } else {
        Error::InvalidArgument(format!(
            "unknown provider kind '{kind}' (this build has: {})",
            have.join(", ")
        ))
    }
}

impl ProviderConfig {
    /// Settings from fields that include `kind`, as in a config file.
    pub fn from_fields(fields: Fields) -> Result<Self> {
        let kind = match fields.get("kind") {
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "provider kind must be a string".into(),
                ))
            }
            None => {
                return Err(Error::InvalidArgument(
                    "provider settings need a kind (e.g. kind: vsphere)".into(),
                ))
            }
        };
        if !kinds().iter().any(|k| k.kind == kind) {
            return Err(unknown_kind(&kind));
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| Error::InvalidArgument(format!("{kind} provider settings: {e}")))
    }

    /// Settings for `kind_or_url` (`vsphere`, or `vsphere://user@vc.example`)
    /// from the caller's `fields`, then the URL's, then the environment
    /// variables the platform's tools read (`env` looks them up); the first
    /// that gives a field wins.
    pub fn resolve(
        kind_or_url: &str,
        fields: Fields,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let (kind, url_fields) = match ProviderUrl::parse(kind_or_url)? {
            Some(url) => (url.kind.clone(), Self::url_fields(&url)?),
            None => (kind_or_url.to_ascii_lowercase(), Fields::new()),
        };
        if let Some(k) = fields.get("kind") {
            if k.as_str() != Some(kind.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "the settings say kind {k}, the provider is '{kind}'"
                )));
            }
        }
        let mut merged = Self::env_fields(&kind, env)?;
        merged.extend(url_fields);
        merged.extend(fields);
        merged.insert("kind".into(), kind.into());
        Self::from_fields(merged)
    }
}

#[cfg(test)]
#[cfg(all(feature = "local", feature = "vsphere"))]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_registry_lists_each_kind_under_its_own_tag() {
        for k in kinds() {
            assert!(ALL_KINDS.contains(&k.kind), "{k:?}");
        }
        assert_eq!(kinds().len(), ALL_KINDS.len());
    }

    #[test]
    fn caller_fields_win_over_the_url_and_the_url_over_the_environment() {
        let env = |k: &str| match k {
            "GOVC_URL" => Some("https://env.example/sdk".to_string()),
            "GOVC_USERNAME" => Some("env-user".to_string()),
            "GOVC_INSECURE" => Some("1".to_string()),
            _ => None,
        };
        let c = ProviderConfig::resolve("vsphere", Fields::new(), &env).unwrap();
        let s: &hypersdk_vsphere::VsphereConfig = c.settings().unwrap();
        assert_eq!(
            (s.url.as_str(), s.insecure),
            ("https://env.example/sdk", true)
        );
        let c =
            ProviderConfig::resolve("vsphere://u@vc.example:8443", Fields::new(), &env).unwrap();
        let s: &hypersdk_vsphere::VsphereConfig = c.settings().unwrap();
        assert_eq!(s.url, "https://vc.example:8443/sdk");
        assert_eq!(s.user.as_deref(), Some("u"));
        let c = ProviderConfig::resolve(
            "vsphere://u@vc.example",
            fields(r#"{"user": "flag-user"}"#),
            &env,
        )
        .unwrap();
        let s: &hypersdk_vsphere::VsphereConfig = c.settings().unwrap();
        assert_eq!(s.user.as_deref(), Some("flag-user"));
    }

    #[test]
    fn mistakes_are_named() {
        let none = |_: &str| None;
        let e = ProviderConfig::resolve("vsphere", fields(r#"{"url": "x", "usr": "a"}"#), &none)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `usr`"), "{e}");
        let e = ProviderConfig::resolve("vsphere", Fields::new(), &none).unwrap_err();
        assert!(e.to_string().contains("missing field `url`"), "{e}");
        let e = ProviderConfig::resolve("xenserver", Fields::new(), &none).unwrap_err();
        assert!(
            e.to_string().contains("unknown provider kind 'xenserver'"),
            "{e}"
        );
        assert!(e.to_string().contains("local, vsphere"), "{e}");
        let e = ProviderConfig::from_fields(fields(r#"{"dir": "/x"}"#)).unwrap_err();
        assert!(e.to_string().contains("need a kind"), "{e}");
        let e = ProviderConfig::resolve("local://host/x", Fields::new(), &none).unwrap_err();
        assert!(e.to_string().contains("local:///DIR"), "{e}");
    }

    #[test]
    fn confining_local_settings_sets_the_libvirt_image_directories() {
        let mut c =
            ProviderConfig::from_fields(fields(r#"{"kind": "local", "dir": "/d"}"#)).unwrap();
        c.confine();
        let s: &hypersdk_local::LocalConfig = c.settings().unwrap();
        assert_eq!(
            s.disk_roots.as_deref().unwrap(),
            hypersdk_local::DEFAULT_DISK_ROOTS.map(std::path::PathBuf::from)
        );
    }
}
