#!/usr/bin/env bash
# Builds rxgate's Debian packages with cargo-deb (metadata: [package.metadata.deb] in
# gateway/Cargo.toml), each with its CycloneDX SBOM at /usr/share/doc/rxgate/sbom.cdx.json
# (deploy/sbom.py: the crates that build exactly this binary, for its target and features).
#   deploy/package.sh amd64              release build for this machine (x86_64), then the .deb
#   deploy/package.sh amd64 --test-build the .deb of the binary scripts/test built for the tests
#                                        (target/debug): CI checks the packaging with it rather
#                                        than spend a second optimised build; never ship it
#   deploy/package.sh arm64              the .deb of deploy/build-arm64.sh's release binary, which
#                                        must exist: the Raspberry Pi build is not repeated here
# Output: $CARGO_TARGET_DIR (default target)/debian/<arch>/rxgate_<version>-1_<arch>.deb, alone there
# Installs the pinned cargo-deb (cargo install --locked, about 2 minutes) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_deb_version=3.8.0
target_dir=${CARGO_TARGET_DIR:-target}
usage="usage: deploy/package.sh amd64 [--test-build] | arm64"

arch=${1:?$usage}
test_build=0
case "${2:-}" in
"") ;;
--test-build) [ "$arch" = amd64 ] || { echo "$usage" >&2; exit 2; }; test_build=1 ;;
*) echo "$usage" >&2; exit 2 ;;
esac
out_dir=$target_dir/debian/$arch
profile=release
case "$arch" in
amd64)
    triple=x86_64-unknown-linux-gnu
    features=""
    if [ "$test_build" = 1 ]; then
        # cargo-deb packages from a profile's folder and refuses the dev profile: the test build
        # is linked into the folder of the package-check profile (Cargo.toml), which inherits dev.
        profile=package-check
        bin_dir=$target_dir/package-check
        [ -x "$target_dir/debug/rxgate" ] || {
            echo "$target_dir/debug/rxgate not found: run cargo build --workspace --bins first" >&2
            exit 1
        }
        mkdir -p "$bin_dir"
        ln -f "$target_dir/debug/rxgate" "$bin_dir/rxgate"
    else
        bin_dir=$target_dir/release
    fi
    ;;
arm64)
    triple=aarch64-unknown-linux-gnu
    bin_dir=$target_dir/$triple/release
    # As deploy/build-arm64.sh is called by scripts/test: GPIO through rppal.
    features=pi
    ;;
*)
    echo "unknown architecture $arch (amd64 or arm64)" >&2
    exit 2
    ;;
esac

# `cargo install` into a target dir of its own, so a tool's build never touches rxgate's.
tool() {
    local crate=$1 version=$2 probe=$3
    if ! cargo "$probe" --version 2>/dev/null | grep -qF "$version"; then
        echo "==> installing $crate $version"
        cargo install --locked --quiet "$crate" --version "$version" \
            --target-dir "$target_dir/tools"
    fi
}
tool cargo-deb "$cargo_deb_version" deb

if [ "$arch" = amd64 ] && [ "$test_build" = 0 ]; then
    echo "==> release build (amd64)"
    cargo build --release --locked -p rxgate --bin rxgate
elif [ ! -x "$bin_dir/rxgate" ]; then
    echo "$bin_dir/rxgate not found: run deploy/build-arm64.sh --features pi first" >&2
    exit 1
fi

# cargo-deb takes the SBOM from the binary's folder (the target/release/rxgate.cdx.json asset).
echo "==> SBOM (CycloneDX JSON, $triple)"
deploy/sbom.py --target "$triple" --features "$features" --output "$bin_dir/rxgate.cdx.json"

echo "==> cargo deb ($arch, $profile profile)"
rm -rf "$out_dir"
mkdir -p "$out_dir"
target_args=()
[ "$arch" = amd64 ] || target_args=(--target "$triple")
cargo deb -p rxgate --no-build --locked --profile "$profile" "${target_args[@]}" --output "$out_dir"
