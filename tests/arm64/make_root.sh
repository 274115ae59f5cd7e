#!/usr/bin/env bash
# An arm64 (aarch64) Debian 12 root with Python 3.11 at ROOT, whose programs run on this x86-64 machine under
# qemu-user (the kernel's binfmt_misc hands them to qemu-aarch64-static). Needs root, debootstrap, network to
# deb.debian.org, and qemu-user-static 8 or newer (bookworm-backports: Debian 12's 7.2 crashes in ONNX Runtime).
# Idempotent: a ROOT with its Python is kept.
#   tests/arm64/make_root.sh build/arm64-root
set -euo pipefail
root=${1:?usage: make_root.sh ROOT}
qemu=$(command -v qemu-aarch64-static) || { echo "no qemu-aarch64-static: apt-get install -t bookworm-backports qemu-user-static" >&2; exit 1; }

# binfmt_misc: the F flag opens qemu now, so it also runs inside the chroot (which has no qemu of its own)
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
# registered anew each time: an entry made before qemu was upgraded still runs the old binary it opened
[ -e "$binfmt/qemu-aarch64" ] && echo -1 > "$binfmt/qemu-aarch64"
magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
printf '%s' ":qemu-aarch64:M::$magic:$mask:$qemu:F" > "$binfmt/register"

if [ ! -x "$root/usr/bin/python3" ]; then
  rm -rf "$root.partial"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
    "$root.partial" http://deb.debian.org/debian
  rm -rf "$root" && mv "$root.partial" "$root"
fi
# pip inside reaches PyPI as this machine does: its name servers and the certificates it trusts (a proxy's too)
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" /usr/bin/python3 -c 'import platform; assert platform.machine() == "aarch64", platform.machine()'
