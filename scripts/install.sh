#!/usr/bin/env bash
# Builds gantry in the release profile (what a gateway runs) and installs
# it on this machine, as root: the binary in /usr/local/bin, its man pages,
# bash completion, and the systemd units (installed, not enabled: a gateway
# needs `gantry init` or `gantry join` first, then
# `systemctl enable --now gantry`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

prefix="${PREFIX:-/usr/local}"
cargo build --release --bin gantry
install -D -m 0755 "$CARGO_TARGET_DIR/release/gantry" "$prefix/bin/gantry"
"$prefix/bin/gantry" man "$prefix/share/man/man1" >/dev/null
install -d /etc/bash_completion.d
"$prefix/bin/gantry" completion bash >/etc/bash_completion.d/gantry
if [ -d /etc/systemd/system ]; then
  sed "s#/usr/local/bin/gantry#$prefix/bin/gantry#" dist/gantry.service >/etc/systemd/system/gantry.service
  sed "s#/usr/local/bin/gantry#$prefix/bin/gantry#" dist/gantry-hub.service >/etc/systemd/system/gantry-hub.service
fi
echo "installed $("$prefix/bin/gantry" --version) as $prefix/bin/gantry (man gantry; units in /etc/systemd/system)"
