//! Reading wrapped data back: decrypt if it is encrypted, then decompress if
//! it is compressed, recognising each layer by its magic bytes — the reverse
//! of the [pipeline](super::pipeline) (and of `hyperctl export --compress
//! --encrypt-*`).
//!
//! [`unwrap_reader`] works on a blocking `Read`; [`unwrap_async`] on an
//! `AsyncRead`, running the blocking layers on a thread and handing the plain
//! bytes over a bounded queue (4 × 256 KiB), so memory stays bounded. Damage
//! anywhere — a chunk that does not authenticate, a bad zstd checksum or gzip
//! CRC, a truncated file — is an error from `read`, never a silent end of data,
//! and no plaintext of a chunk that failed authentication is ever returned.

use std::io::{BufReader, Read};

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::compress::{decompress_reader, sniff, Layer};
use super::encrypt::{DecryptReader, KeySource};
use crate::error::{Error, Result};

/// Plain bytes from wrapped `input`. Fails at once if `input` is encrypted
/// and no key is given, or the key is wrong.
pub fn unwrap_reader<'a, R: Read + Send + 'a>(
    input: R,
    key: Option<&KeySource>,
) -> Result<Box<dyn Read + Send + 'a>> {
    let mut raw = BufReader::with_capacity(1 << 16, input);
    let layer = sniff(&mut raw).map_err(|e| Error::sink("cannot read", "wrapped data", e))?;
    let plain: Box<dyn Read + Send + 'a> = if layer == Layer::Encrypted {
        let key = key.ok_or_else(|| {
            Error::Crypto("the data is encrypted: a key file or passphrase file is needed".into())
        })?;
        Box::new(DecryptReader::new(raw, key)?)
    } else {
        Box::new(raw)
    };
    decompress_reader(plain).map_err(|e| Error::sink("cannot read", "compressed data", e))
}

/// [`unwrap_reader`] for async code: an `AsyncRead` of the plain bytes of
/// `input`. Must be called inside a tokio runtime. A bad key or damaged data
/// is an `io::Error` from reading (of kind `InvalidData` for authentication
/// and checksum failures).
pub fn unwrap_async<R>(input: R, key: Option<KeySource>) -> impl AsyncRead + Send + Unpin
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let bridge = tokio_util::io::SyncIoBridge::new(input);
    tokio::task::spawn_blocking(move || {
        let mut plain = match unwrap_reader(bridge, key.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                let _ =
                    tx.blocking_send(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match plain.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the reader went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    tokio_util::io::StreamReader::new(Box::pin(stream))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::transforms::compress::{CompressWriter, Compression};
    use crate::transforms::encrypt::EncryptWriter;

    fn key() -> KeySource {
        KeySource::Key(zeroize::Zeroizing::new([1u8; 32]))
    }

    fn wrapped(data: &[u8]) -> Vec<u8> {
        let enc = EncryptWriter::new(Vec::new(), &key()).unwrap();
        let mut z = CompressWriter::new(enc, &Compression::ZSTD, 1 << 16).unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap().finish().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_unwrap_round_trips_and_reports_damage() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let packed = wrapped(&data);

        let mut back = Vec::new();
        unwrap_async(std::io::Cursor::new(packed.clone()), Some(key()))
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, data);

        // Damage in the middle: an error, not a short read.
        let mut bad = packed.clone();
        let at = bad.len() / 2;
        bad[at] ^= 4;
        let r = unwrap_async(std::io::Cursor::new(bad), Some(key()))
            .read_to_end(&mut Vec::new())
            .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);

        // Truncated: an error too.
        let cut = packed[..packed.len() - 100].to_vec();
        assert!(unwrap_async(std::io::Cursor::new(cut), Some(key()))
            .read_to_end(&mut Vec::new())
            .await
            .is_err());

        // No key, wrong key.
        let r = unwrap_async(std::io::Cursor::new(packed.clone()), None)
            .read_to_end(&mut Vec::new())
            .await;
        assert!(r.unwrap_err().to_string().contains("key"));
        let other = KeySource::Key(zeroize::Zeroizing::new([2u8; 32]));
        let r = unwrap_async(std::io::Cursor::new(packed), Some(other))
            .read_to_end(&mut Vec::new())
            .await;
        assert!(r.unwrap_err().to_string().contains("wrong key"));
    }

    #[test]
    fn plain_and_compressed_only_need_no_key() {
        let mut z = CompressWriter::new(Vec::new(), &Compression::GZIP, 4096).unwrap();
        z.write_all(b"hello, world").unwrap();
        let gz = z.finish().unwrap();
        let mut back = String::new();
        unwrap_reader(&gz[..], None)
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello, world");
        let mut back = String::new();
        unwrap_reader(&b"plain"[..], None)
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "plain");
    }
}
