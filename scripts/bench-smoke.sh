#!/usr/bin/env bash
# CI's check of the benchmarks: each runs for a few seconds, in the
# profile CI builds (dev), and must print its figure line. This checks
# that they run, not what they measure: figures come from release runs
# on a quiet machine (README, "Performance").
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gantry-target}"

status=0
# smoke NAME PATTERN COMMAND...: runs COMMAND and wants PATTERN in its output.
smoke() {
  local name=$1 pattern=$2
  shift 2
  local log
  log=$(mktemp)
  echo "bench smoke: $name"
  if "$@" >"$log" 2>&1 && grep -Eq "$pattern" "$log"; then
    grep -E "$pattern" "$log" | sed 's/^/  /'
  else
    echo "bench smoke: $name did not print '$pattern':" >&2
    tail -30 "$log" >&2
    status=1
  fi
  rm -f "$log"
}

cargo build --bin gantry --examples --benches

smoke bench_writes '^writes: clients=1 gantry=[0-9]+/s etcd=[0-9]+/s ratio=' \
  env BENCH_SECONDS=1 BENCH_CLIENTS=1 cargo run -q --example bench_writes
smoke bench_footprint '^footprint: rss_under_64_clients_mb gantry=[0-9.]+ etcd=[0-9.]+ ratio=' \
  env BENCH_SECONDS=1 BENCH_IDLE_SECONDS=1 cargo run -q --example bench_footprint
smoke bench_start '^start: containers=1 gantry_ms=[0-9]+ ctr_ms=[0-9]+ ratio=' \
  env BENCH_ROUNDS=1 BENCH_SIZES=1 cargo run -q --example bench_start
smoke heal '^heal: victim=leader trials=1 p50=' \
  env BENCH_TRIALS=1 cargo bench -q --profile dev --bench heal
exit "$status"
