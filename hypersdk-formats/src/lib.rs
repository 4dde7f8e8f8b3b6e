//! Byte-level readers and writers for the artifacts of VM export.
//!
//! This crate knows bytes, not platforms, and has no async runtime: every
//! writer works over [`std::io::Write`] and every reader over
//! [`std::io::Read`] + [`std::io::Seek`], so it can run on a blocking thread of
//! any executor.
//!
//! | module | what |
//! |---|---|
//! | [`ovf`] | OVF 1.x/2.0 descriptors: one typed model that is parsed, read through views, built and written |
//! | [`ova`] | OVA writer in spec order; safe reader/extractor for untrusted archives |
//! | [`manifest`] | `.mf` manifests: strict writer, tolerant reader, verification (SHA1/256/512); digests whose state can be saved ([`digest`]) |
//! | [`package`] | a whole OVA or OVF directory inspected and verified against its manifest |
//! | [`vmdk`] | streamOptimized VMDK writer (VMware layout), sparse extent reader (both stream layouts, monolithicSparse) |
//! | [`qcow2`] | qcow2 v2/v3 reader |
//! | [`raw`] | raw images (reader; writer leaving holes) |
//! | [`vhd`] | VHD: fixed and dynamic reader, fixed writer |
//! | [`vhdx`] | VHDX: fixed, dynamic and differencing reader |
//! | [`image`] | the [`DiskImage`] trait, format detection, [`open_image`] |
//! | [`convert`] | any readable image to VMDK or raw, skipping zero regions |
//!
//! # Example: a streamOptimized VMDK of a small disk
//!
//! ```
//! use hypersdk_formats::vmdk::{StreamOptimizedWriter, VmdkWriterOptions};
//!
//! let capacity = 1 << 20; // 1 MiB disk
//! let mut w = StreamOptimizedWriter::new(Vec::new(), capacity, &VmdkWriterOptions::default())?;
//! let mut data = vec![0u8; capacity as usize];
//! data[4096..8192].fill(0x5a);
//! w.write(&data)?;
//! let (vmdk, stats) = w.finish()?;
//! assert_eq!(&vmdk[..4], b"KDMV");
//! assert_eq!(stats.populated_bytes, 64 * 1024); // one non-zero grain
//! # Ok::<(), hypersdk_formats::Error>(())
//! ```
#![deny(missing_docs)]

pub mod convert;
pub mod digest;
mod endian;
pub mod error;
pub mod image;
pub mod manifest;
pub mod ova;
pub mod ovf;
pub mod package;
pub mod qcow2;
pub mod raw;
pub mod tar_disk;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
pub mod xml;

pub use error::{Error, Result};
pub use image::{detect_format, open_image, DiskImage, ImageFormat, Region};
