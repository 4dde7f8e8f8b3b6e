//! [`VsphereProvider`]: the [`Provider`] over one vCenter or ESXi session.

use std::sync::Arc;

use async_trait::async_trait;
use hypersdk_core::{ExportSource, Provider, Result, VmInfo, VmOps, VmSpec};

use crate::client::{ConnectOptions, Connection};
use crate::inventory;

/// VMs of one vCenter or ESXi host.
#[derive(Debug, Clone)]
pub struct VsphereProvider {
    conn: Arc<Connection>,
}

impl VsphereProvider {
    /// Connects and logs in.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        Ok(VsphereProvider {
            conn: Connection::connect(opts).await?,
        })
    }

    /// A provider over an existing session (shared with other providers or
    /// exports).
    pub fn with_connection(conn: Arc<Connection>) -> Self {
        VsphereProvider { conn }
    }

    /// The session.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Logs out.
    pub async fn logout(&self) -> Result<()> {
        self.conn.logout().await
    }
}

#[async_trait]
impl Provider for VsphereProvider {
    fn name(&self) -> &str {
        "vsphere"
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>> {
        let records = inventory::list(&self.conn).await?;
        Ok(records
            .iter()
            .map(|r| VmInfo {
                folder: Some(r.folder.clone()),
                ..VmInfo::from(&r.spec)
            })
            .collect())
    }

    async fn vm_spec(&self, vm: &str) -> Result<VmSpec> {
        let records = inventory::list(&self.conn).await?;
        Ok(inventory::pick(&records, vm, self.conn.host())?
            .spec
            .clone())
    }

    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>> {
        crate::export::open(self.conn.clone(), vm).await
    }

    fn vm_ops(&self) -> Option<&dyn VmOps> {
        Some(self)
    }

    async fn close(&self) -> Result<()> {
        self.logout().await
    }
}
