#!/usr/bin/env bash
# A minimal Debian root file system with systemd (debootstrap, about 240 MB and 40 s, once)
# for the test that boots the packaged units under a real systemd in systemd-nspawn
# (tests/tests/e2e/systemd_boot.rs). Kept in target/systemd-rootfs; the test copies it.
# Needs root; as another user it says so and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${CARGO_TARGET_DIR:-target}/systemd-rootfs"
if [ -x "$dest/usr/lib/systemd/systemd" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "systemd-rootfs: needs root (debootstrap); the real-systemd test will skip"
  exit 0
fi
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
echo "systemd-rootfs: debootstrap $suite into $dest"
rm -rf "$dest.tmp"
mkdir -p "$(dirname "$dest")"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$suite" "$dest.tmp" \
  > "$(dirname "$dest")/systemd-rootfs.log" 2>&1 \
  || { tail -20 "$(dirname "$dest")/systemd-rootfs.log" >&2; exit 1; }
mv "$dest.tmp" "$dest"
