//! Is a host file what it claims to be? Install media must be ISO 9660 or UDF
//! images, kernels Linux boot images, initrds cpio archives (plain or
//! compressed), disk images qcow2 or partitioned raw disks. Pure: works on the
//! first bytes of the file, so every edge is unit-tested.

/// What a file handed to a guest claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A CD/DVD image: ISO 9660 or UDF.
    Optical,
    /// A Linux kernel (bzImage).
    Kernel,
    /// An initramfs: cpio, possibly compressed.
    Initrd,
    /// A bootable disk image: qcow2, or raw with an MBR or GPT (OpenCore, macOS recovery).
    DiskImage,
}

/// How many leading bytes [`check`] needs (the UDF descriptors end at 0x9006).
pub const HEAD: usize = 0x9800;

impl Claim {
    pub fn expected(self) -> &'static str {
        match self {
            Claim::Optical => "an ISO 9660 or UDF image",
            Claim::Kernel => "a Linux kernel image (bzImage)",
            Claim::Initrd => "an initramfs (cpio, plain or gzip/xz/zstd/lz4/bzip2/lzma-compressed)",
            Claim::DiskImage => "a disk image (qcow2, or raw with an MBR or GPT partition table)",
        }
    }
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Whether `head` (the file's first bytes, up to [`HEAD`]) starts a file of that kind.
pub fn check(claim: Claim, head: &[u8]) -> bool {
    match claim {
        // The volume descriptors start at sector 16 (0x8000); each has its identifier at byte 1.
        // UDF: a volume recognition sequence of BEA01, NSR02/NSR03, TEA01 in consecutive sectors.
        Claim::Optical => {
            at(head, 0x8001, b"CD001")
                || (at(head, 0x8001, b"BEA01")
                    && (1..=2)
                        .any(|s| at(head, 0x8001 + s * 0x800, b"NSR02") || at(head, 0x8001 + s * 0x800, b"NSR03")))
        }
        // The x86 boot protocol: "HdrS" at 0x202 and the 0xAA55 boot flag at 0x1FE.
        Claim::Kernel => at(head, 0x202, b"HdrS") && at(head, 0x1fe, &[0x55, 0xaa]),
        Claim::Initrd => [
            &b"070701"[..],                     // cpio newc
            b"070702",                          // cpio crc
            &[0x1f, 0x8b],                      // gzip
            &[0xfd, b'7', b'z', b'X', b'Z', 0], // xz
            &[0x28, 0xb5, 0x2f, 0xfd],          // zstd
            &[0x02, 0x21, 0x4c, 0x18],          // lz4 legacy (the kernel's)
            b"BZh",                             // bzip2
            &[0x5d, 0, 0],                      // lzma
        ]
        .iter()
        .any(|m| at(head, 0, m)),
        Claim::DiskImage => at(head, 0, b"QFI\xfb") || at(head, 512, b"EFI PART") || at(head, 0x1fe, &[0x55, 0xaa]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Vec<u8> {
        vec![0u8; HEAD]
    }

    fn with(mut v: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
        v[offset..offset + bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn optical_media_are_iso9660_or_udf() {
        assert!(check(Claim::Optical, &with(blank(), 0x8001, b"CD001")));
        let udf = with(with(blank(), 0x8001, b"BEA01"), 0x8801, b"NSR02");
        assert!(check(Claim::Optical, &udf));
        assert!(check(Claim::Optical, &with(with(blank(), 0x8001, b"BEA01"), 0x9001, b"NSR03")));
        // BEA01 alone is no UDF volume.
        assert!(!check(Claim::Optical, &with(blank(), 0x8001, b"BEA01")));
        assert!(!check(Claim::Optical, &blank()));
        // Short files, /etc/shadow-like text, /proc files (read as empty).
        assert!(!check(Claim::Optical, b"root:*:19000:0:99999:7:::\n"));
        assert!(!check(Claim::Optical, b""));
        assert!(!check(Claim::Optical, &with(blank(), 0x8000, b"CD001")), "off by one");
    }

    #[test]
    fn kernels_carry_the_boot_protocol_header() {
        let k = with(with(blank(), 0x202, b"HdrS"), 0x1fe, &[0x55, 0xaa]);
        assert!(check(Claim::Kernel, &k));
        assert!(!check(Claim::Kernel, &with(blank(), 0x202, b"HdrS")), "no boot flag");
        assert!(!check(Claim::Kernel, b"\x7fELF"));
        // An ISO is not a kernel.
        assert!(!check(Claim::Kernel, &with(blank(), 0x8001, b"CD001")));
    }

    #[test]
    fn initrds_are_cpio_or_compressed() {
        for m in [&b"070701"[..], b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh9", b"\x02\x21\x4c\x18"] {
            assert!(check(Claim::Initrd, m), "{m:?}");
        }
        assert!(!check(Claim::Initrd, b"PATH=/usr/bin\0HOME=/root\0"), "/proc/self/environ");
        assert!(!check(Claim::Initrd, b""));
    }

    #[test]
    fn disk_images_are_qcow2_or_partitioned() {
        assert!(check(Claim::DiskImage, b"QFI\xfb\0\0\0\x03"));
        assert!(check(Claim::DiskImage, &with(blank(), 512, b"EFI PART")));
        assert!(check(Claim::DiskImage, &with(blank(), 0x1fe, &[0x55, 0xaa])));
        assert!(!check(Claim::DiskImage, &blank()));
    }
}
