//! SSH to a node and SFTP reads of its disk files, with the host key
//! checked (pinned fingerprints, or a known_hosts file), and a blocking
//! `Read + Seek` view of a remote file for the image readers.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hypersdk_core::{Error, Result};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How node host keys are checked.
#[derive(Debug, Clone)]
pub(crate) enum HostKeys {
    /// Only these fingerprints (`SHA256:…`).
    Pinned(Vec<String>),
    /// A known_hosts file (None: `~/.ssh/known_hosts`).
    KnownHosts(Option<PathBuf>),
}

/// How the nodes are reached.
#[derive(Debug, Clone)]
pub(crate) struct SshSettings {
    pub(crate) user: String,
    pub(crate) key: Option<PrivateKey>,
    pub(crate) port: u16,
    pub(crate) host_keys: HostKeys,
    /// Node name → address, overriding the cluster's.
    pub(crate) hosts: BTreeMap<String, String>,
}

fn ssh_err(host: &str, what: String) -> Error {
    Error::Provider {
        provider: "proxmox".into(),
        message: format!("SSH to node {host}: {what}"),
        retryable: false,
        source: None,
    }
}

pub(crate) struct Client {
    host: String,
    port: u16,
    keys: HostKeys,
    /// The fingerprint of a refused host key.
    refused: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        k: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = k else {
            return Ok(false);
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = match &self.keys {
            HostKeys::Pinned(want) => want.iter().any(|w| w.trim() == fp),
            HostKeys::KnownHosts(Some(path)) => {
                russh::keys::check_known_hosts_path(&self.host, self.port, key, path)
                    .unwrap_or(false)
            }
            HostKeys::KnownHosts(None) => {
                russh::keys::check_known_hosts(&self.host, self.port, key).unwrap_or(false)
            }
        };
        if !ok {
            *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        }
        Ok(ok)
    }
}

/// An SFTP session on one node; the SSH connection closes with it.
pub(crate) struct Sftp {
    pub(crate) sftp: SftpSession,
    _ssh: russh::client::Handle<Client>,
    pub(crate) host: String,
}

impl std::fmt::Debug for Sftp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sftp")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl SshSettings {
    /// The address of `node` (`reported`: what the cluster says).
    pub(crate) fn address(&self, node: &str, reported: Option<&str>) -> String {
        self.hosts
            .get(node)
            .cloned()
            .or_else(|| reported.map(str::to_string))
            .unwrap_or_else(|| node.to_string())
    }

    /// Connects to `host`, authenticates with the key, opens SFTP.
    pub(crate) async fn connect(&self, host: &str) -> Result<Sftp> {
        let Some(key) = &self.key else {
            return Err(Error::InvalidArgument(
                "proxmox settings: reading disks needs ssh_key (the nodes are read over SFTP)"
                    .into(),
            ));
        };
        let refused = Arc::new(Mutex::new(None));
        let handler = Client {
            host: host.to_string(),
            port: self.port,
            keys: self.host_keys.clone(),
            refused: refused.clone(),
        };
        let config = Arc::new(russh::client::Config {
            window_size: 16 << 20,
            inactivity_timeout: Some(std::time::Duration::from_secs(300)),
            ..Default::default()
        });
        let connect = russh::client::connect(config, (host, self.port), handler);
        let mut ssh = match tokio::time::timeout(std::time::Duration::from_secs(30), connect).await
        {
            Err(_) => {
                return Err(ssh_err(
                    host,
                    format!("no answer on port {} within 30 s", self.port),
                ))
            }
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if let Some(fp) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(ssh_err(
                        host,
                        format!(
                            "its host key {fp} is not trusted (pin it with ssh_host_keys after checking `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the node, or add it to known_hosts)"
                        ),
                    ));
                }
                return Err(ssh_err(
                    host,
                    format!("cannot connect on port {}: {e}", self.port),
                ));
            }
        };
        let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth = ssh
            .authenticate_publickey(
                &self.user,
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
            )
            .await
            .map_err(|e| ssh_err(host, format!("authentication failed: {e}")))?;
        if !auth.success() {
            return Err(Error::Auth {
                provider: "proxmox".into(),
                target: format!("{host}:{} (SSH)", self.port),
                user: self.user.clone(),
                message: "the node refused the SSH key".into(),
            });
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| ssh_err(host, format!("cannot open a session: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| ssh_err(host, format!("no SFTP subsystem: {e}")))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| ssh_err(host, format!("SFTP did not start: {e}")))?;
        Ok(Sftp {
            sftp,
            _ssh: ssh,
            host: host.to_string(),
        })
    }
}

/// A remote file read with blocking calls (on a blocking thread, never an
/// async one): what the image readers, which are synchronous, read from.
pub(crate) struct BlockingFile {
    file: russh_sftp::client::fs::File,
    rt: tokio::runtime::Handle,
    /// Keeps the session (and its connection) open.
    session: Arc<Sftp>,
}

impl std::fmt::Debug for BlockingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingFile").finish_non_exhaustive()
    }
}

impl BlockingFile {
    pub(crate) async fn open(session: Arc<Sftp>, path: &str) -> Result<BlockingFile> {
        let file =
            session.sftp.open(path).await.map_err(|e| {
                ssh_err(&session.host, format!("cannot open {path} over SFTP: {e}"))
            })?;
        Ok(BlockingFile {
            file,
            rt: tokio::runtime::Handle::current(),
            session,
        })
    }
}

impl BlockingFile {
    /// An SFTP status (no such file, permission denied) stays what it is;
    /// anything else means the connection was lost or stalled, which an
    /// export is worth resuming after: told as `ConnectionAborted` (or
    /// `TimedOut`) naming the node, so it counts as transient.
    fn classify(&self, e: std::io::Error) -> std::io::Error {
        use russh_sftp::client::error::Error as SftpError;
        match e.get_ref().and_then(|i| i.downcast_ref::<SftpError>()) {
            Some(SftpError::Status(_)) => e,
            Some(SftpError::Timeout) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("SFTP read from node {} timed out", self.session.host),
            ),
            _ => std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "the SFTP connection to node {} was lost: {e}",
                    self.session.host
                ),
            ),
        }
    }
}

impl std::io::Read for BlockingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (rt, file) = (&self.rt, &mut self.file);
        rt.block_on(file.read(buf)).map_err(|e| self.classify(e))
    }
}

impl std::io::Seek for BlockingFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let (rt, file) = (&self.rt, &mut self.file);
        rt.block_on(file.seek(pos)).map_err(|e| self.classify(e))
    }
}
