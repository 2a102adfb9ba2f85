#!/usr/bin/env bash
# The chaos soak (tests/chaos.rs) for more faults than CI's 60: five real
# gateways and a hub, each in a network namespace this run makes (and
# removes), each gateway with its own containerd and a fake wall clock
# (libfaketime); traffic stays inside those namespaces and on loopback.
# Stops by itself after the given number of faults and prints
#   chaos: gateways=5 faults=N rounds=.. together=.. by_kind={..} acked=.. lost=0 duplicated=0 overlaps=0 ...
#
#   scripts/chaos.sh [--faults N] [--seed S]      (as root; default 1000 faults)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

faults=1000
seed=${CHAOS_SEED:-$(date +%s)}
while [ $# -gt 0 ]; do
  case "$1" in
    --faults) faults="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
echo "chaos soak: faults=$faults seed=$seed (replay with --seed $seed)"
log=$(mktemp /tmp/chaos-soak.XXXXXX.log)
status=0
CHAOS_FAULTS="$faults" CHAOS_SEED="$seed" \
  cargo test --test chaos -- --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
grep -E '^chaos: gateways=|panicked|timed out' "$log" || true
echo "full output: $log"
exit "$status"
