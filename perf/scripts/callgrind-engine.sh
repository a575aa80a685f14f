#!/usr/bin/env bash
# Instructions per packet for each forwarding mode, established flows and
# new flows (a SYN of an unknown flow into a full table, Maglev), counted by
# valgrind callgrind (stable on noisy shared machines). Two runs differ
# only in the number of passes over the flows; their difference divided by
# the extra packets cancels all set-up.
set -euo pipefail
cd "$(dirname "$0")/../.."
flows=${FLOWS:-20000}
cargo bench -q -p fulcrum-perf --bench engine --no-run
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/engine-* | grep -v '\.d$' | head -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" --flows "$flows" --rounds "$2" --callgrind "$1" ${3:-} 2>&1 | awk '/refs:/ { gsub(",", "", $4); print $4 }'; }
per_packet() { local a b; a=$(count "$1" 1 "${2:-}"); b=$(count "$1" 3 "${2:-}"); echo $(( (b - a) / (2 * flows) )); }
echo "| mode | instructions per established packet | instructions per new flow |"
echo "|---|---|---|"
for mode in nat full-nat dsr ipip gue; do
    echo "| $mode | $(per_packet "$mode") | $(per_packet "$mode" --new) |"
done
