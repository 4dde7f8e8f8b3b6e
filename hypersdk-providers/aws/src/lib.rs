//! AWS as an export source: EC2 instances, their EBS volumes read through
//! the EBS direct APIs.
//!
//! `kind: aws` ([`AwsConfig`]): one region's instances, by id or `Name`
//! tag. An export snapshots every EBS volume of the instance (tagged
//! `created-by=hypersdk`), reads each snapshot's blocks through the EBS
//! direct APIs (`ListSnapshotBlocks`, `GetSnapshotBlock`, 16 blocks in
//! flight per disk, each block's SHA-256 checked; blocks the snapshot does
//! not hold read as zeros) and deletes the snapshots when it closes, on
//! every path. Requests are signed with SigV4 ([`sigv4`], checked against
//! botocore).
//!
//! Credentials ([`creds`]), in botocore's order: keys from settings or
//! `AWS_*` variables; a role assumed with a web identity token
//! (`AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`); `~/.aws` profiles; the
//! container's role (`AWS_CONTAINER_CREDENTIALS_*`); else the instance role,
//! from the instance metadata service (IMDSv2). A resumed export reopens the snapshots of the interrupted
//! one (their ids are its resume token), or takes new ones when they are
//! gone.
//!
//! An AMI (`ami-…`) or a snapshot (`snap-…`) named instead of an instance
//! is read in place, and kept.
//!
//! The classic path, for accounts that require VM Import/Export
//! (`export_method: export-task`, `export_bucket: s3://BUCKET/PREFIX`):
//! `CreateInstanceExportTask` writes the instance as a VMDK into the
//! bucket; the export polls the task, streams the file from S3 ([`s3`])
//! decoding it on the fly, and on every path cancels a task still running
//! and deletes the file. Only the root volume is exported (VM
//! Import/Export's limit): instances with data volumes are refused.
//!
//! ```
//! use hypersdk_aws::AwsConfig;
//! use hypersdk_core::Provider;
//!
//! // The fields of a daemon's `providers:` entry (or of `--provider-opt`).
//! let config: AwsConfig = serde_json::from_value(serde_json::json!({
//!     "region": "eu-west-1",
//!     "access_key_id": "AKIAEXAMPLE",
//!     "secret_access_key": "example",
//! }))?;
//! let provider = config.provider()?; // nothing is contacted before a call
//! assert_eq!(provider.name(), "aws");
//! // provider.open_export("web-01").await? snapshots the volumes and reads them.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod client;
mod config;
pub mod creds;
pub mod ebs;
pub mod ec2;
mod export_task;
mod provider;
pub mod s3;
pub use config::AwsConfig;
pub use provider::AwsProvider;
pub mod sigv4;
