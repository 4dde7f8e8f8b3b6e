//! KubeVirt VMs as a [`Provider`], exported through `VirtualMachineExport`:
//! a token Secret and the export made (through a `VirtualMachineSnapshot`
//! taken first when the VM runs), Ready waited for, every volume downloaded
//! from the export server with the core Range-resuming download (raw, or
//! gzip when only that is offered), and the export, its Secret and the
//! snapshot deleted when the export closes, on every path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hypersdk_core::http::Download;
use hypersdk_core::provider::DiskStream;
use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::served::ServedFormat;
use hypersdk_core::vm::{VmInfo, VmSpec};
use hypersdk_core::{Error, ExportSource, Provider, Result};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::describe::{claim_size, describe, describe_pvc, Described, Volume};

/// How the export server's token is sent ("Export API").
const TOKEN_HEADER: &str = "x-kubevirt-export-token";
/// How often a long wait says it is still waiting.
const SAY_EVERY: Duration = Duration::from_secs(30);

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn vms() -> ApiResource {
    resource("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

fn exports() -> ApiResource {
    resource(
        "export.kubevirt.io",
        "v1beta1",
        "VirtualMachineExport",
        "virtualmachineexports",
    )
}

fn snapshots() -> ApiResource {
    resource(
        "snapshot.kubevirt.io",
        "v1beta1",
        "VirtualMachineSnapshot",
        "virtualmachinesnapshots",
    )
}

fn claims() -> ApiResource {
    resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
}

fn secrets() -> ApiResource {
    resource("", "v1", "Secret", "secrets")
}

/// A Kubernetes API error in the SDK's terms.
pub(crate) fn kube_err(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => Error::Auth {
            provider: "kubevirt".into(),
            target: what.to_string(),
            user: "the kubeconfig's user".into(),
            message: s.message.clone(),
        },
        kube::Error::Api(s) => Error::Provider {
            provider: "kubevirt".into(),
            message: format!("{what}: HTTP {} {}: {}", s.code, s.reason, s.message),
            retryable: s.code == 429 || s.code >= 500,
            source: None,
        },
        other => Error::Provider {
            provider: "kubevirt".into(),
            message: format!("{what}: {}", hypersdk_core::error::chain(&other)),
            retryable: true,
            source: None,
        },
    }
}

fn err(message: String) -> Error {
    Error::Provider {
        provider: "kubevirt".into(),
        message,
        retryable: false,
        source: None,
    }
}

/// KubeVirt as a provider: one namespace's VMs.
pub struct KubevirtProvider {
    client: kube::Client,
    namespace: String,
    selector: Option<String>,
    /// Use the export's internal links (in the cluster) instead of its
    /// external ones.
    internal: bool,
    ready_timeout: Duration,
    ttl: String,
}

impl std::fmt::Debug for KubevirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubevirtProvider")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// A Kubernetes object name (RFC 1123 label, as KubeVirt's names are).
/// `name` as a label value: names may have 253 characters, label values
/// 63 (ending alphanumeric). A longer name keeps its first 46 characters
/// and adds 16 hex digits of its FNV-1a hash (not a secret: `ours` also
/// checks the export's token Secret).
fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let head = name[..46].trim_end_matches(['-', '.']);
    format!("{head}-{hash:016x}")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !n.contains("..")
}

impl KubevirtProvider {
    pub(crate) fn new(
        client: kube::Client,
        namespace: String,
        selector: Option<String>,
        internal: bool,
        ready_timeout: Duration,
        ttl: String,
    ) -> KubevirtProvider {
        KubevirtProvider {
            client,
            namespace,
            selector,
            internal,
            ready_timeout,
            ttl,
        }
    }

    fn api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    /// `NAME` or `NAMESPACE/NAME` of a VirtualMachine, or `pvc:NAME` /
    /// `NAMESPACE/pvc:NAME` of a lone PersistentVolumeClaim (a colon is in
    /// no Kubernetes name): (namespace, name, whether a PVC).
    fn parse(&self, vm: &str) -> Result<(String, String, bool)> {
        let (ns, name) = match vm.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (self.namespace.clone(), vm.to_string()),
        };
        let (name, pvc) = match name.strip_prefix("pvc:") {
            Some(n) => (n.to_string(), true),
            None => (name, false),
        };
        if !valid_name(&ns) || !valid_name(&name) || name.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "{vm:?} is not a VirtualMachine name or NAMESPACE/NAME (or pvc:NAME, NAMESPACE/pvc:NAME of a PersistentVolumeClaim)"
            )));
        }
        Ok((ns, name, pvc))
    }

    async fn describe_value(&self, vm: &Value) -> Result<Described> {
        let ns = vm["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&self.namespace)
            .to_string();
        let claims = self.api(&claims(), &ns);
        let mut sizes = std::collections::HashMap::new();
        for v in vm["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let claim = v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .or(v["dataVolume"]["name"].as_str());
            if let Some(c) = claim.filter(|c| valid_name(c)) {
                let pvc = claims
                    .get_opt(c)
                    .await
                    .map_err(|e| kube_err(&format!("PVC {ns}/{c}"), e))?;
                if let Some(size) = pvc.and_then(|p| claim_size(&serde_json::to_value(&p).ok()?)) {
                    sizes.insert(c.to_string(), size);
                }
            }
        }
        describe(vm, &|c| sizes.get(c).copied())
    }

    async fn find(&self, vm: &str) -> Result<Described> {
        let (ns, name, pvc) = self.parse(vm)?;
        let (ar, kind) = if pvc {
            (claims(), "PersistentVolumeClaim")
        } else {
            (vms(), "VirtualMachine")
        };
        let obj = self
            .api(&ar, &ns)
            .get_opt(&name)
            .await
            .map_err(|e| kube_err(&format!("{kind} {ns}/{name}"), e))?
            .ok_or_else(|| Error::VmNotFound {
                provider: "kubevirt".into(),
                vm: vm.to_string(),
                detail: format!("no {kind} '{name}' in namespace {ns}"),
            })?;
        let v = serde_json::to_value(&obj).map_err(|e| err(format!("{kind} {vm}: {e}")))?;
        if pvc {
            describe_pvc(&v)
        } else {
            self.describe_value(&v).await
        }
    }
}

#[async_trait]
impl Provider for KubevirtProvider {
    fn name(&self) -> &str {
        "kubevirt"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let mut lp = ListParams::default();
        if let Some(s) = &self.selector {
            lp = lp.labels(s);
        }
        let list = self
            .api(&vms(), &self.namespace)
            .list(&lp)
            .await
            .map_err(|e| kube_err(&format!("VirtualMachines of {}", self.namespace), e))?;
        let mut out = Vec::new();
        for obj in list.items {
            let v = serde_json::to_value(&obj).map_err(|e| err(e.to_string()))?;
            out.push(VmInfo::from(&self.describe_value(&v).await?.spec));
        }
        Ok(out)
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        Ok(self.find(vm).await?.spec)
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        let d = self.find(vm).await?;
        self.open(d, None).await
    }

    /// The interrupted export's VirtualMachineExport (and snapshot), when
    /// they are still there and this provider's; else a new export.
    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let d = self.find(vm).await?;
        let kept: Option<Made> = serde_json::from_str(token).ok();
        self.open(d, kept).await
    }
}

/// What an export made in the cluster (its resume token).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Made {
    namespace: String,
    export: String,
    secret: String,
    snapshot: Option<String>,
}

/// One volume of a Ready export.
#[derive(Debug)]
struct Link {
    url: String,
    gzip: bool,
}

/// One VM being exported.
struct KubevirtSource {
    client: kube::Client,
    spec: VmSpec,
    made: Made,
    http: reqwest::Client,
    token: String,
    links: Vec<Link>,
}

impl std::fmt::Debug for KubevirtSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubevirtSource")
            .field("vm", &self.spec.name)
            .field("made", &self.made)
            .finish_non_exhaustive()
    }
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| err(format!("/dev/urandom: {e}")))?,
        &mut b,
    )
    .map_err(|e| err(format!("/dev/urandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl KubevirtProvider {
    async fn open(&self, d: Described, kept: Option<Made>) -> Result<Box<dyn ExportSource>> {
        for (disk, v) in d.spec.disks.iter().zip(&d.volumes) {
            if let Volume::ContainerDisk(image) = v {
                return Err(err(format!(
                    "VM {}: disk {} is a containerDisk ({image}), an image in a registry that VirtualMachineExport cannot export; copy that image with a registry tool, or move the disk to a PVC",
                    d.spec.id, disk.name
                )));
            }
        }
        if d.spec.disks.is_empty() {
            return Err(err(format!(
                "VM {} has no disk on a PVC to export",
                d.spec.id
            )));
        }
        let ns = d
            .spec
            .id
            .split_once('/')
            .map(|(a, _)| a.to_string())
            .unwrap_or_default();
        let vm = d.spec.name.clone();
        let adopted = match kept {
            Some(m) if m.namespace == ns && self.ours(&m, &vm, d.pvc).await => Some(m),
            _ => None,
        };
        let made = match adopted {
            Some(m) => {
                tracing::info!(vm = %d.spec.id, export = %m.export, "taking up the interrupted export");
                m
            }
            None => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |t| t.as_secs());
                let base: String = vm.chars().take(40).collect();
                let made = Made {
                    namespace: ns.clone(),
                    export: format!("hypersdk-{base}-{stamp}"),
                    secret: format!("hypersdk-{base}-{stamp}-token"),
                    snapshot: d.running.then(|| format!("hypersdk-{base}-{stamp}")),
                };
                if let Err(e) = self.create(&made, &vm, d.pvc).await {
                    release(&self.client, &made).await;
                    return Err(e);
                }
                made
            }
        };
        match self.ready(&d, made.clone()).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => {
                release(&self.client, &made).await;
                Err(e)
            }
        }
    }

    /// The label naming what an export is of: a VM, or a lone PVC.
    fn of(pvc: bool) -> &'static str {
        if pvc {
            "hypersdk.io/pvc"
        } else {
            "hypersdk.io/vm"
        }
    }

    /// Whether `m` names an export (and secret) this provider made of VM
    /// (or PVC) `vm`.
    async fn ours(&self, m: &Made, vm: &str, pvc: bool) -> bool {
        let Ok(Some(e)) = self.api(&exports(), &m.namespace).get_opt(&m.export).await else {
            return false;
        };
        let labels = e.metadata.labels.clone().unwrap_or_default();
        labels.get("created-by").map(String::as_str) == Some("hypersdk")
            && labels.get(Self::of(pvc)).map(String::as_str) == Some(label_value(vm).as_str())
            && e.data["spec"]["tokenSecretRef"] == m.secret.as_str()
    }

    /// The token Secret, the snapshot if any (waited for), the export.
    async fn create(&self, made: &Made, vm: &str, pvc: bool) -> Result<()> {
        let ns = &made.namespace;
        let labels = json!({"created-by": "hypersdk", Self::of(pvc): label_value(vm)});
        let secret: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": made.secret, "labels": labels},
            "stringData": {"token": random_token()?},
        }))
        .map_err(|e| err(e.to_string()))?;
        self.api(&secrets(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| kube_err(&format!("Secret {ns}/{}", made.secret), e))?;
        let source = if let Some(snap) = &made.snapshot {
            tracing::info!(vm, snapshot = %snap, "the VM runs: snapshotting it first");
            let s: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                "metadata": {"name": snap, "labels": labels},
                "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}},
            }))
            .map_err(|e| err(e.to_string()))?;
            let api = self.api(&snapshots(), ns);
            api.create(&PostParams::default(), &s)
                .await
                .map_err(|e| kube_err(&format!("VirtualMachineSnapshot {ns}/{snap}"), e))?;
            self.wait(&format!("snapshot {ns}/{snap}"), || async {
                let s = api
                    .get(snap)
                    .await
                    .map_err(|e| kube_err(&format!("VirtualMachineSnapshot {ns}/{snap}"), e))?;
                let st = &s.data["status"];
                if st["phase"] == "Failed" {
                    return Err(err(format!(
                        "the snapshot {ns}/{snap} failed: {}",
                        st["error"]["message"].as_str().unwrap_or("no message")
                    )));
                }
                Ok((st["readyToUse"] == true)
                    .then_some(())
                    .ok_or(st["phase"].as_str().unwrap_or("pending").to_string()))
            })
            .await?;
            json!({"apiGroup": "snapshot.kubevirt.io", "kind": "VirtualMachineSnapshot", "name": snap})
        } else if pvc {
            json!({"apiGroup": "", "kind": "PersistentVolumeClaim", "name": vm})
        } else {
            json!({"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm})
        };
        let e: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "export.kubevirt.io/v1beta1", "kind": "VirtualMachineExport",
            "metadata": {"name": made.export, "labels": labels},
            // ttlDuration: a killed export cleans itself up.
            "spec": {"source": source, "tokenSecretRef": made.secret, "ttlDuration": self.ttl},
        }))
        .map_err(|e| err(e.to_string()))?;
        self.api(&exports(), ns)
            .create(&PostParams::default(), &e)
            .await
            .map_err(|e| kube_err(&format!("VirtualMachineExport {ns}/{}", made.export), e))?;
        Ok(())
    }

    /// Polls `check` (Ok(Ok(v)) done, Ok(Err(state)) not yet) until done or
    /// the ready timeout, saying so every 30 s.
    async fn wait<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<std::result::Result<T, String>>>,
    {
        let start = Instant::now();
        let mut said = start;
        let mut delay = Duration::from_millis(100);
        loop {
            let state = match check().await? {
                Ok(v) => return Ok(v),
                Err(state) => state,
            };
            if start.elapsed() > self.ready_timeout {
                return Err(err(format!(
                    "{what} is not ready after {} s (still {state})",
                    self.ready_timeout.as_secs()
                )));
            }
            if said.elapsed() >= SAY_EVERY {
                tracing::info!(waited_s = start.elapsed().as_secs(), state = %state, "waiting for {what}");
                said = Instant::now();
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits for the export to be Ready and opens its links.
    async fn ready(&self, d: &Described, made: Made) -> Result<KubevirtSource> {
        let ns = made.namespace.clone();
        let api = self.api(&exports(), &ns);
        let what = format!("the VirtualMachineExport {ns}/{}", made.export);
        let status = self
            .wait(&what, || async {
                let e = api
                    .get(&made.export)
                    .await
                    .map_err(|e| kube_err(&what, e))?;
                let st = e.data["status"].clone();
                let reason = st["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready")
                    .and_then(|c| c["message"].as_str().or(c["reason"].as_str()))
                    .unwrap_or("")
                    .to_string();
                match st["phase"].as_str().unwrap_or("Pending") {
                    "Ready" => Ok(Ok(st)),
                    "Skipped" | "Terminated" => Err(err(format!(
                        "{what} ended {}: {reason}",
                        st["phase"].as_str().unwrap_or("")
                    ))),
                    p => Ok(Err(format!(
                        "{p}{}{reason}",
                        if reason.is_empty() { "" } else { ": " }
                    ))),
                }
            })
            .await?;
        let links = &status["links"][if self.internal {
            "internal"
        } else {
            "external"
        }];
        let cert = links["cert"].as_str().unwrap_or("");
        let http = tls_client(cert)?;
        let secret = self
            .api(&secrets(), &ns)
            .get(&made.secret)
            .await
            .map_err(|e| kube_err(&format!("Secret {ns}/{}", made.secret), e))?;
        let token = secret.data["data"]["token"]
            .as_str()
            .and_then(|t| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(t).ok()
            })
            .and_then(|t| String::from_utf8(t).ok())
            .ok_or_else(|| err(format!("the Secret {ns}/{} holds no token", made.secret)))?;
        let volumes = links["volumes"].as_array().cloned().unwrap_or_default();
        let mut spec = d.spec.clone();
        let mut out = Vec::new();
        let mut origin = None;
        for (i, (disk, v)) in spec.disks.iter().zip(&d.volumes).enumerate() {
            let Volume::Claim(claim) = v else { continue };
            // A VM's export names each volume after its PVC; a snapshot's
            // after the PVC restored from it (`…-CLAIM`).
            let vol = volumes
                .iter()
                .find(|x| x["name"] == claim.as_str())
                .or_else(|| {
                    volumes.iter().find(|x| {
                        x["name"]
                            .as_str()
                            .is_some_and(|n| n.ends_with(&format!("-{claim}")))
                    })
                })
                .ok_or_else(|| {
                    err(format!(
                        "{what} has no volume for disk {} (PVC {claim})",
                        disk.name
                    ))
                })?;
            let url = |f: &str| {
                vol["formats"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["format"] == f)
                    .and_then(|x| x["url"].as_str())
                    .map(str::to_string)
            };
            let link = match (url("raw"), url("gzip")) {
                (Some(u), _) => Link {
                    url: u,
                    gzip: false,
                },
                (None, Some(u)) => Link { url: u, gzip: true },
                _ => {
                    return Err(err(format!(
                        "{what} offers disk {} neither raw nor gzip",
                        disk.name
                    )))
                }
            };
            check_url(&link.url, &made, self.internal, &mut origin)?;
            out.push((i, link));
        }
        // Every URL is checked before the first request.
        for (i, link) in &out {
            let disk = &mut spec.disks[*i];
            if !link.gzip {
                // The raw image's size is the disk's (a filesystem PVC is
                // larger than the disk.img it holds).
                let resp = http
                    .head(&link.url)
                    .header(TOKEN_HEADER, &token)
                    .send()
                    .await
                    .map_err(|e| {
                        err(format!(
                            "HEAD of disk {}'s export URL: {}",
                            disk.name,
                            hypersdk_core::error::chain(&e.without_url())
                        ))
                    })?;
                if resp.status().as_u16() == 401 || resp.status().as_u16() == 403 {
                    return Err(Error::Auth {
                        provider: "kubevirt".into(),
                        target: format!("the export server of {what}"),
                        user: format!("token of Secret {ns}/{}", made.secret),
                        message: format!("HTTP {}", resp.status()),
                    });
                }
                // The header, not the body's length (a HEAD has none).
                let length = resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match length {
                    Some(n) if resp.status().is_success() => disk.capacity = n,
                    _ => {
                        return Err(err(format!(
                            "the export server answered HTTP {} for disk {}",
                            resp.status(),
                            disk.name
                        )))
                    }
                }
            }
        }
        Ok(KubevirtSource {
            client: self.client.clone(),
            spec,
            made,
            http,
            token,
            links: out.into_iter().map(|(_, l)| l).collect(),
        })
    }
}

/// Where an export's volume URLs may point, as KubeVirt's export
/// controller writes them (pkg/storage/export/export/links.go, `getLinks`):
/// https, no user info, and all on one host and port; an internal link's
/// host is the export's Service, `SERVICE.NAMESPACE.svc`; an external one's
/// path lies below the export's own,
/// `/api/export.kubevirt.io/v1beta1/namespaces/NAMESPACE/virtualmachineexports/NAME/`
/// (`externalUrlLinkFormat`). Anything else is refused before a request is
/// made: the export token would be sent there, and its answer would become
/// the exported disk. `origin` is the first URL's (scheme, host, port),
/// which the others must share.
fn check_url(
    u: &str,
    made: &Made,
    internal: bool,
    origin: &mut Option<(String, u16)>,
) -> Result<()> {
    let shown = u.split('?').next().unwrap_or(u);
    let refuse = |why: &str| {
        Err(err(format!(
            "the VirtualMachineExport {}/{} offers a volume URL {why} ({shown}): refused",
            made.namespace, made.export
        )))
    };
    let Ok(url) = reqwest::Url::parse(u) else {
        return refuse("that does not parse");
    };
    if url.scheme() != "https" {
        return refuse("that is not https");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("with user info");
    }
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return refuse("without a host");
    };
    let here = (host.to_ascii_lowercase(), port);
    match origin {
        Some(first) if *first != here => {
            return refuse(&format!(
                "on another host than its first volume's ({}:{})",
                first.0, first.1
            ))
        }
        Some(_) => {}
        None => *origin = Some(here.clone()),
    }
    if internal {
        if !here.0.ends_with(&format!(".{}.svc", made.namespace)) {
            return refuse(&format!(
                "outside the namespace's Services (*.{}.svc)",
                made.namespace
            ));
        }
    } else {
        let base = format!(
            "/api/export.kubevirt.io/v1beta1/namespaces/{}/virtualmachineexports/{}/",
            made.namespace, made.export
        );
        if !url.path().starts_with(&base) {
            return refuse(&format!("outside the export's path ({base})"));
        }
    }
    Ok(())
}

/// An HTTP client trusting only `cert_pem` (the export's CA), or the
/// system roots when the export gives none.
fn tls_client(cert_pem: &str) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none());
    if !cert_pem.trim().is_empty() {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
            let c = c.map_err(|e| err(format!("the export's CA: {e}")))?;
            roots
                .add(c)
                .map_err(|e| err(format!("the export's CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err("the export's CA holds no certificate".into()));
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        b = b.tls_backend_preconfigured(cfg);
    }
    b.build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// Deletes the export, its Secret and its snapshot; failures are logged.
async fn release(client: &kube::Client, m: &Made) {
    let dp = DeleteParams::default();
    for (ar, name, what) in [
        (exports(), Some(&m.export), "VirtualMachineExport"),
        (secrets(), Some(&m.secret), "Secret"),
        (snapshots(), m.snapshot.as_ref(), "VirtualMachineSnapshot"),
    ] {
        let Some(name) = name else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &m.namespace, &ar);
        match api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(kind = what, name = %name, error = %e, "cannot delete what the export made: delete it by hand")
            }
        }
    }
}

#[async_trait]
impl ExportSource for KubevirtSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The names of what the export made.
    fn resume_token(&self) -> Option<String> {
        serde_json::to_string(&self.made).ok()
    }

    fn served_format(&self, index: usize) -> Option<ServedFormat> {
        self.links
            .get(index)
            .filter(|l| l.gzip)
            .map(|_| ServedFormat::GzipRaw)
    }

    async fn open_served(&self, index: usize, offset: u64) -> Result<Option<DiskStream>> {
        match self.links.get(index) {
            Some(l) if l.gzip => Ok(Some(self.download(index, offset))),
            _ => Ok(None),
        }
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let link = self
            .links
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?;
        if link.gzip {
            let disk = &self.spec.disks[index];
            let served = self.download(index, 0);
            let guest = hypersdk_core::served::guest_bytes(
                ServedFormat::GzipRaw,
                served,
                disk.capacity,
                (&self.spec.name, &disk.name, &disk.location),
            );
            return Ok(hypersdk_core::provider::skip_bytes(guest, offset));
        }
        if offset >= self.spec.disks[index].capacity {
            // Nothing left (a Range from the end is not satisfiable).
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        Ok(self.download(index, offset))
    }

    async fn close(&self) -> Result<()> {
        release(&self.client, &self.made).await;
        Ok(())
    }
}

impl KubevirtSource {
    /// Volume `index` as the export server serves it, from byte `offset`,
    /// resuming after breaks with Range.
    fn download(&self, index: usize, offset: u64) -> DiskStream {
        let disk = &self.spec.disks[index];
        let token = self.token.clone();
        Download {
            client: self.http.clone(),
            url: self.links[index].url.clone(),
            prepare: Some(Arc::new(move |r: reqwest::RequestBuilder| {
                r.header(TOKEN_HEADER, token.as_str())
            })),
            retry: RetryPolicy::default(),
            what: "its export URL".into(),
            vm: self.spec.name.clone(),
            disk: disk.name.clone(),
            location: disk.location.clone(),
        }
        .stream(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_fit_in_label_values() {
        assert_eq!(label_value("web-1"), "web-1");
        let long = format!("{}-x", "a".repeat(44)) + &"b".repeat(200);
        let v = label_value(&long);
        assert!(v.len() <= 63 && v.starts_with("aaaa"), "{v}");
        assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        assert_ne!(v, label_value(&format!("{long}c")));
        assert_eq!(v, label_value(&long));
    }

    #[test]
    fn volume_urls_stay_on_the_exports_host_and_path() {
        let made = Made {
            namespace: "vms".into(),
            export: "hsdk-web-1".into(),
            secret: "s".into(),
            snapshot: None,
        };
        let base = "https://export.apps.example:8443/api/export.kubevirt.io/v1beta1/namespaces/vms/virtualmachineexports/hsdk-web-1/volumes";
        let mut origin = None;
        check_url(&format!("{base}/root/disk.img"), &made, false, &mut origin).unwrap();
        check_url(
            &format!("{base}/data/disk.img.gz"),
            &made,
            false,
            &mut origin,
        )
        .unwrap();
        let refused = |u: &str, internal: bool| {
            let mut origin = Some(("export.apps.example".to_string(), 8443));
            check_url(u, &made, internal, &mut origin)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| panic!("{u} accepted"))
        };
        for (u, why) in [
            (format!("http{}", &base[5..]), "not https"),
            (
                "https://169.254.169.254/latest/meta-data".into(),
                "another host",
            ),
            (base.replace(":8443", ":6443"), "another host"),
            (base.replace("https://", "https://u:p@"), "user info"),
            (
                base.replace("/vms/", "/other/"),
                "outside the export's path",
            ),
            (
                base.replace("hsdk-web-1", "hsdk-web-2"),
                "outside the export's path",
            ),
            (
                format!("{base}/../../../../../../secrets"),
                "outside the export's path",
            ),
            ("https://".into(), "does not parse"),
        ] {
            let e = refused(&u, false);
            assert!(e.contains(why) && e.contains("vms/hsdk-web-1"), "{u}: {e}");
            assert!(!e.contains("token="), "{e}");
        }
        // Internal links: the export's Service in the namespace.
        let mut origin = None;
        check_url(
            "https://virt-export-hsdk-web-1.vms.svc/volumes/root/disk.img",
            &made,
            true,
            &mut origin,
        )
        .unwrap();
        let mut origin = None;
        let e = check_url(
            "https://kubernetes.default.svc/api",
            &made,
            true,
            &mut origin,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("*.vms.svc"), "{e}");
        // The token in a query is never shown.
        let e = refused(
            &format!("http{}/x?x-kubevirt-export-token=SECRET", &base[5..]),
            false,
        );
        assert!(!e.contains("SECRET"), "{e}");
    }
}
