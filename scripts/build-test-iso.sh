#!/usr/bin/env bash
# build-test-iso.sh OUT.iso [VOLUME-ID] - a hybrid BIOS + UEFI bootable ISO of the
# test guest (scripts/build-test-guest.sh), made with Debian's grub-mkrescue:
# GRUB boots the guest's kernel and initramfs with console=ttyS0, so a VM made
# from it with --iso only reaches the guest's shell through OVMF or SeaBIOS.
# Needs grub-pc-bin, grub-efi-amd64-bin, mtools and xorriso (scripts/setup.sh).
set -euo pipefail
OUT=${1:?usage: build-test-iso.sh OUT.iso [VOLUME-ID]}
VOLID=${2:-PHYLLOME_TEST}
GUEST=${PHYLLOME_TEST_GUEST:-/var/lib/phyllome/test-guest}
[ -r "$GUEST/vmlinuz" ] && [ -r "$GUEST/initrd.img" ] \
    || { echo "build-test-iso: no test guest in $GUEST (run scripts/build-test-guest.sh)" >&2; exit 1; }
command -v grub-mkrescue >/dev/null || { echo "build-test-iso: grub-mkrescue missing (run scripts/setup.sh)" >&2; exit 1; }
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir -p "$TREE/boot/grub"
cp "$GUEST/vmlinuz" "$GUEST/initrd.img" "$TREE/boot/"
cat >"$TREE/boot/grub/grub.cfg" <<'CFG'
set timeout=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "Phyllome test guest" {
    linux /boot/vmlinuz console=ttyS0 panic=-1
    initrd /boot/initrd.img
}
CFG
# grub-mkrescue passes what follows -- to xorriso's mkisofs emulation.
grub-mkrescue -o "$OUT.part" "$TREE" -- -volid "$VOLID" >/dev/null 2>&1 \
    || { grub-mkrescue -o "$OUT.part" "$TREE" -- -volid "$VOLID"; exit 1; }
chmod 0644 "$OUT.part"
mv -f "$OUT.part" "$OUT"
