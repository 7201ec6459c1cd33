//! Recorded hosts: `fixtures/hosts/NAME/{host.json,domcaps.xml}`.

use crate::domcaps::{parse_domcaps, DomcapsError};
use phyllome_model::{Host, HostFacts};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Json(String, serde_json::Error),
    #[error("{0}: {1}")]
    Domcaps(String, DomcapsError),
}

/// Loads a recorded host.
pub fn load(dir: &Path) -> Result<Host, FixtureError> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| FixtureError::Io(p.display().to_string(), e))
    };
    let facts: HostFacts =
        serde_json::from_str(&read("host.json")?).map_err(|e| FixtureError::Json(dir.display().to_string(), e))?;
    let caps = parse_domcaps(&read("domcaps.xml")?).map_err(|e| FixtureError::Domcaps(dir.display().to_string(), e))?;
    Ok(Host { facts, caps })
}
