#!/usr/bin/env bash
# A longer, coverage-guided fuzz campaign (the CI smoke is
# `cargo test -p gantry-fuzz --test smoke`): cargo-fuzz on stable with
# `--sanitizer none` (the coverage flags it passes are stable; no ASan,
# which safe Rust rarely needs) and debug assertions on, one process per
# target, each for --minutes (default 10).
#
#   scripts/fuzz.sh [--minutes N] [target...]    (default: every target)
#
# New inputs go to fuzz/campaign/corpus-new/<target> (the committed corpus
# fuzz/corpus/<target> is only read), crashes to
# fuzz/campaign/artifacts/<target>/. Prints per target
#   fuzz: target=<name> cases=<execs> crashes=<n>
# and exits non-zero if any target crashed. Turn every crash into a case in
# fuzz/tests/regressions.rs (`cargo fuzz tmin` shrinks it first).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

minutes=10
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --minutes=*) minutes="${1#--minutes=}"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(manifest quantity settings proto cluster_payloads records state_machine)
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/campaign/fuzz_targets/$t.rs" ] || { echo "error: unknown target '$t' (known: ${all[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

campaign=fuzz/campaign
# Start from the workspace's versions (openraft and rumqttc are pinned
# there); cargo adds libfuzzer-sys to this copy.
[ -f "$campaign/Cargo.lock" ] || cp Cargo.lock "$campaign/Cargo.lock"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/$campaign/target}"

seconds=$((minutes * 60))
failed=0
summary=()
for t in "${targets[@]}"; do
  new="$campaign/corpus-new/$t"
  artifacts="$campaign/artifacts/$t"
  mkdir -p "$new" "$artifacts"
  log="$campaign/logs/$t.log"
  mkdir -p "$(dirname "$log")"
  before=$(find "$artifacts" -type f | wc -l)
  status=0
  cargo fuzz run "$t" --fuzz-dir "$campaign" --sanitizer none --debug-assertions -j 1 \
    "$new" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  after=$(find "$artifacts" -type f | wc -l)
  crashes=$((after - before))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ -z "$execs" ]; then
    # No final stats: the build or the run failed before fuzzing ended.
    tail -20 "$log" >&2
    [ "$crashes" -eq 0 ] && crashes=1
    execs=0
  elif [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1
  fi
  line="fuzz: target=$t cases=$execs crashes=$crashes"
  echo "$line"
  summary+=("$line")
  if [ "$crashes" -gt 0 ]; then
    failed=1
    echo "  log: $log; inputs: $artifacts/" >&2
  fi
done
exit "$failed"
