//! Proxmox VE as an export source: QEMU VMs described through the PVE REST
//! API, their disks read from the node over SFTP.
//!
//! `kind: proxmox` ([`ProxmoxConfig`]): a cluster's VMs (by name, VMID, or
//! `NODE/VMID`) through `https://HOST:8006/api2/json` with an API token
//! (`Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`), TLS verified
//! against the system's CAs (and a CA file), or pinned to the certificate's
//! SHA-256 fingerprint as the PVE GUI shows it.
//!
//! Disk bytes: the API tells where each volume is (`GET
//! /nodes/{node}/storage/{storage}/content/{volume}`, checked to lie under
//! its directory storage's path), and the disk is read over SFTP from the
//! node (OpenSSH, key authentication, host key pinned or in known_hosts)
//! with the project's own image readers: only allocated clusters move, and
//! a resumed export seeks where it stopped. Why SFTP rather than `pvesm
//! path` + a streamed `dd`, or a Proxmox Backup Server snapshot: random
//! access is what reading a qcow2 needs (its clusters are not in guest
//! order), it needs no command run on the node, and a PBS may not exist.
//!
//! A running VM is exported from a PVE snapshot made first (`POST
//! …/snapshot`, a qcow2 internal snapshot on directory storage, read
//! through that snapshot's L1 table while the VM goes on writing) and
//! deleted on every path. A running VM with a disk PVE cannot snapshot
//! (raw on directory storage) is refused, naming the disk.
#![deny(missing_docs)]

mod api;
mod config;
mod describe;
mod provider;
mod sftp;
pub use config::ProxmoxConfig;
pub use provider::ProxmoxProvider;
