//! A Hyper-V host as a peer: the WinRM stub (tests/peers/winrm_hyperv.py,
//! HTTPS with a self-signed certificate, Basic and NTLM) answering the
//! Hyper-V cmdlets from seeded VMs, and a real Samba server (`smbd`)
//! sharing the folder that stands for the host's `C:\VMs` as `\\…\vms`.
//! smbd cannot take a listening socket from us, so its port is one the OS
//! picked for a socket closed just before; a port taken meanwhile makes it
//! exit, and another is tried.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::python::start_peer;
use crate::{mixed_content, path_str, run_tool};
use serde_json::json;

/// The account the host (WinRM and SMB) accepts.
pub const USER: &str = "Administrator";
/// Its password.
pub const PASSWORD: &str = "Hyper-V.2026!";
/// The host folder the share serves.
pub const HOST_FOLDER: &str = "C:\\VMs";

/// The stub, the SMB server and their files; all stopped on drop.
#[derive(Debug)]
pub struct HyperV {
    /// WinRM's port on 127.0.0.1.
    pub port: u16,
    /// The certificate's SHA-256 fingerprint (`AB:CD:…`).
    pub fingerprint: String,
    /// The SMB server's port on 127.0.0.1.
    pub smb_port: u16,
    /// The work directory (the share under share/).
    pub dir: tempfile::TempDir,
    stub: Child,
    smbd: Child,
}

impl Drop for HyperV {
    fn drop(&mut self) {
        for c in [&mut self.stub, &mut self.smbd] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_smbd(conf: &std::path::Path) -> (Child, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new("/usr/sbin/smbd")
            .args(["-F", "--no-process-group", "-d", "0", "-s"])
            .arg(conf)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smbd (apt package samba)");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (child, port);
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("smbd did not start");
}

impl HyperV {
    /// Starts the WinRM stub and the SMB server.
    pub fn start() -> HyperV {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (stub, port) = start_peer(
            "tests/peers/winrm_hyperv.py",
            &[
                "--dir",
                d.to_str().expect("utf-8 path"),
                "--user",
                USER,
                "--password",
                PASSWORD,
            ],
        );
        let fp = run_tool(
            "openssl",
            &[
                "x509",
                "-noout",
                "-fingerprint",
                "-sha256",
                "-in",
                d.join("winrm.pem").to_str().expect("utf-8"),
            ],
        );
        let fingerprint = fp
            .trim()
            .rsplit('=')
            .next()
            .expect("fingerprint")
            .to_string();
        let samba = d.join("samba");
        for sub in ["private", "state", "lock", "cache", "pid", "log"] {
            std::fs::create_dir_all(samba.join(sub)).expect("samba dirs");
        }
        std::fs::create_dir_all(d.join("share")).expect("share");
        let conf = samba.join("smb.conf");
        let s = samba.display();
        std::fs::write(
            &conf,
            format!(
                "[global]\n  workgroup = HV1\n  server role = standalone server\n  \
                 passdb backend = tdbsam:{s}/private/passdb.tdb\n  private dir = {s}/private\n  \
                 state directory = {s}/state\n  lock directory = {s}/lock\n  cache directory = {s}/cache\n  \
                 pid directory = {s}/pid\n  ncalrpc dir = {s}/state/ncalrpc\n  log file = {s}/log/smbd.log\n  \
                 interfaces = 127.0.0.1\n  bind interfaces only = yes\n  disable netbios = yes\n  \
                 server min protocol = SMB2_10\n  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  \
                 disable spoolss = yes\n  map to guest = never\n  restrict anonymous = 2\n  \
                 username map = {s}/users.map\n\
                 [vms]\n  path = {}\n  read only = yes\n  guest ok = no\n",
                d.join("share").display()
            ),
        )
        .expect("smb.conf");
        // The Windows account name maps to the Unix account smbd runs as.
        std::fs::write(samba.join("users.map"), format!("root = {USER}\n")).expect("users.map");
        let mut pw = Command::new("smbpasswd")
            .args(["-c", conf.to_str().expect("utf-8"), "-s", "-a", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smbpasswd (apt package samba)");
        {
            use std::io::Write;
            let mut stdin = pw.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())
                .expect("password");
        }
        assert!(pw.wait().expect("smbpasswd").success(), "smbpasswd failed");
        let (smbd, smb_port) = start_smbd(&conf);
        HyperV {
            port,
            fingerprint,
            smb_port,
            dir,
            stub,
            smbd,
        }
    }

    /// Cuts every SMB connection open now: kills the smbd processes that
    /// serve them (smbd forks one per connection), as a network drop would.
    pub fn cut_connections(&self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.smbd.id().to_string()])
            .status();
    }

    /// The WinRM URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/wsman", self.port)
    }

    /// Provider settings reaching this host (WinRM pinned by fingerprint,
    /// NTLM; `C:\VMs` read from the share).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "hyperv",
            "url": self.url(),
            "user": USER,
            "password": PASSWORD,
            "fingerprint": self.fingerprint,
            "shares": {HOST_FOLDER: "\\\\127.0.0.1\\vms"},
            "smb_port": self.smb_port,
        })
    }

    /// The local file standing for `C:\VMs\REL` (REL with `\`).
    pub fn file(&self, rel: &str) -> PathBuf {
        let mut p = self.dir.path().join("share");
        for c in rel.split('\\') {
            p.push(c);
        }
        p
    }

    /// Serves a VM (the cmdlets' property names: Name, Id, State,
    /// Generation, ProcessorCount, MemoryStartup, SecureBoot, Disks with
    /// Path, ControllerType, ControllerNumber, ControllerLocation, Size;
    /// Nics with Name, MacAddress, SwitchName, IsLegacy).
    pub fn seed_vm(&self, vm: serde_json::Value) {
        self.curl(
            &["-X", "POST", "--data-binary", &vm.to_string()],
            "/_peer/vm",
        );
    }

    /// VM "web-1" (running, generation 2, secure boot; dynamic VHDX of 24 MiB
    /// on SCSI 0:0 and fixed VHDX of 8 MiB on SCSI 0:1) and "db-1" (off,
    /// generation 1; dynamic VHDX of 8 MiB on IDE 0:0); returns the contents.
    pub fn seed_example(&self) -> Vec<Vec<u8>> {
        let hv = self;
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for (rel, sub, size) in [
            ("web-1\\disk0.vhdx", "dynamic", 24 << 20),
            ("web-1\\data.vhdx", "fixed", 8 << 20),
            ("db-1\\disk0.vhdx", "dynamic", 8 << 20),
        ] {
            let mut data = mixed_content(size);
            data[..rel.len()].copy_from_slice(rel.as_bytes());
            let raw = dir.path().join("src.raw");
            std::fs::write(&raw, &data).unwrap();
            let file = hv.file(rel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            run_tool(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vhdx",
                    "-o",
                    &format!("subformat={sub}"),
                    path_str(&raw),
                    path_str(&file),
                ],
            );
            out.push(data);
        }
        let drive = |path: &str, t: &str, n: u32, l: u32, size: u64| {
            json!({"Path": format!("C:\\VMs\\{path}"), "ControllerType": t, "ControllerNumber": n,
                   "ControllerLocation": l, "Size": size})
        };
        hv.seed_vm(json!({
            "Name": "web-1", "Id": "0f4b2c1e-1111-2222-3333-444455556666", "State": "Running",
            "Generation": 2, "ProcessorCount": 4, "MemoryStartup": 4294967296u64, "SecureBoot": true,
            "Disks": [drive("web-1\\disk0.vhdx", "SCSI", 0, 0, 24 << 20), drive("web-1\\data.vhdx", "SCSI", 0, 1, 8 << 20)],
            "Nics": [{"Name": "Network Adapter", "MacAddress": "00155D010203", "SwitchName": "External"}],
        }));
        hv.seed_vm(json!({
            "Name": "db-1", "Id": "7a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff", "State": "Off",
            "Generation": 1, "ProcessorCount": 1, "MemoryStartup": 1073741824u64,
            "Disks": [drive("db-1\\disk0.vhdx", "IDE", 0, 0, 8 << 20)],
            "Nics": [{"Name": "Legacy Network Adapter", "MacAddress": "00155D0A0B0C", "SwitchName": "Internal", "IsLegacy": true}],
        }));
        out
    }

    /// What the stub saw: checkpoints made and removed, those each VM
    /// still has, 401s, scripts run.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.curl(&[], "/_peer/stats")).expect("stats")
    }

    fn curl(&self, args: &[&str], path: &str) -> String {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let mut a = vec!["-sSk", "--fail"];
        a.extend(args);
        a.push(&url);
        run_tool("curl", &a)
    }
}
