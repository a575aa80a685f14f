#!/usr/bin/env bash
# The whole performance comparison, from a fresh machine: installs
# what it needs, builds release, then measures
#   - the engine in-process: ns per packet (cargo bench) and instructions
#     per packet (callgrind) for established and new flows in every mode,
#     and the cost of copying frames between UMEMs;
#   - the line rate on the namespace lab: fulcrum (NAT, DSR, IPIP; native
#     and generic XDP) beside the null AF_XDP forwarder, nftables DNAT and
#     HAProxy, interleaved (perf/linerate/src/bin/linerate.rs);
# and appends the tables to perf/history/DATE.md, plots to perf/results/.
# Root (the lab). `make bench` runs it. Under 10 minutes from a fresh
# machine on the project's 2-core VMs (perf/RESULTS.md has the timings).
# Not part of scripts/test.sh: too long; the harness's logic has unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
load=$(cut -d' ' -f1-3 /proc/loadavg)
scripts/setup.sh
# Only the comparison needs these (the peers and the plots' font): they
# install while the build runs.
bench_packages=(nftables haproxy fonts-dejavu-core)
missing=()
for p in "${bench_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]} (in the background)"
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") > "$apt_log" 2>&1 &
    apt_pid=$!
fi
# One release build for the daemon, the lab's programs, the harness and
# the engine benchmark.
engine_bench=$(perf/scripts/build-engine-bench.sh -p fulcrum -p fulcrum-tests -p fulcrum-linerate --bins)
if [ -n "${apt_pid:-}" ] && ! wait "$apt_pid"; then
    cat "$apt_log" >&2
    echo "bench: installing ${missing[*]} failed" >&2
    exit 1
fi
built=$(date +%s)

out=perf/results
mkdir -p "$out"
{
    echo "#### Engine in-process, 1,000,000 flows"
    echo
    echo '`cargo bench -p fulcrum-perf --bench engine -- --rounds 3`'
    echo
    "$engine_bench" --rounds 3
    echo
    echo "#### Engine in-process, 1,000 flows (cache-resident)"
    echo
    echo '`cargo bench -p fulcrum-perf --bench engine -- --flows 1000 --rounds 20`'
    echo
    "$engine_bench" --flows 1000 --rounds 20 | sed -n '1,8p'
    echo
    echo "#### Instructions per packet (callgrind, 10,000 flows)"
    echo
    echo '`FLOWS=10000 perf/scripts/callgrind-engine.sh` (includes the ~40-instruction frame copy)'
    echo
    FLOWS=10000 ENGINE_BENCH="$engine_bench" perf/scripts/callgrind-engine.sh
} > "$out/engine.md"
cat "$out/engine.md"
measured=$(date +%s)

"${CARGO_TARGET_DIR:-target}/release/linerate" --out "$out" "$@"

cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
end=$(date +%s)
# perf/RESULTS.md holds the current figures, one table each; every run
# goes to the day's file in perf/history/ whole, to be folded in by hand.
run_log=perf/history/$(date -u +%Y-%m-%d).md
took() { echo "$(( $1 / 60 )) min $(( $1 % 60 )) s"; }
{
    echo
    echo "### $(date -u +%Y-%m-%d), $(nproc) vCPU $cpu, Linux $(uname -r), $(rustc --version | cut -d' ' -f1-2)"
    echo
    echo "\`scripts/bench.sh\`: $(took $((end - start))) in all: $(took $((built - start))) installing and building, $(took $((measured - built))) in-process, $(took $((end - measured))) line rate; load average at the start: $load."
    echo
    echo "#### Line rate on the namespace lab"
    echo
    cat "$out/linerate.md"
    echo
    cat "$out/engine.md"
} >> "$run_log"
echo "bench: run recorded in $run_log (fold its tables into perf/RESULTS.md, the current figures); plots in $out/"
