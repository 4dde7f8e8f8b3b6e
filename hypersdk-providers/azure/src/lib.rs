//! Azure as an export source: VMs described through Azure Resource Manager,
//! their managed disks read as page blobs.
//!
//! `kind: azure` ([`AzureConfig`]): one subscription's VMs (or one resource
//! group's), by name, `RESOURCE_GROUP/NAME` or resource id. An export of a
//! VM that is not deallocated first snapshots each managed disk (tagged
//! `created-by=hypersdk`); it then grants read access to each disk or
//! snapshot (`beginGetAccess`), lists the page blob's allocated ranges,
//! reads them with ranged GETs of 4 MiB (8 in flight per disk, each
//! checked against its Content-MD5; unallocated chunks are zeros, never
//! fetched), and when it closes — on every path — revokes the access
//! (`endGetAccess`) and deletes its snapshots. The blob is a fixed VHD:
//! its footer is checked and the guest bytes before it exported.
//!
//! Credentials: a service principal's secret (Entra ID client credentials
//! flow), a managed identity (instance metadata service), or a bearer
//! token given as is. URLs the server hands back (`nextLink`, `Location`,
//! `Azure-AsyncOperation`) must be on the ARM endpoint's origin, and the
//! disk's access URL must be `https://` (unless the ARM endpoint itself is
//! plain HTTP: an emulator).
//!
//! ```
//! use hypersdk_azure::AzureConfig;
//! use hypersdk_core::Provider;
//!
//! // The fields of a daemon's `providers:` entry (or of `--provider-opt`).
//! let config: AzureConfig = serde_json::from_value(serde_json::json!({
//!     "subscription_id": "00000000-0000-0000-0000-000000000000",
//!     "resource_group": "rg-prod",
//!     "access_token": "a token from `az account get-access-token`",
//! }))?;
//! let provider = config.provider()?; // nothing is contacted before a call
//! assert_eq!(provider.name(), "azure");
//! // provider.open_export("web-02").await? snapshots, grants access, reads.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod arm;
mod blob;
mod config;
mod provider;
pub use config::AzureConfig;
pub use provider::AzureProvider;
