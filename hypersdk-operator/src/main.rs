//! `hypersdk-operator`: runs the operator (see the crate docs), or prints
//! its CustomResourceDefinition (`hypersdk-operator crd`).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "VMExport resources become hypervisord jobs")]
struct Args {
    /// `crd`: print the CustomResourceDefinition and exit.
    command: Option<String>,
    /// hypervisord's URL (any node of the cluster).
    #[arg(
        long,
        env = "HYPERSDK_DAEMON",
        default_value = "http://hypervisord:8080"
    )]
    daemon: String,
    /// hypervisord's API key (operator role); mount it from a Secret.
    #[arg(long, env = "HYPERSDK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A file holding the API key (first line), instead.
    #[arg(long, env = "HYPERSDK_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) of hypervisord's TLS certificate.
    #[arg(long, env = "HYPERSDK_DAEMON_CA")]
    daemon_ca: Option<std::path::PathBuf>,
    /// Only this namespace's VMExports (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader-election Lease (default: the pod's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "hypersdk")]
    lease_namespace: String,
    /// This replica's name (default: the pod's, from POD_NAME).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between passes over the VMExports and their jobs.
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.command.as_deref() == Some("crd") {
        print!("{}", hypersdk_operator::crd_yaml());
        return Ok(());
    }
    if let Some(c) = &args.command {
        anyhow::bail!("unknown command {c:?} (only `crd`)");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(k), _) => Some(k.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("--api-key-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        (None, None) => None,
    };
    let daemon_ca = args
        .daemon_ca
        .as_ref()
        .map(|f| std::fs::read(f).map_err(|e| anyhow::anyhow!("--daemon-ca {}: {e}", f.display())))
        .transpose()?;
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let settings = hypersdk_operator::Settings {
        daemon: args.daemon,
        api_key,
        daemon_ca,
        namespace: args.namespace,
        lease_namespace: args.lease_namespace,
        lease_name: "hypersdk-operator".into(),
        identity,
        lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
        interval: Duration::from_secs(args.interval.max(1)),
    };
    let op = Arc::new(hypersdk_operator::Operator::new(client, settings)?);
    op.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
