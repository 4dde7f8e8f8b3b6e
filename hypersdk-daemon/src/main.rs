//! hypervisord: the hypersdk job daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run the hypersdk job daemon.
#[derive(Debug, Parser)]
#[command(name = "hypervisord", version, about)]
struct Args {
    /// Configuration file (YAML; see the crate docs of hypersdk-daemon).
    #[arg(long, short)]
    config: PathBuf,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let config = hypersdk_daemon::config::Config::parse(&text, &args.config.display().to_string())?;
    let daemon = hypersdk_daemon::Daemon::start(config).await?;
    // One line on stdout says where it listens (the port may be chosen by the OS).
    println!(
        "{}",
        serde_json::json!({ "listen": daemon.addr.to_string(), "tls": daemon.tls })
    );
    daemon.wait().await;
    Ok(())
}
