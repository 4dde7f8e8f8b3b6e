//! Byte-stream transforms usable on their own or inside the Exporter.
//!
//! - [`encrypt`]: AES-256-GCM in a chunked STREAM construction, with keys from
//!   a key file or a passphrase (argon2id).
//! - [`compress`]: zstd and gzip as independent frames, and decompression of
//!   any zstd/gzip stream.
pub mod compress;
pub mod encrypt;
pub mod pipeline;
