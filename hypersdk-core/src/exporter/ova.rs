//! OVA assembly: the descriptor, the manifest and the spooled disks, in
//! the order the OVF specification sets, through the transforms.

use super::*;

impl Exporter {
    /// Assembles the OVA from the descriptor, the manifest and the spooled
    /// disks, through the transforms.
    pub(super) async fn write_ova(
        &self,
        staging: &mut dyn Staging,
        base: &str,
        ovf: (&FileReport, &[u8]),
        mf: (&FileReport, &[u8]),
        disks: &[DiskOutcome],
    ) -> Result<FileReport> {
        let ova_name = format!("{base}.ova");
        // A fixed member time: the same VM exported twice gives the same bytes.
        let mtime = 0;
        let fmt_err = |source| Error::Format {
            what: format!("cannot write OVA {ova_name}"),
            source,
        };
        let (mut out, object) = self.open_object(staging, &ova_name, true).await?;
        let total: u64 = disks.iter().map(|d| d.file.size).sum();
        let chunk = self.options.chunk_size.max(64 * 1024);
        let feed = async {
            let io = |e: std::io::Error| Error::sink("cannot write", ova_name.as_str(), e);
            for (file, bytes) in [ovf, mf] {
                out.write(&tar_header(&file.name, file.size, mtime).map_err(fmt_err)?)
                    .await
                    .map_err(io)?;
                out.write(bytes).await.map_err(io)?;
                out.write(&[0u8; 512][..tar_padding(file.size)])
                    .await
                    .map_err(io)?;
            }
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            let mut copied_all: u64 = 0;
            for d in disks {
                out.write(&tar_header(&d.file.name, d.file.size, mtime).map_err(fmt_err)?)
                    .await
                    .map_err(io)?;
                let mut spool = staging.open(&d.file.stored_name).await?;
                let mut copied: u64 = 0;
                loop {
                    if self.cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    let mut buf = Vec::with_capacity(chunk);
                    let n = (&mut spool)
                        .take(chunk as u64)
                        .read_to_end(&mut buf)
                        .await
                        .map_err(|e| {
                            Error::sink("cannot read back spooled disk", &d.file.stored_name, e)
                        })?;
                    if n == 0 {
                        break;
                    }
                    copied += n as u64;
                    out.write_owned(buf).await.map_err(io)?;
                    copied_all += n as u64;
                    self.emit(tracker.event(
                        Phase::Packaging,
                        0,
                        &ova_name,
                        copied_all,
                        total,
                        false,
                    ));
                }
                if copied != d.file.size {
                    return Err(Error::sink(
                        "spooled disk changed size",
                        &d.file.stored_name,
                        std::io::Error::other(format!(
                            "expected {} bytes, read {copied}",
                            d.file.size
                        )),
                    ));
                }
                out.write(&[0u8; 512][..tar_padding(d.file.size)])
                    .await
                    .map_err(io)?;
            }
            out.write(&END_OF_ARCHIVE).await.map_err(io)?;
            out.close().await.map_err(io)
        };
        let (fed, drained) = tokio::join!(feed, object.drain());
        let report = first_cause(fed, drained).map(|((), report)| report)?;
        // The spools go once the OVA is whole: an interrupted assembly is
        // redone from them.
        for d in disks {
            staging.remove(&d.file.stored_name).await?;
        }
        Ok(report)
    }
}
