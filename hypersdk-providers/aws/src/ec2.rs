//! The EC2 Query API (API version 2016-11-15): the calls the provider makes,
//! each request signed with SigV4, each answer parsed from the XML the EC2
//! API Reference documents.

use std::time::Duration;

use hypersdk_core::{Error, Result};
use hypersdk_formats::error::{display_text, MAX_SHOWN_MESSAGE};
use hypersdk_formats::xml::{self, Element};

use crate::client::{err, Endpoint};
use crate::sigv4;
use hypersdk_core::http::read_bounded;

/// The API version every request names.
const VERSION: &str = "2016-11-15";
/// The longest answer read (a page of DescribeInstances is far smaller).
const MAX_ANSWER: usize = 16 << 20;
/// Pages of one listing read at most.
const MAX_PAGES: usize = 10_000;

/// An EC2 endpoint with credentials.
pub struct Ec2 {
    ep: Endpoint,
}

impl std::fmt::Debug for Ec2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2").field("endpoint", &self.ep).finish()
    }
}

/// An instance as DescribeInstances describes it (the fields used).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instance {
    /// `i-0123…`.
    pub id: String,
    /// Its `Name` tag, if any.
    pub name: Option<String>,
    /// `t3.large`, …
    pub instance_type: String,
    /// `pending`, `running`, `stopping`, `stopped`, …
    pub state: String,
    /// `x86_64`, `arm64`.
    pub architecture: Option<String>,
    /// `windows` for Windows instances (else absent).
    pub platform: Option<String>,
    /// `Linux/UNIX`, `Windows`, … (platformDetails).
    pub platform_details: Option<String>,
    /// `legacy-bios` or `uefi` (bootMode, or currentInstanceBootMode).
    pub boot_mode: Option<String>,
    /// The root device's name (`/dev/xvda`).
    pub root_device: Option<String>,
    /// Cores and threads per core, if reported.
    pub cpu: Option<(u32, u32)>,
    /// Block devices: device name and volume id.
    pub volumes: Vec<(String, String)>,
    /// Network interfaces: id, MAC address, subnet, private IP.
    pub nics: Vec<Nic>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

/// A network interface of an instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nic {
    /// `eni-…`.
    pub id: String,
    /// Its MAC address.
    pub mac: Option<String>,
    /// `subnet-…`.
    pub subnet: Option<String>,
    /// `vpc-…`.
    pub vpc: Option<String>,
    /// Its device index (0 is the primary interface).
    pub index: u32,
}

/// An EBS volume (DescribeVolumes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Volume {
    /// `vol-…`.
    pub id: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// The snapshot it was made from, if any.
    pub snapshot: Option<String>,
}

/// An instance type's size (DescribeInstanceTypes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TypeInfo {
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Ec2 {
    /// A client of `endpoint` (`https://ec2.REGION.amazonaws.com`, or an
    /// `http://` test server) in `region`.
    pub fn new(
        endpoint: &str,
        region: &str,
        creds: impl Into<crate::creds::CredentialSource>,
    ) -> Result<Ec2> {
        Ok(Ec2 {
            ep: Endpoint::new("EC2", endpoint, region, creds.into())?,
        })
    }

    fn err(&self, message: String, retryable: bool) -> Error {
        err(message, retryable)
    }

    /// Calls `action` with `params`; the answer's root element. Transient
    /// failures (connection errors, 5xx, throttling) are tried again with
    /// the core retry policy.
    pub async fn call(&self, action: &str, params: &[(String, String)]) -> Result<Element> {
        hypersdk_core::retry::RetryPolicy::default()
            .run(&format!("EC2 {action}"), |_| self.call_once(action, params))
            .await
    }

    async fn call_once(&self, action: &str, params: &[(String, String)]) -> Result<Element> {
        let mut form = vec![
            ("Action".to_string(), action.to_string()),
            ("Version".to_string(), VERSION.to_string()),
        ];
        form.extend_from_slice(params);
        let body = sigv4::canonical_query(&form);
        let ct = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("content-type".to_string(), ct.to_string())];
        let req = sigv4::Request {
            method: "POST",
            host: &self.ep.host,
            path: "/",
            query: &[],
            headers: &headers,
            body: body.as_bytes(),
        };
        let signed = self.ep.sign(&req, "ec2").await?;
        let mut rb = self
            .ep
            .http
            .post(format!("{}/", self.ep.url))
            .header("content-type", ct)
            .body(body);
        for (k, v) in signed {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.map_err(|e| {
            self.err(
                format!(
                    "EC2 {action} at {}: {}",
                    self.ep.url,
                    hypersdk_core::error::chain(&e.without_url())
                ),
                true,
            )
        })?;
        let status = resp.status();
        let bytes = read_bounded(resp, MAX_ANSWER)
            .await
            .map_err(|e| self.err(format!("EC2 {action}: reading the answer: {e}"), true))?;
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            // <Response><Errors><Error><Code/><Message/></Error></Errors>…
            let (code, message) = xml::parse(&text)
                .ok()
                .and_then(|root| {
                    let e = root.find("Errors")?.find("Error")?;
                    Some((
                        e.find_text("Code").unwrap_or("").to_string(),
                        e.find_text("Message").unwrap_or("").to_string(),
                    ))
                })
                .unwrap_or_else(|| (String::new(), format!("HTTP {status}")));
            let message = display_text(&message, MAX_SHOWN_MESSAGE);
            let retryable = status.is_server_error()
                || matches!(code.as_str(), "RequestLimitExceeded" | "Throttling");
            if matches!(
                code.as_str(),
                "AuthFailure"
                    | "UnauthorizedOperation"
                    | "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
            ) {
                return Err(Error::Auth {
                    provider: "aws".into(),
                    target: self.ep.url.clone(),
                    user: self.ep.creds.who(),
                    message: format!("{code}: {message}"),
                });
            }
            return Err(self.err(
                format!(
                    "EC2 {action}: {code}{}{message}",
                    if code.is_empty() { "" } else { ": " }
                ),
                retryable,
            ));
        }
        xml::parse(&text).map_err(|e| self.err(format!("EC2 {action}: {e}"), false))
    }

    /// Every page of `action`, following `nextToken`.
    async fn pages(&self, action: &str, params: &[(String, String)]) -> Result<Vec<Element>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut p = params.to_vec();
            if let Some(t) = &token {
                p.push(("NextToken".into(), t.clone()));
            }
            let page = self.call(action, &p).await?;
            token = page
                .find_text("nextToken")
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            out.push(page);
            if token.is_none() {
                return Ok(out);
            }
        }
        Err(self.err(format!("EC2 {action}: more than {MAX_PAGES} pages"), false))
    }

    /// Instances, all or those with ids `ids`.
    pub async fn instances(&self, ids: &[&str]) -> Result<Vec<Instance>> {
        let params: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("InstanceId.{}", i + 1), id.to_string()))
            .collect();
        let mut out = Vec::new();
        for page in self.pages("DescribeInstances", &params).await? {
            for r in items(&page, "reservationSet") {
                for i in items(r, "instancesSet") {
                    out.push(instance(i));
                }
            }
        }
        Ok(out)
    }

    /// AMI `id` as an instance that would boot from it (no type, no NICs;
    /// its block devices' snapshots in place of volumes), with those
    /// snapshots as volumes; None if there is no such AMI.
    pub async fn image(&self, id: &str) -> Result<Option<(Instance, Vec<Volume>)>> {
        let pages = match self
            .pages("DescribeImages", &[("ImageId.1".into(), id.to_string())])
            .await
        {
            Ok(p) => p,
            Err(e) if e.to_string().contains("InvalidAMIID") => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(img) = pages.iter().flat_map(|p| items(p, "imagesSet")).next() else {
            return Ok(None);
        };
        let mut vols = Vec::new();
        let mut devices = Vec::new();
        for m in items(img, "blockDeviceMapping") {
            let (Some(dev), Some(ebs)) = (text(m, "deviceName"), m.find("ebs")) else {
                continue; // an instance-store (ephemeral) device: no data to export
            };
            let Some(snap) = text(ebs, "snapshotId") else {
                continue;
            };
            let size_gib = ebs
                .find_text("volumeSize")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            devices.push((dev, snap.clone()));
            vols.push(Volume {
                id: snap.clone(),
                size_gib,
                snapshot: Some(snap),
            });
        }
        let tags: Vec<(String, String)> = items(img, "tagSet")
            .map(|t| {
                (
                    t.find_text("key").unwrap_or_default().to_string(),
                    t.find_text("value").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let inst = Instance {
            id: img.find_text("imageId").unwrap_or(id).to_string(),
            name: img
                .children
                .iter()
                .find(|c| c.name == "name")
                .map(|c| c.text.clone())
                .filter(|n| !n.is_empty()),
            state: img.find_text("imageState").unwrap_or_default().to_string(),
            architecture: text(img, "architecture"),
            platform: text(img, "platform"),
            platform_details: text(img, "platformDetails"),
            boot_mode: text(img, "bootMode"),
            root_device: text(img, "rootDeviceName"),
            volumes: devices,
            tags,
            ..Default::default()
        };
        Ok(Some((inst, vols)))
    }

    /// Snapshot `id` as a volume of its size; None if there is none.
    pub async fn snapshot(&self, id: &str) -> Result<Option<Volume>> {
        let pages = match self
            .pages(
                "DescribeSnapshots",
                &[("SnapshotId.1".into(), id.to_string())],
            )
            .await
        {
            Ok(p) => p,
            Err(e) if e.to_string().contains("InvalidSnapshot.NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = pages
            .iter()
            .flat_map(|p| items(p, "snapshotSet"))
            .next()
            .map(|s| {
                s.find_text("volumeSize")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            });
        Ok(size.map(|size_gib| Volume {
            id: id.to_string(),
            size_gib,
            snapshot: Some(id.to_string()),
        }))
    }

    /// Volumes with ids `ids`.
    pub async fn volumes(&self, ids: &[&str]) -> Result<Vec<Volume>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("VolumeId.{}", i + 1), id.to_string()))
            .collect();
        let mut out = Vec::new();
        for page in self.pages("DescribeVolumes", &params).await? {
            for v in items(&page, "volumeSet") {
                out.push(Volume {
                    id: v.find_text("volumeId").unwrap_or_default().to_string(),
                    size_gib: v
                        .find_text("size")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    snapshot: v
                        .find_text("snapshotId")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                });
            }
        }
        Ok(out)
    }

    /// The size of instance type `name`.
    pub async fn instance_type(&self, name: &str) -> Result<TypeInfo> {
        let page = self
            .call(
                "DescribeInstanceTypes",
                &[("InstanceType.1".into(), name.to_string())],
            )
            .await?;
        let t = items(&page, "instanceTypeSet")
            .next()
            .ok_or_else(|| self.err(format!("EC2 knows no instance type {name}"), false))?;
        Ok(TypeInfo {
            vcpus: t
                .find("vCpuInfo")
                .and_then(|v| v.find_text("defaultVCpus"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            memory_mib: t
                .find("memoryInfo")
                .and_then(|m| m.find_text("sizeInMiB"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }
}

impl Ec2 {
    /// Snapshots volume `volume`; the snapshot's id.
    pub async fn create_snapshot(&self, volume: &str, description: &str) -> Result<String> {
        // Not tried again: a retry after a lost answer would leave a
        // second snapshot behind (CreateSnapshot takes no client token).
        let r = self
            .call_once(
                "CreateSnapshot",
                &[
                    ("VolumeId".into(), volume.to_string()),
                    ("Description".into(), description.to_string()),
                    ("TagSpecification.1.ResourceType".into(), "snapshot".into()),
                    ("TagSpecification.1.Tag.1.Key".into(), "created-by".into()),
                    ("TagSpecification.1.Tag.1.Value".into(), "hypersdk".into()),
                ],
            )
            .await?;
        r.find_text("snapshotId")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(
                    format!("EC2 CreateSnapshot of {volume}: no snapshot id"),
                    false,
                )
            })
    }

    /// Deletes snapshot `id`.
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        match self
            .call("DeleteSnapshot", &[("SnapshotId".into(), id.to_string())])
            .await
        {
            // Gone already (a retried request that had been carried out).
            Err(e) if e.to_string().contains("InvalidSnapshot.NotFound") => Ok(()),
            r => r.map(drop),
        }
    }

    /// Id, state, progress and volume of snapshots `ids`.
    pub async fn snapshot_states(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, String, String, String)>> {
        self.snapshots_where(ids, &[]).await
    }

    /// [`snapshot_states`](Self::snapshot_states) of those of `ids` that
    /// hypersdk made (tag `created-by=hypersdk`).
    pub async fn own_snapshot_states(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, String, String, String)>> {
        self.snapshots_where(
            ids,
            &[
                ("Filter.1.Name".into(), "tag:created-by".into()),
                ("Filter.1.Value.1".into(), "hypersdk".into()),
            ],
        )
        .await
    }

    async fn snapshots_where(
        &self,
        ids: &[String],
        filters: &[(String, String)],
    ) -> Result<Vec<(String, String, String, String)>> {
        let mut params: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("SnapshotId.{}", i + 1), id.clone()))
            .collect();
        params.extend_from_slice(filters);
        let mut out = Vec::new();
        for page in self.pages("DescribeSnapshots", &params).await? {
            for s in items(&page, "snapshotSet") {
                out.push((
                    s.find_text("snapshotId").unwrap_or_default().to_string(),
                    s.find_text("status").unwrap_or_default().to_string(),
                    s.find_text("progress").unwrap_or_default().to_string(),
                    s.find_text("volumeId").unwrap_or_default().to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// Waits until snapshots `ids` are `completed` (an `error` state fails),
    /// saying how far they are every poll, for at most six hours.
    pub async fn wait_snapshots(&self, ids: &[String]) -> Result<()> {
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let states = self.snapshot_states(ids).await?;
            if let Some((id, ..)) = states.iter().find(|(_, s, ..)| s == "error") {
                return Err(self.err(format!("snapshot {id} failed"), false));
            }
            if states.len() == ids.len() && states.iter().all(|(_, s, ..)| s == "completed") {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(6 * 3600) {
                return Err(self.err(
                    format!("snapshots {} not completed after six hours", ids.join(", ")),
                    true,
                ));
            }
            for (id, state, progress, _) in &states {
                tracing::info!(snapshot = %id, state = %state, progress = %progress, "waiting for the snapshot");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(15));
        }
    }
}

/// The `item`s of list `name` in `e`.
/// An instance export task (VM Import/Export), as DescribeExportTasks
/// tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTask {
    /// `export-i-…`.
    pub id: String,
    /// `active`, `cancelling`, `cancelled` or `completed`.
    pub state: String,
    /// What the task says of itself (why it failed).
    pub status: String,
    /// The instance it exports.
    pub instance: String,
    /// The bucket and key of the file it writes.
    pub bucket: String,
    /// The file's key (`PREFIXexport-i-….vmdk`).
    pub key: String,
}

fn export_task(t: &Element) -> ExportTask {
    let s3 = t.find("exportToS3");
    let field = |name: &str| {
        s3.and_then(|e| e.find_text(name))
            .unwrap_or_default()
            .to_string()
    };
    ExportTask {
        id: t.find_text("exportTaskId").unwrap_or_default().to_string(),
        state: t.find_text("state").unwrap_or_default().to_string(),
        status: t.find_text("statusMessage").unwrap_or_default().to_string(),
        instance: t
            .find("instanceExport")
            .and_then(|e| e.find_text("instanceId"))
            .unwrap_or_default()
            .to_string(),
        bucket: field("s3Bucket"),
        key: field("s3Key"),
    }
}

impl Ec2 {
    /// Starts VM Import/Export's export of instance `instance` to
    /// `bucket` under `prefix` as a streamOptimized VMDK for VMware
    /// (CreateInstanceExportTask).
    pub async fn create_instance_export_task(
        &self,
        instance: &str,
        bucket: &str,
        prefix: &str,
        description: &str,
    ) -> Result<ExportTask> {
        // Not tried again: a retry after a lost answer would start a
        // second export.
        let r = self
            .call_once(
                "CreateInstanceExportTask",
                &[
                    ("InstanceId".into(), instance.to_string()),
                    ("TargetEnvironment".into(), "vmware".into()),
                    ("Description".into(), description.to_string()),
                    ("ExportToS3.DiskImageFormat".into(), "VMDK".into()),
                    ("ExportToS3.S3Bucket".into(), bucket.to_string()),
                    ("ExportToS3.S3Prefix".into(), prefix.to_string()),
                ],
            )
            .await?;
        let t = r.find("exportTask").map(export_task);
        t.filter(|t| !t.id.is_empty() && !t.key.is_empty())
            .ok_or_else(|| {
                self.err(
                    format!("EC2 CreateInstanceExportTask of {instance}: no task in the answer"),
                    false,
                )
            })
    }

    /// Export task `id`, None if EC2 does not know it.
    pub async fn export_task(&self, id: &str) -> Result<Option<ExportTask>> {
        match self
            .call(
                "DescribeExportTasks",
                &[("ExportTaskId.1".into(), id.to_string())],
            )
            .await
        {
            Ok(r) => Ok(items(&r, "exportTaskSet")
                .map(export_task)
                .find(|t| t.id == id)),
            Err(e) if e.to_string().contains("InvalidExportTaskID.NotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Cancels export task `id` (one no longer active is left as it is).
    pub async fn cancel_export_task(&self, id: &str) -> Result<()> {
        match self
            .call(
                "CancelExportTask",
                &[("ExportTaskId".into(), id.to_string())],
            )
            .await
        {
            Err(e) if e.to_string().contains("IncorrectState") => Ok(()),
            r => r.map(drop),
        }
    }
}

fn items<'a>(e: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
    e.find(name).into_iter().flat_map(|l| l.find_all("item"))
}

fn text(e: &Element, name: &str) -> Option<String> {
    e.find_text(name)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// An instance from its `item` of DescribeInstances' `instancesSet`.
fn instance(i: &Element) -> Instance {
    let tags: Vec<(String, String)> = items(i, "tagSet")
        .map(|t| {
            (
                t.find_text("key").unwrap_or_default().to_string(),
                t.find_text("value").unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut nics: Vec<Nic> = items(i, "networkInterfaceSet")
        .map(|n| Nic {
            id: n
                .find_text("networkInterfaceId")
                .unwrap_or_default()
                .to_string(),
            mac: text(n, "macAddress"),
            subnet: text(n, "subnetId"),
            vpc: text(n, "vpcId"),
            index: n
                .find("attachment")
                .and_then(|a| a.find_text("deviceIndex"))
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
        })
        .collect();
    nics.sort_by_key(|n| n.index);
    Instance {
        id: i.find_text("instanceId").unwrap_or_default().to_string(),
        name: tags
            .iter()
            .find(|(k, _)| k == "Name")
            .map(|(_, v)| v.clone()),
        instance_type: i.find_text("instanceType").unwrap_or_default().to_string(),
        state: i
            .find("instanceState")
            .and_then(|s| s.find_text("name"))
            .unwrap_or_default()
            .to_string(),
        architecture: text(i, "architecture"),
        platform: text(i, "platform"),
        platform_details: text(i, "platformDetails"),
        boot_mode: text(i, "currentInstanceBootMode").or_else(|| text(i, "bootMode")),
        root_device: text(i, "rootDeviceName"),
        cpu: i.find("cpuOptions").and_then(|c| {
            Some((
                c.find_text("coreCount")?.parse().ok()?,
                c.find_text("threadsPerCore")?.parse().ok()?,
            ))
        }),
        volumes: items(i, "blockDeviceMapping")
            .filter_map(|b| {
                Some((
                    b.find_text("deviceName")?.to_string(),
                    b.find("ebs")?.find_text("volumeId")?.to_string(),
                ))
            })
            .collect(),
        nics,
        tags,
    }
}
