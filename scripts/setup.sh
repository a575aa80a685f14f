#!/usr/bin/env bash
# Installs what building and testing fulcrum needs on a fresh Debian
# machine. Idempotent; needs root (as CI has).
set -euo pipefail

packages=(
    clang llvm libbpf-dev                                      # io/bpf/*.c, tests/bpf/*.c (bpf_helpers.h)
    libelf-dev m4 libpcap-dev pkg-config zlib1g-dev make       # libxdp/libbpf builds under xsk-rs
    iproute2 ethtool iputils-ping curl                         # the namespace lab
    nftables                                                   # half-open health checks (health/src/rst_guard.rs), the two-tier HAProxy nodes
    valgrind                                                   # instruction counts in perf/
    keepalived                                                 # the HA pair lab (tests/tests/ha.rs)
    bird2 exabgp                                               # the scale-out lab (tests/tests/ecmp.rs): router and node speakers
    systemd                                                    # systemd-analyze verify of config/fulcrum.service
    nginx-light openssl dnsmasq-base                           # https, Host, dns checks against real servers (tests/tests/checks.rs)
    haproxy                                                    # the two-tier L7 example's lab (tests/tests/two_tier.rs)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# scripts/test.sh gates on `cargo fmt --check` and clippy.
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
