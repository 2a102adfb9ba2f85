#!/usr/bin/env bash
# Runs the deterministic simulation over many seeds in release mode and
# prints its summary line and the wall time. No sockets, no containers:
# everything runs in one process on simulated time.
#
#   scripts/sim-soak.sh --seeds 10000 [--from S] [other gantry-sim flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p gantry-sim --release
start=$(date +%s)
status=0
"${CARGO_TARGET_DIR:-target}/release/gantry-sim" "$@" || status=$?
end=$(date +%s)
echo "sim-soak: wall_s=$((end - start)) args='$*' exit=$status"
exit $status
