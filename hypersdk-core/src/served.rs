//! Disks as platforms serve them, and the way back to guest bytes.
//!
//! A platform often hands a disk out in an encoding of its own: vSphere's
//! NFC lease a streamOptimized VMDK, an Azure managed disk a fixed VHD (the
//! guest bytes and a 512-byte footer), KubeVirt's export server gzip'd raw.
//! An [`ExportSource`](crate::ExportSource) says which with
//! [`served_format`](crate::ExportSource::served_format) and hands the bytes
//! out with [`open_served`](crate::ExportSource::open_served); the Exporter
//! stores a streamOptimized VMDK as it is, and turns anything else into
//! guest bytes here ([`guest_bytes`]) — so a provider need not write a
//! decoder, and [`open_disk`](crate::ExportSource::open_disk) has a default
//! built on this.

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::provider::DiskStream;
use crate::{Error, Result};

/// The encoding of a served disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServedFormat {
    /// A streamOptimized VMDK (vSphere NFC): stored as it is unless the
    /// export asks to re-encode.
    StreamOptimizedVmdk,
    /// A fixed VHD: the guest bytes, then a 512-byte footer that is checked.
    FixedVhd,
    /// The guest bytes, gzip-compressed.
    GzipRaw,
    /// A gzip-compressed tar whose first member is the disk (`disk.raw`,
    /// a regular or GNU sparse file): what Compute Engine's image export
    /// writes. The gzip's CRC is checked, and nothing but the archive's
    /// end may follow the disk.
    TarGz,
}

/// Which disk, for errors: (VM, disk, location).
pub type DiskOf<'a> = (&'a str, &'a str, &'a str);

fn read_err(of: DiskOf<'_>, what: String) -> Error {
    Error::DiskRead {
        vm: of.0.to_string(),
        disk: of.1.to_string(),
        location: of.2.to_string(),
        source: what.into(),
    }
}

/// The guest bytes of a disk of `capacity` bytes served as `format`: a
/// stream of exactly `capacity` bytes that ends in an error naming the disk
/// if the served bytes are malformed or of another size.
pub fn guest_bytes(
    format: ServedFormat,
    served: DiskStream,
    capacity: u64,
    of: DiskOf<'_>,
) -> DiskStream {
    match format {
        ServedFormat::FixedVhd => fixed_vhd(served, capacity, of),
        ServedFormat::GzipRaw => gzip_raw(served, capacity, of),
        ServedFormat::StreamOptimizedVmdk => stream_optimized(served, capacity, of),
        ServedFormat::TarGz => tar_gz(served, capacity, of),
    }
}

/// Passes the first `capacity` bytes on and checks the footer after them.
fn fixed_vhd(served: DiskStream, capacity: u64, of: DiskOf<'_>) -> DiskStream {
    struct State {
        served: DiskStream,
        left: u64,
        footer: Vec<u8>,
        done: bool,
    }
    let of = (of.0.to_string(), of.1.to_string(), of.2.to_string());
    let state = State {
        served,
        left: capacity,
        footer: Vec::with_capacity(512),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, move |mut st| {
        let of = of.clone();
        async move {
            let of = (of.0.as_str(), of.1.as_str(), of.2.as_str());
            loop {
                if st.done {
                    return None;
                }
                match st.served.next().await {
                    Some(Ok(mut b)) => {
                        let take = st.left.min(b.len() as u64) as usize;
                        let data = b.split_to(take);
                        st.left -= take as u64;
                        if st.footer.len() + b.len() > 512 {
                            st.done = true;
                            return Some((
                                Err(read_err(of, format!(
                                    "the served VHD is longer than {capacity} bytes of disk and a 512-byte footer"
                                ))),
                                st,
                            ));
                        }
                        st.footer.extend_from_slice(&b);
                        if !data.is_empty() {
                            return Some((Ok(data), st));
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    None => {
                        st.done = true;
                        let check = if st.left > 0 || st.footer.len() != 512 {
                            Err(format!(
                                "the served VHD ends {} bytes short of {capacity} bytes of disk and its footer",
                                st.left + 512 - st.footer.len() as u64
                            ))
                        } else {
                            let mut f = [0u8; 512];
                            f.copy_from_slice(&st.footer);
                            match hypersdk_formats::vhd::Footer::parse(&f) {
                                Err((at, what)) => Err(format!("the served VHD's footer (byte {at}): {what}")),
                                Ok(footer) if footer.disk_type != 2 => Err(format!(
                                    "the served VHD is of type {}, not a fixed disk (2)",
                                    footer.disk_type
                                )),
                                Ok(footer) if footer.size != capacity => Err(format!(
                                    "the served VHD's footer says {} bytes, the disk has {capacity}",
                                    footer.size
                                )),
                                Ok(_) => Ok(()),
                            }
                        };
                        return match check {
                            Ok(()) => None,
                            Err(what) => Some((Err(read_err(of, what)), st)),
                        };
                    }
                }
            }
        }
    }))
}

/// Inflates as the bytes arrive (a gzip member, or several in a row).
fn gzip_raw(served: DiskStream, capacity: u64, of: DiskOf<'_>) -> DiskStream {
    use std::io::Write;
    let of = (of.0.to_string(), of.1.to_string(), of.2.to_string());
    let state = (
        served,
        flate2::write::MultiGzDecoder::new(Vec::new()),
        0u64,
        false,
    );
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut served, mut dec, mut out, mut done)| {
            let of = of.clone();
            async move {
                let of = (of.0.as_str(), of.1.as_str(), of.2.as_str());
                loop {
                    if done {
                        return None;
                    }
                    let fail = |what: String| read_err(of, what);
                    let (chunk, end) = match served.next().await {
                        Some(Ok(b)) => {
                            if let Err(e) = dec.write_all(&b) {
                                done = true;
                                return Some((
                                    Err(fail(format!("the served gzip does not inflate: {e}"))),
                                    (served, dec, out, done),
                                ));
                            }
                            (std::mem::take(dec.get_mut()), false)
                        }
                        Some(Err(e)) => {
                            done = true;
                            return Some((Err(e), (served, dec, out, done)));
                        }
                        None => match dec.try_finish() {
                            Ok(()) => (std::mem::take(dec.get_mut()), true),
                            Err(e) => {
                                done = true;
                                return Some((
                                    Err(fail(format!("the served gzip ends badly: {e}"))),
                                    (served, dec, out, done),
                                ));
                            }
                        },
                    };
                    out += chunk.len() as u64;
                    if out > capacity || (end && out != capacity) {
                        done = true;
                        return Some((
                            Err(fail(format!(
                            "the served gzip inflates to {}{out} bytes, the disk has {capacity}",
                            if end { "" } else { "more than " }
                        ))),
                            (served, dec, out, done),
                        ));
                    }
                    done = end;
                    if !chunk.is_empty() {
                        return Some((Ok(Bytes::from(chunk)), (served, dec, out, done)));
                    }
                }
            }
        },
    ))
}

/// Most bytes that may follow the disk in a [`ServedFormat::TarGz`]
/// archive (its padding and end blocks take at most 10 KiB).
const MAX_TAR_TAIL: u64 = 1 << 20;

/// Inflates and unpacks a tar.gz'd disk on a blocking thread.
fn tar_gz(served: DiskStream, capacity: u64, of: DiskOf<'_>) -> DiskStream {
    use std::io::Read;
    on_thread(
        served,
        capacity,
        of,
        "archive",
        move |bridge| {
            let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(
                1 << 20,
                bridge,
            ));
            let disk = hypersdk_formats::tar_disk::TarDisk::open(gz)
                .map_err(|e| format!("the served archive holds no disk: {e}"))?;
            if disk.size() != capacity {
                return Err(format!(
                    "the served archive's {} holds {} bytes, the disk has {capacity}",
                    disk.name(),
                    disk.size()
                ));
            }
            Ok(disk)
        },
        |disk| {
            // The rest: the member's padding and the end blocks, read to
            // the gzip's end so that its CRC and length are checked.
            let mut rest = disk.into_inner().take(MAX_TAR_TAIL + 1);
            match std::io::copy(&mut rest, &mut std::io::sink()) {
                Ok(n) if n > MAX_TAR_TAIL => Err(format!(
                    "the served archive holds more than its disk (over {MAX_TAR_TAIL} bytes after it)"
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("the served archive ends badly: {e}")),
            }
        },
    )
}

/// Decodes a streamOptimized VMDK on a blocking thread.
fn stream_optimized(served: DiskStream, capacity: u64, of: DiskOf<'_>) -> DiskStream {
    use std::io::Read;
    on_thread(
        served,
        capacity,
        of,
        "VMDK",
        move |bridge| {
            let dec = hypersdk_formats::vmdk::StreamDecoder::new(bridge)
                .map_err(|e| format!("the served disk is not a streamOptimized VMDK: {e}"))?;
            if dec.capacity() != hypersdk_formats::image::sector_capacity(capacity) {
                return Err(format!(
                    "the served VMDK holds {} bytes, the disk has {capacity}",
                    dec.capacity()
                ));
            }
            Ok(dec)
        },
        |mut dec| {
            dec.read(&mut [0u8; 1])
                .map(drop)
                .map_err(|e| format!("the served VMDK ends badly: {e}"))
        },
    )
}

/// The served bytes as a blocking reader.
type Served = Box<dyn std::io::Read + Send>;

/// Decodes `served` on a blocking thread: `open` makes a reader of the
/// guest bytes from it (or says why it cannot), `capacity` bytes are read
/// from that in 1 MiB chunks (four in flight to the caller), then `finish`
/// checks what follows. Errors name the disk; `what` names the encoding
/// when it breaks off.
fn on_thread<D: std::io::Read>(
    served: DiskStream,
    capacity: u64,
    of: DiskOf<'_>,
    what: &'static str,
    open: impl FnOnce(Served) -> std::result::Result<D, String> + Send + 'static,
    finish: impl FnOnce(D) -> std::result::Result<(), String> + Send + 'static,
) -> DiskStream {
    let of = (of.0.to_string(), of.1.to_string(), of.2.to_string());
    let body = served.map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
    let bridge: Served = Box::new(tokio_util::io::SyncIoBridge::new(
        tokio_util::io::StreamReader::new(body),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let of = (of.0.as_str(), of.1.as_str(), of.2.as_str());
        let send_err = |what: String| {
            let _ = tx.blocking_send(Err(read_err(of, what)));
        };
        let mut dec = match open(bridge) {
            Ok(d) => d,
            Err(e) => return send_err(e),
        };
        let mut left = capacity;
        while left > 0 {
            let mut buf = vec![0u8; (1 << 20).min(left as usize)];
            if let Err(e) = dec.read_exact(&mut buf) {
                return send_err(format!("the served {what} broke off: {e}"));
            }
            left -= buf.len() as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the reader stopped
            }
        }
        if let Err(e) = finish(dec) {
            send_err(e);
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
