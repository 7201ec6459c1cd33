//! The `phyllome` crate's tests that need neither libvirtd nor a VM, in one
//! binary (`cargo test -p phyllome --test pure`): the commands over recorded
//! host trees and fixtures, as a user runs them. `scripts/test.sh --pure` runs
//! them with every crate's other pure tests (import's re-tuning for every
//! recorded host is the engine's own `tests/import_golden.rs`).

#[path = "../common/mod.rs"]
mod common;

mod check_devices;
mod cli;
mod host_setup;
