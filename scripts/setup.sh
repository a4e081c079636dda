#!/usr/bin/env bash
# Install what pathpulse's build, demo and tests need on a fresh Debian machine.
# Idempotent; run as root (CI is root) or it uses sudo. make and gcc build jemalloc (the
# agent's allocator) from source.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(make gcc openssl fping iputils-ping iproute2 nftables dnsmasq-base prometheus prometheus-alertmanager chromium ca-certificates debootstrap systemd-container)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian prometheus and prometheus-alertmanager packages start services (:9090, :9093)
# where systemd runs; the tests start their own on free ports, so nothing else is needed.
command -v cargo >/dev/null || { echo "setup: cargo (Rust 1.95) is required" >&2; exit 1; }
# cargo-deb builds the .deb packages (scripts/package.sh; the packaging test needs it and
# never skips under CI=true). Compiled from crates.io: about a minute, once per machine.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "setup: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
