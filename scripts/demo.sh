#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds gantry, and runs a
# local 3-gateway cluster on loopback with its own private containerd: the
# demo image is built from busybox-static, imported into every gateway, the
# sample workloads are applied, and the cluster's status is printed. Runs
# until Ctrl-C, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=setup.sh
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo build --bin gantry --example demo_image
gantry="$CARGO_TARGET_DIR/debug/gantry"
demo="$(mktemp -d /tmp/gantry-demo.XXXXXX)"
ctd="$demo/ctd"
sock="$ctd/containerd.sock"
gateway_pids=()
containerd_pid=""

cleanup() {
  set +e
  for pid in "${gateway_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${gateway_pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
  # The containers outlive their gateways (by design); remove them.
  for ns in gw-a gw-b gw-c; do
    for task in $(ctr --address "$sock" -n "$ns" task ls -q 2>/dev/null); do
      ctr --address "$sock" -n "$ns" task kill -s SIGKILL "$task" >/dev/null 2>&1
      for _ in $(seq 50); do ctr --address "$sock" -n "$ns" task rm "$task" >/dev/null 2>&1 && break; sleep 0.1; done
    done
    for c in $(ctr --address "$sock" -n "$ns" container ls -q 2>/dev/null); do
      ctr --address "$sock" -n "$ns" container rm "$c" >/dev/null 2>&1
    done
  done
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null
    while kill -0 "$containerd_pid" 2>/dev/null; do sleep 0.1; done
  fi
  echo "stopped the demo; data and logs are in $demo"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private containerd: its own root, state and socket, nothing shared with
# a system containerd.
mkdir -p "$ctd"
cat >"$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$ctd/debug.sock"
[metrics]
  address = ""
TOML
# setsid: Ctrl-C signals the whole foreground process group; containerd and
# the gateways must outlive it so that the cleanup can use them.
setsid containerd --config "$ctd/config.toml" >"$demo/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do ctr --address "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done

"$CARGO_TARGET_DIR/debug/examples/demo_image" "$demo/busybox.tar"

start() { # name port extra-flags...
  local name=$1 port=$2; shift 2
  setsid "$gantry" "$@" --data-dir "$demo/$name" --name "$name" --listen "127.0.0.1:$port" \
    --containerd-socket "$sock" --containerd-namespace "$name" --stop-grace 2s >"$demo/$name.log" 2>&1 &
  gateway_pids+=($!)
}
start gw-a 7400 init --labels zone=north --capacity cpu=2,memory=1Gi
for _ in $(seq 100); do [ -s "$demo/gw-a/join-token" ] && break; sleep 0.1; done
token="$(cat "$demo/gw-a/join-token")"
start gw-b 7401 join --peer 127.0.0.1:7400 --token "$token" --labels zigbee=true --capacity cpu=1,memory=1Gi
start gw-c 7402 join --peer 127.0.0.1:7400 --token "$token" --capacity cpu=1,memory=512Mi
for _ in $(seq 300); do
  voters=$("$gantry" --server 127.0.0.1:7400 get nodes -o json 2>/dev/null | grep -oE '"role": ?"voter"' | wc -l || true)
  [ "$voters" -ge 3 ] && break
  sleep 0.2
done

"$gantry" --server 127.0.0.1:7400 image import "$demo/busybox.tar" --all
"$gantry" --server 127.0.0.1:7401 apply -f examples/workloads/sensors.yaml
for _ in $(seq 150); do
  running=$("$gantry" --server 127.0.0.1:7400 get instances -o json | grep -oE '"state": ?"Running"' | wc -l || true)
  [ "$running" -ge 3 ] && break
  sleep 0.2
done
echo
"$gantry" --server 127.0.0.1:7402 status
echo
"$gantry" --server 127.0.0.1:7400 get instances
echo
echo "3 gateways on 127.0.0.1:7400-7402 (data and logs in $demo). Try:"
echo "  $gantry --server 127.0.0.1:7400 logs zigbee-bridge"
echo "  $gantry --server 127.0.0.1:7400 describe workload historian"
echo "Ctrl-C stops everything."
while :; do sleep 3600 & wait $!; done
