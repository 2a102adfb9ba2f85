#!/usr/bin/env bash
# Installs what gantry needs to build and test on Debian 12 (run as root):
# protoc (with the well-known protos of libprotobuf-dev, which the etcd
# client of bench_writes compiles) and libclang for the build, containerd + runc + busybox-static for
# the runtime tests, iproute2, iptables and faketime (libfaketime) for the network-namespace and chaos tests
# (tests/chaos.rs), curl and
# prometheus (for `promtool check metrics`) for the metrics test, chromium
# and chromium-driver for the web page test, systemd for
# `systemd-analyze verify` of the units in dist/, mosquitto,
# mosquitto-clients and openssl for the MQTT link's tests (a private
# broker with its own certificates), etcd-server for the anchor of the
# write and footprint benchmarks (scripts/bench-smoke.sh runs them briefly).
set -euo pipefail

packages=(build-essential pkg-config protobuf-compiler libprotobuf-dev libclang-dev clang containerd runc busybox-static iproute2 iptables faketime docker-registry skopeo curl prometheus chromium chromium-driver systemd mosquitto mosquitto-clients openssl etcd-server)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No packaged daemon starts (prometheus, docker-registry, containerd,
  # mosquitto, etcd):
  # they would listen on every interface; tests start their own on loopback.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  installed=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || installed=$?
  if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
  if [ "$installed" != 0 ]; then exit "$installed"; fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  # Debian 12's own cargo is too old (we need Rust >= 1.88).
  echo "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

# Tests start their own registry on 127.0.0.1; the packaged service is not needed.
for unit in docker-registry prometheus etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done

# The system containerd is not needed: tests and the demo start their own.
# Keep one target dir outside the clone so repeated runs reuse the RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gantry-target}"
mkdir -p "$CARGO_TARGET_DIR"
