#!/usr/bin/env bash
# bench/smoke.sh — a few-second run of the load generator against the debug
# relay (what `make test` built), so CI proves the benchmark still works end
# to end. Prints the numbers; fails only if events were lost or nothing ran.
#   bench/smoke.sh [TARGET_DIR]   (default: target/debug)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/debug}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); WP=$(free_port); TP=$(free_port)
tmp=$(mktemp -d)
cleanup() { kill "${RELAY:-}" "${REDIS:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
REDIS=$!
until redis-cli -p "$RP" ping >/dev/null 2>&1; do sleep 0.05; done
# A second listener speaks TLS, with a throwaway certificate the bench makes.
"$BIN/studio-relay-bench" --gen-cert "$tmp/tls"
printf '[redis]\nurl = "redis://127.0.0.1:%s"\nsocketio_adapter = true\n[[listeners]]\nbind = "127.0.0.1:%s"\n[[listeners]]\nbind = "127.0.0.1:%s"\ntls_cert = "%s"\ntls_key = "%s"\n[log]\nlevel = "warn"\n' \
  "$RP" "$WP" "$TP" "$tmp/tls/cert.pem" "$tmp/tls/key.pem" > "$tmp/relay.toml"
"$BIN/studio-relay" --config "$tmp/relay.toml" 2> "$tmp/relay.log" &
RELAY=$!
until curl -fsS "http://127.0.0.1:$WP/healthz" >/dev/null 2>&1; do sleep 0.05; done

fail=0
for args in "--target studio --scenario fanout --clients 20" "--target studio --scenario routed --clients 40 --agents 4" \
            "--target studio --scenario rate --rate 200 --clients 20" \
            "--target studio --scenario routed --clients 40 --agents 4 --paced --rate 200" \
            "--target socketio --scenario routed --clients 40 --agents 4" \
            "--target socketio-polling --scenario fanout --clients 20" \
            "--target studio --scenario routed --clients 40 --agents 4 --adapter" \
            "--target studio --scenario fanout --clients 20 --tls-ca $tmp/tls/cert.pem"; do
  port=$WP
  case "$args" in *--tls-ca*) port=$TP ;; esac
  # shellcheck disable=SC2086
  line=$("$BIN/studio-relay-bench" --url "127.0.0.1:$port" --redis "redis://127.0.0.1:$RP" \
    --pid "$RELAY" --duration 1 --warmup-secs 0 --json-only $args | grep '^RESULT ' || true)
  echo "smoke: $args -> ${line:-no RESULT line}" | cut -c1-400
  echo "$line" | python3 -c 'import json,sys
l=sys.stdin.read().split(" ",1)
d=json.loads(l[1]) if len(l)>1 else {}
ok=d.get("delivered",0)>0 and d.get("lost",1)==0 and d.get("duplicates",1)==0 and d.get("out_of_order",1)==0
sys.exit(0 if ok else 1)' || fail=1
done
[ "$fail" = 0 ] && echo "smoke: ok" || { echo "smoke: FAILED"; cat "$tmp/relay.log"; exit 1; }
