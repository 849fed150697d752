#!/usr/bin/env bash
# make demo: a private redis-server, the relay, one client, a few events.
set -euo pipefail
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); WP=$(free_port)
tmp=$(mktemp -d)
cleanup() { kill "${CLIENT:-}" "${RELAY:-}" "${REDIS:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
REDIS=$!
until redis-cli -p "$RP" ping >/dev/null 2>&1; do sleep 0.05; done
echo "== redis-server on 127.0.0.1:$RP"

cat > "$tmp/relay.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$RP"
[[listeners]]
bind = "127.0.0.1:$WP"
TOML
target/debug/studio-relay --config "$tmp/relay.toml" 2> "$tmp/relay.log" &
RELAY=$!
until curl -fsS "http://127.0.0.1:$WP/healthz" >/dev/null 2>&1; do sleep 0.05; done
echo "== relay on 127.0.0.1:$WP: $(curl -fsS "http://127.0.0.1:$WP/healthz")"

echo "== client subscribed to agentId=a1 (prints every frame it gets)"
target/debug/examples/client "ws://127.0.0.1:$WP/ws?agentId=a1" 4 > "$tmp/client.out" &
CLIENT=$!
# The welcome frame is sent once the subscription is live: then publish.
until grep -q welcome "$tmp/client.out" 2>/dev/null; do sleep 0.05; done
echo "== publishing 4 events (the one for agent a2 is not delivered)"
redis-cli -p "$RP" PUBLISH claude-studio:agent:message '{"agentId":"a1","text":"hello"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:agent:message '{"agentId":"a2","text":"not for you"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:agent:status '{"agentId":"a1","status":"done"}' >/dev/null
redis-cli -p "$RP" PUBLISH claude-studio:system:notice '{"text":"global: everyone gets this"}' >/dev/null
wait "$CLIENT"
cat "$tmp/client.out"
echo "== relay log"
cat "$tmp/relay.log"
