//! The API suite on PostgreSQL (`suite/api.rs`): each test's daemon gets a
//! fresh database of one private server (Debian's `postgresql`, on a Unix
//! socket in a temporary directory, as `nobody` when run as root), which
//! stops when the test process exits.

#![allow(clippy::unwrap_used)]

mod common;

#[path = "suite/api.rs"]
mod suite;
