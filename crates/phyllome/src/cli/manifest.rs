//! `phyllome manifest VM`: a VM in Phyllome's terms.

use super::Fallible;
use phyllome_libvirt::Libvirt;

/// `phyllome manifest VM`: its manifest, TOML (or JSON with --json).
pub fn manifest(uri: &str, name: &str, json: bool) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let (m, notes) = phyllome_engine::manifest::of_vm(&lv, name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "manifest": m, "notes": notes }))?);
    } else {
        print!("{}", m.to_toml(&notes));
    }
    Ok(())
}
