//! Azure compute as a peer: the ARM stub (tests/peers/azure_arm.py) over a
//! real Azurite holding the managed disks' page blobs, seeded by
//! tests/peers/seed_azure_vm.py, and Microsoft's management SDK
//! (azure-mgmt-compute, azure-mgmt-network, azure-identity) to read the
//! stub back the way Azure's own clients do.

use std::process::Child;

use crate::azurite::{Azurite, KEY};
use crate::faultproxy::FaultProxy;
use crate::python::{run_python, start_peer};

/// The stub's subscription.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
/// The service principal it accepts.
pub const TENANT: &str = "tenant-1";
/// Its client id.
pub const CLIENT_ID: &str = "hypersdk-test-app";
/// Its secret.
pub const CLIENT_SECRET: &str = "hypersdk-test-secret";
/// The seeded VM's resource group.
pub const RESOURCE_GROUP: &str = "rg-hypersdk";

/// The ARM stub on 127.0.0.1 and its Azurite; both killed on drop.
#[derive(Debug)]
pub struct AzureCompute {
    /// The stub's port.
    pub port: u16,
    /// The Azurite behind it.
    pub azurite: Azurite,
    child: Child,
}

/// Builds a ComputeManagementClient `c` and NetworkManagementClient `n`
/// over the stub's managed-identity endpoint (azure-identity refuses an
/// authority that is not https; its instance metadata path is plain HTTP,
/// as on Azure); calls take `**o` (the SDK's bearer policy otherwise
/// refuses a plain-HTTP endpoint).
const SDK: &str = r#"
import os, sys, json
os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = sys.argv[1]
from azure.identity import ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
kw = dict(base_url=sys.argv[1], credential_scopes=[sys.argv[1] + "/.default"])
cred = ManagedIdentityCredential()
c = ComputeManagementClient(cred, sys.argv[2], **kw)
n = NetworkManagementClient(cred, sys.argv[2], **kw)
o = dict(enforce_https=False)
"#;

impl AzureCompute {
    /// Starts Azurite and the stub.
    pub fn start() -> AzureCompute {
        Self::start_with(false).0
    }

    /// Starts Azurite, a fault-injecting proxy in front of it, and the stub
    /// handing out SAS URLs through the proxy (its own calls to Azurite go
    /// direct).
    pub fn start_with_proxy() -> (AzureCompute, FaultProxy) {
        let (peer, proxy) = Self::start_with(true);
        (peer, proxy.expect("a proxy"))
    }

    fn start_with(proxied: bool) -> (AzureCompute, Option<FaultProxy>) {
        let azurite = Azurite::start();
        let proxy = proxied.then(|| {
            FaultProxy::start(
                format!("127.0.0.1:{}", azurite.port)
                    .parse()
                    .expect("an address"),
            )
        });
        let sas = proxy
            .as_ref()
            .map(|p| format!("http://{}/{}", p.addr(), crate::azurite::ACCOUNT));
        let endpoint = azurite.endpoint();
        let mut args = vec!["--blob-endpoint", endpoint.as_str(), "--key", KEY];
        if let Some(s) = &sas {
            args.extend(["--sas-endpoint", s.as_str()]);
        }
        let (child, port) = start_peer("tests/peers/azure_arm.py", &args);
        (
            AzureCompute {
                port,
                azurite,
                child,
            },
            proxy,
        )
    }

    /// The ARM endpoint (`http://127.0.0.1:PORT`), which is also the
    /// Entra ID authority and the metadata service.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Seeds VM web-02 (see tests/peers/seed_azure_vm.py): running, or
    /// deallocated when `stopped`; with `dir`, the disks' raw content is
    /// written there. Returns the script's JSON (`id`, `disks`: name →
    /// SHA-256).
    pub fn seed_vm(&self, dir: Option<&std::path::Path>, stopped: bool) -> serde_json::Value {
        self.seed(dir, stopped, None)
    }

    /// [`seed_vm`](Self::seed_vm) with data disk web-02-data2 of `mib`
    /// MiB (every other MiB written), for cloud-bench.
    pub fn seed_vm_sized(&self, stopped: bool, mib: u64) -> serde_json::Value {
        self.seed(None, stopped, Some(mib))
    }

    fn seed(
        &self,
        dir: Option<&std::path::Path>,
        stopped: bool,
        big: Option<u64>,
    ) -> serde_json::Value {
        let mut args = vec![self.endpoint(), self.azurite.endpoint(), KEY.to_string()];
        if let Some(d) = dir {
            args.push(d.display().to_string());
        }
        if stopped {
            args.push("--stopped".into());
        }
        if let Some(mib) = big {
            args.extend(["--big".into(), mib.to_string()]);
        }
        crate::python::run_seed("tests/peers/seed_azure_vm.py", &args)
    }

    /// What the stub saw: grants, revokes, open accesses, snapshots.
    pub fn stats(&self) -> serde_json::Value {
        crate::peers::peer_json(self.port, "/_peer/stats")
    }

    /// Runs `code` with the SDK's clients made (see [`SDK`]); returns its
    /// standard output.
    pub fn sdk(&self, code: &str) -> String {
        run_python(&format!("{SDK}\n{code}"), &[&self.endpoint(), SUBSCRIPTION])
    }
}

impl Drop for AzureCompute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
