//! libvirt secrets holding disk passphrases. Values go in through the API
//! only (never argv, environment or files) and private secrets cannot be read back.

use crate::{Error, Libvirt, Result};
use phyllome_model::xml::Element;
use virt::sys;

impl Libvirt {
    /// Defines a secret for the LUKS passphrase of the volume at `volume_path`
    /// and sets its value. `ephemeral` secrets live only in libvirtd's memory.
    /// Returns the secret's UUID.
    pub fn define_volume_secret(
        &self,
        volume_path: &str,
        description: &str,
        ephemeral: bool,
        value: &[u8],
    ) -> Result<String> {
        let xml = secret_xml(volume_path, description, ephemeral);
        let s = self.conn.define_secret_xml(&xml, 0).map_err(|e| Error::new("define secret", e))?;
        let uuid = s.uuid_string().map_err(|e| Error::new("secret uuid", e))?;
        if let Err(e) = s.set_value(value, 0) {
            let _ = s.undefine();
            // libvirt's message never contains the value.
            return Err(Error::new("set secret value", e));
        }
        Ok(uuid)
    }

    /// Defines a persistent secret that libvirt's API gives back to its (root) clients:
    /// a key Phyllome itself must read again later (a memory snapshot's). Returns its UUID.
    pub fn define_readable_secret(&self, usage_path: &str, description: &str, value: &[u8]) -> Result<String> {
        let xml = secret_xml_with(usage_path, description, false, false);
        let s = self.conn.define_secret_xml(&xml, 0).map_err(|e| Error::new("define secret", e))?;
        let uuid = s.uuid_string().map_err(|e| Error::new("secret uuid", e))?;
        if let Err(e) = s.set_value(value, 0) {
            let _ = s.undefine();
            return Err(Error::new("set secret value", e));
        }
        Ok(uuid)
    }

    /// The value of a secret defined by [`Libvirt::define_readable_secret`].
    pub fn secret_value(&self, uuid: &str) -> Result<Vec<u8>> {
        let s = self.conn.lookup_secret_by_uuid_string(uuid).map_err(|e| Error::new(format!("secret {uuid}"), e))?;
        s.value(0).map_err(|e| Error::new(format!("value of secret {uuid}"), e))
    }

    /// The UUID of the secret for `volume_path`, if there is one.
    pub fn volume_secret(&self, volume_path: &str) -> Result<Option<String>> {
        match self.conn.lookup_secret_by_usage(sys::VIR_SECRET_USAGE_TYPE_VOLUME as i32, volume_path) {
            Ok(s) => Ok(Some(s.uuid_string().map_err(|e| Error::new("secret uuid", e))?)),
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SECRET => Ok(None),
            Err(e) => Err(Error::new(format!("secret for {volume_path}"), e)),
        }
    }

    /// Removes the secret with this UUID (the one a create made); a missing one is not an error.
    pub fn undefine_secret_uuid(&self, uuid: &str) -> Result<bool> {
        match self.conn.lookup_secret_by_uuid_string(uuid) {
            Ok(s) => {
                s.undefine().map_err(|e| Error::new("undefine secret", e))?;
                Ok(true)
            }
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SECRET => Ok(false),
            Err(e) => Err(Error::new(format!("secret {uuid}"), e)),
        }
    }

    /// Removes the secret for `volume_path`; a missing one is not an error.
    pub fn undefine_volume_secret(&self, volume_path: &str) -> Result<bool> {
        match self.conn.lookup_secret_by_usage(sys::VIR_SECRET_USAGE_TYPE_VOLUME as i32, volume_path) {
            Ok(s) => {
                s.undefine().map_err(|e| Error::new("undefine secret", e))?;
                Ok(true)
            }
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_SECRET => Ok(false),
            Err(e) => Err(Error::new(format!("secret for {volume_path}"), e)),
        }
    }
}

fn secret_xml(volume_path: &str, description: &str, ephemeral: bool) -> String {
    secret_xml_with(volume_path, description, ephemeral, true)
}

fn secret_xml_with(volume_path: &str, description: &str, ephemeral: bool, private: bool) -> String {
    Element::new("secret")
        .attr("ephemeral", if ephemeral { "yes" } else { "no" })
        .attr("private", if private { "yes" } else { "no" })
        .child(Element::leaf("description", description))
        .child(Element::new("usage").attr("type", "volume").child(Element::leaf("volume", volume_path)))
        .render()
}
