//! Randomness and digests (`ring`), hex (`hex`) and constant-time
//! comparison (`subtle`): the few primitives the server needs, in one place.

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("the OS random number generator failed");
    b
}

/// A new random secret: 32 bytes as 64 hex digits.
pub fn random_secret() -> String {
    hex::encode(random_bytes::<32>())
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality whose time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A certificate fingerprint as people compare them: `AB:CD:...`.
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| hex::encode_upper([*b])).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_and_fingerprints() {
        assert_eq!(colon_hex(&[0xab, 1]), "AB:01");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(random_secret().len(), 64);
        assert_ne!(random_secret(), random_secret());
    }
}
