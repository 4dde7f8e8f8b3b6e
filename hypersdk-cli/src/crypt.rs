//! `hyperctl encrypt` and `hyperctl decrypt`: files in the hypersdk
//! encrypted format (AES-256-GCM STREAM; see hypersdk_core::transforms::encrypt).

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use hypersdk_core::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// File holding the 32-byte key (raw, 64 hex digits or base64).
    #[arg(
        long,
        conflicts_with = "passphrase_file",
        required_unless_present = "passphrase_file"
    )]
    key_file: Option<PathBuf>,
    /// File whose first line is the passphrase (stretched with argon2id).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    fn source(&self) -> anyhow::Result<KeySource> {
        Ok(match (&self.key_file, &self.passphrase_file) {
            (Some(k), _) => KeySource::from_key_file(k)?,
            (None, Some(p)) => KeySource::from_passphrase_file(p)?,
            (None, None) => bail!("give --key-file or --passphrase-file"),
        })
    }
}

#[derive(Args, Debug)]
pub struct CryptArgs {
    /// Input file.
    input: PathBuf,
    /// Output file; written under a temporary name and renamed when complete.
    output: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
}

/// Runs `f(input, partial output)` and publishes the output only if it succeeds.
fn with_output(
    args: &CryptArgs,
    f: impl FnOnce(std::fs::File, std::fs::File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} already exists (pass --overwrite to replace it)",
            args.output.display()
        );
    }
    let name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = args
        .output
        .with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let input = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let out = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let result = f(input, out).and_then(|_| {
        std::fs::rename(&partial, &args.output)
            .with_context(|| format!("cannot publish {}", args.output.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn sync(f: &std::fs::File, p: &Path) -> anyhow::Result<()> {
    f.sync_all()
        .with_context(|| format!("cannot sync {}", p.display()))
}

pub async fn encrypt(args: CryptArgs) -> anyhow::Result<()> {
    let source = args.key.source()?;
    tokio::task::spawn_blocking(move || {
        with_output(&args, |input, out| {
            let mut w = EncryptWriter::new(BufWriter::with_capacity(1 << 20, out), &source)?;
            std::io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut w)
                .with_context(|| format!("cannot encrypt {}", args.input.display()))?;
            let buf = w.finish()?;
            let file = buf
                .into_inner()
                .map_err(|e| e.into_error())
                .context("cannot write the output")?;
            sync(&file, &args.output)
        })?;
        println!(
            "encrypted {} to {}",
            args.input.display(),
            args.output.display()
        );
        Ok(())
    })
    .await
    .context("encryption task failed")?
}

pub async fn decrypt(args: CryptArgs) -> anyhow::Result<()> {
    let source = args.key.source()?;
    tokio::task::spawn_blocking(move || {
        with_output(&args, |input, out| {
            let mut r = DecryptReader::new(BufReader::with_capacity(1 << 20, input), &source)
                .with_context(|| format!("cannot decrypt {}", args.input.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, out);
            std::io::copy(&mut r, &mut w)
                .with_context(|| format!("cannot decrypt {}", args.input.display()))?;
            w.flush().context("cannot write the output")?;
            let file = w
                .into_inner()
                .map_err(|e| e.into_error())
                .context("cannot write the output")?;
            sync(&file, &args.output)
        })?;
        println!(
            "decrypted {} to {}",
            args.input.display(),
            args.output.display()
        );
        Ok(())
    })
    .await
    .context("decryption task failed")?
}
