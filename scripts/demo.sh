#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds gantry, starts a local
# 3-gateway cluster on loopback, applies a sample workload and prints the
# cluster's status. Runs until Ctrl-C, then stops the gateways it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo build --bin gantry
gantry="$CARGO_TARGET_DIR/debug/gantry"
demo="$(mktemp -d /tmp/gantry-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped the demo gateways; their data and logs are in $demo"
}
trap cleanup EXIT INT TERM

"$gantry" init --data-dir "$demo/gw-a" --name gw-a --listen 127.0.0.1:7400 \
  --labels zone=north --capacity cpu=2,memory=1Gi >"$demo/gw-a.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$demo/gw-a/join-token" ] && break; sleep 0.1; done
token="$(cat "$demo/gw-a/join-token")"
"$gantry" join --data-dir "$demo/gw-b" --name gw-b --listen 127.0.0.1:7401 --peer 127.0.0.1:7400 \
  --token "$token" --labels zigbee=true >"$demo/gw-b.log" 2>&1 &
pids+=($!)
"$gantry" join --data-dir "$demo/gw-c" --name gw-c --listen 127.0.0.1:7402 --peer 127.0.0.1:7400 \
  --token "$token" --capacity memory=512Mi >"$demo/gw-c.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  n=$("$gantry" --server 127.0.0.1:7400 get nodes -o json 2>/dev/null | grep -o '"role":"voter"' | wc -l || true)
  [ "$n" -ge 3 ] && break
  sleep 0.2
done

"$gantry" --server 127.0.0.1:7401 apply -f examples/workloads/sensors.yaml
sleep 1
echo
"$gantry" --server 127.0.0.1:7402 status
echo
"$gantry" --server 127.0.0.1:7400 get instances
echo
echo "3 gateways on 127.0.0.1:7400-7402 (data in $demo). Try:"
echo "  $gantry --server 127.0.0.1:7400 describe workload zigbee-bridge"
echo "Ctrl-C stops them."
wait
