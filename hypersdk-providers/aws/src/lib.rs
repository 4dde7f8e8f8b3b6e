//! AWS as an export source: EC2 instances, their EBS volumes read through
//! the EBS direct APIs.
//!
//! In progress (issue 18): the request signer (checked against botocore)
//! and the EC2 inventory calls (checked against moto's EC2, seeded with
//! boto3) are here; the EBS reads and the export follow. The crate is not in
//! the provider registry until it exports end to end.
#![deny(missing_docs)]

pub mod ec2;
pub mod sigv4;
