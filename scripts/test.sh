#!/usr/bin/env bash
# The test command: sets up a fresh machine, then builds and runs every
# test once. Run as root (the namespace lab needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --all-targets --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/build-plugins.sh
cargo test --workspace --locked
