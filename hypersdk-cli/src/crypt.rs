//! `hyperctl encrypt` and `hyperctl decrypt`: files in the hypersdk
//! encrypted format (AES-256-GCM STREAM; see hypersdk_core::transforms::encrypt);
//! `hyperctl unwrap`: undo an export's `--compress`/`--encrypt-*` wrapping.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;

use hypersdk_core::files;
use hypersdk_core::transforms::encrypt::KeySource;

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
    pub(crate) fn source(&self) -> anyhow::Result<KeySource> {
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

#[derive(Args, Debug)]
pub struct UnwrapArgs {
    /// A file made by `hyperctl export --compress/--encrypt-*` (.zst, .gz,
    /// .enc, .zst.enc, …), or an OVF directory of such files.
    input: PathBuf,
    /// Output file (for a file) or directory (for a directory: each file is
    /// written there without its .zst/.gz/.enc suffixes).
    output: PathBuf,
    /// Key file, if the input is encrypted with a key.
    #[arg(long, conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
    /// Passphrase file, if the input is encrypted with a passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    overwrite: bool,
}

pub async fn encrypt(args: CryptArgs) -> anyhow::Result<()> {
    let source = args.key.source()?;
    tokio::task::spawn_blocking(move || {
        files::encrypt_file(&args.input, &args.output, &source, args.overwrite)?;
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
        files::decrypt_file(&args.input, &args.output, &source, args.overwrite)?;
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

pub async fn unwrap(args: UnwrapArgs) -> anyhow::Result<()> {
    let key = files::optional_key(args.key_file.as_deref(), args.passphrase_file.as_deref())?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if args.input.is_dir() {
            std::fs::create_dir_all(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?;
            let mut entries: Vec<_> = std::fs::read_dir(&args.input)
                .with_context(|| format!("cannot list {}", args.input.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                if !e.file_type()?.is_file() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let out = args.output.join(files::unwrapped_name(&name));
                let n = files::unwrap_file(&e.path(), &out, key.as_ref(), args.overwrite)?;
                println!("{} -> {} ({n} bytes)", e.path().display(), out.display());
            }
        } else {
            let n = files::unwrap_file(&args.input, &args.output, key.as_ref(), args.overwrite)?;
            println!(
                "{} -> {} ({n} bytes)",
                args.input.display(),
                args.output.display()
            );
        }
        Ok(())
    })
    .await
    .context("unwrap task failed")?
}
