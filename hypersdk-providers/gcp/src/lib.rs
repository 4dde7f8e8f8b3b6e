//! Compute Engine as an export source: instances described through the
//! Compute API, their disks exported the way `gcloud compute images export`
//! does it and read back from Cloud Storage as the export runs.
//!
//! `kind: gcp` ([`GcpConfig`]): one project's instances (or one zone's), by
//! name, `ZONE/NAME` or resource name. An export makes an image of each
//! persistent disk (labelled `created-by=hypersdk`; `forceCreate` when the
//! instance runs, so each image is crash-consistent), then submits Cloud
//! Build's `gce_vm_image_export` step per image, which writes `disk.raw`
//! in a gzipped GNU tar (sparse: holes take no room) into the staging
//! bucket. The disks' exports run side by side in the background; the
//! package reads each disk's object as soon as it is staged, inflating and
//! unpacking it on the fly ([`ServedFormat::TarGz`](hypersdk_core::ServedFormat)),
//! so the disk is never stored whole here. When the export closes — on
//! every path, also on failure and cancellation — builds still running are
//! cancelled and the staged objects and images deleted. A process killed
//! before that leaves them for `--resume`, which takes each disk up where
//! it got to (its object if staged, else its image).
//!
//! Credentials: Google's usual chain (service-account key, gcloud's
//! application default credentials, the metadata server), see
//! [`hypersdk_sinks::google_auth`]. Every URL is built from validated names;
//! nothing the server answers is fetched.
//!
//! Memory: per disk being read, the object's bytes one 1 MiB piece at a
//! time, a 1 MiB buffer before the inflater, its 32 KiB window, and up to
//! four 1 MiB chunks of guest bytes between the unpacker and the package:
//! about 6 MiB, whatever the disk's size.
//!
//! ```
//! use hypersdk_gcp::GcpConfig;
//! use hypersdk_core::Provider;
//!
//! // The fields of a daemon's `providers:` entry (or of `--provider-opt`).
//! let config: GcpConfig = serde_json::from_value(serde_json::json!({
//!     "project": "my-project",
//!     "zone": "europe-west1-b",
//!     "bucket": "gs://my-staging-bucket/exports",
//!     "credentials_json": r#"{"type": "authorized_user", "client_id": "x",
//!         "client_secret": "y", "refresh_token": "z"}"#,
//! }))?;
//! let provider = config.provider()?; // nothing is contacted before a call
//! assert_eq!(provider.name(), "gcp");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod api;
mod config;
mod provider;
pub use config::GcpConfig;
pub use provider::GcpProvider;
