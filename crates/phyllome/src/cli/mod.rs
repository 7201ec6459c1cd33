//! The command-line front end: one module per command group. Each parses
//! its arguments and calls the core (`phyllome` library), which the web API
//! shares.

pub mod apply;
pub mod bundle;
pub mod check;
pub mod devices;
pub mod host;
pub mod image;
pub mod iso;
pub mod manifest;
pub mod migrate;
pub mod os;
pub mod packaging;
pub mod prompt;
pub mod render;
pub mod serve;
pub mod setup;
pub mod share;
pub mod snapshot;
pub mod stats;
pub mod vm;
pub mod volume;
pub mod xml;

pub type Fallible = Result<(), phyllome_engine::errors::Failure>;
