//! OVA packages: an OVF package in one POSIX ustar archive.
//!
//! The layout we write, as the OVF specification (DSP0243 §5.3) requires:
//! the `.ovf` descriptor first, the `.mf` manifest right after it, then the
//! files in the order of the descriptor's `References`. Each member is a
//! 512-byte ustar header followed by its data padded to 512 bytes; the archive
//! ends with two zero blocks.
//!
//! [`OvaReader`] lists, validates, reads in place and extracts archives from
//! untrusted sources; see its module for what it refuses.
//!
//! Sizes up to 8 GiB − 1 are written as 11 octal digits; larger sizes use the
//! base-256 size encoding (high bit of the first byte set) that GNU tar, Go's
//! `archive/tar`, Python's `tarfile` and VMware's tools read.

mod reader;
mod writer;

pub(crate) use reader::{check_header_checksum, number, MAX_ARCHIVE_MEMBERS};
pub use reader::{parse_member_header, safe_member_name, OvaEntry, OvaReader, SubFile};
pub use writer::{tar_header, tar_padding, OvaWriter, BLOCK_SIZE, END_OF_ARCHIVE};
