#!/usr/bin/env bash
# Checks rxgate's Debian packages as an installer meets them (needs root: it installs one):
#   1. lintian on every .deb given: no error and no warning but those overridden, each with its
#      reason, in deploy/debian/lintian-overrides (shipped in the package);
#   2. dpkg -i of the one for this machine's architecture; systemd-analyze verify on the unit as
#      installed; the rxgate user, its groups, owners and modes, the key-encryption credential;
#   3. `rxgate config check` and `rxgate init` as the rxgate user, then owners and modes of data_dir;
#      `rxgate keys seal` with the package's credential handed over as the unit hands it;
#   4. reinstall, dpkg -r, dpkg --purge: the CA and the credential survive each, unchanged.
# Then it puts the machine back as it was: it refuses to start where rxgate is installed or has
# left a user or data, and removes everything the test created (user, data_dir, credential).
#   deploy/check-package.sh DEB...   (e.g. target/debian/amd64/rxgate_*.deb target/debian/arm64/rxgate_*.deb)
set -euo pipefail
cd "$(dirname "$0")/.."

(($#)) || { echo "usage: deploy/check-package.sh DEB..." >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "check-package.sh installs a package: run it as root" >&2; exit 1; }

data_dir=/var/lib/rxgate
config=/etc/rxgate/gateway.toml
credstore=/etc/credstore.encrypted
kek=$credstore/rxgate-kek
host_secret=/var/lib/systemd/credential.secret
unit=/usr/lib/systemd/system/rxgate.service
as_rxgate=(runuser -u rxgate -- rxgate --config "$config")

fail() { echo "check-package: $*" >&2; exit 1; }
# expect PATH MODE OWNER:GROUP
expect() {
    local got
    got=$(stat -c '%a %U:%G' "$1") || fail "$1 is missing"
    [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
    echo "    $1: $got"
}

echo "==> lintian"
for deb in "$@"; do
    # --fail-on warning: a new warning fails CI until it is fixed or overridden with a reason.
    lintian --fail-on error,warning --info --display-info "$deb"
    echo "    $(basename "$deb"): no errors, no unexplained warnings"
done

host_arch=$(dpkg --print-architecture)
deb=""
for candidate in "$@"; do
    [ "$(dpkg-deb -f "$candidate" Architecture)" = "$host_arch" ] && deb=$candidate
done
[ -n "$deb" ] || fail "no package for this machine's architecture ($host_arch) among $*"

if dpkg-query -W -f='${Status}' rxgate 2>/dev/null | grep -q installed \
    || getent passwd rxgate >/dev/null || getent group rxgate >/dev/null \
    || [ -e "$data_dir" ] || [ -e /etc/rxgate ] || [ -e "$kek" ]; then
    fail "this machine already has an rxgate (package, user, $data_dir, /etc/rxgate or $kek):" \
        "not testing against it. Remove it, or skip this step with RXGATE_SKIP_PACKAGE=1"
fi
had_credstore=0 had_host_secret=0
[ -e "$credstore" ] && had_credstore=1
[ -e "$host_secret" ] && had_host_secret=1
cleanup() {
    dpkg --purge rxgate >/dev/null 2>&1 || true
    getent passwd rxgate >/dev/null && userdel rxgate
    getent group rxgate >/dev/null && groupdel rxgate
    rm -rf "$data_dir" /etc/rxgate "$kek"
    [ "$had_credstore" = 1 ] || rm -rf "$credstore"
    [ "$had_host_secret" = 1 ] || rm -f "$host_secret"
}
trap cleanup EXIT

echo "==> dpkg -i $(basename "$deb")"
dpkg -i "$deb"

echo "==> systemd-analyze verify (the unit as installed)"
systemd-analyze verify "$unit"
grep -qx 'ExecStart=/usr/bin/rxgate --config /etc/rxgate/gateway.toml run' "$unit" \
    || fail "$unit does not start /usr/bin/rxgate"

echo "==> what the package made"
expect /usr/bin/rxgate 755 root:root
expect "$config" 640 root:rxgate
expect "$data_dir" 700 rxgate:rxgate
[ "$(getent passwd rxgate | cut -d: -f7)" = /usr/sbin/nologin ] || fail "rxgate has a login shell"
[ "$(id -u rxgate)" -lt 1000 ] || fail "rxgate is not a system user"
for group in dialout gpio; do
    if getent group "$group" >/dev/null; then
        id -nG rxgate | tr ' ' '\n' | grep -qx "$group" || fail "rxgate is not in $group"
        echo "    rxgate is in $group"
    fi
done
sbom=/usr/share/doc/rxgate/sbom.cdx.json
jq -e '.bomFormat == "CycloneDX" and (.components | length > 100)
       and any(.components[]; .name == "rustls")' "$sbom" >/dev/null \
    || fail "no CycloneDX SBOM listing the crates in $sbom"
# Against the CycloneDX 1.5 JSON schema, with the CycloneDX project's own library (.venv).
.venv/bin/python - "$sbom" <<'PY' || fail "$sbom is not a valid CycloneDX 1.5 document"
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if error:
    sys.exit(f"{sys.argv[1]}: {error}")
PY
echo "    SBOM: $(jq '.components | length' "$sbom") components, valid CycloneDX 1.5"
man -w rxgate-backup-create >/dev/null 2>&1 || test -f /usr/share/man/man1/rxgate-backup-create.1.gz \
    || fail "the manual pages are not installed"
echo "    manual pages: $(ls /usr/share/man/man1/rxgate*.1.gz | wc -l)"
test -f /usr/share/doc/rxgate/SECURITY.md || fail "SECURITY.md is not shipped"
if command -v systemd-creds >/dev/null; then
    expect "$credstore" 700 root:root
    expect "$kek" 600 root:root
    [ "$(systemd-creds decrypt --name=rxgate-kek "$kek" - | wc -c)" = 32 ] \
        || fail "$kek does not decrypt to a 32-byte key"
    echo "    $kek decrypts to 32 bytes"
fi

echo "==> rxgate config check and init as the rxgate user"
"${as_rxgate[@]}" config check
"${as_rxgate[@]}" init
expect "$data_dir" 700 rxgate:rxgate
expect "$data_dir/ca/ca.crt" 644 rxgate:rxgate
expect "$data_dir/ca/ca.key" 600 rxgate:rxgate
expect "$data_dir/tls/server.key" 600 rxgate:rxgate
expect "$data_dir/rxgate.redb" 600 rxgate:rxgate
if "${as_rxgate[@]}" init >/dev/null 2>&1; then fail "a second rxgate init did not refuse"; fi
echo "    a second rxgate init refuses: the CA exists"
if command -v systemd-creds >/dev/null; then
    # The keys are sealed with the package's credential, handed over as the unit hands it
    # (LoadCredentialEncrypted= decrypts it into $CREDENTIALS_DIRECTORY, readable by rxgate only).
    creds=$(mktemp -d)
    chmod 0700 "$creds"
    systemd-creds decrypt --name=rxgate-kek "$kek" "$creds/rxgate-kek"
    chown -R rxgate:rxgate "$creds"
    CREDENTIALS_DIRECTORY=$creds "${as_rxgate[@]}" keys seal
    status=$(CREDENTIALS_DIRECTORY=$creds "${as_rxgate[@]}" keys status)
    echo "$status" | sed 's/^/    /'
    for key in "CA key" "server key" "pseudonym key"; do
        echo "$status" | grep -qE "^$key +sealed$" || fail "keys status: the $key is not sealed"
    done
    rm -rf "$creds"
    for key in ca/ca.key tls/server.key pseudonym.key; do
        [ ! -e "$data_dir/$key" ] || fail "$data_dir/$key is still there in plain after keys seal"
        expect "$data_dir/$key.sealed" 600 rxgate:rxgate
    done
    if "${as_rxgate[@]}" pseudonym MRN-0000001 >/dev/null 2>&1; then
        fail "the sealed pseudonym key opened without the key-encryption key"
    fi
    echo "    without the credential, rxgate refuses to use the sealed keys"
fi

fingerprint() { sha256sum "$data_dir"/ca/ca.key* "$data_dir/ca/ca.crt" "$kek" 2>/dev/null || true; }
before=$(fingerprint)
survives() { [ "$(fingerprint)" = "$before" ] || fail "the CA or the credential changed after $1"; echo "    the CA and the credential survive $1"; }

echo "==> reinstall, remove, purge"
dpkg -i "$deb" >/dev/null
survives "a reinstall"
expect "$data_dir" 700 rxgate:rxgate
dpkg -r rxgate >/dev/null
[ ! -e /usr/bin/rxgate ] || fail "dpkg -r left /usr/bin/rxgate"
test -f "$config" || fail "dpkg -r removed the conffile"
survives "dpkg -r"
dpkg --purge rxgate >/dev/null
[ ! -e "$config" ] || fail "dpkg --purge left $config"
! dpkg-statoverride --list "$config" >/dev/null || fail "dpkg --purge left a statoverride for $config"
survives "dpkg --purge"
echo "==> the packages are good (the test's user, data_dir and credential are removed again)"
