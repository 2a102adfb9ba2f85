#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) and runs the whole test suite:
# unit, property and end-to-end tests (real gateways, real containerd).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo build --workspace --all-targets
# One crypto provider (aws-lc-rs through rustls), no OpenSSL in the build.
openssl_users=$(cargo tree -e normal -i openssl-sys --workspace 2>/dev/null || true)
if [ -n "$openssl_users" ]; then
  echo "error: openssl-sys is in the build: cargo tree -e normal -i openssl-sys" >&2
  exit 1
fi
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 2 || status=$?
else
  cargo test --workspace --no-fail-fast -- --test-threads 2 || status=$?
fi
# The shell checks a skeptical reviewer would run against real gateways.
./scripts/security-smoke.sh || status=$?
# Every benchmark runs for a few seconds and prints its line.
./scripts/bench-smoke.sh || status=$?
exit "$status"
