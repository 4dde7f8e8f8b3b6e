//! AWS as an export source: EC2 instances, their EBS volumes read through
//! the EBS direct APIs.
//!
//! In progress (issue 18): the request signer (checked against botocore),
//! the EC2 inventory calls and the EBS direct API reads (checked against
//! moto, seeded with boto3) are here; the provider (snapshots, the export
//! as disk streams, the moto extension) follows. The crate is not in the
//! provider registry until it exports end to end.
#![deny(missing_docs)]

pub mod ebs;
pub mod ec2;
mod provider;
pub use provider::AwsProvider;
pub mod sigv4;
