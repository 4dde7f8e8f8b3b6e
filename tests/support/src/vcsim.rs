//! The govmomi vCenter simulator, started per test from the launcher in
//! `tests/peers/vcsim` (built with `go build` on first use; Go modules come
//! from the Go module proxy). It listens on 127.0.0.1 on a port the OS picks
//! and stops when the [`Vcsim`] is dropped (its standard input closes).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::workspace_root;

/// A running simulator.
#[derive(Debug)]
pub struct Vcsim {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `https://127.0.0.1:PORT/sdk`, without credentials.
    pub url: String,
    /// The user name it accepts (any, unless started with a login).
    pub user: String,
    /// The password it accepts.
    pub password: String,
    /// Local directory of datastore `LocalDS_0`.
    pub datastore: PathBuf,
    /// SHA-1 thumbprint of its TLS certificate, `AB:CD:…`.
    pub thumbprint: String,
    /// The CA that signed its TLS certificate, PEM (trust it to verify the
    /// server for real).
    pub ca_pem: String,
    /// Disk files (relative to the datastore) of the VMs added at start.
    pub vms: HashMap<String, Vec<String>>,
}

/// The launcher binary, built when missing or older than its sources (once
/// per test process; `tests/peers/install.sh` builds it up front). Not
/// rebuilding an up-to-date binary avoids replacing it while another test
/// process runs it.
fn launcher() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| go_tool("vcsim-launcher", ".")).clone()
}

/// govc, as the govmomi project builds it from its command packages
/// (`tests/peers/vcsim/govc`), for importing packages into the simulator.
pub fn govc() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| go_tool("govc", "govc")).clone()
}

/// `ovfspec FILE.ovf`: what govmomi's OVF reader makes of a descriptor (the
/// ConfigSpec an import creates), as JSON (`tests/peers/vcsim/ovfspec`).
pub fn ovfspec() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| go_tool("ovfspec", "ovfspec")).clone()
}

/// What govmomi's OVF reader makes of descriptor `ovf` ([`ovfspec`]): the
/// ConfigSpec an import creates, as JSON; panics if it refuses it.
pub fn config_spec(ovf: &std::path::Path) -> serde_json::Value {
    let out = Command::new(ovfspec())
        .arg(ovf)
        .output()
        .expect("run ovfspec");
    assert!(
        out.status.success(),
        "govmomi refuses the descriptor {}: {}",
        ovf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ovfspec's JSON")
}

/// The devices of a [`config_spec`] of vSphere type `t`.
pub fn devices_of<'a>(spec: &'a serde_json::Value, t: &str) -> Vec<&'a serde_json::Value> {
    spec["devices"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["type"] == t).collect())
        .unwrap_or_default()
}

/// `target/peers/NAME`, built from package `dir` of the launcher's Go module
/// when missing or older than its sources.
fn go_tool(name: &str, dir: &str) -> PathBuf {
    let src = workspace_root().join("tests/peers/vcsim");
    let out = workspace_root().join("target/peers").join(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_source = [
        src.join(dir).join("main.go"),
        src.join("go.mod"),
        src.join("go.sum"),
    ]
    .iter()
    .filter_map(|f| modified(f))
    .max();
    if let (Some(bin), Some(source)) = (modified(&out), newest_source) {
        if bin >= source {
            return out;
        }
    }
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(format!("./{}", dir.trim_start_matches("./")))
        .current_dir(&src)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run go to build {name}: {e} (Go is needed; bash tests/peers/install.sh)")
        });
    assert!(
        status.success(),
        "go build of tests/peers/vcsim/{dir} failed"
    );
    out
}

impl Vcsim {
    /// Starts a simulator with extra VMs: (name, disk sizes in MiB). The VMs
    /// are powered off; a name ending in `:on` (e.g. `"web:on"`) makes a
    /// running VM of that name.
    pub fn start(vms: &[(&str, &[u64])]) -> Vcsim {
        Self::start_with(vms, None)
    }

    /// The same, accepting only `user`/`password`.
    pub fn start_with_login(vms: &[(&str, &[u64])], user: &str, password: &str) -> Vcsim {
        Self::start_with(vms, Some((user, password)))
    }

    /// The same, with extra launcher flags (e.g. `-lease-timeout 8`).
    pub fn start_with_flags(vms: &[(&str, &[u64])], flags: &[&str]) -> Vcsim {
        Self::start_full(vms, None, flags)
    }

    fn start_with(vms: &[(&str, &[u64])], login: Option<(&str, &str)>) -> Vcsim {
        Self::start_full(vms, login, &[])
    }

    fn start_full(vms: &[(&str, &[u64])], login: Option<(&str, &str)>, flags: &[&str]) -> Vcsim {
        let mut cmd = Command::new(launcher());
        cmd.args(flags);
        for (name, sizes) in vms {
            let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
            let (name, on) = match name.strip_suffix(":on") {
                Some(n) => (n, ":on"),
                None => (*name, ""),
            };
            cmd.arg("-vm")
                .arg(format!("{name}={}{on}", sizes.join(",")));
        }
        if let Some((u, p)) = login {
            cmd.args(["-user", u, "-password", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the vcsim launcher");
        let stdout = child.stdout.take().expect("launcher stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the vcsim launcher did not start within 60 s");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("launcher printed {line:?}: {e}"));
        let full = v["url"].as_str().expect("url").to_string();
        let (scheme, rest) = full.split_once("://").expect("url scheme");
        let (userinfo, hostpath) = rest.split_once('@').expect("url credentials");
        let (user, password) = userinfo.split_once(':').expect("user:password");
        let vms = v["vms"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, files)| {
                        let files = files
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|f| f.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), files)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Vcsim {
            stdin: child.stdin.take(),
            child,
            url: format!("{scheme}://{hostpath}"),
            user: user.to_string(),
            password: password.to_string(),
            datastore: PathBuf::from(v["datastores"]["LocalDS_0"].as_str().expect("datastore")),
            thumbprint: v["thumbprint"].as_str().expect("thumbprint").to_string(),
            ca_pem: v["ca_pem"].as_str().expect("ca_pem").to_string(),
            vms,
        }
    }

    /// The flat file holding the guest bytes of `vm`'s disk `index` (0-based):
    /// write into it before exporting.
    pub fn flat_file(&self, vm: &str, index: usize) -> PathBuf {
        let file = &self.vms[vm][index];
        self.datastore
            .join(file.trim_end_matches(".vmdk").to_string() + "-flat.vmdk")
    }
}

impl Vcsim {
    /// Counters the launcher keeps: `lease_progress`, `lease_complete`,
    /// `lease_abort` (calls received), `nfc_gets`, `nfc_ranged` (disk
    /// downloads, and those that asked for a Range).
    pub fn stats(&self) -> serde_json::Value {
        let url = self.url.trim_end_matches("/sdk").to_string() + "/hsdk/stats";
        let out = crate::run_tool("curl", &["-sSk", &url]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats {out:?}: {e}"))
    }

    /// Runs [`govc`] against this simulator (its URL and credentials in
    /// govc's environment, TLS not verified); returns its standard output,
    /// or panics with its standard error.
    pub fn govc(&self, args: &[&str]) -> String {
        let out = Command::new(govc())
            .args(args)
            .env("GOVC_URL", &self.url)
            .env("GOVC_USERNAME", &self.user)
            .env("GOVC_PASSWORD", &self.password)
            .env("GOVC_INSECURE", "1")
            .output()
            .expect("run govc");
        assert!(
            out.status.success(),
            "govc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The simulator's own address (e.g. to put a proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        let hostport = self
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .expect("host:port in the simulator URL");
        hostport.parse().expect("a socket address")
    }

    /// Makes leases opened from now on hand out disk URLs on `addr` (a
    /// proxy to [`addr`](Self::addr)) instead of the simulator's own.
    pub fn route_nfc_via(&self, addr: std::net::SocketAddr) {
        let url = self.url.trim_end_matches("/sdk").to_string()
            + "/hsdk/nfc-host?addr="
            + &addr.to_string();
        crate::run_tool("curl", &["-sSkf", &url]);
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the launcher exits when its stdin closes
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
