#!/usr/bin/env bash
# The whole performance comparison (issue 7), from a fresh machine: installs
# what it needs, builds release, then measures
#   - the engine in-process: ns per packet (cargo bench) and instructions
#     per packet (callgrind) for established and new flows in every mode,
#     and the cost of copying frames between UMEMs;
#   - the line rate on the namespace lab: fulcrum (NAT, DSR, IPIP; native
#     and generic XDP) beside the null AF_XDP forwarder, nftables DNAT and
#     HAProxy, interleaved (perf/linerate/src/bin/linerate.rs);
# and appends the tables to perf/RESULTS.md, plots to perf/results/.
# Root (the lab). About 8-10 minutes on the project's 2-core machines.
# Not part of scripts/test.sh: too long; the harness's logic has unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
load=$(cut -d' ' -f1-3 /proc/loadavg)
scripts/setup.sh
# Only the comparison needs these: the peers and the plots' font.
bench_packages=(nftables haproxy fonts-dejavu-core)
missing=()
for p in "${bench_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cargo build --release --locked -p fulcrum -p fulcrum-tests -p fulcrum-linerate --bins
cargo bench --locked -q -p fulcrum-perf --bench engine --no-run
built=$(date +%s)

out=perf/results
mkdir -p "$out"
{
    echo "#### Engine in-process, 1,000,000 flows"
    echo
    echo '`cargo bench -p fulcrum-perf --bench engine -- --rounds 3`'
    echo
    cargo bench --locked -q -p fulcrum-perf --bench engine -- --rounds 3
    echo
    echo "#### Engine in-process, 1,000 flows (cache-resident)"
    echo
    echo '`cargo bench -p fulcrum-perf --bench engine -- --flows 1000 --rounds 50`'
    echo
    cargo bench --locked -q -p fulcrum-perf --bench engine -- --flows 1000 --rounds 50 | sed -n '1,8p'
    echo
    echo "#### Instructions per packet (callgrind, 10,000 flows)"
    echo
    echo '`FLOWS=10000 perf/scripts/callgrind-engine.sh` (includes the ~40-instruction frame copy)'
    echo
    FLOWS=10000 perf/scripts/callgrind-engine.sh
} > "$out/engine.md"
cat "$out/engine.md"

"${CARGO_TARGET_DIR:-target}/release/linerate" --out "$out" "$@"

cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
end=$(date +%s)
took() { echo "$(( $1 / 60 )) min $(( $1 % 60 )) s"; }
{
    echo
    echo "### $(date -u +%Y-%m-%d), $(nproc) vCPU $cpu, Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2)"
    echo
    echo "\`scripts/bench.sh\`: $(took $((end - start))) in all, of which $(took $((built - start))) installing and building; load average at the start: $load."
    echo
    echo "#### Line rate on the namespace lab"
    echo
    cat "$out/linerate.md"
    echo
    cat "$out/engine.md"
} >> perf/RESULTS.md
echo "bench: appended to perf/RESULTS.md; plots in $out/"
