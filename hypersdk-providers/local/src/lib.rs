//! The `local` provider: KVM/libvirt VMs on this machine, described by libvirt
//! domain XML files (as `virsh dumpxml` writes them, or as libvirt keeps them in
//! `/etc/libvirt/qemu/`), whose disks are qcow2, raw or sparse VMDK (streamOptimized,
//! monolithicSparse) files. No libvirt
//! daemon is needed: the provider reads the XML for the [`VmSpec`] and streams
//! each disk's guest-visible bytes, decoding qcow2 and sparse VMDK
//! (unallocated and zero clusters become zeros without being read).
//!
//! A VM is named either by the path of its XML file or by its name or UUID
//! among the `*.xml` files of the provider's directory.
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

mod domain;
mod source;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use hypersdk_core::{DiskFormat, Error, ExportSource, Provider, Result, VmInfo, VmSpec};

pub use domain::{parse_domain, Domain};
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

/// KVM/libvirt VMs described by domain XML files in a directory.
#[derive(Debug, Clone)]
pub struct LocalProvider {
    dir: PathBuf,
}

impl LocalProvider {
    /// A provider over the `*.xml` domain files of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalProvider { dir: dir.into() }
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

    /// Finds VM `vm`: a path to a domain XML file, or a name or UUID in the directory.
    pub fn find(&self, vm: &str) -> Result<Domain> {
        let as_path = Path::new(vm);
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
    Ok(source::open_disk_image(path, format)?.virtual_size())
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
                    Ok(d) => {
                        let spec = Self::resolve(&d).unwrap_or_else(|e| {
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
        blocking(move || Self::resolve(&this.find(&vm)?)).await
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        let this = self.clone();
        let vm = vm.to_string();
        let (spec, paths) = blocking(move || {
            let d = this.find(&vm)?;
            Ok((Self::resolve(&d)?, d.disk_paths))
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
