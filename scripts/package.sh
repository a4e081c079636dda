#!/usr/bin/env bash
# Build the .deb packages of pathpulse-agent and pathpulse-aggregator into target/debian/:
# binary, systemd unit, example configuration (/etc/pathpulse/*.toml), man pages and
# bash/zsh/fish completions (generated from the command line definition first).
#
#   scripts/package.sh                       # release build (what to ship)
#   scripts/package.sh --profile dev --no-build --fast   # package the debug binaries as built (tests)
#
# Installs cargo-deb 3.8.0 from crates.io (`cargo install cargo-deb --locked`) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
build=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --fast) extra+=(--fast); shift ;;
    *) echo "usage: scripts/package.sh [--profile release|dev] [--no-build] [--fast]" >&2; exit 2 ;;
  esac
done
if ! command -v cargo-deb >/dev/null; then
  echo "package: installing cargo-deb (cargo install cargo-deb --version 3.8.0 --locked)"
  cargo install cargo-deb --version 3.8.0 --locked
fi
target="${CARGO_TARGET_DIR:-target}"
case "$profile" in
  dev) bindir="$target/debug" ;;
  *) bindir="$target/$profile" ;;
esac
if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" -p pathpulse-agent -p pathpulse-aggregator --bins
fi
rm -rf packaging/generated
mkdir -p "$target/debian"
for b in agent aggregator; do
  "$bindir/pathpulse-$b" generate-assets --out "packaging/generated/$b" >/dev/null
done
for b in agent aggregator; do
  cargo deb -p "pathpulse-$b" --profile "$profile" --no-build "${extra[@]}" --output "$target/debian/"
done
