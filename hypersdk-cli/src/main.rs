//! `hyperctl`: the command-line shell over the hypersdk library.

/// `println!` for this binary: a closed standard output (`hyperctl vms
/// list | head -1`) ends the process quietly, as SIGPIPE ends Unix tools
/// (exit status 141), instead of panicking. Declared before the modules so
/// that it replaces the standard macro in all of them.
macro_rules! println {
    () => {
        $crate::stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

/// Writes one line to standard output; see `println!` above.
pub(crate) fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

mod crypt;
mod image;
mod jobs;
mod progress;
mod provider;
mod repo;
mod settings;
mod vmops;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use hypersdk_core::{
    CancellationToken, Error, ExportReport, Exporter, PowerState, VmInfo, VmQuery, VmSpec,
};
use provider::ProviderArgs;

#[derive(Parser, Debug)]
#[command(
    name = "hyperctl",
    version,
    about = "Export virtual machines to verified OVF/OVA packages"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace or a tracing directive); logs go to stderr.
    #[arg(long, global = true, env = "HYPERSDK_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List, show and search VMs of a provider.
    Vms {
        #[command(subcommand)]
        command: VmsCommand,
    },
    /// Export a VM to an OVA file or an OVF directory.
    Export(Box<ExportArgs>),
    /// Convert a disk image (qcow2, VMDK, raw) to another format.
    Convert(image::ConvertArgs),
    /// Describe a disk image (format, sizes) or a package (VM, files, manifest check).
    Inspect(image::InspectArgs),
    /// Verify an OVA or OVF package against its manifest; non-zero exit on any mismatch.
    Verify(image::VerifyArgs),
    /// Encrypt a file (AES-256-GCM, chunked and authenticated) with a key or passphrase file.
    Encrypt(crypt::CryptArgs),
    /// Decrypt a file made by `hyperctl encrypt`; fails without output on any tampering.
    Decrypt(crypt::CryptArgs),
    /// Undo an export's --compress/--encrypt-* wrapping: decrypt and decompress
    /// a file, or every file of an OVF directory.
    Unwrap(crypt::UnwrapArgs),
    /// Jobs of a hypervisord daemon (--daemon URL): submit, list, show,
    /// watch, cancel, logs.
    Jobs(jobs::JobsArgs),
    /// Schedules of a hypervisord daemon: add, list, runs, enable, disable, trigger, delete.
    Schedules(jobs::SchedulesArgs),
    /// Webhooks of a hypervisord daemon: add, list, deliveries, delete.
    Webhooks(jobs::WebhooksArgs),
    /// Profiles (named export options) of a hypervisord daemon: put, list, show, delete.
    Profiles(jobs::ProfilesArgs),
    /// A deduplicating, encrypted backup repository: init, backup (incremental
    /// with change tracking), list, restore, verify, prune, forget, gc, unlock.
    Repo(repo::RepoArgs),
    /// The provider kinds this build carries (values of --provider).
    Providers,
}

#[derive(Subcommand, Debug)]
enum VmsCommand {
    /// List every VM.
    List {
        #[command(flatten)]
        provider: ProviderArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM's hardware.
    Show {
        /// VM name, UUID or (local) domain XML path.
        vm: String,
        #[command(flatten)]
        provider: ProviderArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search VMs by name glob, power state, guest OS, CPUs and memory.
    Search {
        /// Name glob, e.g. 'web-*' (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Name regular expression, e.g. '^web-[0-9]+$'.
        #[arg(long)]
        regex: Option<String>,
        /// Only VMs in this inventory folder or below (vSphere), e.g. /DC0/vm/Team.
        #[arg(long)]
        folder: Option<String>,
        /// Power state.
        #[arg(long, value_enum)]
        power: Option<Power>,
        /// Substring of the guest OS description.
        #[arg(long)]
        os: Option<String>,
        /// At least this many CPUs.
        #[arg(long)]
        min_cpus: Option<u32>,
        /// At least this much memory, MiB.
        #[arg(long)]
        min_memory: Option<u64>,
        #[command(flatten)]
        provider: ProviderArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots: list, create, revert, remove (vSphere).
    Snapshot {
        #[command(subcommand)]
        command: vmops::SnapshotCommand,
    },
    /// Power a VM off, hard (vSphere).
    PowerOff {
        /// VM name or id.
        vm: String,
        #[command(flatten)]
        provider: ProviderArgs,
    },
    /// Ask the guest OS to shut down and wait until the VM is off (vSphere).
    Shutdown {
        /// VM name or id.
        vm: String,
        /// Seconds to wait for the VM to power off.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        provider: ProviderArgs,
    },
    /// Empty a VM's CD-ROM drives, so the export does not reference media that stays behind (vSphere).
    EjectCdrom {
        /// VM name or id.
        vm: String,
        #[command(flatten)]
        provider: ProviderArgs,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Power {
    On,
    Off,
    Suspended,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// VM name, UUID or (local) domain XML path.
    vm: String,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Where the export is written: a local directory (created if
    /// missing), s3://bucket/prefix/ (credentials from AWS_* variables,
    /// ~/.aws profiles or the instance role), or az://container/prefix/
    /// (AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT with
    /// AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, a managed identity).
    #[arg(long, short)]
    output: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    options: settings::ExportFlags,
    /// Print the export report as JSON on stdout (progress on stderr
    /// only with --progress).
    #[arg(long)]
    json: bool,
    /// Also write the report to FILE: JSON when it ends in .json, else a
    /// self-contained HTML page (disks, digests, timings, throughput charts).
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    /// No progress and no summary: only errors (and --json's report).
    #[arg(long, short)]
    quiet: bool,
    /// Show progress even with --json.
    #[arg(long, conflicts_with = "quiet")]
    progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cancelled = matches!(e.downcast_ref::<Error>(), Some(Error::Cancelled));
            // One line: the whole cause chain joined by ": ".
            eprintln!("error: {e:#}");
            if cancelled {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Vms { command } => vms(command).await,
        Command::Export(args) => export(*args).await,
        Command::Repo(args) => repo::run(args).await,
        Command::Convert(args) => image::convert(args).await,
        Command::Inspect(args) => image::inspect(args).await,
        Command::Verify(args) => image::verify(args).await,
        Command::Encrypt(args) => crypt::encrypt(args).await,
        Command::Decrypt(args) => crypt::decrypt(args).await,
        Command::Unwrap(args) => crypt::unwrap(args).await,
        Command::Jobs(args) => jobs::run(args).await,
        Command::Schedules(args) => jobs::schedules(args).await,
        Command::Webhooks(args) => jobs::webhooks(args).await,
        Command::Profiles(args) => jobs::profiles(args).await,
        Command::Providers => {
            for k in hypersdk::kinds() {
                println!("{:<10} {}", k.kind, k.about);
            }
            Ok(())
        }
    }
}

async fn vms(command: VmsCommand) -> anyhow::Result<()> {
    match command {
        VmsCommand::List { provider, json } => {
            let c = provider.connect().await?;
            let vms = c.list_vms().await.context("cannot list VMs");
            provider::close(c).await;
            print_vms(&vms?, json)
        }
        VmsCommand::Show { vm, provider, json } => {
            let c = provider.connect().await?;
            let spec = c.vm_spec(&vm).await;
            provider::close(c).await;
            let spec = spec?;
            if json {
                println!("{}", serde_json::to_string_pretty(&spec)?);
            } else {
                print_spec(&spec);
            }
            Ok(())
        }
        VmsCommand::Search {
            name,
            regex,
            folder,
            power,
            os,
            min_cpus,
            min_memory,
            provider,
            json,
        } => {
            let query = VmQuery {
                name,
                name_regex: regex,
                folder,
                power_state: power.map(|p| match p {
                    Power::On => PowerState::On,
                    Power::Off => PowerState::Off,
                    Power::Suspended => PowerState::Suspended,
                }),
                guest_os: os,
                min_cpus,
                min_memory_mib: min_memory,
            };
            query.validate()?;
            let c = provider.connect().await?;
            let vms = c.search_vms(&query).await.context("cannot search VMs");
            provider::close(c).await;
            print_vms(&vms?, json)
        }
        VmsCommand::Snapshot { command } => vmops::snapshot(command).await,
        VmsCommand::PowerOff { vm, provider } => vmops::power_off(vm, provider).await,
        VmsCommand::Shutdown {
            vm,
            timeout,
            provider,
        } => vmops::shutdown(vm, timeout, provider).await,
        VmsCommand::EjectCdrom { vm, provider } => vmops::eject_cdrom(vm, provider).await,
    }
}

fn print_vms(vms: &[VmInfo], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(vms)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:>4} {:>9} {:>5} {:>10}  GUEST OS",
        "NAME", "POWER", "CPUS", "MEMORY", "DISKS", "CAPACITY"
    );
    for vm in vms {
        println!(
            "{:<24} {:<8} {:>4} {:>6}MiB {:>5} {:>10}  {}",
            vm.name,
            vm.power_state,
            vm.cpus,
            vm.memory_mib,
            vm.disks,
            human_bytes(vm.total_capacity),
            vm.guest_os
        );
    }
    Ok(())
}

fn print_spec(s: &VmSpec) {
    println!("name:      {}", s.name);
    println!("id:        {}", s.id);
    println!("power:     {}", s.power_state);
    println!("cpus:      {}", s.cpus);
    println!("memory:    {} MiB", s.memory_mib);
    let h = &s.hardware;
    println!(
        "firmware:  {:?}{}",
        s.firmware,
        if h.secure_boot { ", secure boot" } else { "" }
    );
    println!(
        "guest os:  {} ({:?})",
        s.guest_os.description, s.guest_os.family
    );
    if let Some(v) = &h.version {
        println!("hardware:  {v}");
    }
    if let Some(c) = h.cores_per_socket {
        println!("cores:     {c} per socket");
    }
    let controller = |i: Option<usize>| {
        i.and_then(|i| h.controllers.get(i))
            .map(|c| format!("{:?} {} bus {}", c.kind, c.model, c.bus))
    };
    for c in &h.controllers {
        println!("controller: {:?} {} bus {}", c.kind, c.model, c.bus);
    }
    for d in &s.disks {
        println!(
            "disk:      {} {} {:?} on {} unit {} — {}",
            d.name,
            human_bytes(d.capacity),
            d.format,
            controller(d.controller_index).unwrap_or_else(|| format!("{:?}", d.controller)),
            d.unit,
            d.location
        );
    }
    for d in &h.drives {
        match controller(d.controller_index) {
            Some(c) => println!("drive:     {:?} on {c} unit {}", d.kind, d.unit),
            None => println!("drive:     {:?}", d.kind),
        }
    }
    for n in &s.nics {
        println!(
            "nic:       {} on {} mac {}",
            n.model,
            n.network,
            n.mac.as_deref().unwrap_or("-")
        );
    }
}

pub(crate) use hypersdk_core::report::human_bytes;

/// How to reach an object-store output (secrets only from the
/// environment or the store's own credential files, never the command line).
#[derive(Args, Debug)]
pub(crate) struct StoreArgs {
    /// Endpoint of an S3-compatible store (http://127.0.0.1:9000); default
    /// AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region (default AWS_REGION, the profile's, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// Profile of ~/.aws/credentials and ~/.aws/config (default AWS_PROFILE).
    #[arg(long, value_name = "NAME")]
    s3_profile: Option<String>,
    /// Virtual-hosted-style S3 requests (bucket.endpoint) instead of path style.
    #[arg(long)]
    s3_virtual_hosted: bool,
    /// Checksum of each part, checked by the store: crc64nvme (default over
    /// HTTPS) or sha256 (default over plain HTTP; for stores without CRC-64).
    #[arg(long, value_name = "ALGO")]
    s3_checksum: Option<String>,
    /// Endpoint of another Cloud Storage server (an emulator); default
    /// STORAGE_EMULATOR_HOST, else Google.
    #[arg(long, value_name = "URL")]
    gcs_endpoint: Option<String>,
    /// Google Cloud credentials file (a service-account key or
    /// authorized_user JSON); default GOOGLE_APPLICATION_CREDENTIALS, then
    /// gcloud's application default credentials, then the instance's
    /// service account.
    #[arg(long, value_name = "FILE")]
    gcs_credentials: Option<PathBuf>,
    /// Where object-store outputs keep what resuming needs (default
    /// ~/.local/state/hypersdk/uploads).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl StoreArgs {
    pub(crate) fn options(&self) -> hypersdk::OutputOptions {
        hypersdk::OutputOptions {
            file_mode: None,
            state_dir: self.state_dir.clone(),
            s3: hypersdk::sinks::s3::S3Settings {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                profile: self.s3_profile.clone(),
                virtual_hosted: self.s3_virtual_hosted,
                checksum: self.s3_checksum.clone(),
                ..Default::default()
            },
            gcs: hypersdk::sinks::gcs::GcsSettings {
                endpoint: self.gcs_endpoint.clone(),
                credentials: self.gcs_credentials.clone(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let sink = hypersdk::open_output(&args.output, &args.store.options())?;
    let options = args.options.settings().to_options()?;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let connected = args.provider.connect().await?;
    let mode = if args.quiet || (args.json && !args.progress) {
        progress::Mode::Off
    } else if std::io::stderr().is_terminal() {
        progress::Mode::Bars
    } else {
        progress::Mode::Lines
    };
    let display = Arc::new(progress::Display::with_mode(mode));
    let shown = display.clone();
    let exporter = Exporter::new(options)
        .with_cancel(cancel)
        .on_progress(Arc::new(move |e| shown.event(e)));
    let result = exporter
        .export(connected.as_ref(), &args.vm, sink.as_ref())
        .await;
    display.finish();
    provider::close(connected).await;
    if let Err(e) = &result {
        if exporter.options().keeps_partial_after(e) {
            eprintln!(
                "note: the partial export is kept in {}; run the same command with --resume to continue it",
                args.output
            );
        }
    }
    let report = result.with_context(|| format!("export of VM '{}' failed", args.vm))?;
    if let Some(file) = &args.report {
        write_report(&report, file)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !args.quiet {
        print_report(&report);
    }
    Ok(())
}

/// Writes `report` to `file` (JSON for `.json`, else HTML) through a
/// temporary file beside it, so a half-written report never stands there.
fn write_report(report: &ExportReport, file: &std::path::Path) -> anyhow::Result<()> {
    let json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let text = if json {
        serde_json::to_string_pretty(report)? + "\n"
    } else {
        report.to_html()
    };
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("--report {}: not a file name", file.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("--report {}: cannot write", file.display()));
    }
    Ok(())
}

fn print_report(r: &ExportReport) {
    println!(
        "exported VM '{}' ({} provider) to {}",
        r.vm, r.provider, r.location
    );
    println!(
        "size: {} ({} bytes); read {} in {:.2} s ({})",
        human_bytes(r.size),
        r.size,
        human_bytes(r.bytes_read),
        r.duration_secs,
        hypersdk_core::report::human_rate(r.throughput_mb_s * 1e6)
    );
    if r.resumed_bytes > 0 {
        println!(
            "resumed: kept {} written before the interruption",
            human_bytes(r.resumed_bytes)
        );
    }
    if let Some(ova) = &r.ova {
        println!(
            "{} of {}: {}",
            r.digest_algorithm.to_lowercase(),
            ova.name,
            ova.digest
        );
    }
    let mut layers = Vec::new();
    if let Some(c) = &r.compression {
        layers.push(format!("compressed ({c})"));
    }
    if r.encrypted {
        layers.push("encrypted (AES-256-GCM)".to_string());
    }
    if !layers.is_empty() {
        println!(
            "stored {}; `hyperctl unwrap` restores the plain package",
            layers.join(", ")
        );
    }
    if r.verified {
        println!("verified: every stored file read back and matched");
    }
    println!("manifest:");
    for line in r.manifest.lines() {
        println!("  {line}");
    }
}
