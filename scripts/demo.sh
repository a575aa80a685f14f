#!/usr/bin/env bash
# The main job: sets up a fresh machine, builds fulcrum and the lab, then
# runs the demo (a namespace lab with the embedded default config, traffic,
# the per-backend distribution and the counters; the lab is removed after).
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked -p fulcrum -p fulcrum-tests --bins
exec target/debug/demo
