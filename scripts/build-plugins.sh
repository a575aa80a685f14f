#!/usr/bin/env bash
# Builds every plugin under plugins/ for wasm32-unknown-unknown (release,
# profile wasm-release) and checks each module against the plugin ABI
# (`fulcrum plugin check`: the plugin host's own load-time checks). Output:
#   target/plugins/NAME.wasm             one per plugins/NAME crate
#   target/plugins/hostile-FEATURE.wasm  one per feature of plugins/hostile,
#                                        for the host's containment tests only
set -euo pipefail
cd "$(dirname "$0")/.."

target=wasm32-unknown-unknown
profile=wasm-release
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target" ]; then
    echo "error: the Rust target $target is not installed: run scripts/setup.sh" >&2
    exit 1
fi

target_dir=${CARGO_TARGET_DIR:-target}
built=$target_dir/$target/$profile
out=$target_dir/plugins
mkdir -p "$out"

plugins=()
for manifest in plugins/*/Cargo.toml; do
    name=$(basename "$(dirname "$manifest")")
    [ "$name" = hostile ] || plugins+=("$name")
done

cargo build --target "$target" --profile "$profile" "${plugins[@]/#/--package=fulcrum-plugin-}"
for name in "${plugins[@]}"; do
    cp "$built/fulcrum_plugin_${name//-/_}.wasm" "$out/$name.wasm"
done

# Features are exclusive: one build per misbehaviour.
features=$(python3 -c 'import tomllib; print(*tomllib.load(open("plugins/hostile/Cargo.toml", "rb"))["features"])')
for feature in $features; do
    cargo build --quiet --target "$target" --profile "$profile" --package fulcrum-plugin-hostile --features "$feature"
    cp "$built/fulcrum_plugin_hostile.wasm" "$out/hostile-$feature.wasm"
done

echo "ABI check of $out (hostile modules are broken on purpose and not checked):"
modules=()
for name in "${plugins[@]}"; do modules+=("$out/$name.wasm"); done
cargo run --quiet --locked -p fulcrum -- plugin check "${modules[@]}" | sed "s|^$out/||"
echo "hostile:" $(for f in $features; do echo "hostile-$f.wasm"; done)
