#!/usr/bin/env bash
# Regenerates the rxgate-certs test fixtures with the openssl CLI. The keys are test-only and
# protect nothing; they are committed so the unit tests need no RSA key generation in Rust.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
req() { openssl req -new -nodes -keyout "$tmp/k.pem" -outform DER "$@" 2>/dev/null; }

req -newkey rsa:1024 -subj /CN=fridge-01 -out rsa1024.der
req -newkey rsa:2048 -subj /CN=fridge-01 -out rsa2048.der
req -newkey rsa:2048 -sha1 -subj /CN=fridge-01 -out rsa2048-sha1.der
openssl ecparam -name secp256k1 -genkey -noout -out "$tmp/k1.pem"
openssl req -new -key "$tmp/k1.pem" -subj /CN=fridge-01 -outform DER -out secp256k1.der
req -newkey ec -pkeyopt ec_paramgen_curve:P-521 -subj /CN=fridge-01 -out p521.der
req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj /CN=fridge-01/CN=fridge-02 -out two-cns.der

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-ca.key 2>/dev/null
openssl req -x509 -key rsa-ca.key -subj "/O=Pharmacy Chain/CN=Pharmacy Chain RSA CA" -days 3650 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out rsa-ca.pem

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out two-ou-ca.key
openssl req -x509 -key two-ou-ca.key -subj "/O=Pharmacy Chain/OU=Stores/OU=North/CN=North Stores CA" -days 3650 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out two-ou-ca.pem
echo "fixtures regenerated in $(pwd)"
