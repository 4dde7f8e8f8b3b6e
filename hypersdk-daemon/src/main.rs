//! hypervisord: the hypersdk job daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hypersdk_daemon::config::Config;
use hypersdk_daemon::telemetry::Telemetry;

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
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
    let telemetry = {
        let _in_runtime = runtime.enter();
        match Telemetry::init(config.telemetry.as_ref(), &args.log) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let outcome = runtime.block_on(run(config));
    // The runtime's workers still run: the last batch of spans goes out.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    Config::parse(&text, &args.config.display().to_string())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let daemon = hypersdk_daemon::Daemon::start(config).await?;
    // One line on stdout says where it listens (the port may be chosen by the OS).
    println!(
        "{}",
        serde_json::json!({ "listen": daemon.addr.to_string(), "tls": daemon.tls })
    );
    daemon.wait().await;
    Ok(())
}
