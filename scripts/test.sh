#!/usr/bin/env bash
# The whole test suite: set-up, build, unit and end-to-end tests.
# Lab tests need root; under CI=true they must not skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
scripts/systemd-rootfs.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --test-threads=2 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "pathpulse suite: %d passed, %d failed\n", p, f }' "$log"
