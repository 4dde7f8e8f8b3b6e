//! The verify pass: every stored file read back, unwrapped and digested
//! again before the export is published.

use super::*;

impl Exporter {
    /// Reads every stored file back, unwraps it and checks its digest.
    pub(super) async fn verify(&self, staging: &dyn Staging, report: &ExportReport) -> Result<()> {
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
}
