//! `hyperctl encrypt` and `hyperctl decrypt`: files in the hypersdk
//! encrypted format (AES-256-GCM STREAM; see hypersdk_core::transforms::encrypt);
//! `hyperctl unwrap`: undo an export's `--compress`/`--encrypt-*` wrapping.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use hypersdk_core::transforms::encrypt::{DecryptReader, EncryptWriter, KeySource};
use hypersdk_core::transforms::unwrap::unwrap_reader;
use hypersdk_core::Error;

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

/// Runs `f(input, partial output)` and publishes the output only if it succeeds.
fn with_output(
    args: &CryptArgs,
    f: impl FnOnce(std::fs::File, std::fs::File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    publish(&args.input, &args.output, args.overwrite, f)
}

/// Runs `f(input, partial output)` and renames the output into place only if
/// it succeeds; a failure leaves nothing behind.
fn publish(
    input_path: &Path,
    output: &Path,
    overwrite: bool,
    f: impl FnOnce(std::fs::File, std::fs::File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if output.exists() && !overwrite {
        bail!(
            "{} already exists (pass --overwrite to replace it)",
            output.display()
        );
    }
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = output.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let input = std::fs::File::open(input_path)
        .with_context(|| format!("cannot open {}", input_path.display()))?;
    let out = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let result = f(input, out).and_then(|_| {
        std::fs::rename(&partial, output)
            .with_context(|| format!("cannot publish {}", output.display()))
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

/// Strips the wrapping suffixes (.enc, .zst, .gz) from a file name.
fn unwrapped_name(name: &str) -> &str {
    let mut n = name;
    loop {
        match [".enc", ".zst", ".gz"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
        {
            Some(rest) if !rest.is_empty() => n = rest,
            _ => return n,
        }
    }
}

/// Decrypts (if encrypted) and decompresses (if compressed) `input` into
/// `out`; returns the plain size.
fn unwrap_one(
    input: &Path,
    output: &Path,
    key: Option<&KeySource>,
    overwrite: bool,
) -> anyhow::Result<u64> {
    let mut size = 0;
    publish(input, output, overwrite, |file, out| {
        let mut plain = open_unwrapped(file, key, input)?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        size = std::io::copy(&mut plain, &mut w)
            .with_context(|| format!("cannot unwrap {}", input.display()))?;
        w.flush().context("cannot write the output")?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .context("cannot write the output")?;
        sync(&file, output)
    })?;
    Ok(size)
}

/// The key from an optional `--key-file` / `--passphrase-file` pair.
pub fn optional_key(
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> anyhow::Result<Option<KeySource>> {
    Ok(match (key_file, passphrase_file) {
        (Some(k), _) => Some(KeySource::from_key_file(k)?),
        (None, Some(p)) => Some(KeySource::from_passphrase_file(p)?),
        (None, None) => None,
    })
}

/// The plain bytes of a wrapped file (decrypted if encrypted, decompressed
/// if compressed); an encrypted file without a key is one clear error.
pub fn open_unwrapped(
    file: std::fs::File,
    key: Option<&KeySource>,
    path: &Path,
) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
    unwrap_reader(BufReader::with_capacity(1 << 20, file), key).map_err(|e| match e {
        Error::Crypto(m) if key.is_none() => anyhow::anyhow!(
            "{} is encrypted: give --key-file or --passphrase-file ({m})",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("cannot unwrap {}", path.display())),
    })
}

pub async fn unwrap(args: UnwrapArgs) -> anyhow::Result<()> {
    let key = optional_key(args.key_file.as_deref(), args.passphrase_file.as_deref())?;
    tokio::task::spawn_blocking(move || {
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
                let out = args.output.join(unwrapped_name(&name));
                let n = unwrap_one(&e.path(), &out, key.as_ref(), args.overwrite)?;
                println!("{} -> {} ({n} bytes)", e.path().display(), out.display());
            }
        } else {
            let n = unwrap_one(&args.input, &args.output, key.as_ref(), args.overwrite)?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn strips_wrapping_suffixes() {
        assert_eq!(super::unwrapped_name("vm.ova.zst.enc"), "vm.ova");
        assert_eq!(super::unwrapped_name("vm-disk1.vmdk.gz"), "vm-disk1.vmdk");
        assert_eq!(super::unwrapped_name("vm.mf"), "vm.mf");
        assert_eq!(super::unwrapped_name(".enc"), ".enc");
    }
}
