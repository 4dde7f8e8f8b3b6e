//! Connecting to the simulator in the vSphere tests: every test binary includes this.
#![allow(dead_code, clippy::unwrap_used)]

use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_vsphere::{ConnectOptions, TlsMode, VsphereProvider};

/// Options for `sim` with its credentials and `tls`.
pub fn opts(sim: &Vcsim, tls: TlsMode) -> ConnectOptions {
    ConnectOptions::new(&sim.url)
        .with_login(&sim.user, &sim.password)
        .with_tls(tls)
}

/// A session with `sim`, its certificate not checked.
pub async fn connect(sim: &Vcsim) -> VsphereProvider {
    VsphereProvider::connect(&opts(sim, TlsMode::Insecure))
        .await
        .unwrap()
}
