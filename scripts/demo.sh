#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds gantry and runs
# `gantry dev`: a private containerd, a cloud hub and a 3-gateway site on
# loopback, a demo image built from busybox-static, sample workloads pushed
# from the hub, and the status of both sides. Runs until Ctrl-C, then cleans
# up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo build --bin gantry
# The demo tells you to run `gantry status` in another shell: put this
# build on the PATH (scripts/install.sh installs a release build instead).
if [ ! -e /usr/local/bin/gantry ] || [ -L /usr/local/bin/gantry ]; then
  ln -sf "$CARGO_TARGET_DIR/debug/gantry" /usr/local/bin/gantry
fi
exec "$CARGO_TARGET_DIR/debug/gantry" dev "$@"
