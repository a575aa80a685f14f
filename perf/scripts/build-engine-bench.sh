#!/usr/bin/env bash
# Builds the engine micro-benchmark (or the one named by BENCH, e.g.
# handshake) in the release profile and prints the path of its executable. Extra arguments go to the same `cargo build`
# (scripts/bench.sh builds everything else in it), which matters: `cargo
# bench` uses a profile that, though identical, would compile everything
# again, and another package set can resolve other features.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(cargo build --release --locked -p fulcrum-perf --bench "${BENCH:-engine}" "$@" --message-format=json-render-diagnostics |
    sed -n 's/.*"kind":\["bench"\].*"executable":"\([^"]*\)".*/\1/p')
[ -x "$bin" ] || { echo "build-engine-bench: no executable built" >&2; exit 1; }
echo "$bin"
