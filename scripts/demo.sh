#!/usr/bin/env bash
# make demo: a private redis-server, the relay, one client, a few events.
# Runs the release build `make run` also uses (the Makefile builds it first).
# Needs bash, redis-server and redis-cli; no python or curl.
#   scripts/demo.sh [BUILD_DIR]   (default: target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release}
tmp=$(mktemp -d)
cleanup() { kill "${SIO:-}" "${CLIENT:-}" "${RELAY:-}" "${REDIS:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

fail() {
  echo "demo: $*" >&2
  for f in redis.log relay.log client.out; do
    [ -s "$tmp/$f" ] && { echo "== $f" >&2; cat "$tmp/$f" >&2; }
  done
  exit 1
}

# Runs "$@" every 50 ms until it succeeds; gives up after 10 s.
wait_for() {
  local what=$1 i
  shift
  for ((i = 0; i < 200; i++)); do
    "$@" && return 0
    sleep 0.05
  done
  fail "timed out waiting for $what"
}

# Redis on a random high port (below Linux's ephemeral range), another one
# if that port is taken: ready once the server on the port says it is ours.
redis_is_ours() {
  local info
  info=$(redis-cli -p "$RP" info server 2>/dev/null) || return 1
  info=${info//$'\r'/}
  [[ $info == *$'\n'"process_id:$REDIS"$'\n'* ]]
}
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  RP=$((20000 + RANDOM % 12000))
  # Something already accepts connections there: try another port.
  if (exec 3<>"/dev/tcp/127.0.0.1/$RP") 2>/dev/null; then continue; fi
  redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" > "$tmp/redis.log" 2>&1 &
  REDIS=$!
  for ((i = 0; i < 200; i++)); do
    redis_is_ours && break 2
    kill -0 "$REDIS" 2>/dev/null || break
    sleep 0.05
  done
  kill "$REDIS" 2>/dev/null || true
  wait "$REDIS" 2>/dev/null || true # not ours: most likely the port was taken meanwhile
  REDIS=
done
[ -n "${REDIS:-}" ] || fail "redis-server did not start on any of $attempt random ports"
echo "== redis-server on 127.0.0.1:$RP"

# The relay binds port 0 and logs the address it got (the line the black-box
# tests read too): "... listening addr=127.0.0.1:PORT".
cat > "$tmp/relay.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$RP"
[[listeners]]
bind = "127.0.0.1:0"
TOML
: > "$tmp/relay.log" # exists before the background job opens it
"$BIN/studio-relay" --config "$tmp/relay.toml" 2> "$tmp/relay.log" &
RELAY=$!
relay_addr() {
  kill -0 "$RELAY" 2>/dev/null || fail "the relay exited"
  ADDR=$(sed -n '/: listening addr=/{s/.*: listening addr=\([0-9.:]*\).*/\1/p;q;}' "$tmp/relay.log")
  [ -n "$ADDR" ]
}
wait_for "the relay's listening line" relay_addr

# GET /healthz over bash's /dev/tcp; succeeds on 200 (Redis subscribed) and
# leaves the body in $HEALTH.
healthz() {
  local line status
  kill -0 "$RELAY" 2>/dev/null || fail "the relay exited"
  { exec 3<> "/dev/tcp/${ADDR%:*}/${ADDR##*:}"; } 2> /dev/null || return 1
  printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$ADDR" >&3
  IFS=' ' read -r -t 2 _ status _ <&3 || status=
  while IFS= read -r -t 2 line <&3 && [ "$line" != $'\r' ]; do :; done
  HEALTH=
  IFS= read -r -t 2 HEALTH <&3 || true # the body has no final newline
  exec 3<&-
  [ "$status" = 200 ]
}
wait_for "/healthz to answer 200" healthz
echo "== relay on $ADDR: $HEALTH"

echo "== client subscribed to agentId=a1 (prints every frame it gets)"
: > "$tmp/client.out"
"$BIN/examples/client" "ws://$ADDR/ws?agentId=a1" 4 > "$tmp/client.out" &
CLIENT=$!
# The welcome frame is sent once the subscription is live: then publish.
wait_for "the client's welcome" grep -q welcome "$tmp/client.out"

# A Socket.IO client too (socket.io-client 4.8, default options: polling,
# then the upgrade), when Node and the test clients (tests/js) are there.
SIO=
if command -v node >/dev/null 2>&1 && [ -d tests/js/node_modules/socket.io-client ]; then
  echo "== Socket.IO client with query {agentId: \"a1\"} (socket.io-client, default transports)"
  : > "$tmp/sio.out"
  node tests/js/sio-client.mjs "{\"url\":\"http://$ADDR\",\"exitOnEof\":false,\"opts\":{\"query\":{\"agentId\":\"a1\"}}}" < /dev/null > "$tmp/sio.out" 2>&1 &
  SIO=$!
  wait_for "the Socket.IO client's connect" grep -q '"ev":"connect"' "$tmp/sio.out"
else
  echo "== (no Socket.IO client: needs node and 'npm ci' in tests/js)"
fi
echo "== publishing 4 events (the one for agent a2 is not delivered)"
redis-cli -p "$RP" PUBLISH claude-studio:agent:message '{"agentId":"a1","text":"hello"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:agent:message '{"agentId":"a2","text":"not for you"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:agent:status '{"agentId":"a1","status":"done"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:system:notice '{"text":"global: everyone gets this"}' >/dev/null
client_done() { ! kill -0 "$CLIENT" 2>/dev/null; }
wait_for "the client's 4 frames" client_done
wait "$CLIENT" || fail "the client failed"
CLIENT=
cat "$tmp/client.out"
if [ -n "$SIO" ]; then
  sio_done() { [ "$(grep -c '"ev":"event"' "$tmp/sio.out")" -ge 3 ]; }
  wait_for "the Socket.IO client's 3 events" sio_done
  echo "== what the Socket.IO client saw (socket.on(name, data) for each event)"
  grep -E '"ev":"(connect|upgrade|event)"' "$tmp/sio.out"
  kill "$SIO" 2>/dev/null || true
  SIO=
fi
echo "== relay log"
cat "$tmp/relay.log"
