#!/usr/bin/env bash
# Cross-builds the release binary for a Raspberry Pi 4/5 (Raspberry Pi OS bookworm, arm64) with
# rustup's aarch64 target and Debian's gcc-aarch64-linux-gnu (glibc 2.36, as on bookworm).
#   deploy/build-arm64.sh [--features pi]
# Output: target/aarch64-unknown-linux-gnu/release/rxgate
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
    exit 1
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo build --release --locked --target "$target" -p rxgate --bin rxgate "$@"
file_out=target/$target/release/rxgate
echo "built $file_out ($(du -h "$file_out" | cut -f1))"
