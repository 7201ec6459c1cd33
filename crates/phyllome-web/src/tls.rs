//! TLS for `phyllome serve` (rustls with ring): a certificate the user
//! gives, or a self-signed one made on first start and kept in the state
//! directory, whose SHA-256 fingerprint is printed at every start so a
//! browser's warning can be checked against it.

use crate::crypto::{colon_hex, sha256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the server speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP: only allowed on a loopback address.
    Off,
    /// A self-signed certificate in `STATE/tls/`, made on first start.
    SelfSigned,
    /// The given PEM certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Whether `addr` may be served without TLS: only loopback addresses.
pub fn plain_http_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// What the server tells the user about its certificate.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate, `AB:CD:...`.
    pub fingerprint: String,
    /// True when this start made the self-signed certificate.
    pub generated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: no certificate in it")]
    NoCert(String),
    #[error("{0}: no usable private key in it ({1})")]
    BadKey(String, String),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not fit together or are not usable: {0}")]
    Config(String),
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let io = |e| TlsError::Io(path.display().to_string(), e);
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The names a self-signed certificate is made for.
fn names(listen: &SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    names
}

/// Makes (once) and returns the paths of the self-signed certificate and key.
fn self_signed(state_dir: &Path, listen: &SocketAddr) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let dir = state_dir.join("tls");
    let io = |e| TlsError::Io(dir.display().to_string(), e);
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let mut params = rcgen::CertificateParams::new(names(listen)).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "phyllome serve (self-signed)");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key_pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let c = params.self_signed(&key_pair).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, key_pair.serialize_pem().as_bytes())?;
    write_private(&cert, c.pem().as_bytes())?;
    Ok((cert, key, true))
}

/// Loads (or makes) the certificate and builds the rustls server configuration.
pub fn load(
    mode: &TlsMode,
    state_dir: &Path,
    listen: &SocketAddr,
) -> Result<Option<(Arc<rustls::ServerConfig>, TlsInfo)>, TlsError> {
    let (cert_path, key_path, generated) = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::SelfSigned => self_signed(state_dir, listen)?,
        TlsMode::Files { cert, key } => (cert.clone(), key.clone(), false),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| TlsError::Io(cert_path.display().to_string(), std::io::Error::other(e.to_string())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Io(cert_path.display().to_string(), std::io::Error::other(e.to_string())))?;
    let leaf = certs.first().ok_or_else(|| TlsError::NoCert(cert_path.display().to_string()))?;
    let fingerprint = colon_hex(&sha256(leaf.as_ref()));
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| TlsError::BadKey(key_path.display().to_string(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((Arc::new(config), TlsInfo { cert_path, fingerprint, generated })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_go_without_tls() {
        for a in ["127.0.0.1:7440", "127.0.0.2:1", "[::1]:7440"] {
            assert!(plain_http_allowed(&a.parse().unwrap()), "{a}");
        }
        for a in ["0.0.0.0:7440", "192.168.1.2:7440", "[::]:7440", "10.0.0.1:443"] {
            assert!(!plain_http_allowed(&a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn self_signed_certificate_is_made_once_and_private() {
        let dir = std::env::temp_dir().join(format!("phyllome-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let listen: SocketAddr = "127.0.0.1:7440".parse().unwrap();
        let (_, first) = load(&TlsMode::SelfSigned, &dir, &listen).unwrap().unwrap();
        assert!(first.generated);
        let (_, again) = load(&TlsMode::SelfSigned, &dir, &listen).unwrap().unwrap();
        assert!(!again.generated);
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let mode = std::fs::metadata(dir.join("tls/key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(load(&TlsMode::Off, &dir, &listen).unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
