#!/usr/bin/env bash
# The whole test suite: set-up, build, unit and end-to-end tests.
# Lab tests need root; under CI=true they must not skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads=2
