//! The core of hypersdk: the VM model, the traits every platform and
//! destination implements, and the export pipeline.
//!
//! ```text
//! Provider ──open_export──▶ ExportSource ──disk streams──▶ Exporter ──▶ Sink
//! ```
//!
//! - A [`Provider`] knows one platform: it lists VMs ([`VmInfo`]), describes
//!   them ([`VmSpec`]) and opens an [`ExportSource`] whose disks are byte
//!   streams ([`DiskStream`]).
//! - The [`Exporter`] turns a source into a package (OVA or OVF directory with
//!   streamOptimized VMDKs and a SHA-256/512/1 manifest), hashing as bytes
//!   pass, optionally compressing (zstd, gzip) and encrypting (AES-256-GCM)
//!   the stored files on all cores, within bandwidth limits, with bounded
//!   memory, progress events, cancellation and an optional verify pass.
//! - A [`Sink`] stores the package: writes go to a staging area and are
//!   published whole on commit, or dropped on failure — or, for a resumable
//!   staging area, kept with a durable checkpoint when the export is
//!   interrupted, so that it can be continued ([`checkpoint`]).
//!
//! [`transforms`] holds the byte-stream transforms, usable on their own and
//! composed by the Exporter through [`ExportOptions`]:
//! [`transforms::encrypt`] (AES-256-GCM STREAM, key file or passphrase),
//! [`transforms::compress`] (zstd/gzip frames), [`transforms::pipeline`]
//! (digest + compress + encrypt on threads, with an async stream adapter),
//! [`transforms::ratelimit`] (token buckets and `--bwlimit` timetables) and
//! [`transforms::unwrap`] (the way back, sync or async).
//!
//! [`files`] works on whole local files: verify a package (plain or wrapped),
//! encrypt, decrypt or unwrap a file into place. [`ExportSettings`] is
//! [`ExportOptions`] as plain data (what configuration files, job
//! definitions and the language bindings hand over).
//!
//! The extension points beside those traits: [`ProviderSettings`] (how a
//! provider is configured and connected; the `hypersdk` facade crate's
//! registry gathers them), [`VmOps`] (snapshots, power, CD-ROM: a capability
//! a provider may offer), [`served`] (disks in a platform's own encoding,
//! decoded here), [`layers`] (bandwidth limits and idle timeouts wrapping a
//! stream), [`retry`] and, with the `http` feature, `http` (the
//! Range-resuming download every HTTP-based provider uses) and `tls` (the
//! verify / pin-a-thumbprint / insecure modes of management endpoints with
//! self-signed certificates: vSphere, Proxmox VE), [`provider::image_stream`]
//! (the guest bytes of any disk image a provider can open, local or over
//! SFTP), and [`confine`]
//! (paths kept under allowed directories, for untrusted callers). The
//! `hypersdk-testkit` crate holds the behaviour every implementation must
//! show.
//!
//! Errors are one [`Error`] enum; [`Error::is_retryable`] separates transient
//! failures from permanent ones, [`Error::code`] names the kind for programs.
//!
//! # Example
//!
//! A provider with one in-memory VM, exported into a sink that keeps objects
//! in memory (real code uses `hypersdk-local` and `hypersdk-sinks`, whose
//! `MemorySink` is a complete one):
//!
//! ```
//! # use std::collections::BTreeMap;
//! # use std::sync::{Arc, Mutex};
//! # use async_trait::async_trait;
//! # use bytes::Bytes;
//! # use futures_util::stream;
//! use hypersdk_core::*;
//!
//! #[derive(Debug)]
//! struct OneVm(VmSpec);
//!
//! #[async_trait]
//! impl ExportSource for OneVm {
//!     fn spec(&self) -> &VmSpec { &self.0 }
//!     async fn open_disk(&self, _index: usize, _offset: u64) -> Result<DiskStream> {
//!         let chunk = Bytes::from(vec![0x42u8; 1 << 20]);
//!         Ok(Box::pin(stream::iter(vec![Ok(chunk)])))
//!     }
//! }
//! # #[derive(Debug, Default, Clone)]
//! # struct MemSink(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);
//! # #[derive(Debug)] struct MemStaging(MemSink);
//! # #[derive(Debug)] struct MemWriter(MemSink, String);
//! # #[async_trait] impl Sink for MemSink {
//! #     fn describe(&self) -> String { "memory".into() }
//! #     async fn begin(&self, _: &Artifact, _: bool) -> Result<Box<dyn Staging>> { Ok(Box::new(MemStaging(self.clone()))) }
//! #     async fn list(&self, _: &str) -> Result<Vec<sink::ObjectMeta>> { Ok(vec![]) }
//! #     async fn read(&self, _: &str) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> { unimplemented!() }
//! #     async fn delete(&self, _: &Artifact) -> Result<bool> { Ok(false) }
//! # }
//! # #[async_trait] impl Staging for MemStaging {
//! #     async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
//! #         self.0 .0.lock().unwrap().insert(name.into(), Vec::new());
//! #         Ok(Box::new(MemWriter(self.0.clone(), name.into())))
//! #     }
//! #     async fn open(&self, name: &str, at: u64) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
//! #         Ok(Box::new(std::io::Cursor::new(self.0 .0.lock().unwrap()[name][at as usize..].to_vec())))
//! #     }
//! #     async fn commit(self: Box<Self>) -> Result<String> { Ok("memory".into()) }
//! #     async fn abort(self: Box<Self>) -> Result<()> { Ok(()) }
//! # }
//! # #[async_trait] impl Upload for MemWriter {
//! #     async fn put(&mut self, d: &[u8]) -> Result<()> { self.0 .0.lock().unwrap().get_mut(&self.1).unwrap().extend_from_slice(d); Ok(()) }
//! #     fn size(&self) -> u64 { self.0 .0.lock().unwrap()[&self.1].len() as u64 }
//! #     async fn complete(self: Box<Self>) -> Result<u64> { Ok(self.size()) }
//! #     async fn abort(self: Box<Self>) -> Result<()> { Ok(()) }
//! # }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let spec = VmSpec {
//!     id: "1".into(), name: "demo".into(), power_state: PowerState::Off,
//!     cpus: 2, memory_mib: 1024, firmware: Firmware::Bios,
//!     guest_os: GuestOs::default(), nics: vec![], annotation: None,
//!     disks: vec![DiskSpec {
//!         name: "disk0".into(), capacity: 1 << 20, format: DiskFormat::Raw,
//!         controller: ControllerKind::Scsi, unit: 0, location: "memory".into(),
//!         controller_index: None,
//!     }],
//!     hardware: Default::default(),
//! };
//! let sink = MemSink::default();
//! let report = Exporter::new(ExportOptions::new(PackageFormat::Ova))
//!     .export_source(&OneVm(spec), "memory", &sink)
//!     .await?;
//! assert_eq!(report.files[0].name, "demo.ovf");
//! assert!(report.manifest.starts_with("SHA256(demo.ovf)= "));
//! assert!(sink.0.lock().unwrap().contains_key("demo.ova"));
//! # Ok::<(), Error>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

pub mod checkpoint;
pub mod confine;
pub mod connect;
pub mod error;
pub mod exporter;
mod file_upload;
pub mod files;
#[cfg(feature = "http")]
pub mod http;
pub mod layers;
pub mod options;
pub mod package;
pub mod progress;
pub mod provider;
pub mod report;
pub mod retry;
pub mod served;
pub mod signing;
pub mod sink;
pub mod task;
#[cfg(feature = "http")]
pub mod tls;
pub mod tracking;
pub mod transforms;
pub mod vm;
pub mod vmops;

pub use connect::{Fields, ProviderSettings, ProviderUrl, Secret};
pub use error::{BoxError, Error, Result};
pub use exporter::Exporter;
pub use file_upload::{file_size, reading_from, FileUpload};
pub use options::{ExportOptions, ExportSettings, PackageFormat};
pub use progress::{Phase, ProgressEvent, ProgressFn};
pub use provider::{DiskStream, ExportSource, Provider};
pub use report::{Attempt, DiskReport, ExportReport, FileReport, VmSummary};
pub use served::ServedFormat;
pub use sink::{Artifact, CheckpointStore, Reserved, Sink, Staging, Upload, UploadState};
pub use tokio_util::sync::CancellationToken;
pub use tracking::{ChangeTracking, Changes};
pub use vm::{
    BootDevice, ControllerKind, ControllerSpec, DiskFormat, DiskSpec, DriveKind, DriveSpec,
    Firmware, GuestOs, Hardware, NicSpec, OsFamily, PowerState, VideoSpec, VmInfo, VmQuery, VmSpec,
};
pub use vmops::{SnapshotInfo, SnapshotOptions, TaskProgress, VmOps};
