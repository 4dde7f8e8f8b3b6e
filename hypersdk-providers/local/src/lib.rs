//! The `local` provider: KVM/libvirt VMs on this machine, described by libvirt
//! domain XML files (as `virsh dumpxml` writes them, or as libvirt keeps them in
//! `/etc/libvirt/qemu/`), whose disks are qcow2, raw or sparse VMDK (streamOptimized,
//! monolithicSparse) files. No libvirt
//! daemon is needed: the provider reads the XML for the [`VmSpec`] and streams
//! each disk's guest-visible bytes, decoding qcow2 and sparse VMDK
//! (unallocated and zero clusters become zeros without being read).
//!
//! A VM is named either by the path of its XML file or by its name or UUID
//! among the `*.xml` files of the provider's directory. The path of an OVF
//! package — an `.ova`, or an `.ovf` with its files beside it — is a VM too:
//! its descriptor gives the hardware and its VMDKs are read in place (inside
//! the archive, never extracted), so an export can be exported again (another
//! digest, compression, signature or hardware version) and gives the same
//! package when nothing changes.
//!
//! A provider built with [`LocalProvider::confined`] (as the daemon builds
//! it, for callers who are not trusted with the host's files) looks VMs up
//! by name or UUID in its directory only, never by path, and reads a disk
//! only when its image lies under one of the allowed `disk_roots` (after
//! following every symbolic link); anything else fails with an error that
//! names the rule and says nothing about whether the path exists.
//!
//! Power state: libvirt writes `id='N'` on `<domain>` only for a running
//! domain, so a dump of a running VM reads as [`PowerState::On`](hypersdk_core::PowerState).
//! Exporting a running VM's disks gives a crash-consistent-at-best copy; shut
//! it down first for a clean one.
//!
//! ```
//! use hypersdk_core::Provider;
//! use hypersdk_local::LocalProvider;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
//! std::fs::write(dir.path().join("tiny.xml"), "<domain type='kvm'><name>tiny</name>\
//!     <memory unit='MiB'>256</memory><devices><disk type='file' device='disk'>\
//!     <driver name='qemu' type='raw'/><source file='disk.raw'/><target dev='vda' bus='virtio'/>\
//!     </disk></devices></domain>").unwrap();
//! let provider = LocalProvider::new(dir.path());
//! let vms = provider.list_vms().await?;
//! assert_eq!(vms[0].name, "tiny");
//! assert_eq!(vms[0].total_capacity, 1 << 20);
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

mod config;
mod disk_roots;
mod domain;
mod package;
mod source;
pub mod tracking;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use hypersdk_core::{DiskFormat, Error, ExportSource, Provider, Result, VmInfo, VmSpec};

pub use config::LocalConfig;
pub use domain::{parse_domain, Domain};
pub use package::{is_package, read_package, DiskAt};
pub use source::LocalSource;

/// The provider's name.
pub const PROVIDER_NAME: &str = "local";

/// The directory libvirt keeps its persistent domain definitions in.
pub const DEFAULT_DOMAIN_DIR: &str = "/etc/libvirt/qemu";

/// Errors specific to reading domain definitions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A domain XML file is malformed or lacks something required.
    #[error("bad domain XML {path}: {what}")]
    BadDomainXml {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A domain XML file or the directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<LocalError> for Error {
    fn from(e: LocalError) -> Self {
        Error::Provider {
            provider: PROVIDER_NAME.into(),
            message: e.to_string(),
            retryable: false,
            source: None,
        }
    }
}

/// The directories libvirt keeps disk images in, allowed by default to a
/// [`LocalProvider::confined`] provider (besides its own directory).
pub const DEFAULT_DISK_ROOTS: [&str; 2] = ["/var/lib/libvirt/images", "/var/lib/libvirt/boot"];

/// KVM/libvirt VMs described by domain XML files in a directory.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    dir: PathBuf,
    /// Set for a confined provider: VMs by name only, disks under these.
    confined: Option<disk_roots::DiskRoots>,
}

impl LocalProvider {
    /// A provider over the `*.xml` domain files of `dir`, for a caller who
    /// may read the files it names: a VM may also be named by the path of
    /// its XML file, and disks may lie anywhere.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalProvider {
            dir: dir.into(),
            confined: None,
        }
    }

    /// A provider over the `*.xml` domain files of `dir` for callers who
    /// are not trusted with this host's files (the daemon's jobs): a VM is
    /// looked up by name or UUID in `dir` only, and a disk is read only when
    /// its image (symbolic links followed) lies under `dir` or one of
    /// `disk_roots`.
    pub fn confined(dir: impl Into<PathBuf>, disk_roots: Vec<PathBuf>) -> Self {
        let dir = dir.into();
        let mut roots = disk_roots;
        roots.push(dir.clone());
        LocalProvider {
            confined: Some(disk_roots::DiskRoots::new(roots)),
            dir,
        }
    }

    /// The directory searched for domain XML files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn domain_files(&self) -> Result<Vec<PathBuf>> {
        let read_err = |source| LocalError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "xml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Reads one domain XML file.
    pub fn read_domain(path: &Path) -> Result<Domain> {
        let read_err = |source| LocalError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > domain::MAX_DOMAIN_XML {
            return Err(LocalError::BadDomainXml {
                path: path.to_path_buf(),
                what: format!(
                    "file of {len} bytes is larger than the {} accepted",
                    domain::MAX_DOMAIN_XML
                ),
            }
            .into());
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Ok(parse_domain(&text, path)?)
    }

    /// Whether `vm` names an OVF package (`.ova`, or `.ovf` with its files
    /// beside it) taken as the VM: by path, so never for a confined
    /// provider.
    fn package_path(&self, vm: &str) -> bool {
        self.confined.is_none() && is_package(vm)
    }

    /// Finds VM `vm`: a path to a domain XML file (not for a confined
    /// provider), or a name or UUID in the directory.
    pub fn find(&self, vm: &str) -> Result<Domain> {
        let as_path = Path::new(vm);
        if self.confined.is_some() && (vm.contains(['/', '\\', '\0']) || vm.ends_with(".xml")) {
            return Err(Error::InvalidArgument(format!(
                "VM '{}' looks like a path: this provider looks VMs up by name or UUID in its directory only",
                hypersdk_formats::error::display_name(vm)
            )));
        }
        if vm.ends_with(".xml") || vm.contains('/') {
            if as_path.is_file() {
                return Self::read_domain(as_path);
            }
            return Err(Error::VmNotFound {
                provider: PROVIDER_NAME.into(),
                vm: vm.into(),
                detail: "no such domain XML file".into(),
            });
        }
        let mut found: Vec<Domain> = Vec::new();
        for file in self.domain_files()? {
            match Self::read_domain(&file) {
                Ok(d) if d.spec.name == vm || d.spec.id.eq_ignore_ascii_case(vm) => found.push(d),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "skipping unreadable domain XML")
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::VmNotFound {
                provider: PROVIDER_NAME.into(),
                vm: vm.into(),
                detail: format!("no domain of that name or UUID in {}", self.dir.display()),
            }),
            n => Err(Error::InvalidArgument(format!(
                "{n} domain XML files in {} are named '{vm}'; name the file or the UUID instead",
                self.dir.display()
            ))),
        }
    }

    /// The domain's spec with disk capacities read from the images; for a
    /// confined provider, every disk image is first checked to lie under the
    /// allowed roots (and its path replaced by the resolved one).
    pub fn resolve_checked(&self, domain: &mut Domain) -> Result<VmSpec> {
        if let Some(roots) = &self.confined {
            for (disk, path) in domain
                .spec
                .disks
                .iter_mut()
                .zip(domain.disk_paths.iter_mut())
            {
                let real = roots
                    .check(path, disk.format)
                    .map_err(|what| Error::Provider {
                        provider: PROVIDER_NAME.into(),
                        message: format!("VM '{}', disk {}: {what}", domain.spec.name, disk.name),
                        retryable: false,
                        source: None,
                    })?;
                disk.location = real.display().to_string();
                *path = real;
            }
        }
        Self::resolve(domain)
    }

    /// The domain's spec with disk capacities read from the images.
    pub fn resolve(domain: &Domain) -> Result<VmSpec> {
        let mut spec = domain.spec.clone();
        for (disk, path) in spec.disks.iter_mut().zip(&domain.disk_paths) {
            disk.capacity = disk_capacity(path, disk.format).map_err(|source| Error::DiskRead {
                vm: domain.spec.name.clone(),
                disk: disk.name.clone(),
                location: path.display().to_string(),
                source,
            })?;
        }
        Ok(spec)
    }
}

/// Guest-visible size of a disk image.
fn disk_capacity(
    path: &Path,
    format: DiskFormat,
) -> std::result::Result<u64, hypersdk_core::BoxError> {
    Ok(source::open_disk_image(&DiskAt::File(path.to_path_buf()), format)?.virtual_size())
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let this = self.clone();
        blocking(move || {
            let mut out = Vec::new();
            for file in this.domain_files()? {
                match Self::read_domain(&file) {
                    Ok(mut d) => {
                        let spec = this.resolve_checked(&mut d).unwrap_or_else(|e| {
                            tracing::warn!(vm = %d.spec.name, error = %e, "disk sizes unknown");
                            d.spec.clone()
                        });
                        out.push(VmInfo::from(&spec));
                    }
                    Err(e) => tracing::warn!(file = %file.display(), error = %e, "skipping unreadable domain XML"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        let this = self.clone();
        let vm = vm.to_string();
        if self.package_path(&vm) {
            return blocking(move || Ok(read_package(Path::new(&vm))?.0)).await;
        }
        blocking(move || this.resolve_checked(&mut this.find(&vm)?)).await
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        let this = self.clone();
        let vm = vm.to_string();
        if self.package_path(&vm) {
            let (spec, disks) = blocking(move || read_package(Path::new(&vm))).await?;
            return Ok(Box::new(LocalSource::at(spec, disks)));
        }
        let (spec, paths) = blocking(move || {
            let mut d = this.find(&vm)?;
            Ok((this.resolve_checked(&mut d)?, d.disk_paths))
        })
        .await?;
        Ok(Box::new(LocalSource::new(spec, paths)))
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("local provider task failed: {e}")))?
}
