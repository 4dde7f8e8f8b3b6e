//! The one error type of this crate.

use std::io;

/// Everything that can go wrong reading or writing a format.
///
/// Each variant names the structure involved and, for readers, the byte offset
/// and what was expected, so a corrupted file can be diagnosed from the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error while reading or writing a named structure.
    #[error("I/O error {context}")]
    Io {
        /// What was being done, e.g. "reading qcow2 L2 table at offset 0x30000".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A qcow2 image is malformed or inconsistent.
    #[error("corrupt qcow2 image: {what} at offset {offset:#x}")]
    Qcow2Corrupt {
        /// Byte offset in the image file where the problem is.
        offset: u64,
        /// What was found and what was expected.
        what: String,
    },
    /// A qcow2 image uses a feature this reader does not support.
    #[error("unsupported qcow2 image: {0}")]
    Qcow2Unsupported(String),
    /// A VMDK file is malformed.
    #[error("corrupt VMDK: {what} at offset {offset:#x}")]
    VmdkCorrupt {
        /// Byte offset where the problem is.
        offset: u64,
        /// What was found and what was expected.
        what: String,
    },
    /// A VMDK descriptor line is malformed.
    #[error("bad VMDK descriptor line {line}: {what}")]
    VmdkDescriptor {
        /// 1-based line number (0 for the whole descriptor).
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A VMDK uses a feature this reader does not support.
    #[error("unsupported VMDK: {0}")]
    VmdkUnsupported(String),
    /// An OVA member is unsafe or unusable: a link, device, path outside the
    /// target, duplicate name, …
    #[error("unsafe OVA member \"{}\": {what}", display_name(member))]
    OvaUnsafe {
        /// The member name as stored.
        member: String,
        /// Why it is refused.
        what: String,
    },
    /// A tar archive holding a disk (a cloud's image export) is malformed.
    #[error("corrupt tar archive: {what} at byte {offset}")]
    TarCorrupt {
        /// Byte offset in the (uncompressed) archive.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// An OVA (tar) archive is malformed.
    #[error("corrupt OVA: {what} at offset {offset:#x}")]
    OvaCorrupt {
        /// Byte offset in the archive.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// An OVF descriptor is malformed or uses what the reader cannot read.
    #[error("invalid OVF descriptor: {what} at byte {offset}")]
    OvfInvalid {
        /// Byte offset in the descriptor.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A VHD is malformed.
    #[error("corrupt VHD: {what} at offset {offset:#x}")]
    VhdCorrupt {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A VHD uses a feature this reader does not support.
    #[error("unsupported VHD: {0}")]
    VhdUnsupported(String),
    /// A VHDX is malformed.
    #[error("corrupt VHDX: {what} at offset {offset:#x}")]
    VhdxCorrupt {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A VHDX this reader cannot read as it is (a log to replay, a
    /// differencing disk without its parent, an unknown required item).
    #[error("cannot read this VHDX: {0}")]
    VhdxUnsupported(String),
    /// A manifest line cannot be used.
    #[error("invalid manifest line {line}: {what}")]
    ManifestInvalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A value given to a writer is out of the range its format can express.
    #[error("invalid input for {format}: {what}")]
    InvalidInput {
        /// The format being written ("OVA", "VMDK", …).
        format: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The input ended before the writer received the promised number of bytes,
    /// or went on past it.
    #[error("{format} stream length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The format being written.
        format: &'static str,
        /// Bytes declared up front.
        expected: u64,
        /// Bytes actually received.
        actual: u64,
    },
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest name shown in a message, in characters.
pub const MAX_SHOWN_NAME: usize = 120;

/// A name that came from untrusted input (an archive member, a manifest
/// line, a descriptor's file reference, a file found on disk, a job field)
/// as it should appear in a message: control characters and other
/// invisible ones escaped (`\n`, `\u{1b}`), and cut to [`MAX_SHOWN_NAME`]
/// characters with `…` after it, so a crafted name can neither rewrite a
/// terminal nor flood a log.
pub fn display_name(name: &str) -> String {
    display_text(name, MAX_SHOWN_NAME)
}

/// Longest text from a server (an error's message) shown, in characters.
pub const MAX_SHOWN_MESSAGE: usize = 300;

/// Text that came from untrusted input, as [`display_name`] shows a name:
/// invisible characters escaped, cut to `max` characters with `…` after it.
pub fn display_text(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod display_name_tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(display_name("disk1.vmdk"), "disk1.vmdk");
        assert_eq!(display_name("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(display_name("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        let long = "a".repeat(1000);
        let shown = display_name(&long);
        assert_eq!(shown.chars().count(), MAX_SHOWN_NAME + 1);
        assert!(shown.ends_with('…'));
    }
}
