//! The provider: inventory with Get-VM and friends over WinRM, exports from
//! a checkpoint (Checkpoint-VM) whose disks — the VHDX files the VM wrote
//! before it, frozen while it writes on into differencing disks — are read
//! over SMB or from a mounted folder, and the checkpoint removed after.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmInfo, VmSpec,
};
use hypersdk_core::{DiskStream, Error, ExportSource, Provider, Result};
use hypersdk_formats::vhd::VhdReader;
use hypersdk_formats::vhdx::VhdxReader;
use hypersdk_formats::DiskImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::{PathMap, SmbFile, SmbShare, Target};
use crate::winrm::{provider_err, Account, WinRm};

/// Parent disks followed at most.
const MAX_CHAIN: usize = 16;

/// Hyper-V VMs of one host.
#[derive(Debug)]
pub struct HypervProvider {
    winrm: WinRm,
    paths: PathMap,
    smb_account: Account,
    smb_port: u16,
}

/// A PowerShell single-quoted string: `'` (and the typographic quotes
/// PowerShell also takes as quotes) doubled; line breaks refused.
fn ps_quote(v: &str) -> Result<String> {
    if v.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{:?} holds a control character: not a Hyper-V VM name",
            hypersdk_formats::error::display_name(v)
        )));
    }
    let mut out = String::from("'");
    for c in v.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    Ok(out)
}

/// `# hypersdk:OP`, the parameters as `$p_NAME = '…'`, then the body.
fn script(op: &str, params: &[(&str, &str)], body: &str) -> Result<String> {
    let mut s = format!("# hypersdk:{op}\n$ErrorActionPreference = 'Stop'\n$ProgressPreference = 'SilentlyContinue'\n");
    for (k, v) in params {
        s.push_str(&format!("$p_{k} = {}\n", ps_quote(v)?));
    }
    s.push_str(body);
    Ok(s)
}

const FIND_VM: &str = "$vm = if ($p_id) { Get-VM -Id $p_id } else { Get-VM -Name $p_name }\n\
if (@($vm).Count -ne 1) { throw \"$(@($vm).Count) VMs are named $p_name: give the VM's Id\" }\n";

const DRIVES: &str = "ForEach-Object { [pscustomobject]@{ Path = $_.Path; ControllerType = $_.ControllerType.ToString(); \
ControllerNumber = $_.ControllerNumber; ControllerLocation = $_.ControllerLocation } }";

/// A VM as the describe script tells it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VmJson {
    name: String,
    id: String,
    state: String,
    generation: u32,
    processor_count: u32,
    memory_startup: u64,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    secure_boot: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    disks: Vec<DriveJson>,
    #[serde(default, deserialize_with = "one_or_many")]
    nics: Vec<NicJson>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DriveJson {
    path: String,
    controller_type: String,
    controller_number: u32,
    controller_location: u32,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NicJson {
    #[serde(default)]
    mac_address: Option<String>,
    #[serde(default)]
    switch_name: Option<String>,
    #[serde(default)]
    is_legacy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckpointJson {
    name: String,
    #[serde(default, deserialize_with = "one_or_many")]
    disks: Vec<DriveJson>,
}

/// ConvertTo-Json writes a one-element array as the element, and `null`
/// for none.
fn one_or_many<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .into_iter()
            .map(|x| serde_json::from_value(x).map_err(serde::de::Error::custom))
            .collect(),
        other => Ok(vec![
            serde_json::from_value(other).map_err(serde::de::Error::custom)?
        ]),
    }
}

/// What an export made: its resume token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Made {
    vm_id: String,
    checkpoint: String,
}

fn is_guid(s: &str) -> bool {
    let s = s.trim_matches(['{', '}']);
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

impl HypervProvider {
    pub(crate) fn new(winrm: WinRm, paths: PathMap, smb_account: Account, smb_port: u16) -> Self {
        HypervProvider {
            winrm,
            paths,
            smb_account,
            smb_port,
        }
    }

    /// Runs a script; its standard output parsed as JSON. A failed script
    /// is an error carrying PowerShell's message.
    async fn json<T: serde::de::DeserializeOwned>(&self, script: &str, what: &str) -> Result<T> {
        let out = self.winrm.powershell(script).await?;
        if out.code != 0 {
            let message = out
                .stderr
                .lines()
                .next()
                .unwrap_or("(no message)")
                .to_string();
            if message.contains("unable to find a virtual machine") {
                return Err(Error::VmNotFound {
                    provider: "hyperv".into(),
                    vm: what.to_string(),
                    detail: format!("Hyper-V on {} says: {message}", self.winrm.host()),
                });
            }
            return Err(provider_err(
                format!("{what} on {} failed: {message}", self.winrm.host()),
                false,
            ));
        }
        serde_json::from_str(out.stdout.trim()).map_err(|e| {
            provider_err(
                format!(
                    "{what} on {}: its output is not the JSON expected: {e}",
                    self.winrm.host()
                ),
                false,
            )
        })
    }

    fn vm_params(vm: &str) -> [(&'static str, &str); 2] {
        if is_guid(vm) {
            [("id", vm.trim_matches(['{', '}'])), ("name", "")]
        } else {
            [("id", ""), ("name", vm)]
        }
    }

    async fn describe(&self, vm: &str) -> Result<VmJson> {
        let body = format!(
            "{FIND_VM}$sb = if ($vm.Generation -eq 2) {{ (Get-VMFirmware -VM $vm).SecureBoot.ToString() }} else {{ $null }}\n\
[pscustomobject]@{{ Name = $vm.Name; Id = $vm.Id.ToString(); State = $vm.State.ToString(); Generation = $vm.Generation; \
ProcessorCount = $vm.ProcessorCount; MemoryStartup = $vm.MemoryStartup; Version = $vm.Version; SecureBoot = $sb; \
Disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {{ $v = Get-VHD -Path $_.Path; [pscustomobject]@{{ Path = $_.Path; \
ControllerType = $_.ControllerType.ToString(); ControllerNumber = $_.ControllerNumber; ControllerLocation = $_.ControllerLocation; \
Size = $v.Size; VhdFormat = $v.VhdFormat.ToString(); VhdType = $v.VhdType.ToString() }} }}); \
Nics = @(Get-VMNetworkAdapter -VM $vm | ForEach-Object {{ [pscustomobject]@{{ Name = $_.Name; MacAddress = $_.MacAddress; SwitchName = $_.SwitchName; IsLegacy = [bool]$_.IsLegacy }} }}) \
}} | ConvertTo-Json -Depth 4 -Compress\n"
        );
        let s = script("describe-vm", &Self::vm_params(vm), &body)?;
        let mut v: VmJson = self.json(&s, &format!("describing VM {vm}")).await?;
        v.disks.sort_by_key(drive_order);
        Ok(v)
    }

    fn spec(&self, v: &VmJson) -> Result<VmSpec> {
        let power_state = match v.state.as_str() {
            "Running" => PowerState::On,
            "Off" => PowerState::Off,
            "Paused" | "Saved" => PowerState::Suspended,
            _ => PowerState::Unknown,
        };
        let mut disks = Vec::new();
        for d in &v.disks {
            let Some(capacity) = d.size else {
                return Err(provider_err(
                    format!("VM {}: Get-VHD told no size for {}", v.name, d.path),
                    false,
                ));
            };
            disks.push(DiskSpec {
                name: format!(
                    "{} {}:{}",
                    d.controller_type, d.controller_number, d.controller_location
                ),
                capacity,
                format: if d.path.to_ascii_lowercase().ends_with(".vhd") {
                    DiskFormat::Vhd
                } else {
                    DiskFormat::Vhdx
                },
                controller: if d.controller_type.eq_ignore_ascii_case("IDE") {
                    ControllerKind::Ide
                } else {
                    ControllerKind::Scsi
                },
                unit: d.controller_location,
                location: d.path.clone(),
                controller_index: None,
            });
        }
        let nics = v
            .nics
            .iter()
            .map(|n| NicSpec {
                network: n.switch_name.clone().unwrap_or_default(),
                mac: n.mac_address.as_deref().map(mac_text),
                // A synthetic adapter is netvsc; a legacy one (generation
                // 1 only) emulates a DEC 21140.
                model: if n.is_legacy { "dec21140" } else { "netvsc" }.into(),
            })
            .collect();
        let uefi = v.generation == 2;
        Ok(VmSpec {
            id: v.id.clone(),
            name: v.name.clone(),
            power_state,
            cpus: v.processor_count.max(1),
            memory_mib: v.memory_startup / (1 << 20),
            firmware: if uefi { Firmware::Uefi } else { Firmware::Bios },
            guest_os: GuestOs {
                id: String::new(),
                family: OsFamily::Other,
                description: "Unknown operating system".into(),
            },
            nics,
            disks,
            annotation: Some(format!(
                "Hyper-V VM {} (generation {}, configuration version {}) on {}",
                v.id,
                v.generation,
                v.version.as_deref().unwrap_or("?"),
                self.winrm.host()
            )),
            hardware: Hardware {
                secure_boot: uefi && v.secure_boot.as_deref() == Some("On"),
                settings: vec![("hyperv.generation".into(), v.generation.to_string())],
                ..Default::default()
            },
        })
    }

    async fn checkpoint_op(&self, op: &str, vm_id: &str, name: &str) -> Result<CheckpointJson> {
        let body = match op {
            "checkpoint" => format!(
                "{FIND_VM}Checkpoint-VM -VM $vm -SnapshotName $p_checkpoint\n$cp = Get-VMSnapshot -VM $vm -Name $p_checkpoint\n\
[pscustomobject]@{{ Name = $cp.Name; Id = $cp.Id.ToString(); Disks = @($cp.HardDrives | {DRIVES}) }} | ConvertTo-Json -Depth 4 -Compress\n"
            ),
            _ => format!(
                "{FIND_VM}$cp = Get-VMSnapshot -VM $vm -Name $p_checkpoint\n\
[pscustomobject]@{{ Name = $cp.Name; Id = $cp.Id.ToString(); Disks = @($cp.HardDrives | {DRIVES}) }} | ConvertTo-Json -Depth 4 -Compress\n"
            ),
        };
        let s = script(
            op,
            &[("id", vm_id), ("name", ""), ("checkpoint", name)],
            &body,
        )?;
        let mut cp: CheckpointJson = self
            .json(&s, &format!("checkpoint {name} of VM {vm_id}"))
            .await?;
        cp.disks.sort_by_key(drive_order);
        Ok(cp)
    }

    async fn open(&self, vm: &str, resumed: Option<Made>) -> Result<Box<dyn ExportSource>> {
        if self.paths.is_empty() {
            return Err(Error::InvalidArgument(
                "hyperv settings: reading disks needs shares (host folder → \\\\HOST\\SHARE) or mounts (host folder → local directory)".into(),
            ));
        }
        let v = self.describe(vm).await?;
        let spec = self.spec(&v)?;
        if spec.disks.is_empty() {
            return Err(provider_err(
                format!("VM {} has no virtual hard disk to export", v.name),
                false,
            ));
        }
        // Every disk must map before anything is made on the host.
        for d in &v.disks {
            self.paths.map(&d.path)?;
        }
        // `reopened`: the kept partial holds bytes of this checkpoint.
        let (made, cp, reopened) = match resumed {
            Some(m) => match self
                .checkpoint_op("get-checkpoint", &m.vm_id, &m.checkpoint)
                .await
            {
                Ok(cp) => (m, cp, true),
                Err(e) => {
                    tracing::warn!(error = %e, "the interrupted export's checkpoint is gone: taking a new one, the disks start over");
                    let (m, cp) = self.take_checkpoint(&v).await?;
                    (m, cp, false)
                }
            },
            None => {
                let (m, cp) = self.take_checkpoint(&v).await?;
                (m, cp, false)
            }
        };
        let source = HypervSource {
            spec,
            files: Vec::new(),
            made: made.clone(),
            provider: HypervRef {
                winrm: self.winrm.clone(),
            },
            paths: self.paths.clone(),
            smb_account: self.smb_account.clone(),
            smb_port: self.smb_port,
            shares: tokio::sync::Mutex::new(HashMap::new()),
            read_any: std::sync::atomic::AtomicBool::new(reopened),
        };
        let mut source = source;
        // The checkpoint's drive on the same controller slot as each disk.
        for d in &v.disks {
            let Some(c) = cp.disks.iter().find(|c| drive_order(c) == drive_order(d)) else {
                source.close().await?;
                return Err(provider_err(
                    format!(
                        "checkpoint {} of VM {} has no drive at {} {}:{}",
                        cp.name,
                        v.name,
                        d.controller_type,
                        d.controller_number,
                        d.controller_location
                    ),
                    false,
                ));
            };
            if let Err(e) = self.paths.map(&c.path) {
                source.close().await?;
                return Err(e);
            }
            source.files.push(c.path.clone());
        }
        Ok(Box::new(source))
    }

    async fn take_checkpoint(&self, v: &VmJson) -> Result<(Made, CheckpointJson)> {
        let name = format!(
            "hypersdk-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        tracing::info!(vm = %v.name, checkpoint = %name, "checkpoint of the VM");
        let made = Made {
            vm_id: v.id.clone(),
            checkpoint: name.clone(),
        };
        match self.checkpoint_op("checkpoint", &v.id, &name).await {
            Ok(cp) => Ok((made, cp)),
            Err(e) => {
                // One that half-happened goes too.
                remove_checkpoint(&self.winrm, &made).await;
                Err(e)
            }
        }
    }
}

fn drive_order(d: &DriveJson) -> (u8, u32, u32) {
    (
        u8::from(!d.controller_type.eq_ignore_ascii_case("IDE")),
        d.controller_number,
        d.controller_location,
    )
}

/// `00155D010203` → `00:15:5d:01:02:03`.
fn mac_text(m: &str) -> String {
    let hex: String = m.chars().filter(char::is_ascii_hexdigit).collect();
    if hex.len() != 12 {
        return m.to_string();
    }
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

async fn remove_checkpoint(winrm: &WinRm, made: &Made) {
    let body = format!(
        "{FIND_VM}Get-VMSnapshot -VM $vm -Name $p_checkpoint -ErrorAction SilentlyContinue | Remove-VMSnapshot\n[pscustomobject]@{{ Removed = 1 }} | ConvertTo-Json -Compress\n"
    );
    let Ok(s) = script(
        "remove-checkpoint",
        &[
            ("id", &made.vm_id),
            ("name", ""),
            ("checkpoint", &made.checkpoint),
        ],
        &body,
    ) else {
        return;
    };
    match winrm.powershell(&s).await {
        Ok(o) if o.code == 0 => {
            tracing::info!(checkpoint = %made.checkpoint, "checkpoint removed")
        }
        Ok(o) => {
            tracing::warn!(checkpoint = %made.checkpoint, error = %o.stderr, "could not remove the checkpoint: remove it in Hyper-V Manager")
        }
        Err(e) => {
            tracing::warn!(checkpoint = %made.checkpoint, error = %e, "could not remove the checkpoint: remove it in Hyper-V Manager")
        }
    }
}

#[async_trait]
impl Provider for HypervProvider {
    fn name(&self) -> &str {
        "hyperv"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Row {
            name: String,
        }
        let s = script(
            "list-vms",
            &[],
            "@(Get-VM | ForEach-Object { [pscustomobject]@{ Name = $_.Name; Id = $_.Id.ToString(); State = $_.State.ToString() } }) | ConvertTo-Json -Depth 2 -Compress\n",
        )?;
        let rows: Value = self.json(&s, "listing VMs").await?;
        let rows: Vec<Row> = match rows {
            Value::Null => Vec::new(),
            Value::Array(a) => a
                .into_iter()
                .filter_map(|r| serde_json::from_value(r).ok())
                .collect(),
            other => serde_json::from_value(other)
                .map(|r| vec![r])
                .unwrap_or_default(),
        };
        let mut out = Vec::new();
        for r in rows {
            let v = self.describe(&r.name).await?;
            out.push(VmInfo::from(&self.spec(&v)?));
        }
        Ok(out)
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        let v = self.describe(vm).await?;
        self.spec(&v)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        self.open(vm, None).await
    }

    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let made: Made = serde_json::from_str(token)
            .map_err(|e| Error::InvalidArgument(format!("hyperv resume token: {e}")))?;
        self.open(vm, Some(made)).await
    }
}

#[derive(Debug, Clone)]
struct HypervRef {
    winrm: WinRm,
}

/// One VM being exported from its checkpoint.
#[derive(Debug)]
struct HypervSource {
    spec: VmSpec,
    /// Per disk: the checkpoint's file on the host.
    files: Vec<String>,
    made: Made,
    provider: HypervRef,
    paths: PathMap,
    smb_account: Account,
    smb_port: u16,
    shares: tokio::sync::Mutex<HashMap<(String, String), Arc<SmbShare>>>,
    /// Whether the partial export can hold bytes of the checkpoint (a
    /// disk was opened, or this export reopened it): only then is the
    /// checkpoint worth keeping for a resume.
    read_any: std::sync::atomic::AtomicBool,
}

/// A file of a disk chain, open.
enum Opened {
    Smb(SmbFile),
    Local(std::fs::File),
}

impl HypervSource {
    async fn open_file(&self, win_path: &str) -> Result<(Opened, String)> {
        let (target, rest) = self.paths.map(win_path)?;
        match target {
            Target::Local(dir) => {
                let mut p = dir.clone();
                for c in &rest {
                    p.push(c);
                }
                let f = std::fs::File::open(&p).map_err(|e| {
                    provider_err(
                        format!("cannot open {} (host path {win_path}): {e}", p.display()),
                        false,
                    )
                })?;
                Ok((Opened::Local(f), p.display().to_string()))
            }
            Target::Smb { server, share, sub } => {
                let key = (server.clone(), share.clone());
                let s = {
                    let mut shares = self.shares.lock().await;
                    match shares.get(&key) {
                        Some(s) => s.clone(),
                        None => {
                            let s = Arc::new(
                                SmbShare::connect(
                                    &server,
                                    &share,
                                    self.smb_port,
                                    &self.smb_account,
                                )
                                .await?,
                            );
                            shares.insert(key, s.clone());
                            s
                        }
                    }
                };
                let mut path = sub.clone();
                path.extend(rest);
                let f = s.open(&path).await?;
                Ok((Opened::Smb(f), format!("{}\\{}", s.name, path.join("\\"))))
            }
        }
    }

    /// The disk image of `win_path` with its parents, opened.
    async fn open_chain(&self, win_path: &str) -> Result<(Box<dyn DiskImage>, String)> {
        let mut chain = Vec::new();
        let mut path = win_path.to_string();
        let mut location = String::new();
        loop {
            if chain.len() == MAX_CHAIN {
                return Err(provider_err(
                    format!("disk {win_path} has more than {MAX_CHAIN} parents"),
                    false,
                ));
            }
            let (file, shown) = self.open_file(&path).await?;
            if location.is_empty() {
                location = shown;
            }
            let vhd = path.to_ascii_lowercase().ends_with(".vhd");
            let image = tokio::task::spawn_blocking(move || open_image(file, vhd))
                .await
                .map_err(|e| Error::Internal(format!("disk open thread failed: {e}")))??;
            let parent = match &image {
                Image::Vhdx(r, _) => r.parent_locator().map(|l| {
                    l.get("absolute_win32_path")
                        .map(str::to_string)
                        .ok_or_else(|| {
                            provider_err(
                                format!("differencing disk {path} names no absolute parent path"),
                                false,
                            )
                        })
                }),
                _ => None,
            };
            chain.push(image);
            match parent {
                Some(p) => path = p?,
                None => break,
            }
        }
        // Parents first: each child takes its parent.
        let mut top: Option<Image> = None;
        while let Some(img) = chain.pop() {
            top = Some(match (img, top.take()) {
                (img, None) => img,
                (Image::Vhdx(mut child, d), Some(Image::Vhdx(parent, _))) => {
                    child
                        .set_parent(parent)
                        .map_err(|e| provider_err(format!("disk {win_path}: {e}"), false))?;
                    Image::Vhdx(child, d)
                }
                _ => {
                    return Err(provider_err(
                        format!("disk {win_path}: a VHDX's parent is not a VHDX"),
                        false,
                    ))
                }
            });
        }
        let image: Box<dyn DiskImage> = match top {
            Some(Image::Vhdx(r, _)) => Box::new(r),
            Some(Image::Vhd(r)) => r,
            None => return Err(Error::Internal("empty disk chain".into())),
        };
        Ok((image, location))
    }
}

/// A reader of either kind of file.
enum Image {
    Vhdx(VhdxReader<Box<dyn ReadSeek>>, ()),
    Vhd(Box<dyn DiskImage>),
}

trait ReadSeek: std::io::Read + std::io::Seek + Send + std::fmt::Debug {}
impl<T: std::io::Read + std::io::Seek + Send + std::fmt::Debug> ReadSeek for T {}

fn open_image(file: Opened, vhd: bool) -> Result<Image> {
    let file: Box<dyn ReadSeek> = match file {
        Opened::Smb(f) => Box::new(f),
        Opened::Local(f) => Box::new(f),
    };
    let fmt = |e: hypersdk_formats::Error| provider_err(format!("{e}"), false);
    if vhd {
        Ok(Image::Vhd(Box::new(VhdReader::open(file).map_err(fmt)?)))
    } else {
        Ok(Image::Vhdx(VhdxReader::open(file).map_err(fmt)?, ()))
    }
}

#[async_trait]
impl ExportSource for HypervSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    fn resume_token(&self) -> Option<String> {
        serde_json::to_string(&self.made).ok()
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let (Some(disk), Some(path)) = (self.spec.disks.get(index), self.files.get(index)) else {
            return Err(Error::InvalidArgument(format!("no disk {index}")));
        };
        let (image, location) = self.open_chain(path).await?;
        self.read_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(hypersdk_core::provider::image_stream(
            move || Ok(image),
            disk.capacity,
            offset,
            (self.spec.name.clone(), disk.name.clone(), location),
        ))
    }

    async fn close(&self) -> Result<()> {
        remove_checkpoint(&self.provider.winrm, &self.made).await;
        Ok(())
    }

    /// The partial export is kept for `--resume`: so is the checkpoint it
    /// read, which the resumed export reopens and then removes. A
    /// checkpoint nothing was read from is removed as on any other path.
    async fn close_kept(&self) -> Result<()> {
        if !self.read_any.load(std::sync::atomic::Ordering::Relaxed) {
            return self.close().await;
        }
        tracing::warn!(
            checkpoint = %self.made.checkpoint,
            "the checkpoint is kept with the partial export: the export with --resume reads it on and removes it"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_powershell() {
        assert_eq!(ps_quote("web-1").unwrap(), "'web-1'");
        assert_eq!(ps_quote("it's").unwrap(), "'it''s'");
        assert_eq!(ps_quote("a\u{2019}b").unwrap(), "'a\u{2019}\u{2019}b'");
        assert!(ps_quote("x'\n; Remove-VM *").is_err());
        let s = script("describe-vm", &[("name", "x'; Stop-Computer; '")], "").unwrap();
        assert!(s.contains("$p_name = 'x''; Stop-Computer; '''"), "{s}");
    }

    #[test]
    fn macs_and_ids() {
        assert_eq!(mac_text("00155D010203"), "00:15:5d:01:02:03");
        assert!(is_guid("0f4b2c1e-1111-2222-3333-444455556666"));
        assert!(!is_guid("web-1"));
    }
}
