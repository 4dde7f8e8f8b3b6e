//! Sources that serve disks in an encoding of their own (a fixed VHD as
//! Azure page blobs are, gzip'd raw as KubeVirt's export server sends it)
//! and implement nothing but `open_served`: the testkit's source suite
//! passes on them, their exports equal the export of the same guest bytes
//! served plainly, and malformed encodings fail naming the disk.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use hypersdk_core::*;
use hypersdk_sinks::MemorySink;

const CAPACITY: u64 = 3 << 20;

fn guest() -> Vec<u8> {
    let mut g = hypersdk_testkit::sink::pattern(9, CAPACITY as usize);
    g[1 << 20..2 << 20].fill(0); // a zero MiB, as real disks have
    g
}

fn fixed_vhd(data: &[u8]) -> Vec<u8> {
    let mut w = hypersdk_formats::vhd::VhdFixedWriter::new(
        std::io::Cursor::new(Vec::new()),
        data.len() as u64,
        [7; 16],
    )
    .unwrap();
    w.write(data).unwrap();
    w.finish().unwrap().into_inner()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(data), &mut out).unwrap();
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One VM whose one disk is served as `bytes` in `format` (None: guest bytes).
#[derive(Debug)]
struct Served {
    spec: VmSpec,
    format: Option<ServedFormat>,
    bytes: Bytes,
}

impl Served {
    fn new(format: Option<ServedFormat>, bytes: Vec<u8>) -> Self {
        Served {
            spec: VmSpec {
                id: "1".into(),
                name: "served".into(),
                power_state: PowerState::Off,
                cpus: 1,
                memory_mib: 512,
                firmware: Firmware::Bios,
                guest_os: GuestOs::default(),
                nics: vec![],
                annotation: None,
                disks: vec![DiskSpec {
                    name: "disk0".into(),
                    capacity: CAPACITY,
                    format: DiskFormat::Raw,
                    controller: ControllerKind::Scsi,
                    unit: 0,
                    location: "memory".into(),
                    controller_index: None,
                }],
                hardware: Default::default(),
            },
            format,
            bytes: Bytes::from(bytes),
        }
    }

    fn chunks(&self, offset: u64) -> DiskStream {
        let rest = self
            .bytes
            .slice(offset.min(self.bytes.len() as u64) as usize..);
        let parts: Vec<Result<Bytes>> = (0..rest.len())
            .step_by(300_001)
            .map(|i| Ok(rest.slice(i..(i + 300_001).min(rest.len()))))
            .collect();
        Box::pin(futures_util::stream::iter(parts))
    }
}

#[async_trait]
impl ExportSource for Served {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        match self.format {
            None => Ok(self.chunks(offset)),
            // What a source that serves an encoding gets by default.
            Some(_) => {
                let (f, s) = (
                    self.served_format(index).unwrap(),
                    self.open_served(index, 0).await?.unwrap(),
                );
                let guest = served::guest_bytes(f, s, CAPACITY, ("served", "disk0", "memory"));
                Ok(provider::skip_bytes(guest, offset))
            }
        }
    }

    fn served_format(&self, _index: usize) -> Option<ServedFormat> {
        self.format
    }

    async fn open_served(&self, _index: usize, offset: u64) -> Result<Option<DiskStream>> {
        Ok(self.format.map(|_| self.chunks(offset)))
    }
}

/// A source that implements only `open_served`: `open_disk` is the trait's default.
#[derive(Debug)]
struct OnlyServed(Served);

#[async_trait]
impl ExportSource for OnlyServed {
    fn spec(&self) -> &VmSpec {
        &self.0.spec
    }
    fn served_format(&self, index: usize) -> Option<ServedFormat> {
        self.0.served_format(index)
    }
    async fn open_served(&self, index: usize, offset: u64) -> Result<Option<DiskStream>> {
        self.0.open_served(index, offset).await
    }
}

async fn export(source: &dyn ExportSource) -> Result<ExportReport> {
    let mut o = ExportOptions::new(PackageFormat::Ovf).with_verify(true);
    o.checkpoint = false;
    Exporter::new(o)
        .export_source(source, "test", &MemorySink::new())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_encodings_decode_to_the_guest_bytes_and_export_alike() {
    let g = guest();
    let plain = export(&Served::new(None, g.clone())).await.unwrap();
    for (format, bytes) in [
        (ServedFormat::FixedVhd, fixed_vhd(&g)),
        (ServedFormat::GzipRaw, gzip(&g)),
        (ServedFormat::TarGz, tar_gz(&g, true)),
        (ServedFormat::TarGz, tar_gz(&g, false)),
    ] {
        let source = OnlyServed(Served::new(Some(format), bytes));
        hypersdk_testkit::provider::source_suite(&source).await;
        let report = export(&source).await.unwrap();
        assert_eq!(report.manifest, plain.manifest, "{format:?}");
        assert_eq!(
            report.disks[0].populated, plain.disks[0].populated,
            "{format:?}"
        );
    }
}

/// `data` as Compute Engine's image export writes it: `disk.raw` in a
/// gzipped GNU tar, sparse (`-S`) or not; written with holes, as a disk
/// file is.
fn tar_gz(data: &[u8], sparse: bool) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("disk.raw")).unwrap();
    for (i, chunk) in data.chunks(4096).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.seek(SeekFrom::Start((i * 4096) as u64)).unwrap();
            f.write_all(chunk).unwrap();
        }
    }
    f.set_len(data.len() as u64).unwrap();
    drop(f);
    let out = dir.path().join("disk.tar.gz");
    let flags = if sparse { "-Sczf" } else { "-czf" };
    let st = std::process::Command::new("tar")
        .arg(flags)
        .arg(&out)
        .arg("-C")
        .arg(dir.path())
        .arg("disk.raw")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

async fn first_error(source: &dyn ExportSource) -> String {
    let mut s = source.open_disk(0, 0).await.unwrap();
    while let Some(item) = s.next().await {
        if let Err(e) = item {
            assert_eq!(e.code(), "disk_read", "{e}");
            return error::chain(&e);
        }
    }
    panic!("a malformed encoding decoded without an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_encodings_fail_naming_the_disk() {
    let g = guest();
    let tgz = tar_gz(&g, true);
    // The gzip trailer's CRC-32 of the inflated bytes, damaged.
    let mut bad_crc = tgz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 1;
    let tar_gz_cut = gzip(&gunzip(&tgz)[..(1 << 20) + 1000]);
    let vhd = fixed_vhd(&g);
    let mut bad_sum = vhd.clone();
    let n = bad_sum.len();
    bad_sum[n - 512 + 70] ^= 1; // inside the footer, outside its checksum field
    let mut short_gz = gzip(&g);
    short_gz.truncate(short_gz.len() / 2);
    let long_gz = gzip(&[g.as_slice(), b"more"].concat());
    for (format, bytes, says) in [
        (
            ServedFormat::FixedVhd,
            vhd[..vhd.len() - 100].to_vec(),
            "short of",
        ),
        (
            ServedFormat::FixedVhd,
            [vhd.as_slice(), &[0u8; 512]].concat(),
            "longer than",
        ),
        (ServedFormat::FixedVhd, bad_sum, "checksum"),
        (ServedFormat::FixedVhd, fixed_vhd(&g[..2 << 20]), "short of"),
        (ServedFormat::GzipRaw, short_gz, "gzip"),
        (ServedFormat::GzipRaw, long_gz, "the disk has 3145728"),
        (ServedFormat::GzipRaw, g.clone(), "gzip"),
        (
            ServedFormat::TarGz,
            tar_gz(&g[..2 << 20], true),
            "the disk has 3145728",
        ),
        (ServedFormat::TarGz, gzip(&g), "holds no disk"),
        (ServedFormat::TarGz, bad_crc, "ends badly"),
        (ServedFormat::TarGz, tar_gz_cut, "broke off"),
        (
            ServedFormat::TarGz,
            gzip(&[gunzip(&tar_gz(&g, true)), vec![0; 2 << 20]].concat()),
            "more than its disk",
        ),
    ] {
        let e = first_error(&OnlyServed(Served::new(Some(format), bytes))).await;
        assert!(e.contains("disk0") && e.contains(says), "{format:?}: {e}");
    }
}
