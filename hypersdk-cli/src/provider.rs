//! Choosing and connecting the provider, through the registry of the
//! `hypersdk` crate: nothing here knows a particular platform.
//!
//! `--provider` takes a kind (`local`, `vsphere`, … — `hyperctl providers`
//! lists them) or a URL (`vsphere://user@vc.example`). Its settings come,
//! the first that gives a field winning, from the connection flags below
//! and `--provider-opt KEY=VALUE`, a `--provider-config FILE` (YAML or JSON
//! of the same fields as a daemon's `providers:` entry), the URL, the
//! environment variables the platform's own tools read (govc's GOVC_URL,
//! GOVC_USERNAME, GOVC_PASSWORD, GOVC_INSECURE, GOVC_TLS_CA_CERTS,
//! GOVC_TLS_THUMBPRINT for vSphere), and an `--env-file` of such `KEY=VALUE`
//! lines. Passwords are never flags: they come from `--password-file`, the
//! environment or those files, so they do not show in the process list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use hypersdk::{Fields, Provider, ProviderConfig};

#[derive(Args, Debug)]
pub struct ProviderArgs {
    /// Platform the VM lives on: a kind (see `hyperctl providers`) or a URL
    /// such as vsphere://user@vcenter.example.
    #[arg(long, default_value = "local", env = "HYPERSDK_PROVIDER")]
    provider: String,
    /// YAML or JSON file of the provider's settings (the fields of a
    /// daemon's providers: entry).
    #[arg(long, value_name = "FILE")]
    provider_config: Option<PathBuf>,
    /// A provider setting, KEY=VALUE (repeatable; true/false and integers
    /// are taken as such).
    #[arg(long = "provider-opt", value_name = "KEY=VALUE")]
    provider_opts: Vec<String>,
    /// local: directory of libvirt domain XML files [default /etc/libvirt/qemu; env: HYPERSDK_LOCAL_DIR].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address of the platform's API, e.g. vcenter.example (vsphere: https and /sdk implied) [env: GOVC_URL].
    #[arg(long)]
    url: Option<String>,
    /// User name [env: GOVC_USERNAME].
    #[arg(long)]
    username: Option<String>,
    /// File whose first line is the password [else env: GOVC_PASSWORD].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Do not verify the server's certificate [env: GOVC_INSECURE=1].
    #[arg(long)]
    insecure: bool,
    /// Accept only the certificate with this SHA-1 or SHA-256
    /// thumbprint [env: GOVC_TLS_THUMBPRINT].
    #[arg(long, value_name = "AB:CD:...")]
    thumbprint: Option<String>,
    /// PEM file of extra trusted CA certificates [env: GOVC_TLS_CA_CERTS].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// File of KEY=VALUE lines (e.g. the GOVC_* variables above), used
    /// where the environment has none.
    #[arg(
        long,
        alias = "vsphere-config",
        env = "HYPERSDK_VSPHERE_CONFIG",
        value_name = "FILE"
    )]
    env_file: Option<PathBuf>,
}

fn read_env_file(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read env file {}", path.display()))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{} line {}: expected KEY=VALUE", path.display(), i + 1);
        };
        let v = v.trim().trim_matches('"').trim_matches('\'');
        map.insert(
            k.trim().trim_start_matches("export ").to_string(),
            v.to_string(),
        );
    }
    Ok(map)
}

/// `true`/`false` and integers as such, anything else as a string.
fn opt_value(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(v.to_string())),
    }
}

fn path_value(p: &Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

impl ProviderArgs {
    /// The provider settings these arguments (and the environment) give.
    pub fn config(&self) -> anyhow::Result<ProviderConfig> {
        let mut fields = Fields::new();
        if let Some(f) = &self.provider_config {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read provider config {}", f.display()))?;
            let map: Fields = serde_yaml_ng::from_str(&text).with_context(|| {
                format!(
                    "provider config {}: expected a map of settings",
                    f.display()
                )
            })?;
            fields.extend(map);
        }
        let flags = [
            ("dir", self.dir.as_deref().map(path_value)),
            ("url", self.url.clone().map(Value::String)),
            ("user", self.username.clone().map(Value::String)),
            (
                "password_file",
                self.password_file.as_deref().map(path_value),
            ),
            ("insecure", self.insecure.then_some(Value::Bool(true))),
            ("thumbprint", self.thumbprint.clone().map(Value::String)),
            ("ca_file", self.ca_file.as_deref().map(path_value)),
        ];
        for (k, v) in flags {
            if let Some(v) = v {
                fields.insert(k.into(), v);
            }
        }
        for o in &self.provider_opts {
            let Some((k, v)) = o.split_once('=') else {
                bail!("--provider-opt {o}: expected KEY=VALUE");
            };
            fields.insert(k.trim().to_string(), opt_value(v));
        }
        let file = match &self.env_file {
            Some(p) => read_env_file(p)?,
            None => HashMap::new(),
        };
        let env = |k: &str| hypersdk::process_env(k).or_else(|| file.get(k).cloned());
        let flag_of = |field: &str| match field {
            "user" => "--username".to_string(),
            f => format!("--{}", f.replace('_', "-")),
        };
        ProviderConfig::resolve(&self.provider, fields, &env).map_err(|e| {
            // Name the flag for a missing field, as a CLI user would write it.
            let text = e.to_string();
            match text.split_once("missing field `") {
                Some((_, rest)) => {
                    let field = rest.split('`').next().unwrap_or("");
                    anyhow::anyhow!(
                        "--provider {} needs {} (or --provider-opt {field}=…, a \
                         --provider-config file, or the platform's environment variable): {text}",
                        self.provider,
                        flag_of(field)
                    )
                }
                None => anyhow::anyhow!(text),
            }
        })
    }

    /// Connects the chosen provider; `close` it when done.
    pub async fn connect(&self) -> anyhow::Result<Box<dyn Provider>> {
        Ok(self.config()?.connect().await?)
    }
}

/// Ends a provider's session (errors only logged: the work is done).
pub async fn close(provider: Box<dyn Provider>) {
    if let Err(e) = provider.close().await {
        tracing::warn!(error = %e, provider = provider.name(), "closing the provider session failed");
    }
}
