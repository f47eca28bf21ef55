#!/usr/bin/env bash
# Proves the arm64 binary starts: `rxgate --version` and `rxgate init` under qemu-aarch64-static.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/rxgate
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if [ -z "$qemu" ]; then
    echo "qemu-aarch64-static not found: apt-get install qemu-user-static" >&2
    exit 1
fi
run() { "$qemu" -L /usr/aarch64-linux-gnu "$bin" "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run --version
printf '[gateway]\nsite = "pi-smoke"\ndata_dir = "data"\n' > "$work/gateway.toml"
run --config "$work/gateway.toml" config check
run --config "$work/gateway.toml" init
test -f "$work/data/ca/ca.crt"
test "$(stat -c %a "$work/data/ca/ca.key")" = 600
run --config "$work/gateway.toml" token create --device fridge-pi --kind fridge >/dev/null
run --config "$work/gateway.toml" device list
echo "arm64 binary OK under $(basename "$qemu")"
