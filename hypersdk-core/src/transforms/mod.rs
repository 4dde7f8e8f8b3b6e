//! Byte-stream transforms usable on their own or inside the Exporter.
//!
//! - [`encrypt`]: AES-256-GCM in a chunked STREAM construction, with keys from
//!   a key file or a passphrase (argon2id); `Write`/`Read` adapters.
//! - [`compress`]: zstd and gzip as independent frames, and decompression of
//!   any zstd/gzip stream; `Write`/`Read` adapters.
//! - [`pipeline`]: digest, compression and encryption run at once on threads
//!   joined by bounded queues of fixed-size chunks; a blocking or async
//!   writing end, and [`transform_stream`](pipeline::transform_stream) as an
//!   adapter over an async byte stream.
//! - [`ratelimit`]: byte token buckets and
//!   rclone-style `--bwlimit` timetables.
//! - [`unwrap`]: the way back — decrypt and decompress by magic bytes, as a
//!   blocking `Read` or an `AsyncRead`.
pub mod compress;
pub mod encrypt;
pub mod pipeline;
pub mod ratelimit;
pub mod unwrap;

/// The suffix wrapping adds to a stored file's name: the compression's
/// (`.zst`, `.gz`), then `.enc` when encrypted; "" for neither.
pub fn wrapped_extension(compression: Option<&compress::Compression>, encrypted: bool) -> String {
    let mut s = compression.map_or("", |c| c.extension()).to_string();
    if encrypted {
        s.push_str(".enc");
    }
    s
}
