//! AWS as an export source: EC2 instances, their EBS volumes read through
//! the EBS direct APIs.
//!
//! In progress (issue 18): the request signer is here and checked against
//! botocore; the inventory and the export follow. The crate is not in the
//! provider registry until it exports end to end.
#![deny(missing_docs)]

pub mod sigv4;
