#!/usr/bin/env bash
# Instructions to open one connection through a nat VIP (the three segments
# of the handshake the balancer sees) and per established packet, with the
# SYN proxy off and always on, counted by valgrind callgrind over FLOWS
# connections (perf/benches/handshake.rs). Only the engine's `process` is
# counted, not the building of frames.
set -euo pipefail
cd "$(dirname "$0")/../.."
flows=${FLOWS:-10000}
rounds=2
bin=$(BENCH=handshake perf/scripts/build-engine-bench.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
    local what=$1 per=$2 ir
    shift 2
    ir=$(valgrind --tool=callgrind --toggle-collect="*$what*" --callgrind-out-file="$tmp/out" "$bin" --flows "$flows" --rounds "$rounds" --callgrind "$@" 2>&1 |
        awk '/refs:/ { gsub(",", "", $4); print $4 }')
    [ -n "$ir" ] || { echo "callgrind-synproxy: valgrind counted nothing for $*" >&2; return 1; }
    echo $((ir / per))
}
echo "| mode | SYN proxy | instructions per connection opened | instructions per established packet |"
echo "|---|---|---|---|"
for mode in nat full-nat; do
    for proxy in off always; do
        flag=()
        [ "$proxy" = always ] && flag=(--proxy)
        open=$(count counted_open "$flows" "$mode" "${flag[@]}")
        est=$(count counted_established $((flows * rounds)) "$mode" "${flag[@]}")
        echo "| $mode | $proxy | $open | $est |"
    done
done
