//! Exports through HttpNfcLease (to come).

use std::sync::Arc;

use hypersdk_core::{Error, ExportSource, Result};

use crate::client::Connection;

pub(crate) async fn open(_conn: Arc<Connection>, _vm: &str) -> Result<Box<dyn ExportSource>> {
    Err(Error::InvalidArgument(
        "vSphere export is not implemented yet".into(),
    ))
}
