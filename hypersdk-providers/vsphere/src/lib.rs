//! The vSphere provider: vCenter Server and ESXi over the vSphere Web
//! Services API (vim25 SOAP).
//!
//! A small SOAP client on reqwest (rustls with ring) and quick-xml that covers
//! only the calls hypersdk makes — login/logout, the PropertyCollector over a
//! ContainerView for the inventory, snapshots, tasks, and HttpNfcLease
//! exports — rather than generated bindings of the whole API. vim_rs 0.7
//! (with its `xml` and `vcsim_compat` features, the ones a SOAP simulator
//! needs) is 928,000 lines of generated Rust (39 MB); a release build of it
//! took 10.5 minutes and 671 s of CPU here (2 cores, 2026-11-24), against
//! about 2 minutes for this crate with reqwest and rustls from cold.
//!
//! ```no_run
//! # async fn demo() -> hypersdk_core::Result<()> {
//! use hypersdk_core::Provider;
//! use hypersdk_vsphere::{ConnectOptions, VsphereProvider};
//!
//! let opts = ConnectOptions::new("https://vcenter.example/sdk")
//!     .with_login("administrator@vsphere.local", std::env::var("GOVC_PASSWORD").unwrap_or_default());
//! let vc = VsphereProvider::connect(&opts).await?;
//! for vm in vc.list_vms().await? {
//!     println!("{} {} {} CPUs", vm.id, vm.name, vm.cpus);
//! }
//! vc.logout().await?;
//! # Ok(()) }
//! ```
//!
//! Exports go through an HttpNfcLease (`ExportVm` for a powered-off VM, a
//! temporary snapshot and `ExportSnapshot` for a running one; see the
//! `export` module); the disks arrive as streamOptimized VMDKs, which the
//! Exporter stores as they are ([`ExportSource::open_served`]) or decodes
//! on request. A download that breaks off resumes from the byte it broke
//! at (HTTP Range; a server that ignores Range is re-read, never appended),
//! and an interrupted export resumed later asks for the rest of each
//! partial disk's VMDK. [`VsphereProvider`] also has the operations a migration needs:
//! snapshots, power off, guest shutdown, CD-ROM ejection.
//!
//! [`ExportSource::open_served`]: hypersdk_core::ExportSource::open_served
//!
//! TLS is verified against the system trust store by default; a pinned
//! thumbprint ([`TlsMode::Thumbprint`]) or no verification
//! ([`TlsMode::Insecure`]) can be asked for. A refused certificate is
//! reported with its SHA-1 thumbprint. Wrong credentials are
//! [`Error::Auth`](hypersdk_core::Error::Auth); an unreachable host is a
//! retryable provider error; passwords never appear in `Debug` output or logs.
#![deny(missing_docs)]

mod client;
mod config;
mod download;
mod export;
mod inventory;
mod ops;
mod provider;
pub mod soap;
mod tasks;

pub use client::{ConnectOptions, Connection, ServiceContent};
pub use config::VsphereConfig;
pub use hypersdk_core::tls::{thumbprint_sha1, TlsMode};
pub use hypersdk_core::vmops::{SnapshotInfo, TaskProgress};
pub use inventory::VmRecord;
pub use provider::VsphereProvider;
