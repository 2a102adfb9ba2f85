#!/usr/bin/env bash
# The checks a skeptical reviewer would run from a shell against real
# gateways and a real hub, with openssl, curl --http2 and protoc (grpcurl is
# not packaged for Debian 12): plaintext refused, TLS 1.2/1.3 AEAD only,
# wrong CA, expired and revoked certificates, wrong names and roles,
# oversized bodies, idle handshakes, hub credentials, a clock in the past.
# Every server binds to 127.0.0.1. Prints one line per check and exits
# non-zero if any failed. Used by ./scripts/test.sh (so it runs in CI).
#
# Run alone: ./scripts/security-smoke.sh   (builds gantry if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/gantry-target}"

need=()
for tool in openssl:openssl curl:curl protoc:protobuf-compiler xxd:xxd faketime:faketime jq:jq; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
GANTRY="${GANTRY:-$CARGO_TARGET_DIR/debug/gantry}"
[ -x "$GANTRY" ] || cargo build --bin gantry
PROTO=proto/proto

WORK=$(mktemp -d /tmp/gsmoke.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

# ---------------------------------------------------------------- a cluster
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout ca.key -out ca.crt -subj "/CN=smoke cluster CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout other.key -out other.crt -subj "/CN=smoke cluster CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null

env_clean=(env -u GANTRY_TOKEN -u GANTRY_TOKEN_FILE -u GANTRY_DATA_DIR -u GANTRY_CA_FILE -u GANTRY_SERVER)
daemon() { # name, args...
  local name=$1; shift
  "${env_clean[@]}" GANTRY_LOG=info "$GANTRY" "$@" >"$name.out" 2>"$name.log" &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}
wait_file() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "no $1"; return 1; }
addr_of() { sed -n 's/.*"advertise": "\(.*\)".*/\1/p' "$1/gantry.json"; }
G() { "${env_clean[@]}" GANTRY_TOKEN_FILE="$WORK/gw1/admin-token" "$GANTRY" --server "$A1" "$@"; }

daemon gw1 init --data-dir gw1 --name gw1 --listen 127.0.0.1:0 --ca-cert ca.crt --ca-key ca.key \
  --containerd-socket "$WORK/no-containerd.sock"
wait_file gw1/admin-token
A1=$(addr_of gw1); P1=${A1##*:}
for _ in $(seq 1 100); do G status >/dev/null 2>&1 && break; sleep 0.2; done
JOIN=$(cat gw1/join-token)
for n in 2 3; do
  daemon "gw$n" join --data-dir "gw$n" --name "gw$n" --listen 127.0.0.1:0 --peer "$A1" --token "$JOIN" \
    --containerd-socket "$WORK/no-containerd.sock"
  wait_file "gw$n/admin-token"
done
A2=$(addr_of gw2); P2=${A2##*:}
CID=$(G status -o json | jq -r .cluster)
ADMIN=$(cat gw1/admin-token)
VIEWER=$(G token create --role viewer --name smoke)
id_of() { G get nodes -o json | jq -r ".[] | select(.name == \"$1\") | .id"; }
ID2=$(id_of gw2); ID3=$(id_of gw3)
echo "cluster $CID: gw1 $A1, gw2 $A2 (id $ID2), gw3 (id $ID3)"

# gRPC over curl: a 5-byte frame header, then the message; grpc-status is
# in the headers (trailers-only answers) or the trailers; -D - prints both.
frame() { local f; f=$(mktemp); cat >"$f"; printf '\0'; printf '%08x' "$(stat -c%s "$f")" | xxd -r -p; cat "$f"; rm -f "$f"; }
call() { # port, method, curl args...
  local port=$1 method=$2; shift 2
  curl -sS --http2 --max-time 20 --cacert "$WORK/ca.crt" --resolve "gateway.gantry:$port:127.0.0.1" \
    -D - -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' "$@" \
    --data-binary @- "https://gateway.gantry:$port/$method" 2>&1 || true
}
status_of() { local out; out=$(cat); out=$(grep -io 'grpc-status: *[0-9]*' <<<"$out" | head -1 | grep -o '[0-9]*$' || true); echo "${out:-none}"; }
expect_status() { # description, wanted, actual
  if [ "$3" = "$2" ]; then ok "$1 -> grpc-status $3"; else bad "$1: want grpc-status $2, got $3"; fi
}
empty() { printf '' | frame; }
encode() { protoc --encode="$1" -I "$OLDPWD/$PROTO" "$OLDPWD/$PROTO/gantry.proto"; }
heartbeat_for() { printf 'cluster_id: "%s"\nnode_id: %s\n' "$CID" "$1" | encode gantry.v1.HeartbeatRequest | frame; }

# 1. No client certificate on Cluster.
expect_status "1 Cluster.Heartbeat without a client certificate" 16 \
  "$(empty | call "$P1" gantry.v1.Cluster/Heartbeat | status_of)"

# 2. A client certificate from another CA: the TLS handshake fails.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout x.key -out x.csr \
  -subj "/CN=x" 2>/dev/null
printf 'subjectAltName=DNS:n%s.%s.gantry,DNS:gateway.gantry\nextendedKeyUsage=clientAuth,serverAuth\n' "$ID2" "$CID" >san.ext
openssl x509 -req -in x.csr -CA other.crt -CAkey other.key -CAcreateserial -days 1 -extfile san.ext -out x-other.crt 2>/dev/null
out=$(empty | call "$P1" gantry.v1.Cluster/Heartbeat --cert x-other.crt --key x.key)
if echo "$out" | grep -qi 'grpc-status'; then bad "2 client cert of another CA got an answer: $out"; else ok "2 client cert of another CA: handshake refused"; fi
out=$(echo Q | timeout 10 openssl s_client -connect "127.0.0.1:$P1" -tls1_2 -cert x-other.crt -key x.key -CAfile ca.crt 2>&1 || true)
if grep -qiE 'alert (unknown ca|bad certificate|decrypt error|certificate unknown)|alert number (42|48|51|46)' <<<"$out"; then
  ok "2 openssl s_client with another CA's cert: TLS alert"
else bad "2 openssl s_client with another CA's cert: no alert: $(tail -3 <<<"$out")"; fi

# 3. An expired certificate of the right CA.
faketime '2020-01-01 00:00:00' openssl x509 -req -in x.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -days 1 -extfile san.ext -out x-expired.crt 2>/dev/null
out=$(empty | call "$P1" gantry.v1.Cluster/Heartbeat --cert x-expired.crt --key x.key)
if echo "$out" | grep -qi 'grpc-status'; then bad "3 expired client cert got an answer"; else ok "3 expired client cert: handshake refused"; fi

# 5. A cert minted for a member's id with a new key (right CA, right name).
openssl x509 -req -in x.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out x-minted.crt 2>/dev/null
expect_status "5 a member's name with an unpinned key" 16 \
  "$(heartbeat_for "$ID2" | call "$P1" gantry.v1.Cluster/Heartbeat --cert x-minted.crt --key x.key | status_of)"

# 8. Identity binding: gw2's own certificate heartbeating for gw3.
expect_status "8 gw2's certificate heartbeating as gw3" 7 \
  "$(heartbeat_for "$ID3" | call "$P1" gantry.v1.Cluster/Heartbeat --cert gw2/pki/node.pem --key gw2/pki/node.pem | status_of)"
expect_status "8 gw2's certificate heartbeating as itself" 0 \
  "$(heartbeat_for "$ID2" | call "$P1" gantry.v1.Cluster/Heartbeat --cert gw2/pki/node.pem --key gw2/pki/node.pem | status_of)"

# 9. No token, a random token on Admin.
expect_status "9 Admin.Status without a token" 16 "$(empty | call "$P1" gantry.v1.Admin/Status | status_of)"
expect_status "9 Admin.Status with a random token" 16 \
  "$(empty | call "$P1" gantry.v1.Admin/Status -H "authorization: Bearer gantry-admin-v1.$(printf 'ab%.0s' {1..32}).0011223344556677.$(printf 'cd%.0s' {1..32})" | status_of)"
expect_status "9 Admin.Status with the viewer token" 0 \
  "$(empty | call "$P1" gantry.v1.Admin/Status -H "authorization: Bearer $VIEWER" | status_of)"

# 10. Wrong role.
apply_body() { echo 'manifest: "name: smoke\nimage: 127.0.0.1:5000/x:1\n"' | encode gantry.v1.ApplyRequest | frame; }
expect_status "10 viewer -> Admin.Apply" 7 "$(apply_body | call "$P1" gantry.v1.Admin/Apply -H "authorization: Bearer $VIEWER" | status_of)"
for m in Leave CloudAttach CreateToken RotateJoinToken; do
  expect_status "10 viewer -> Admin.$m" 7 "$(empty | call "$P1" "gantry.v1.Admin/$m" -H "authorization: Bearer $VIEWER" | status_of)"
done
s=$(apply_body | call "$P1" gantry.v1.Admin/Apply -H "authorization: Bearer $ADMIN" | status_of)
if [ "$s" != 7 ] && [ "$s" != 16 ]; then ok "10 admin -> Admin.Apply -> grpc-status $s"; else bad "10 admin -> Admin.Apply refused ($s)"; fi

# 12. Cross-plane credentials.
expect_status "12 node certificate without a bearer on Admin" 16 \
  "$(empty | call "$P1" gantry.v1.Admin/Status --cert gw2/pki/node.pem --key gw2/pki/node.pem | status_of)"
expect_status "12 admin bearer on Cluster" 16 \
  "$(heartbeat_for "$ID2" | call "$P1" gantry.v1.Cluster/Heartbeat -H "authorization: Bearer $ADMIN" | status_of)"

# 13. A plaintext client on the TLS port gets no HTTP answer.
if curl -sS --max-time 5 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$P1/gantry.v1.Admin/Status" 2>/dev/null; then
  bad "13 plaintext HTTP/2 got an answer"
else ok "13 plaintext HTTP/2: connection closed, no answer"; fi

# 14. Protocols and suites.
# (Output is captured first: with pipefail, `grep -q` closing the pipe early
# would count as a failure of openssl.)
s_client() { echo Q | timeout 10 openssl s_client -connect "127.0.0.1:$P1" -CAfile ca.crt -servername gateway.gantry "$@" 2>&1 | tr -d '\0' || true; }
out=$(s_client -tls1_1)
if grep -q 'Cipher is (NONE)' <<<"$out"; then ok "14 TLS 1.1 refused"; else bad "14 TLS 1.1 accepted"; fi
out=$(s_client -tls1_2 -cipher 'AES128-SHA:AES256-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA')
if grep -q 'Cipher is (NONE)' <<<"$out"; then ok "14 CBC suites refused on TLS 1.2"; else bad "14 a CBC suite was accepted"; fi
out=$(s_client -tls1_2)
if grep -qE 'Cipher is ECDHE-ECDSA-(AES(128|256)-GCM|CHACHA20)' <<<"$out"; then
  ok "14 TLS 1.2 with an AEAD suite ($(grep -o 'Cipher is [A-Z0-9-]*' <<<"$out" | head -1))"
else bad "14 TLS 1.2: $(grep 'Cipher is' <<<"$out")"; fi
out=$(s_client -tls1_3)
if grep -q 'New, TLSv1.3' <<<"$out"; then ok "14 TLS 1.3"; else bad "14 TLS 1.3 failed"; fi

# 6. Wrong server identity: gw1 is not gw3.
out=$(s_client -verify_hostname "n$ID3.$CID.gantry" -verify_return_error)
if grep -q 'Verify return code: 0 (ok)' <<<"$out"; then
  bad "6 gw1 verified as n$ID3"; else ok "6 gw1 does not verify as gw3 (hostname mismatch)"; fi

# Positive: names, lifetime, and the fingerprint the token pins.
certinfo=$(s_client -showcerts </dev/null | openssl x509 -noout -ext subjectAltName -enddate 2>/dev/null || true)
if echo "$certinfo" | grep -q "n1.$CID.gantry" && echo "$certinfo" | grep -q 'gateway.gantry'; then
  ok "SANs n1.$CID.gantry and gateway.gantry"; else bad "SANs: $certinfo"; fi
fp=$(openssl x509 -in ca.crt -outform DER | sha256sum | cut -d' ' -f1)
if [ "$(echo "$JOIN" | cut -d. -f2)" = "$fp" ] && grep -q "$fp" gw1.out; then
  ok "the join token and init pin the CA's DER sha256 ($fp)"; else bad "CA pin mismatch"; fi

# 15. Oversized bodies are refused before they are read; RSS stays flat.
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID_gw1/status"; }
before=$(rss)
big_join() { { printf 'token: "'; head -c 1048576 /dev/zero | tr '\0' a; printf '"\n'; } | encode gantry.v1.JoinRequest | frame; }
expect_status "15 a 1 MiB Bootstrap.Join" 8 "$(big_join | call "$P1" gantry.v1.Bootstrap/Join | status_of)"
expect_status "15 60 MiB unauthenticated Cluster.AppendEntries" 16 \
  "$(head -c 62914560 /dev/zero | frame | call "$P1" gantry.v1.Cluster/AppendEntries | status_of)"
expect_status "15 5 MiB Admin.Apply as viewer" 7 \
  "$(head -c 5242880 /dev/zero | frame | call "$P1" gantry.v1.Admin/Apply -H "authorization: Bearer $VIEWER" | status_of)"
after=$(rss)
if [ $((after - before)) -lt 30720 ]; then ok "15 RSS flat (${before} -> ${after} KiB)"; else bad "15 RSS grew ${before} -> ${after} KiB"; fi

# 16. 200 idle connections that never finish a handshake; status still answers.
fds=()
for _ in $(seq 1 200); do exec {fd}<>"/dev/tcp/127.0.0.1/$P1" && fds+=("$fd"); done
check "16 status answers beside ${#fds[@]} idle connections" G status
for fd in "${fds[@]}"; do exec {fd}>&-; done

# 11. A revoked token stops on the next request, on every gateway.
id=$(echo "$VIEWER" | cut -d. -f3)
G token revoke "$id" >/dev/null
expect_status "11 revoked token on gw1" 16 "$(empty | call "$P1" gantry.v1.Admin/Status -H "authorization: Bearer $VIEWER" | status_of)"
expect_status "11 revoked token on gw2" 16 "$(empty | call "$P2" gantry.v1.Admin/Status -H "authorization: Bearer $VIEWER" | status_of)"

# 7. Token replay: a single-use join token works once.
ONCE=$(G join-token create --uses 1)
daemon gw4 join --data-dir gw4 --name gw4 --listen 127.0.0.1:0 --peer "$A1" --token "$ONCE" \
  --containerd-socket "$WORK/no-containerd.sock"
wait_file gw4/admin-token
if "${env_clean[@]}" "$GANTRY" join --data-dir gw5 --name gw5 --listen 127.0.0.1:0 --peer "$A1" \
  --token "$ONCE" --containerd-socket "$WORK/no-containerd.sock" 2>gw5.err; then
  bad "7 a used-up join token joined again"
elif grep -q "used up" gw5.err; then ok "7 a single-use join token is refused the second time"
else bad "7 second join failed for another reason: $(cat gw5.err)"; fi

# 4. The certificate of a gateway that left.
G leave gw3 >/dev/null
for _ in $(seq 1 100); do kill -0 "$PID_gw3" 2>/dev/null || break; sleep 0.2; done
expect_status "4 gw3's certificate after leave, at gw1" 16 \
  "$(heartbeat_for "$ID3" | call "$P1" gantry.v1.Cluster/Heartbeat --cert gw3/pki/node.pem --key gw3/pki/node.pem | status_of)"
expect_status "4 gw3's certificate after leave, at gw2" 16 \
  "$(heartbeat_for "$ID3" | call "$P2" gantry.v1.Cluster/Heartbeat --cert gw3/pki/node.pem --key gw3/pki/node.pem | status_of)"

# 18. A clock sixty years behind refuses to start, with the NTP hint.
if "${env_clean[@]}" faketime -f '-60y' "$GANTRY" run --data-dir gw3 >skew.out 2>skew.err; then
  bad "18 started with the clock 60 years behind"
elif grep -q "NTP" skew.err; then ok "18 clock 60 years behind: refuses, says NTP"
else bad "18 refused for another reason: $(tail -1 skew.err)"; fi

# 17. The hub.
"${env_clean[@]}" "$GANTRY" hub serve --data-dir hub --listen 127.0.0.1:0 >hub.out 2>hub.log &
PIDS+=($!)
wait_file hub/hub-address; wait_file hub/admin-token
HUB=$(cat hub/hub-address); HP=${HUB##*:}
H() { "${env_clean[@]}" "$GANTRY" hub "$1" --hub "$HUB" "${@:2}"; }
hubcall() { # method, curl args
  local m=$1; shift
  curl -sS --http2 --max-time 10 --cacert "$WORK/hub/pki/ca.crt" --resolve "hub.gantry:$HP:127.0.0.1" \
    -D - -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' "$@" \
    --data-binary @- "https://hub.gantry:$HP/$m" 2>&1 || true
}
expect_status "17 hub status without a token" 16 "$(empty | hubcall gantry.hub.v1.Hub/Status | status_of)"
SITE=$(H site-token --data-dir hub --site smoke)
expect_status "12 site token on the hub's Apply" 16 \
  "$(empty | hubcall gantry.hub.v1.Hub/Apply -H "authorization: Bearer $SITE" | status_of)"
NEW=$(H site-token --data-dir hub --site smoke --grace 1s)
sleep 2
expect_status "17 old site token after --grace 1s" 16 \
  "$(empty | hubcall gantry.hub.v1.Hub/Link -H "authorization: Bearer $SITE" -H 'x-gantry-site: smoke' | status_of)"
# A site token for another hub: the link pins that hub's CA and never opens.
OTHER_HUB="gantry-site-v2.$(printf '00%.0s' {1..32}).$(echo "$NEW" | cut -d. -f3)"
G cloud attach --hub "$HUB" --site smoke --token "$OTHER_HUB" >/dev/null
sleep 3
if [ "$(G status -o json | jq -r .cloud.connected)" = true ]; then bad "17 a link with another hub's pin connected"
elif grep -q "smoke" hub.log && grep -qi "site connected" hub.log; then bad "17 the hub saw the site"
else ok "17 a site token pinning another hub: the link never opens"; fi
G cloud attach --hub "$HUB" --site smoke --token "$NEW" >/dev/null
for _ in $(seq 1 100); do [ "$(G status -o json | jq -r .cloud.connected)" = true ] && break; sleep 0.2; done
if [ "$(G status -o json | jq -r .cloud.connected)" = true ]; then ok "17 the new site token connects"; else bad "17 the new site token did not connect"; fi

echo "security-smoke: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
