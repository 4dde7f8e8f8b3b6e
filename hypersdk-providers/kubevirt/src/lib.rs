//! KubeVirt as an export source: `VirtualMachine`s described through the
//! Kubernetes API, exported through `VirtualMachineExport` — KubeVirt's
//! supported way out — and its export server.
//!
//! `kind: kubevirt` ([`KubevirtConfig`]): one namespace's VMs (by name or
//! `NAMESPACE/NAME`, optionally a label selector), through a kubeconfig
//! (its current context or a named one) or the pod's service account, with
//! the `kube` crate on rustls and ring like the rest of the project.
//!
//! An export makes a token Secret and a `VirtualMachineExport` of the VM —
//! of a `VirtualMachineSnapshot` taken first when the VM runs — with a
//! `ttlDuration`, so that a killed export is removed by KubeVirt; waits for
//! it to be Ready (saying so every 30 s, up to a timeout); trusts the CA
//! the export's status gives; downloads each PVC volume from the export
//! server (raw, or gzip when only that is offered) with the core
//! Range-resuming download and the token header; and, when the export
//! closes on every path, deletes the export, the Secret and the snapshot.
//! A disk on a containerDisk (an image in a registry) cannot be exported
//! that way: the export says so and stops. A lone PersistentVolumeClaim is
//! exported as `pvc:NAME` (or `NAMESPACE/pvc:NAME`): a one-disk machine with
//! placeholder hardware, through a `VirtualMachineExport` of the claim.
//!
//! The export's status is not trusted blindly: every volume URL must be
//! https, without user info, on one host and port, and where KubeVirt's
//! controller puts it (below the export's own path on the ingress host, or
//! on a Service of the namespace for internal links) — checked before the
//! first request, since the token goes with each one.
#![deny(missing_docs)]

mod config;
mod describe;
mod provider;
pub use config::KubevirtConfig;
pub use provider::KubevirtProvider;
