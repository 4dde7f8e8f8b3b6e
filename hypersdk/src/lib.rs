//! hypersdk: export virtual machines out of the platforms they run on into
//! portable, verifiable packages (OVF/OVA with a manifest, streamOptimized
//! VMDK), resumable, compressed and encrypted when asked.
//!
//! This is the crate applications depend on. It re-exports the library
//! ([`core`], [`formats`], [`sinks`]) and holds the **provider registry**:
//! [`ProviderConfig`], one serde enum tagged by `kind` with a variant per
//! provider crate, each behind a cargo feature of the same name (the way
//! `object_store` gates its cloud backends):
//!
//! | feature | kind | crate | settings |
//! |---|---|---|---|
//! | `local` (default) | `local` | `hypersdk-local` | [`local::LocalConfig`] |
//! | `vsphere` (default) | `vsphere` | `hypersdk-vsphere` | [`vsphere::VsphereConfig`] |
//! | `aws` (default) | `aws` | `hypersdk-aws` | [`aws::AwsConfig`] |
//! | `azure` (default) | `azure` | `hypersdk-azure` | [`azure::AzureConfig`] |
//! | `gcp` (default) | `gcp` | `hypersdk-gcp` | [`gcp::GcpConfig`] |
//! | `kubevirt` (default) | `kubevirt` | `hypersdk-kubevirt` | [`kubevirt::KubevirtConfig`] |
//! | `proxmox` (default) | `proxmox` | `hypersdk-proxmox` | [`proxmox::ProxmoxConfig`] |
//! | `hyperv` (default) | `hyperv` | `hypersdk-hyperv` | [`hyperv::HypervConfig`] |
//!
//! The CLI, the daemon, the language bindings and the Ansible module build
//! every provider through [`ProviderConfig`], so a provider added here
//! appears in all of them. Outputs go the same way: [`open_output`] turns
//! a local path or an `s3://bucket/prefix/` URL into its sink (the `s3`
//! feature, default, adds S3 and S3-compatible stores).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use hypersdk::{ProviderConfig, Provider};
//!
//! let dir = tempfile::tempdir()?;
//! // The same settings as a config file's `{kind: local, dir: …}`, or a URL:
//! let config = ProviderConfig::resolve(
//!     &format!("local://{}", dir.path().display()),
//!     hypersdk::Fields::new(),
//!     &|_| None,
//! )?;
//! assert_eq!(config.kind(), "local");
//! let provider = config.connect().await?;
//! assert!(provider.list_vms().await?.is_empty());
//! assert!(provider.vm_ops().is_none()); // a capability local VMs do not have
//! provider.close().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Adding a provider
//!
//! 1. A crate under `hypersdk-providers/NAME` implementing
//!    [`Provider`] and [`ExportSource`] (and [`VmOps`] if the platform has
//!    snapshots and power operations), plus one settings type implementing
//!    [`ProviderSettings`] (kind, URL form, the environment variables the
//!    platform's own tools read, `connect`).
//! 2. A feature and an optional dependency in this crate's `Cargo.toml`,
//!    and one line in the `providers!` list in `src/registry.rs`.
//! 3. Its testkit run (`hypersdk-testkit`) against a real peer, in the
//!    crate's `tests/`.
//!
//! Nothing else changes: `hyperctl --provider NAME` (or `NAME://…`,
//! `--provider-config FILE`, `--provider-opt KEY=VALUE`), the daemon's
//! `providers:` entries, Python's `hypersdk.connect("NAME", …)`, Node's
//! `connect("NAME", {…})`, uniffi's `connect_provider` and the Ansible
//! module's `provider`/`provider_options` take it from the registry.
#![deny(missing_docs)]

mod outputs;
mod registry;

#[cfg(feature = "aws")]
pub use hypersdk_aws as aws;
#[cfg(feature = "azure")]
pub use hypersdk_azure as azure;
pub use hypersdk_core as core;
pub use hypersdk_core::*;
pub use hypersdk_formats as formats;
#[cfg(feature = "gcp")]
pub use hypersdk_gcp as gcp;
#[cfg(feature = "hyperv")]
pub use hypersdk_hyperv as hyperv;
#[cfg(feature = "kubevirt")]
pub use hypersdk_kubevirt as kubevirt;
#[cfg(feature = "local")]
pub use hypersdk_local as local;
#[cfg(feature = "proxmox")]
pub use hypersdk_proxmox as proxmox;
pub use hypersdk_sinks as sinks;
#[cfg(feature = "vsphere")]
pub use hypersdk_vsphere as vsphere;

pub use outputs::{
    default_state_dir, open_output, scheme as output_scheme, verify_published, OutputOptions,
};
pub use registry::{kinds, process_env, ProviderConfig, ProviderKind};
