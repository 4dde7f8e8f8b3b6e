//! `hyperctl vms snapshot|power-off|shutdown|eject-cdrom`: the VM operations
//! a migration needs, on providers that have them (vSphere).

use std::time::Duration;

use clap::Subcommand;

use hypersdk::{SnapshotOptions, VmOps};

use crate::provider::{close, ProviderArgs};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// List a VM's snapshots as a tree.
    List {
        /// VM name or id.
        vm: String,
        #[command(flatten)]
        provider: ProviderArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a snapshot.
    Create {
        /// VM name or id.
        vm: String,
        /// Snapshot name.
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Include the memory of a running VM.
        #[arg(long)]
        memory: bool,
        /// Quiesce the guest file systems first (needs VMware Tools).
        #[arg(long)]
        quiesce: bool,
        #[command(flatten)]
        provider: ProviderArgs,
    },
    /// Revert a VM to a snapshot.
    Revert {
        /// VM name or id.
        vm: String,
        /// Snapshot name or id.
        snapshot: String,
        #[command(flatten)]
        provider: ProviderArgs,
    },
    /// Remove a snapshot (its disks are consolidated).
    Remove {
        /// VM name or id.
        vm: String,
        /// Snapshot name or id.
        snapshot: String,
        /// Remove its children too.
        #[arg(long)]
        children: bool,
        #[command(flatten)]
        provider: ProviderArgs,
    },
}

fn progress(what: &str) -> impl Fn(u32) + Send + Sync + '_ {
    move |p| eprintln!("{what}: {p}%")
}

async fn with_ops<T>(
    provider: &ProviderArgs,
    f: impl AsyncFnOnce(&dyn VmOps) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let p = provider.connect().await?;
    let r = match p.vm_ops() {
        Some(ops) => f(ops).await,
        None => Err(anyhow::anyhow!(
            "provider '{}' has no VM operations (snapshots, power, CD-ROM); \
             providers that have them: vsphere",
            p.name()
        )),
    };
    close(p).await;
    r
}

pub async fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::List { vm, provider, json } => {
            let tree = with_ops(&provider, async |v| Ok(v.snapshot_tree(&vm).await?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else if tree.is_empty() {
                println!("VM '{vm}' has no snapshots");
            } else {
                for s in tree {
                    println!(
                        "{}{} ({}, {}){}",
                        "  ".repeat(s.depth),
                        s.name,
                        s.id,
                        s.created,
                        if s.description.is_empty() {
                            String::new()
                        } else {
                            format!(" — {}", s.description)
                        }
                    );
                }
            }
            Ok(())
        }
        SnapshotCommand::Create {
            vm,
            name,
            description,
            memory,
            quiesce,
            provider,
        } => {
            let id = with_ops(&provider, async |v| {
                let p = progress("snapshot");
                Ok(v.create_snapshot(
                    &vm,
                    &name,
                    &SnapshotOptions {
                        description,
                        memory,
                        quiesce,
                    },
                    Some(&p),
                )
                .await?)
            })
            .await?;
            println!("created snapshot '{name}' ({id}) of VM '{vm}'");
            Ok(())
        }
        SnapshotCommand::Revert {
            vm,
            snapshot,
            provider,
        } => {
            with_ops(&provider, async |v| {
                let p = progress("revert");
                Ok(v.revert_snapshot(&vm, &snapshot, Some(&p)).await?)
            })
            .await?;
            println!("reverted VM '{vm}' to snapshot '{snapshot}'");
            Ok(())
        }
        SnapshotCommand::Remove {
            vm,
            snapshot,
            children,
            provider,
        } => {
            with_ops(&provider, async |v| {
                let p = progress("remove");
                Ok(v.remove_snapshot(&vm, &snapshot, children, Some(&p))
                    .await?)
            })
            .await?;
            println!("removed snapshot '{snapshot}' of VM '{vm}'");
            Ok(())
        }
    }
}

pub async fn power_off(vm: String, provider: ProviderArgs) -> anyhow::Result<()> {
    with_ops(&provider, async |v| Ok(v.power_off(&vm, None).await?)).await?;
    println!("VM '{vm}' is powered off");
    Ok(())
}

pub async fn shutdown(vm: String, timeout: u64, provider: ProviderArgs) -> anyhow::Result<()> {
    with_ops(&provider, async |v| {
        Ok(v.shutdown_guest(&vm, Duration::from_secs(timeout)).await?)
    })
    .await?;
    println!("VM '{vm}' shut down and is powered off");
    Ok(())
}

pub async fn eject_cdrom(vm: String, provider: ProviderArgs) -> anyhow::Result<()> {
    let n = with_ops(&provider, async |v| Ok(v.eject_cdroms(&vm, None).await?)).await?;
    println!("emptied {n} CD-ROM drive(s) of VM '{vm}'");
    Ok(())
}
