//! Proxmox VE as a peer: the API stub (tests/peers/proxmox_api.py, HTTPS
//! with a self-signed certificate) and a real OpenSSH server as the node,
//! serving the disk files over SFTP. sshd runs in inetd mode (`sshd -i`),
//! one per connection accepted on a listener whose port the OS picked, so
//! nothing races for a port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::python::start_peer;
use crate::run_tool;

/// The API token the stub accepts.
pub const TOKEN: &str = "root@pam!hypersdk=5f0c2d4e-7a1b-4c3d-9e8f-0a1b2c3d4e5f";

/// The stub, the node's SSH server, and their files; all stopped on drop.
#[derive(Debug)]
pub struct Proxmox {
    /// The API's port on 127.0.0.1.
    pub port: u16,
    /// The API certificate's SHA-256 fingerprint (`AB:CD:…`).
    pub fingerprint: String,
    /// The node's SSH port on 127.0.0.1.
    pub ssh_port: u16,
    /// The node's host key fingerprint (`SHA256:…`).
    pub host_key: String,
    /// The client's private key file.
    pub ssh_key: PathBuf,
    /// The work directory (storage under storage/local).
    pub dir: tempfile::TempDir,
    stub: Child,
    sshds: Arc<Mutex<Vec<Child>>>,
    /// The accepted connections, for [`cut_connections`](Self::cut_connections).
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Drop for Proxmox {
    fn drop(&mut self) {
        let _ = self.stub.kill();
        let _ = self.stub.wait();
        for c in self
            .sshds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proxmox {
    /// Starts the stub and the node's SSH server.
    pub fn start() -> Proxmox {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (stub, port) = start_peer(
            "tests/peers/proxmox_api.py",
            &["--dir", d.to_str().expect("utf-8 path")],
        );
        let fingerprint = std::fs::read_to_string(d.join("fingerprint")).expect("fingerprint");
        for k in ["host_key", "client_key"] {
            run_tool(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    d.join(k).to_str().unwrap(),
                ],
            );
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let host_key = run_tool(
            "ssh-keygen",
            &["-l", "-f", d.join("host_key.pub").to_str().unwrap()],
        )
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {0}/host_key\nAuthorizedKeysFile {0}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n\
                 PidFile none\nSubsystem sftp internal-sftp\n",
                d.display()
            ),
        )
        .expect("sshd_config");
        // The privilege separation directory sshd wants when run as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ssh_port = listener.local_addr().expect("addr").port();
        let sshds = Arc::new(Mutex::new(Vec::new()));
        let children = sshds.clone();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = conns.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (Ok(a), Ok(b)) = (conn.try_clone(), conn.try_clone()) else {
                    continue;
                };
                accepted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
                let child = Command::new("/usr/sbin/sshd")
                    .args(["-i", "-e", "-f"])
                    .arg(&config)
                    .stdin(Stdio::from(std::os::fd::OwnedFd::from(a)))
                    .stdout(Stdio::from(std::os::fd::OwnedFd::from(b)))
                    .stderr(Stdio::null())
                    .spawn();
                if let Ok(c) = child {
                    children.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                }
            }
        });
        Proxmox {
            port,
            fingerprint,
            ssh_port,
            host_key,
            ssh_key: d.join("client_key"),
            dir,
            stub,
            sshds,
            conns,
        }
    }

    /// Cuts every SSH connection open now (a shutdown of the socket, which
    /// the node's sshd and the client both see), as a network drop would.
    pub fn cut_connections(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The API URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Provider settings reaching this cluster (API pinned by fingerprint,
    /// the node over SSH on 127.0.0.1 with its host key pinned).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "proxmox",
            "url": self.url(),
            "token": TOKEN,
            "fingerprint": self.fingerprint,
            "ssh_key": self.ssh_key,
            "ssh_port": self.ssh_port,
            "ssh_host_keys": [self.host_key],
            "ssh_hosts": {"pve1": "127.0.0.1", "pve2": "127.0.0.1"},
        })
    }

    /// The file of volume `local:VMID/NAME`.
    pub fn volume(&self, vmid: u64, name: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("storage/local/images/{vmid}/{name}"))
    }

    /// Serves VM `vmid` on `node` in power state `status` ("running",
    /// "stopped") with configuration `config`; its disks' files must exist
    /// (see [`volume`](Self::volume)).
    pub fn seed_vm(&self, node: &str, vmid: u64, status: &str, config: serde_json::Value) {
        let body =
            serde_json::json!({"node": node, "vmid": vmid, "status": status, "config": config});
        let out = Command::new("curl")
            .args([
                "-sSk",
                "--fail",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ])
            .arg(format!("{}/_peer/vm", self.url()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(body.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .expect("curl");
        assert!(out.status.success(), "seeding VM {vmid} failed");
    }

    /// What the stub saw (`/_peer/stats`): snapshots made and deleted, the
    /// snapshots each VM still has, 401s.
    pub fn stats(&self) -> serde_json::Value {
        let out = run_tool(
            "curl",
            &["-sSk", "--fail", &format!("{}/_peer/stats", self.url())],
        );
        serde_json::from_str::<serde_json::Value>(&out).expect("stats")["data"].clone()
    }
}

/// Makes the directory of `path`.
pub fn make_parent(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
}
