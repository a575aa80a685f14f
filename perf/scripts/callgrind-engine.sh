#!/usr/bin/env bash
# Instructions per packet for each forwarding mode, established flows and
# new flows (a SYN of an unknown flow into a full table, Maglev), counted by
# valgrind callgrind (stable on noisy shared machines). Only the bench's
# `counted` passes are counted, so the set-up (table fill, frame building)
# is left out; the count includes the bench's ~40-instruction frame copy.
# ENGINE_BENCH: the benchmark's executable, if already built (scripts/bench.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
flows=${FLOWS:-20000}
rounds=2
bin=${ENGINE_BENCH:-$(perf/scripts/build-engine-bench.sh)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
per_packet() {
    local ir
    ir=$(valgrind --tool=callgrind --toggle-collect='*counted*' --callgrind-out-file="$tmp/out" "$bin" --flows "$flows" --rounds "$rounds" --callgrind "$@" 2>&1 |
        awk '/refs:/ { gsub(",", "", $4); print $4 }')
    [ -n "$ir" ] || { echo "callgrind-engine: valgrind counted nothing for $*" >&2; return 1; }
    echo $((ir / (rounds * flows)))
}
echo "| mode | instructions per established packet | instructions per new flow |"
echo "|---|---|---|"
for mode in nat full-nat dsr ipip gue; do
    est=$(per_packet "$mode")
    new=$(per_packet "$mode" --new)
    echo "| $mode | $est | $new |"
done
