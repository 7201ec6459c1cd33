//! An independent LUKS implementation vouches for the header we write:
//! the LUKS area is cut out of the qcow2 file at the offsets its crypto header
//! extension names, then `cryptsetup luksDump` reads it and
//! `cryptsetup open --test-passphrase` unlocks slot 0 with the key, and only with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// qcow2's full-disk-encryption header extension (docs/interop/qcow2.txt in QEMU).
const EXT_CRYPTO: u32 = 0x0537_be77;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("phyllome-disk-cs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The (offset, length) of the LUKS area, read from the qcow2 v3 header extensions.
fn luks_area(image: &[u8]) -> (u64, u64) {
    assert_eq!(&image[0..4], b"QFI\xfb", "not a qcow2 image");
    assert_eq!(be32(image, 4), 3, "qcow2 version");
    assert_eq!(be32(image, 32), 2, "crypt_method must be LUKS (2)");
    let mut at = be32(image, 100) as usize; // header_length: extensions follow
    loop {
        let (kind, len) = (be32(image, at), be32(image, at + 4) as usize);
        assert_ne!(kind, 0, "no crypto header extension");
        if kind == EXT_CRYPTO {
            return (be64(image, at + 8), be64(image, at + 16));
        }
        at += 8 + len.div_ceil(8) * 8;
    }
}

fn cryptsetup(args: &[&str], key: Option<&[u8]>) -> Output {
    let mut c = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cryptsetup (cryptsetup-bin) must be installed: {e}"));
    let mut stdin = c.stdin.take().unwrap();
    if let Some(k) = key {
        stdin.write_all(k).unwrap();
    }
    drop(stdin);
    c.wait_with_output().unwrap()
}

fn header_file(key: &[u8]) -> PathBuf {
    let image = tmp("image.qcow2");
    phyllome_disk::create(&image, 1 << 30, key, phyllome_disk::Cost::RANDOM_KEY).unwrap();
    let bytes = std::fs::read(&image).unwrap();
    let (offset, len) = luks_area(&bytes);
    assert!(offset > 0 && len > 0 && (offset + len) as usize <= bytes.len(), "{offset} + {len}");
    let header = tmp("luks-area.img");
    std::fs::write(&header, &bytes[offset as usize..(offset + len) as usize]).unwrap();
    let _ = std::fs::remove_file(image);
    header
}

fn test_passphrase(header: &Path, key: &[u8]) -> Output {
    cryptsetup(&["open", "--test-passphrase", "--key-file=-", "--type", "luks1", header.to_str().unwrap()], Some(key))
}

#[test]
fn cryptsetup_reads_our_luks_header_and_the_key_opens_it() {
    let key = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let header = header_file(key);
    let dump = cryptsetup(&["luksDump", header.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dump.status.success(), "luksDump: {}{text}", String::from_utf8_lossy(&dump.stderr));
    for want in
        ["Version:       \t1", "Cipher name:   \taes", "Cipher mode:   \txts-plain64", "Hash spec:     \tsha256"]
    {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(text.contains("MK bits:       \t512"), "aes-256-xts takes a 512-bit key\n{text}");
    assert!(text.contains("Key Slot 0: ENABLED") && text.contains("Key Slot 1: DISABLED"), "{text}");

    let ok = test_passphrase(&header, key);
    assert!(ok.status.success(), "the key does not open slot 0: {}", String::from_utf8_lossy(&ok.stderr));
    let mut wrong = *key;
    wrong[0] = b'f';
    let bad = test_passphrase(&header, &wrong);
    assert!(!bad.status.success(), "a wrong key opened the header");
    let _ = std::fs::remove_file(header);
}
