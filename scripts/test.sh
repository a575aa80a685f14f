#!/usr/bin/env bash
# The test command: sets up a fresh machine, then builds and runs every
# test once. Run as root (the namespace lab needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo build --workspace --all-targets --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/build-plugins.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (the last cargo summary is often a
# crate's empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The packet path's instruction budget (release build, callgrind).
perf/scripts/check-budget.sh
