//! Where the host's VHDX files are read: a Windows path the host reports
//! (`C:\Hyper-V\web-1\disk0.vhdx`) is mapped, by the longest configured
//! prefix, to a file on an SMB share (`\\hv1\VMs\web-1\disk0.vhdx`, read
//! over SMB2/3) or under a directory where the user mounted that share.
//! The part after the prefix must be plain names: no `..`, no `.`, no drive
//! or stream (`:`), nothing empty, so a path the host (or whoever answers
//! for it) reports can never leave the mapped folder.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use hypersdk_core::{Error, Result};

use crate::winrm::{provider_err, Account};

/// What a Windows folder maps to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// `\\SERVER\SHARE[\SUB…]`.
    Smb {
        server: String,
        share: String,
        sub: Vec<String>,
    },
    /// A local directory (the share mounted by the user).
    Local(PathBuf),
}

/// The folder mapping.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathMap {
    /// (Windows prefix as lower-case components, target), longest first.
    entries: Vec<(Vec<String>, Target)>,
}

/// Splits a Windows path into its components; None if it is not a plain
/// absolute path (`X:\…` or `\\server\share\…`).
fn components(path: &str) -> Option<Vec<String>> {
    let unc = path.starts_with("\\\\") || path.starts_with("//");
    let rest = if unc { &path[2..] } else { path };
    let parts: Vec<String> = rest
        .split(['\\', '/'])
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let first = parts.first()?;
    if unc {
        if parts.len() < 2 || parts[..2].iter().any(|c| !plain(c)) {
            return None;
        }
        let mut out = vec![format!("\\\\{}", parts[0])];
        out.extend(parts[1..].iter().cloned());
        return Some(out);
    }
    let drive = first.len() == 2
        && first.as_bytes()[0].is_ascii_alphabetic()
        && first.as_bytes()[1] == b':';
    drive.then_some(parts)
}

/// A name that stays where it is.
fn plain(c: &str) -> bool {
    !(c.is_empty()
        || c == "."
        || c == ".."
        || c.contains([':', '\0', '*', '?', '"', '<', '>', '|']))
}

impl PathMap {
    /// From `shares` (Windows folder → `\\SERVER\SHARE[\SUB]`) and
    /// `mounts` (Windows folder → local directory).
    pub(crate) fn new(
        shares: &BTreeMap<String, String>,
        mounts: &BTreeMap<String, PathBuf>,
    ) -> Result<PathMap> {
        let bad = |what: String| Error::InvalidArgument(format!("hyperv settings: {what}"));
        let mut entries = Vec::new();
        for (prefix, unc) in shares {
            let p = components(prefix).ok_or_else(|| {
                bad(format!(
                    "shares: {prefix:?} is not a Windows folder (C:\\… or \\\\server\\share)"
                ))
            })?;
            let u = components(unc)
                .filter(|u| {
                    u[0].starts_with("\\\\") && u.len() >= 2 && u.iter().skip(1).all(|c| plain(c))
                })
                .ok_or_else(|| {
                    bad(format!(
                        "shares: {unc:?} is not \\\\SERVER\\SHARE[\\FOLDER]"
                    ))
                })?;
            entries.push((
                p.iter().map(|c| c.to_lowercase()).collect::<Vec<String>>(),
                Target::Smb {
                    server: u[0].trim_start_matches('\\').to_string(),
                    share: u[1].clone(),
                    sub: u[2..].to_vec(),
                },
            ));
        }
        for (prefix, dir) in mounts {
            let p = components(prefix)
                .ok_or_else(|| bad(format!("mounts: {prefix:?} is not a Windows folder")))?;
            if !dir.is_absolute() {
                return Err(bad(format!(
                    "mounts: {} is not an absolute path",
                    dir.display()
                )));
            }
            entries.push((
                p.iter().map(|c| c.to_lowercase()).collect(),
                Target::Local(dir.clone()),
            ));
        }
        entries.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(PathMap { entries })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The target and the path's components below the prefix.
    pub(crate) fn map(&self, win_path: &str) -> Result<(Target, Vec<String>)> {
        let shown = hypersdk_formats::error::display_name(win_path);
        let parts = components(win_path).ok_or_else(|| {
            provider_err(
                format!(
                    "the host reports disk path {shown}, which is not an absolute Windows path"
                ),
                false,
            )
        })?;
        for (prefix, target) in &self.entries {
            if parts.len() > prefix.len()
                && parts
                    .iter()
                    .zip(prefix)
                    .all(|(a, b)| a.to_lowercase() == *b)
            {
                let rest = parts[prefix.len()..].to_vec();
                if !rest.iter().all(|c| plain(c)) {
                    break;
                }
                return Ok((target.clone(), rest));
            }
        }
        Err(provider_err(
            format!(
                "disk {shown} is in no folder the settings map to a share (shares) or a mounted directory (mounts): add its folder, e.g. shares: {{\"{}\": \"\\\\\\\\HOST\\\\SHARE\"}}",
                parent_folder(win_path)
            ),
            false,
        ))
    }
}

fn parent_folder(p: &str) -> String {
    let p = hypersdk_formats::error::display_name(p);
    match p.rfind(['\\', '/']) {
        Some(i) => p[..i].to_string(),
        None => p,
    }
}

/// An SMB session on one share.
pub(crate) struct SmbShare {
    client: tokio::sync::Mutex<(smb2::SmbClient, smb2::Tree)>,
    pub(crate) name: String,
}

impl std::fmt::Debug for SmbShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbShare")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SmbShare {
    /// Signs in to `\\server\share` on `port`.
    pub(crate) async fn connect(
        server: &str,
        share: &str,
        port: u16,
        account: &Account,
    ) -> Result<SmbShare> {
        let name = format!("\\\\{server}\\{share}");
        let addr = format!("{server}:{port}");
        let config = smb2::ClientConfig {
            addr: addr.clone(),
            timeout: std::time::Duration::from_secs(30),
            username: account.user.clone(),
            password: account.password.clone(),
            domain: account.domain.clone(),
            auto_reconnect: false,
            compression: false,
            // A referral could send the client to any host: not followed.
            dfs_enabled: false,
            ..smb2::ClientConfig::default()
        };
        let mut client = smb2::SmbClient::connect(config).await.map_err(|e| {
            if matches!(
                e.kind(),
                smb2::ErrorKind::AuthRequired | smb2::ErrorKind::AccessDenied
            ) || e.to_string().contains("LOGON_FAILURE")
            {
                Error::Auth {
                    provider: "hyperv".into(),
                    target: format!("SMB at {addr}"),
                    user: account.display(),
                    message: format!("the share's server refused the sign-in: {e}"),
                }
            } else {
                provider_err(
                    format!("cannot reach the SMB server of {name} at {addr}: {e}"),
                    matches!(
                        e.kind(),
                        smb2::ErrorKind::ConnectionLost | smb2::ErrorKind::TimedOut
                    ),
                )
            }
        })?;
        let tree = client
            .connect_share(share)
            .await
            .map_err(|e| provider_err(format!("cannot open share {name}: {e}"), false))?;
        Ok(SmbShare {
            client: tokio::sync::Mutex::new((client, tree)),
            name,
        })
    }

    /// Opens `path` (components below the share root) for reading.
    pub(crate) async fn open(self: &Arc<Self>, path: &[String]) -> Result<SmbFile> {
        // smb2 takes `/` and sends `\`.
        let rel = path.join("/");
        let mut guard = self.client.lock().await;
        let (client, tree) = &mut *guard;
        let reader = client.open_file_reader(tree, &rel).await.map_err(|e| {
            provider_err(
                format!(
                    "cannot open {}\\{} over SMB: {e}",
                    self.name,
                    path.join("\\")
                ),
                false,
            )
        })?;
        Ok(SmbFile {
            size: reader.size(),
            reader: Arc::new(reader),
            pos: 0,
            rt: tokio::runtime::Handle::current(),
            what: format!("{}\\{}", self.name, path.join("\\")),
        })
    }
}

/// A file on a share, read with blocking calls (on a blocking thread) by
/// the image readers.
pub(crate) struct SmbFile {
    reader: Arc<smb2::FileReader>,
    size: u64,
    pos: u64,
    rt: tokio::runtime::Handle,
    what: String,
}

impl std::fmt::Debug for SmbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbFile")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

/// Largest single SMB read asked for.
const SMB_READ: usize = 4 << 20;

impl Read for SmbFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(SMB_READ).min((self.size - self.pos) as usize);
        let data = self
            .rt
            .block_on(self.reader.read_at(self.pos, n as u64))
            .map_err(|e| {
                let kind = match e.kind() {
                    smb2::ErrorKind::ConnectionLost | smb2::ErrorKind::SessionExpired => {
                        std::io::ErrorKind::ConnectionAborted
                    }
                    smb2::ErrorKind::TimedOut => std::io::ErrorKind::TimedOut,
                    smb2::ErrorKind::AccessDenied => std::io::ErrorKind::PermissionDenied,
                    _ => std::io::ErrorKind::Other,
                };
                std::io::Error::new(kind, format!("SMB read of {}: {e}", self.what))
            })?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SmbFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = new;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PathMap {
        PathMap::new(
            &BTreeMap::from([
                ("C:\\Hyper-V".to_string(), "\\\\hv1\\VMs".to_string()),
                ("D:\\VMs\\fast".to_string(), "\\\\hv1\\fast\\x".to_string()),
            ]),
            &BTreeMap::from([("D:\\VMs".to_string(), PathBuf::from("/mnt/vms"))]),
        )
        .unwrap()
    }

    #[test]
    fn paths_map_by_the_longest_prefix_and_never_climb_out() {
        let m = map();
        let (t, rest) = m
            .map("c:\\hyper-v\\web-1\\Virtual Hard Disks\\disk0.vhdx")
            .unwrap();
        assert!(matches!(t, Target::Smb { ref share, .. } if share == "VMs"));
        assert_eq!(rest, ["web-1", "Virtual Hard Disks", "disk0.vhdx"]);
        let (t, rest) = m.map("D:\\VMs\\fast\\a.vhdx").unwrap();
        assert!(matches!(t, Target::Smb { ref sub, .. } if sub == &["x"]));
        assert_eq!(rest, ["a.vhdx"]);
        let (t, _) = m.map("D:/VMs/slow/b.vhdx").unwrap();
        assert!(matches!(t, Target::Local(_)));
        for bad in [
            "C:\\Hyper-V\\..\\Windows\\system32\\config\\SAM",
            "C:\\Hyper-V\\web\\disk.vhdx:secret",
            "C:\\Hyper-V",
            "E:\\other\\x.vhdx",
            "relative\\x.vhdx",
            "\\\\evil\\share\\x.vhdx",
        ] {
            assert!(m.map(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_that_are_not_folders_are_refused() {
        let bad = |k: &str, v: &str| {
            PathMap::new(
                &BTreeMap::from([(k.to_string(), v.to_string())]),
                &BTreeMap::new(),
            )
            .is_err()
        };
        assert!(bad("Hyper-V", "\\\\hv1\\VMs"));
        assert!(bad("C:\\Hyper-V", "hv1\\VMs"));
        assert!(bad("C:\\Hyper-V", "\\\\hv1\\..\\x"));
        assert!(!bad("C:\\Hyper-V", "\\\\hv1\\VMs"));
    }
}
