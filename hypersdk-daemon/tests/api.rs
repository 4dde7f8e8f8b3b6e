//! The API suite on the embedded SQLite store (`suite/api.rs`).

#![allow(clippy::unwrap_used)]

mod common;

#[path = "suite/api.rs"]
mod suite;
