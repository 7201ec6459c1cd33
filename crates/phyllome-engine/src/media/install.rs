//! What a create's install ISO decides: the OS when none is given (from its volume
//! descriptor), whether it boots on the profile's firmware, and for Windows the
//! virtio-win disc of the ISO folder, found by its content.

use super::iso;
use phyllome_model::build::Request;
use phyllome_model::detect::Detected;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no OS given: choose one ({0}), or give an ISO to read it from")]
    NoOs(String),
    #[error("{path}: {why}")]
    Iso { path: String, why: String },
    #[error("{path} is not an install medium Phyllome knows ({ids}): choose the OS ({choices})")]
    UnknownMedia { path: String, ids: String, choices: String },
    #[error("{path} boots {boots}, but {os} starts from {needs}: use an image that boots {needs}, or another --os")]
    IsoFirmware { path: String, boots: &'static str, os: String, needs: &'static str },
}

impl crate::errors::Classify for MediaError {
    fn kind(&self) -> crate::errors::ErrorKind {
        crate::errors::ErrorKind::InvalidInput
    }
}

/// What the install ISO decides: the OS when none is given (from its volume
/// descriptor), whether it boots on the profile's firmware, and for Windows
/// the virtio-win disc of the ISO folder, found by its content.
pub fn decide(req: &mut Request, local: bool) -> Result<Option<Detected>, MediaError> {
    use phyllome_model::catalog::{self, Family, FirmwarePolicy};
    let info = match &req.iso {
        // Relative paths are refused by the model, with a clearer message.
        Some(path)
            if path.starts_with('/')
                && (req.os.is_empty() || catalog::profile(&req.os).is_some_and(|p| p.family != Family::Macos)) =>
        {
            Some(
                iso::inspect(Path::new(path))
                    .map_err(|e| MediaError::Iso { path: path.clone(), why: e.to_string() })?,
            )
        }
        _ => None,
    };
    let mut detected = None;
    if req.os.is_empty() {
        let (Some(path), Some(info)) = (&req.iso, &info) else {
            return Err(MediaError::NoOs(catalog::ids().join(", ")));
        };
        let Some(d) = iso::detect(info) else {
            let i = &info.ids;
            return Err(MediaError::UnknownMedia {
                path: path.clone(),
                ids: format!(
                    "volume id {:?}, system id {:?}, publisher {:?}, application {:?}",
                    i.volume_id, i.system_id, i.publisher_id, i.application_id
                ),
                choices: catalog::ids().join(", "),
            });
        };
        req.os = d.os.to_string();
        detected = Some(d);
    }
    let Some(profile) = catalog::profile(&req.os) else { return Ok(detected) };
    if let (Some(path), Some(info)) = (&req.iso, &info) {
        // A direct kernel boot does not boot the ISO; an image with no boot entry at all is data.
        let booted = req.direct_boot.is_none() && (info.boot.bios || info.boot.uefi);
        let (fits, needs) = match profile.firmware.value {
            FirmwarePolicy::Uefi { .. } => (info.boot.uefi, "UEFI"),
            FirmwarePolicy::Bios => (info.boot.bios, "BIOS"),
        };
        if booted && !fits {
            return Err(MediaError::IsoFirmware {
                path: path.clone(),
                boots: info.boot.describe(),
                os: req.os.clone(),
                needs,
            });
        }
    }
    // This machine's ISO folder is no place for another host's VM to read from.
    if profile.drivers_iso && req.drivers.is_none() && local {
        req.drivers = iso::find_virtio_win(Path::new(crate::paths::ISO_DIR)).map(|p| p.to_string_lossy().into_owned());
    }
    Ok(detected)
}
