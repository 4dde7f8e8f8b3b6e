//! The verify pass: every stored file read back, unwrapped and digested
//! again before the export is published.

use super::*;

/// Where the verify pass reads stored files: the staging area, or — for a
/// sink that serves objects only once published — the published artifact.
pub(super) enum ReadBack<'a> {
    /// Before the commit.
    Staged(&'a dyn Staging),
    /// After it: the sink and the artifact's directory (None for a file
    /// artifact, whose objects sit at the top).
    Published(&'a dyn Sink, Option<&'a str>),
}

impl ReadBack<'_> {
    async fn open(&self, name: &str) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
        match self {
            ReadBack::Staged(s) => s.open(name, 0).await,
            ReadBack::Published(sink, Some(dir)) => sink.read(&format!("{dir}/{name}")).await,
            ReadBack::Published(sink, None) => sink.read(name).await,
        }
    }
}

impl Exporter {
    /// Reads every stored file back, unwraps it and checks its digest. An
    /// OVA written in place is read back whole: each member is checked
    /// against its digest, and the archive's own digest is reported.
    pub(super) async fn verify(
        &self,
        staging: ReadBack<'_>,
        base: &str,
        report: &mut ExportReport,
    ) -> Result<()> {
        if report.format == PackageFormat::Ova && report.ova.is_none() {
            let ova = self
                .verify_archive(&staging, &format!("{base}.ova"), report)
                .await?;
            report.ova = Some(ova);
            return Ok(());
        }
        let files: Vec<&FileReport> = match &report.ova {
            Some(ova) => vec![ova],
            None => report.files.iter().collect(),
        };
        let total: u64 = files.iter().map(|f| f.stored_size).sum();
        let mut done: u64 = 0;
        let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
        for f in files {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let reader = staging.open(&f.stored_name).await?;
            let algorithm = self.options.digest;
            let key = self.options.encryption.clone();
            let compressed = self.options.compression.is_some();
            let stored_name = f.stored_name.clone();
            let (size, digest) = tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
                let bad = |detail: String| Error::Integrity {
                    file: stored_name.clone(),
                    detail,
                };
                let raw = tokio_util::io::SyncIoBridge::new(reader);
                let plain: Box<dyn std::io::Read + Send> = match &key {
                    Some(k) => {
                        Box::new(DecryptReader::new(raw, k).map_err(|e| bad(e.to_string()))?)
                    }
                    None => Box::new(raw),
                };
                // The layers are known here: undo exactly those, no guessing.
                let mut plain = if compressed {
                    decompress_reader(plain).map_err(|e| bad(e.to_string()))?
                } else {
                    plain
                };
                let mut hasher = Hasher::new(algorithm);
                let n = std::io::copy(&mut plain, &mut hasher).map_err(|e| bad(e.to_string()))?;
                Ok((n, hasher.finish_hex()))
            })
            .await
            .map_err(|e| Error::Internal(format!("verify thread failed: {e}")))??;
            if size != f.size || digest != f.digest {
                return Err(Error::Integrity {
                    file: f.stored_name.clone(),
                    detail: format!(
                        "read back {size} bytes with {} {digest}, wrote {} bytes with {}",
                        report.digest_algorithm, f.size, f.digest
                    ),
                });
            }
            done += f.stored_size;
            self.emit(tracker.event(Phase::Verify, 0, &f.stored_name, done, total, false));
        }
        Ok(())
    }

    /// Reads OVA `name` back: walks its tar members, checks each against
    /// the file written for it (name, size, digest, in order), and digests
    /// the whole archive.
    async fn verify_archive(
        &self,
        staging: &ReadBack<'_>,
        name: &str,
        report: &ExportReport,
    ) -> Result<FileReport> {
        let reader = staging.open(name).await?;
        let algorithm = self.options.digest;
        let expected: Vec<(String, u64, String)> = report
            .files
            .iter()
            .map(|f| (f.name.clone(), f.size, f.digest.clone()))
            .collect();
        let total = report.size;
        let progress = self.progress.clone();
        let cancel = self.cancel.clone();
        let stored = name.to_string();
        let (size, digest) = tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
            let bad = |detail: String| Error::Integrity {
                file: stored.clone(),
                detail,
            };
            let mut r = WholeDigest {
                inner: tokio_util::io::SyncIoBridge::new(reader),
                hasher: Hasher::new(algorithm),
                read: 0,
            };
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            let mut block = [0u8; 512];
            let mut buf = vec![0u8; 1 << 20];
            for (want_name, want_size, want_digest) in &expected {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                std::io::Read::read_exact(&mut r, &mut block)
                    .map_err(|e| bad(format!("reading the header of {want_name}: {e}")))?;
                let (got_name, got_size) =
                    hypersdk_formats::ova::parse_member_header(&block, r.read - 512).map_err(|e| {
                        bad(format!("no sound tar header where {want_name} belongs: {e}"))
                    })?;
                if &got_name != want_name || got_size != *want_size {
                    return Err(bad(format!(
                        "member {got_name} of {got_size} bytes where {want_name} of {want_size} belongs"
                    )));
                }
                let mut h = Hasher::new(algorithm);
                let mut left = got_size + tar_padding(got_size) as u64;
                let mut data_left = got_size;
                while left > 0 {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    std::io::Read::read_exact(&mut r, &mut buf[..n])
                        .map_err(|e| bad(format!("reading {want_name}: {e}")))?;
                    let data = n.min(usize::try_from(data_left).unwrap_or(usize::MAX));
                    h.update(&buf[..data]);
                    data_left -= data as u64;
                    left -= n as u64;
                    if let (Some(f), Some(e)) = (
                        &progress,
                        tracker.event(Phase::Verify, 0, &stored, r.read, total, false),
                    ) {
                        f(&e);
                    }
                }
                let got = h.finish_hex();
                if &got != want_digest {
                    return Err(bad(format!(
                        "member {want_name} reads back with digest {got}, was written with {want_digest}"
                    )));
                }
            }
            std::io::Read::read_exact(&mut r, &mut block)
                .map_err(|e| bad(format!("reading the end of the archive: {e}")))?;
            if block.iter().any(|&b| b != 0) {
                return Err(bad("a member no file was written for".into()));
            }
            std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| bad(e.to_string()))?;
            let read = r.read;
            Ok((read, r.hasher.finish_hex()))
        })
        .await
        .map_err(|e| Error::Internal(format!("verify thread failed: {e}")))??;
        if size != report.size {
            return Err(Error::Integrity {
                file: name.to_string(),
                detail: format!("read back {size} bytes, wrote {}", report.size),
            });
        }
        Ok(FileReport {
            name: name.to_string(),
            size,
            digest,
            stored_name: name.to_string(),
            stored_size: size,
        })
    }
}

/// A reader that digests everything read through it.
struct WholeDigest<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for WholeDigest<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}
