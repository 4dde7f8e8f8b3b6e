//! A Kubernetes API server with KubeVirt's CRDs, and KubeVirt's export
//! path (tests/peers/kube_cluster.py): etcd, the real kube-apiserver and
//! the real virt-exportserver (built once by
//! tests/peers/build_kube_peers.sh), with the script playing KubeVirt's
//! export controller. Everything on 127.0.0.1; stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::peers::PeerDir;
use crate::python::start_peer_json;

/// The cluster and its export controller.
#[derive(Debug)]
pub struct KubeCluster {
    /// The API server's port.
    pub port: u16,
    /// A kubeconfig for user `admin` (context `test`, namespace `default`).
    pub kubeconfig: PathBuf,
    /// The admin's bearer token.
    pub token: String,
    stats_port: u16,
    child: Child,
    dir: PeerDir,
}

impl KubeCluster {
    /// Starts one whose exports become Ready after `ready_after` seconds
    /// (negative: never).
    pub fn start_with(ready_after: f64) -> KubeCluster {
        Self::start_args(ready_after, &[])
    }

    /// Starts one whose export servers expect another token than the one
    /// in the export's Secret.
    pub fn start_with_wrong_token() -> KubeCluster {
        Self::start_args(0.0, &["--wrong-token"])
    }

    /// Starts one whose export links go through a proxy that cuts the
    /// first `cuts` connections after `after` bytes from the export server.
    pub fn start_cutting(cuts: u32, after: u64) -> KubeCluster {
        let (c, a) = (cuts.to_string(), after.to_string());
        Self::start_args(0.0, &["--cuts", &c, "--cut-after", &a])
    }

    fn start_args(ready_after: f64, extra: &[&str]) -> KubeCluster {
        let dir = PeerDir::new("kube");
        let volumes = dir.0.join("volumes");
        std::fs::create_dir_all(&volumes).expect("volumes dir");
        let ready = ready_after.to_string();
        let mut args = vec![
            "--dir",
            dir.arg(),
            "--volumes",
            volumes.to_str().expect("a UTF-8 path"),
            "--ready-after",
            &ready,
        ];
        args.extend_from_slice(extra);
        let (child, info) = start_peer_json("tests/peers/kube_cluster.py", &args);
        KubeCluster {
            port: info["port"].as_u64().expect("port") as u16,
            kubeconfig: PathBuf::from(info["kubeconfig"].as_str().expect("kubeconfig")),
            token: info["token"].as_str().expect("token").to_string(),
            stats_port: info["stats_port"].as_u64().expect("stats port") as u16,
            child,
            dir,
        }
    }

    /// Starts one whose exports become Ready at once.
    pub fn start() -> KubeCluster {
        Self::start_with(0.0)
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Where PVC `namespace/name` keeps its disk (`…/disk.img`).
    pub fn pvc_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.0.join("volumes").join(namespace).join(name)
    }

    /// The cluster's working directory (logs of etcd, the API server and
    /// each export server).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Seeds VirtualMachine `name` in namespace `default` (see
    /// tests/peers/seed_kubevirt_vm.py): two PVC disks of known content,
    /// running or stopped, with a containerDisk too if asked. Returns the
    /// script's JSON (`disks`: PVC name → SHA-256); the disks are
    /// [`pvc_dir`](Self::pvc_dir)`/disk.img`.
    pub fn seed_vm(&self, name: &str, running: bool, container_disk: bool) -> serde_json::Value {
        self.seed(name, running, container_disk, None, &[])
    }

    /// [`seed_vm`](Self::seed_vm) of a stopped VM with more arguments for
    /// the seed script (`--label K=V`, `--annotation K=V`).
    pub fn seed_vm_with(&self, name: &str, extra: &[&str]) -> serde_json::Value {
        self.seed(name, false, false, None, extra)
    }

    /// [`seed_vm`](Self::seed_vm) of a stopped VM whose data disk is
    /// `mib` MiB (a random MiB every other MiB).
    pub fn seed_vm_sized(&self, name: &str, mib: u64) -> serde_json::Value {
        self.seed(name, false, false, Some(mib), &[])
    }

    fn seed(
        &self,
        name: &str,
        running: bool,
        container_disk: bool,
        big: Option<u64>,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args = vec![
            self.url(),
            self.token.clone(),
            self.dir.0.join("certs/apiserver.crt").display().to_string(),
            self.dir.0.join("volumes").display().to_string(),
            name.to_string(),
        ];
        if running {
            args.push("--running".into());
        }
        if container_disk {
            args.push("--container-disk".into());
        }
        if let Some(mib) = big {
            args.extend(["--big".into(), mib.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        crate::python::run_seed("tests/peers/seed_kubevirt_vm.py", &args)
    }

    /// The JSON a GET of `path` answers, read as admin.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let out = crate::python::run_python(
            "import json, ssl, sys, urllib.request\n\
             req = urllib.request.Request(sys.argv[1] + sys.argv[2], headers={'Authorization': 'Bearer ' + sys.argv[3]})\n\
             print(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=sys.argv[4]), timeout=30).read().decode())",
            &[
                &self.url(),
                path,
                &self.token,
                &self.dir.0.join("certs/apiserver.crt").display().to_string(),
            ],
        );
        serde_json::from_str(out.trim()).expect("JSON")
    }

    /// Names of the objects a GET of `path` lists (e.g.
    /// `/api/v1/namespaces/default/secrets?labelSelector=created-by%3Dhypersdk`),
    /// read as admin.
    pub fn names(&self, path: &str) -> Vec<String> {
        let out = crate::python::run_python(
            "import json, ssl, sys, urllib.request\n\
             req = urllib.request.Request(sys.argv[1] + sys.argv[2], headers={'Authorization': 'Bearer ' + sys.argv[3]})\n\
             items = json.loads(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=sys.argv[4]), timeout=30).read())['items']\n\
             print(json.dumps(sorted(i['metadata']['name'] for i in items)))",
            &[
                &self.url(),
                path,
                &self.token,
                &self.dir.0.join("certs/apiserver.crt").display().to_string(),
            ],
        );
        serde_json::from_str(out.trim()).expect("a list of names")
    }

    /// What the export controller did: `exports_seen`, `servers_started`,
    /// `servers_running` (NS/NAME of exports still served).
    pub fn stats(&self) -> serde_json::Value {
        crate::peers::peer_json(self.stats_port, "/_peer/stats")
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // Closing its standard input lets the script stop its children.
        drop(self.child.stdin.take());
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
