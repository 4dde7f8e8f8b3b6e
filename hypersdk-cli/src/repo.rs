//! `hyperctl repo …`: the deduplicating, encrypted backup repository
//! (hypersdk-repo).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};

use hypersdk_core::transforms::encrypt::KeySource;
use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
use hypersdk_formats::convert::TargetFormat;
use hypersdk_repo::{Backend, BackupOptions, LocalDir, Repository, Retention, SinkBackend, Snapshot};

use crate::provider::ProviderArgs;
use crate::StoreArgs;

#[derive(Args, Debug)]
pub struct RepoArgs {
    #[command(subcommand)]
    command: RepoCommand,
}

/// Where the repository is and how to open it.
#[derive(Args, Debug)]
struct RepoAt {
    /// The repository: a local directory, or s3://bucket/prefix/,
    /// az://container/prefix/, gs://bucket/prefix/, sftp://… as for
    /// `export --output`.
    #[arg(long, env = "HYPERSDK_REPO")]
    repo: String,
    /// File holding the repository's 32-byte key (raw, 64 hex digits or base64).
    #[arg(long, conflicts_with = "passphrase_file", env = "HYPERSDK_REPO_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// File whose first line is the repository's passphrase.
    #[arg(long, env = "HYPERSDK_REPO_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

impl RepoAt {
    fn backend(&self) -> anyhow::Result<Arc<dyn Backend>> {
        Ok(if self.repo.contains("://") {
            let sink = hypersdk::open_output(&self.repo, &self.store.options())?;
            Arc::new(SinkBackend::new(Arc::from(sink)))
        } else {
            Arc::new(LocalDir::new(&self.repo))
        })
    }

    fn key(&self) -> anyhow::Result<Option<KeySource>> {
        Ok(hypersdk_core::files::optional_key(
            self.key_file.as_deref(),
            self.passphrase_file.as_deref(),
        )?)
    }

    async fn open(&self) -> anyhow::Result<Repository> {
        Ok(Repository::open(self.backend()?, self.key()?.as_ref()).await?)
    }
}

#[derive(Subcommand, Debug)]
enum RepoCommand {
    /// Create a repository (encrypted under --key-file or --passphrase-file).
    Init {
        #[command(flatten)]
        at: RepoAt,
        /// Create it without encryption (chunks are still checksummed).
        #[arg(long)]
        no_encryption: bool,
        /// Chunk size in MiB: a power of two from 1 to 64.
        #[arg(long, default_value_t = 4)]
        chunk_mib: u32,
    },
    /// Back a VM up: incremental to its latest snapshot where the platform
    /// tracks changes, deduplicated always.
    Backup(Box<BackupArgs>),
    /// List snapshots, oldest first.
    List {
        #[command(flatten)]
        at: RepoAt,
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot: its disks as raw/qcow2/VMDK files, or the VM as
    /// an OVA/OVF package.
    Restore(RestoreArgs),
    /// Re-read every chunk of every snapshot and check it; non-zero exit on any damage.
    Verify {
        #[command(flatten)]
        at: RepoAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots a retention policy does not keep (per VM).
    Prune(PruneArgs),
    /// Remove snapshots by id (their chunks are freed by gc).
    Forget {
        #[command(flatten)]
        at: RepoAt,
        /// Snapshot ids (or unique prefixes).
        #[arg(required = true)]
        snapshots: Vec<String>,
    },
    /// Delete chunks and indexes no snapshot references (takes the
    /// repository alone; fails while a backup runs).
    Gc {
        #[command(flatten)]
        at: RepoAt,
    },
    /// Remove locks of operations that are gone (refreshed over 30 minutes
    /// ago, or of a dead process of this host).
    Unlock {
        #[command(flatten)]
        at: RepoAt,
        /// Remove every lock, live or not (only when nothing else runs).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
struct BackupArgs {
    /// VM name, UUID or (local) domain XML path.
    vm: String,
    #[command(flatten)]
    at: RepoAt,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Read every allocated byte even where change tracking could be used.
    #[arg(long)]
    full: bool,
    /// Start the platform's change tracking (qcow2 bitmaps, vSphere CBT) so
    /// the next backup reads only what changed; continued once started.
    #[arg(long)]
    track_changes: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Print the snapshot as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RestoreFormat {
    Raw,
    Qcow2,
    Vmdk,
    Ova,
    Ovf,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// Snapshot id (or a unique prefix), or `latest`.
    snapshot: String,
    #[command(flatten)]
    at: RepoAt,
    /// With `latest`: the VM whose latest snapshot.
    #[arg(long)]
    vm: Option<String>,
    /// What to write.
    #[arg(long, value_enum, default_value = "qcow2")]
    format: RestoreFormat,
    /// raw/qcow2/vmdk: only this disk, written to the file --output;
    /// without it every disk is written into the directory --output as
    /// <disk>.<format>.
    #[arg(long)]
    disk: Option<String>,
    /// Output file or directory (ova/ovf: a directory or sink URL, as for export).
    #[arg(long, short)]
    output: String,
    /// Replace existing output.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args, Debug)]
struct PruneArgs {
    #[command(flatten)]
    at: RepoAt,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0)]
    keep_last: usize,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, default_value_t = 0)]
    keep_daily: usize,
    /// … of the last N ISO weeks.
    #[arg(long, default_value_t = 0)]
    keep_weekly: usize,
    /// … of the last N months.
    #[arg(long, default_value_t = 0)]
    keep_monthly: usize,
    /// … of the last N years.
    #[arg(long, default_value_t = 0)]
    keep_yearly: usize,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Collect garbage afterwards (frees the chunks).
    #[arg(long)]
    gc: bool,
}

fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_snapshot_line(s: &Snapshot) {
    let read: u64 = s.disks.iter().map(|d| d.bytes_read).sum();
    let added: u64 = s.disks.iter().map(|d| d.new_bytes).sum();
    let cap: u64 = s.disks.iter().map(|d| d.capacity).sum();
    let mode = if s.disks.iter().all(|d| d.mode == "incremental") && !s.disks.is_empty() {
        "incremental"
    } else {
        "full"
    };
    println!(
        "{:<10} {:<25} {:<20} {:>3} {:>10} {:>11} {:>10} {:<11} {}",
        s.short_id(),
        s.time,
        s.vm,
        s.disks.len(),
        size(cap),
        size(read),
        size(added),
        mode,
        s.tags.join(",")
    );
}

pub async fn run(args: RepoArgs) -> anyhow::Result<()> {
    match args.command {
        RepoCommand::Init {
            at,
            no_encryption,
            chunk_mib,
        } => {
            let key = at.key()?;
            if key.is_none() && !no_encryption {
                bail!("give --key-file or --passphrase-file to encrypt the repository, or --no-encryption");
            }
            if key.is_some() && no_encryption {
                bail!("--no-encryption with a key: give one or the other");
            }
            let repo = Repository::init(at.backend()?, key.as_ref(), Some(chunk_mib.saturating_mul(1 << 20))).await?;
            let c = repo.config();
            println!(
                "created repository {} at {} ({} encryption, {} MiB chunks)",
                &c.id[..8],
                repo.describe(),
                c.encryption,
                c.chunk_size >> 20
            );
            Ok(())
        }
        RepoCommand::Backup(args) => {
            let repo = args.at.open().await?;
            let provider = args.provider.connect().await?;
            let options = BackupOptions {
                full: args.full,
                track_changes: args.track_changes,
                tags: args.tags.clone(),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let r = repo.backup(provider.as_ref(), &args.vm, &options).await;
            crate::provider::close(provider).await;
            let snap = r.with_context(|| format!("backup of VM '{}' into {}", args.vm, repo.describe()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
                return Ok(());
            }
            let secs = started.elapsed().as_secs_f64();
            println!("snapshot {} of VM '{}' saved in {secs:.1} s", snap.id, snap.vm);
            for d in &snap.disks {
                println!(
                    "  {}: {} ({}), read {}, {} new chunks ({} stored)",
                    d.name,
                    size(d.capacity),
                    d.mode,
                    size(d.bytes_read),
                    d.new_chunks,
                    size(d.new_bytes)
                );
            }
            Ok(())
        }
        RepoCommand::List { at, vm, json } => {
            let repo = at.open().await?;
            let snaps: Vec<Snapshot> = repo
                .snapshots()
                .await?
                .into_iter()
                .filter(|s| vm.as_deref().is_none_or(|v| s.vm == v))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
                return Ok(());
            }
            println!(
                "{:<10} {:<25} {:<20} {:>3} {:>10} {:>11} {:>10} {:<11} TAGS",
                "ID", "TIME", "VM", "DSK", "SIZE", "READ", "ADDED", "MODE"
            );
            for s in &snaps {
                print_snapshot_line(s);
            }
            Ok(())
        }
        RepoCommand::Restore(args) => restore(args).await,
        RepoCommand::Verify { at, json } => {
            let repo = at.open().await?;
            let report = repo.verify().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "checked {} snapshots, {} chunks ({})",
                    report.snapshots,
                    report.chunks,
                    size(report.bytes)
                );
                for (object, what) in &report.errors {
                    println!("  damaged: {object}: {what}");
                }
                if !report.damaged_snapshots.is_empty() {
                    println!("  snapshots affected: {}", report.damaged_snapshots.join(" "));
                }
            }
            if !report.errors.is_empty() {
                bail!(
                    "repository {} is damaged: {} objects fail their checks",
                    repo.describe(),
                    report.errors.len()
                );
            }
            Ok(())
        }
        RepoCommand::Prune(args) => {
            let repo = args.at.open().await?;
            let policy = Retention {
                last: args.keep_last,
                daily: args.keep_daily,
                weekly: args.keep_weekly,
                monthly: args.keep_monthly,
                yearly: args.keep_yearly,
            };
            let report = repo.prune(&policy, args.vm.as_deref(), args.dry_run).await?;
            let verb = if args.dry_run { "would remove" } else { "removed" };
            println!("kept {} snapshots, {verb} {}", report.kept.len(), report.removed.len());
            for id in &report.removed {
                println!("  {verb} {id}");
            }
            if args.gc && !args.dry_run {
                let gc = repo.gc().await?;
                println!(
                    "freed {} in {} chunks and {} indexes; {} chunks in use",
                    size(gc.bytes_freed),
                    gc.chunks_deleted,
                    gc.indexes_deleted,
                    gc.chunks_kept
                );
            }
            Ok(())
        }
        RepoCommand::Forget { at, snapshots } => {
            let repo = at.open().await?;
            for r in &snapshots {
                let s = repo.find_snapshot(r, None).await?;
                repo.forget(&s.id).await?;
                println!("removed snapshot {} of VM '{}' ({})", s.id, s.vm, s.time);
            }
            Ok(())
        }
        RepoCommand::Gc { at } => {
            let repo = at.open().await?;
            let gc = repo.gc().await?;
            println!(
                "freed {} in {} chunks and {} indexes; {} chunks in use",
                size(gc.bytes_freed),
                gc.chunks_deleted,
                gc.indexes_deleted,
                gc.chunks_kept
            );
            Ok(())
        }
        RepoCommand::Unlock { at, all } => {
            let backend = at.backend()?;
            let n = hypersdk_repo::lock::unlock(backend.as_ref(), all).await?;
            println!("removed {n} locks");
            Ok(())
        }
    }
}

fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("disk{s}")
    } else {
        s
    }
}

async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let repo = args.at.open().await?;
    let snap = repo.find_snapshot(&args.snapshot, args.vm.as_deref()).await?;
    let lock = hypersdk_repo::lock::Lock::acquire(repo.backend().clone(), false, "restore").await?;
    let r = restore_locked(&repo, &snap, &args).await;
    let released = lock.release().await;
    r?;
    released?;
    Ok(())
}

async fn restore_locked(repo: &Repository, snap: &Snapshot, args: &RestoreArgs) -> anyhow::Result<()> {
    let (to, ext) = match args.format {
        RestoreFormat::Raw => (TargetFormat::Raw, "raw"),
        RestoreFormat::Qcow2 => (TargetFormat::Qcow2, "qcow2"),
        RestoreFormat::Vmdk => (TargetFormat::VmdkStreamOptimized, "vmdk"),
        RestoreFormat::Ova | RestoreFormat::Ovf => {
            if args.disk.is_some() {
                bail!("--disk is for raw, qcow2 and vmdk restores; a package holds every disk");
            }
            let source = repo.snapshot_source(snap).await?;
            let sink = hypersdk::open_output(&args.output, &hypersdk::OutputOptions::default())?;
            let mut options = ExportOptions::default();
            options.format = if matches!(args.format, RestoreFormat::Ova) {
                PackageFormat::Ova
            } else {
                PackageFormat::Ovf
            };
            options.overwrite = args.overwrite;
            let report = Exporter::new(options)
                .export_source(&source, "repository", sink.as_ref())
                .await
                .with_context(|| format!("restoring snapshot {} as a package", snap.id))?;
            println!(
                "restored snapshot {} of VM '{}' to {}",
                snap.short_id(),
                snap.vm,
                report.location
            );
            return Ok(());
        }
    };
    let picked: Vec<usize> = match &args.disk {
        Some(name) => vec![snap
            .disks
            .iter()
            .position(|d| &d.name == name)
            .with_context(|| {
                format!(
                    "snapshot {} has no disk '{name}' (its disks: {})",
                    snap.short_id(),
                    snap.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?],
        None => (0..snap.disks.len()).collect(),
    };
    let out = PathBuf::from(&args.output);
    if args.disk.is_none() {
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create directory {}", out.display()))?;
    }
    for i in picked {
        let d = &snap.disks[i];
        let path = if args.disk.is_some() {
            out.clone()
        } else {
            out.join(format!("{}.{ext}", file_safe(&d.name)))
        };
        let started = std::time::Instant::now();
        let stats = repo.restore_disk(snap, i, to, &path, args.overwrite).await?;
        println!(
            "restored disk {} ({}) to {} in {:.1} s",
            d.name,
            size(d.capacity),
            path.display(),
            started.elapsed().as_secs_f64()
        );
        let _ = stats;
    }
    Ok(())
}
