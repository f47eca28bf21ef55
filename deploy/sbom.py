#!/usr/bin/env python3
"""Writes the CycloneDX 1.5 SBOM (JSON) of the rxgate binary for one target.

    deploy/sbom.py --target TRIPLE [--features F,...] --output FILE

What it lists: every crate that goes into building `rxgate` for TRIPLE with those features, as
cargo's own resolver sees it for that target (`cargo tree -e normal,build --target TRIPLE`):
normal and build dependencies (build dependencies count: `openssl-src`, for one, is the OpenSSL
compiled into the arm64 binary, while the amd64 binary links Debian's libssl3). Dev-dependencies
and crates only other targets or features need are left out. Details (licence, repository,
description) come from `cargo metadata`, checksums from Cargo.lock.

Each component has its name, version, package URL (pkg:cargo/...), licence expression, the
SHA-256 checksum Cargo.lock pins it to, its source repository and its direct dependencies. The
output is reproducible: the timestamp comes from SOURCE_DATE_EPOCH (else the last commit's
time) and the serial number is derived from the content.

Only Python 3.11's standard library and cargo are needed (no tool to install in CI).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def cargo(*args: str) -> str:
    command = ["cargo", *args, "--locked", "--manifest-path", str(ROOT / "gateway" / "Cargo.toml")]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def dependency_graph(target: str, features: str) -> dict[tuple, list[tuple]]:
    """(name, version) -> its direct normal and build dependencies, from rxgate down."""
    args = ["tree", "-p", "rxgate", "-e", "normal,build", "--target", target,
            "--prefix", "depth", "--format", "{p}"]
    if features:
        args += ["--features", features]
    edges: dict[tuple, set] = {}
    stack: list[tuple] = []
    for line in cargo(*args).splitlines():
        digits = len(line) - len(line.lstrip("0123456789"))
        if not digits:
            continue  # a blank line or a "[build-dependencies]" header
        depth, words = int(line[:digits]), line[digits:].split()
        crate = (words[0], words[1].removeprefix("v"))
        del stack[depth:]
        if stack:
            edges.setdefault(stack[-1], set()).add(crate)
        edges.setdefault(crate, set())
        stack.append(crate)
    return {crate: sorted(deps) for crate, deps in edges.items()}


def lock_checksums() -> dict:
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    return {(p["name"], p["version"]): p["checksum"] for p in lock["package"] if "checksum" in p}


def timestamp() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        epoch = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True, text=True,
        ).stdout.strip() or "0"
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def purl(package: dict) -> str:
    url = f"pkg:cargo/{package['name']}@{package['version']}"
    source = package.get("source")
    if source and source != CRATES_IO:
        # Not from crates.io (a git or path dependency): say where from.
        url += "?repository_url=" + source.split("+", 1)[-1].split("#", 1)[0]
    return url


def component(package: dict, checksums: dict, kind: str) -> dict:
    entry = {
        "type": kind,
        "bom-ref": purl(package),
        "name": package["name"],
        "version": package["version"],
        "purl": purl(package),
    }
    if package.get("description"):
        entry["description"] = " ".join(package["description"].split())
    if package.get("license"):
        entry["licenses"] = [{"expression": package["license"]}]
    checksum = checksums.get((package["name"], package["version"]))
    if checksum:
        entry["hashes"] = [{"alg": "SHA-256", "content": checksum}]
    if package.get("repository"):
        entry["externalReferences"] = [{"type": "vcs", "url": package["repository"]}]
    return entry


def build_sbom(target: str, features: str) -> dict:
    edges = dependency_graph(target, features)
    metadata = json.loads(cargo("metadata", "--format-version", "1", "--all-features"))
    packages = {(p["name"], p["version"]): p for p in metadata["packages"]}
    missing = [crate for crate in edges if crate not in packages]
    if missing:
        raise SystemExit(f"cargo tree names crates cargo metadata does not know: {missing}")
    root = next(crate for crate in edges if crate[0] == "rxgate")

    checksums = lock_checksums()
    refs = {crate: purl(packages[crate]) for crate in edges}
    application = component(packages[root], checksums, "application")
    application["properties"] = [
        {"name": "rxgate:target", "value": target},
        {"name": "rxgate:features", "value": features or "default"},
    ]
    components = sorted(
        (component(packages[crate], checksums, "library") for crate in edges if crate != root),
        key=lambda c: (c["name"], c["version"]),
    )
    dependencies = sorted(
        ({"ref": refs[crate], "dependsOn": sorted(refs[d] for d in deps)}
         for crate, deps in edges.items()),
        key=lambda d: d["ref"],
    )
    sbom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": timestamp(),
            "tools": {"components": [{"type": "application", "name": "rxgate deploy/sbom.py"}]},
            "component": application,
        },
        "components": components,
        "dependencies": dependencies,
    }
    digest = hashlib.sha256(json.dumps(sbom, sort_keys=True).encode()).digest()
    sbom["serialNumber"] = f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"
    return sbom


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", required=True, help="target triple, e.g. aarch64-unknown-linux-gnu")
    parser.add_argument("--features", default="", help="rxgate features the binary is built with")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    sbom = build_sbom(args.target, args.features)
    args.output.write_text(json.dumps(sbom, indent=2) + "\n")
    print(f"{args.output}: {len(sbom['components'])} components ({args.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
