#!/usr/bin/env bash
# Set up and run the demo: an aggregator plus two local agents; metrics on http://127.0.0.1:9470/metrics
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -p pathpulse-aggregator -- demo "$@"
