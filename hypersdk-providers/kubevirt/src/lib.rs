//! KubeVirt as an export source (work in progress, issue 19).
#![deny(missing_docs)]
