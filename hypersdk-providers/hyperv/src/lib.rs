//! Hyper-V as an export source: VMs described over WinRM with the Hyper-V
//! PowerShell cmdlets, exported from a checkpoint whose VHDX files are read
//! over SMB2/3 (or from a folder where the user mounted the share).
//!
//! `kind: hyperv` ([`HypervConfig`]): one host's VMs (by name or Id)
//! through its WinRM endpoint (`https://HOST:5986/wsman`; the Windows Remote
//! Shell of [MS-WSMV], running `powershell -EncodedCommand`), signed in with
//! NTLM (a domain or local account) or Basic, TLS verified against the
//! system's CAs (and a CA file) or pinned to the certificate's fingerprint.
//! Kerberos, and NTLM over plain HTTP (which needs WinRM's message
//! encryption), are refused with what to use instead.
//!
//! Inventory: `Get-VM`, `Get-VMFirmware` (secure boot), `Get-VMHardDiskDrive`
//! with `Get-VHD` (size, format), `Get-VMNetworkAdapter` (MAC, switch).
//!
//! An export takes a checkpoint (`Checkpoint-VM`, a production checkpoint
//! where the host's default says so): the VM writes on into differencing
//! disks, and the checkpoint's drives — the VHDX files as they were — are
//! read with the project's VHDX reader, their parents followed where they
//! are differencing disks themselves, only allocated blocks moving, from
//! any offset on resume. The checkpoint is removed (`Remove-VMSnapshot`,
//! which merges) on every path, except that a partial export kept for
//! `--resume` keeps it until the resumed export ends.
//!
//! Host paths are mapped to SMB shares (`shares`) or mounted folders
//! (`mounts`) by their longest folder prefix; what follows must be plain
//! names, so no path the host reports can leave the mapped folder; DFS
//! referrals are not followed.
#![deny(missing_docs)]

mod config;
mod files;
mod provider;
mod winrm;
pub use config::HypervConfig;
pub use provider::HypervProvider;
