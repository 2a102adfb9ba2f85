#!/usr/bin/env bash
# Builds the release gantry for aarch64 (most gateways are ARM) with
# Debian's cross toolchain, runs the unit tests of every library crate and
# `gantry --version` under qemu-user, and prints one line:
#
#   arm64: target=aarch64-unknown-linux-gnu version=.. unit_tests=N stripped_mb=..
#
# Not part of ./scripts/test.sh: a cold cross build of RocksDB takes about
# half an hour on two cores. Run as root on Debian 12. The target dir is
# its own (GANTRY_ARM64_TARGET_DIR, default /var/cache/gantry-target-arm64)
# so that it never invalidates the host build.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
packages=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu qemu-user protobuf-compiler libclang-dev clang)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "arm64: cannot install Debian's cross toolchain (${missing[*]}); nothing was built" >&2
    exit 1
  fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  if ! rustup target add "$target" >/dev/null 2>&1; then
    echo "arm64: the Rust target $target cannot be installed here (rustup target add failed); nothing was built" >&2
    exit 1
  fi
fi

sysroot=/usr/aarch64-linux-gnu
export CARGO_TARGET_DIR="${GANTRY_ARM64_TARGET_DIR:-/var/cache/gantry-target-arm64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen (RocksDB's C API) parses the target's headers, not the host's.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$sysroot -I$sysroot/include"
mkdir -p "$CARGO_TARGET_DIR"

echo "building gantry for $target (release) into $CARGO_TARGET_DIR"
cargo build --release --locked --target "$target" --bin gantry

# The unit tests of the library crates, as the gateway's CPU runs them. The
# simulation crate is left out: it tests the logic, not the platform, and
# takes minutes under emulation.
test_log="$CARGO_TARGET_DIR/arm64-unit-tests.log"
echo "running the unit tests under qemu-aarch64 (log: $test_log)"
if ! cargo test --release --locked --target "$target" \
  -p gantry -p gantry-scheduler -p gantry-node -p gantry-pki -p gantry-proto --lib \
  >"$test_log" 2>&1; then
  tail -40 "$test_log" >&2
  echo "arm64: unit tests failed under qemu-aarch64 (see $test_log)" >&2
  exit 1
fi
passed=$(awk '/^test result: ok\./ { sum += $4 } END { print sum + 0 }' "$test_log")

binary="$CARGO_TARGET_DIR/$target/release/gantry"
file_type=$(file -b "$binary" 2>/dev/null || echo "unknown")
case "$file_type" in
  *aarch64*|*ARM\ aarch64*|unknown) ;;
  *) echo "arm64: $binary is not an aarch64 binary: $file_type" >&2; exit 1 ;;
esac
version=$(qemu-aarch64 -L "$sysroot" "$binary" --version | awk '{ print $2 }')
stripped="$CARGO_TARGET_DIR/gantry-aarch64-stripped"
aarch64-linux-gnu-strip -o "$stripped" "$binary"
bytes=$(stat -c %s "$stripped")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "arm64: target=$target version=$version unit_tests=$passed stripped_mb=$mb binary=$stripped"
