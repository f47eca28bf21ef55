#!/usr/bin/env bash
# Cross-builds the release binary for a Raspberry Pi 4/5 (Raspberry Pi OS bookworm, arm64) with
# rustup's aarch64 target and Debian's gcc-aarch64-linux-gnu (glibc 2.36, as on bookworm).
# OpenSSL (for passkeys, through webauthn-rs) is compiled from source for arm64 and linked
# statically (the `openssl/vendored` dependency in gateway/Cargo.toml): it needs perl and make,
# no arm64 libssl-dev, and the Pi needs no libssl. It adds a few minutes to a clean build.
#   deploy/build-arm64.sh [--features pi]
# Output: $CARGO_TARGET_DIR (default target)/aarch64-unknown-linux-gnu/release/rxgate
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
    exit 1
fi
for tool in perl make; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool not found (building OpenSSL for arm64 needs it): apt-get install $tool" >&2
        exit 1
    fi
done
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo build --release --locked --target "$target" -p rxgate --bin rxgate "$@"
file_out=${CARGO_TARGET_DIR:-target}/$target/release/rxgate
echo "built $file_out ($(du -h "$file_out" | cut -f1))"
