#!/usr/bin/env bash
# compare.sh — studio-relay against the Node peers (Socket.IO, Socket.IO with
# rooms, plain ws) and raw Redis subscribers, on this machine, in one run.
#
#   bench/compare.sh [--quick] [--studio-only] [--skip-build] [--repeat N] [--out FILE]
#
# --repeat N runs every case N times, the labels in turn within each round;
# the summary then adds each case's medians and, for studio against each
# other label, in how many rounds studio was at or under it (p99, CPU).
# Every case gets a fresh private redis-server on a free port and a fresh
# relay process (so peak RSS and CPU belong to that case alone); both are
# stopped afterwards, and everything this script started is killed on exit.
# Results: RESULT lines (one JSON object each) and a summary table with
# ratios, also written to --out (default target/bench/results-<time>.txt).
#
# Needs: redis-server, curl; node + npm for the peers (skipped without them);
# target/release/studio-relay for studio-relay (skipped with a message until
# it is built: `cargo build --release`).
# studio-tls is studio-relay on a TLS listener (a throwaway self-signed
# certificate made by the load generator, which connects with wss:// trusting
# it), fanout and routed, beside the plain studio rows.
# Env: SKIP_LABELS="a b" leaves labels out; ONLY_LABELS / ONLY_SCENARIOS run
# only those (e.g. ONLY_LABELS="studio studio-tls" ONLY_SCENARIOS="fanout routed").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QUICK=0
STUDIO_ONLY=0
BUILD=1
REPEAT=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --studio-only) STUDIO_ONLY=1 ;;
    --skip-build) BUILD=0 ;;
    --repeat)
      REPEAT=$2; shift
      [[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "--repeat needs a positive number, got: $REPEAT" >&2; exit 2; } ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

BENCH="$ROOT/target/release/studio-relay-bench"
RELAY="${STUDIO_RELAY_BIN:-$ROOT/target/release/studio-relay}"
PEERS_SRC="${PEERS_DIR:-$ROOT/../shared/peers}"
PEERS="$ROOT/target/peers"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/studio-relay-bench.XXXXXX")
mkdir -p "$ROOT/target/bench"
OUT=${OUT:-"$ROOT/target/bench/results-$(date +%Y%m%d-%H%M%S).txt"}
: > "$OUT"

REDIS_PID=""
TARGET_PID=""
cleanup() {
  # Only the processes this script started, by pid.
  for p in $TARGET_PID $REDIS_PID; do
    kill "$p" 2>/dev/null || true
  done
  for p in $TARGET_PID $REDIS_PID; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[compare] $*" >&2; }

# Each client is one socket (one fd) in the load generator and one in the
# relay: raise the soft open-file limit to the hard limit for us and every
# process we start. (Raising the hard limit itself needs CAP_SYS_RESOURCE.)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576

command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

if [ "$BUILD" = 1 ]; then
  log "building the load generator"
  (cd "$ROOT" && cargo build --release -q -p studio-relay-bench)
fi
[ -x "$BENCH" ] || { echo "missing $BENCH" >&2; exit 1; }
# studio-tls: the relay on a TLS listener with a throwaway self-signed
# certificate, made here; the load generator trusts exactly it.
TLS_DIR="$WORK/tls"
"$BENCH" --gen-cert "$TLS_DIR"

HAVE_STUDIO=1
if [ ! -x "$RELAY" ]; then
  HAVE_STUDIO=0
  log "SKIP studio-relay: $RELAY not found (build it with: cargo build --release)"
fi

HAVE_NODE=0
if [ "$STUDIO_ONLY" = 0 ]; then
  if command -v node >/dev/null && command -v npm >/dev/null && [ -d "$PEERS_SRC" ]; then
    # shared/peers may be read-only: work on a copy, cached under target/.
    if ! cmp -s "$PEERS_SRC/package-lock.json" "$PEERS/package-lock.json" 2>/dev/null \
       || [ ! -d "$PEERS/node_modules" ]; then
      log "installing the Node peers into $PEERS (npm ci)"
      rm -rf "$PEERS"
      mkdir -p "$PEERS"
      cp "$PEERS_SRC"/*.js "$PEERS_SRC"/package.json "$PEERS_SRC"/package-lock.json "$PEERS/"
      chmod -R u+w "$PEERS"
      (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    else
      cp "$PEERS_SRC"/*.js "$PEERS/" && chmod u+w "$PEERS"/*.js
    fi
    HAVE_NODE=1
  else
    log "SKIP Node peers: node/npm or $PEERS_SRC missing"
  fi
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  # Below the ephemeral range (32768+) so client sockets never take it.
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2; return 1
}

wait_for() { # timeout_s command...
  local t=$1; shift
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.1
  done
}

REDIS_PORT=""
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --maxclients 100000 >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  wait_for 10 redis_ping || { cat "$WORK/redis.log" >&2; return 1; }
}
redis_ping() ( # a subshell: fd 3 closes with it
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
  printf 'PING\r\n' >&3
  read -r -t 1 l <&3 && [[ $l == +PONG* ]]
)
stop_pid() {
  if [ -n "$1" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
stop_redis() { stop_pid "$REDIS_PID"; REDIS_PID=""; }
stop_target() {
  if [ "$TARGET_PID" != "$REDIS_PID" ]; then stop_pid "$TARGET_PID"; fi
  TARGET_PID=""
}

TARGET_PORT=""
# start_target KIND -> sets TARGET_PID, TARGET_PORT; returns 1 to skip.
start_target() {
  local kind=$1 log="$WORK/$1.log"
  TARGET_PORT=$(free_port)
  case "$kind" in
    studio|studio-1w|studio-tls|studio-sio|studio-poll|studio-adapter|studio-history|studio-queued|studio-sio-queued)
      [ "$HAVE_STUDIO" = 1 ] || return 1
      local history=0 tls="" scheme=http direct=true workers=0
      [ "$kind" = studio-history ] && history=100000
      [ "$kind" = studio-1w ] && workers=1
      case "$kind" in *-queued) direct=false ;; esac
      if [ "$kind" = studio-tls ]; then
        tls=$(printf 'tls_cert = "%s"\ntls_key = "%s"' "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem")
        scheme=https
      fi
      cat >"$WORK/relay.toml" <<EOF
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
socketio_adapter = true
[[listeners]]
bind = "127.0.0.1:$TARGET_PORT"
$tls
[limits]
max_connections = 200000
direct_writes = $direct
worker_threads = $workers
[history]
size = $history
EOF
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT" "$RELAY" --config "$WORK/relay.toml" >"$log" 2>&1 &
      TARGET_PID=$!
      if ! wait_for 20 curl -fsS --cacert "$TLS_DIR/cert.pem" -o /dev/null "$scheme://127.0.0.1:$TARGET_PORT/healthz"; then
        log "studio-relay did not become healthy:"; tail -20 "$log" >&2; return 1
      fi ;;
    socketio|socketio-rooms|ws)
      [ "$HAVE_NODE" = 1 ] || return 1
      local script=socketio-relay.js rooms=0
      [ "$kind" = ws ] && script=ws-relay.js
      [ "$kind" = socketio-rooms ] && rooms=1
      (cd "$PEERS" && ROOMS=$rooms exec node "$script" --port "$TARGET_PORT" \
         --redis "redis://127.0.0.1:$REDIS_PORT") >"$log" 2>&1 &
      TARGET_PID=$!
      if ! wait_for 20 grep -q '^READY' "$log"; then
        log "$kind did not print READY:"; tail -20 "$log" >&2; return 1
      fi ;;
    sockudo)
      # Sockudo (Rust, Pusher protocol), fed through its Redis adapter.
      # Not built here (a long compile): on PATH or $SOCKUDO, installed with
      #   apt-get install protobuf-compiler && cargo install sockudo --version 5.2.0 --locked --no-default-features --features local,redis
      local bin=${SOCKUDO:-$(command -v sockudo || true)}
      [ -n "$bin" ] && [ -x "$bin" ] || return 1
      HOST=127.0.0.1 PORT="$TARGET_PORT" ADAPTER_DRIVER=redis REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        APP_MANAGER_DRIVER=memory CACHE_DRIVER=redis QUEUE_DRIVER=none METRICS_ENABLED=false \
        RATE_LIMITER_ENABLED=false SOCKUDO_DEFAULT_APP_ID=bench-app SOCKUDO_DEFAULT_APP_KEY=bench-key \
        SOCKUDO_DEFAULT_APP_SECRET=bench-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=200000 \
        SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 "$bin" >"$log" 2>&1 &
      TARGET_PID=$!
      if ! wait_for 30 curl -fsS -o /dev/null "http://127.0.0.1:$TARGET_PORT/up"; then
        log "sockudo did not become healthy:"; tail -20 "$log" >&2; return 1
      fi ;;
    redis)
      TARGET_PID=$REDIS_PID ;;
  esac
}

# run_case LABEL SCENARIO CLIENTS [bench args...]
run_case() {
  local label=$1 scenario=$2 clients=$3; shift 3
  local target=$label
  case "$label" in
    socketio-rooms|studio-sio) target=socketio ;;
    studio-poll) target=socketio-polling ;;
    studio-adapter) target=studio; set -- "$@" --adapter ;;
    studio-history|studio-queued|studio-1w) target=studio ;;
    studio-sio-queued) target=socketio ;;
    studio-tls) target=studio; set -- "$@" --tls-ca "$TLS_DIR/cert.pem" ;;
  esac
  if [ "$STUDIO_ONLY" = 1 ] && [ "${label#studio}" = "$label" ]; then return 0; fi
  # SKIP_LABELS="studio-sio studio-poll": e.g. to compare with a build that has no Socket.IO.
  case " ${SKIP_LABELS:-} " in *" $label "*) return 0 ;; esac
  # ONLY_LABELS="studio studio-tls" / ONLY_SCENARIOS="fanout routed": a subset, on a busy machine.
  if [ -n "${ONLY_LABELS:-}" ]; then case " $ONLY_LABELS " in *" $label "*) ;; *) return 0 ;; esac; fi
  if [ -n "${ONLY_SCENARIOS:-}" ]; then case " $ONLY_SCENARIOS " in *" $scenario "*) ;; *) return 0 ;; esac; fi
  if [ "$clients" -gt $(( NOFILE - 2048 )) ]; then
    log "SKIP $label $scenario N=$clients: open-file limit is $NOFILE (needs > $clients + 2048 for the loadgen and the relay; raise the hard limit, e.g. LimitNOFILE= or as a privileged user)"
    echo "SKIP $label $scenario N=$clients: open-file limit $NOFILE" >>"$OUT"
    return 0
  fi
  start_redis
  if ! start_target "$label"; then
    log "SKIP $label $scenario N=$clients (target unavailable)"
    stop_target; stop_redis; return 0
  fi
  log "$label: $scenario N=$clients $*"
  local rc=0
  timeout 900 "$BENCH" --target "$target" --label "$label" --scenario "$scenario" --clients "$clients" \
    --url "127.0.0.1:$TARGET_PORT" --redis "redis://127.0.0.1:$REDIS_PORT" --pid "$TARGET_PID" "$@" \
    | tee -a "$OUT" || rc=$?
  [ "$rc" = 0 ] || log "bench exited $rc for $label $scenario"
  stop_target; stop_redis
  sleep 1   # let TIME_WAIT sockets and the CPU settle
}

if [ "$QUICK" = 1 ]; then
  D=2; N=200; RN=200; RA=20; BN=1000; BA=100; IDLE=(2000 5000); PACED=1000
else
  D=10; N=1000; RN=1000; RA=100; BN=10000; BA=1000; IDLE=(50000 100000); PACED=5000
fi

# studio-sio / studio-poll: studio-relay's own Socket.IO over WebSocket /
# over HTTP long-polling; same load generator as the peers. studio-adapter:
# native clients, events published as @socket.io/redis-adapter MessagePack.
# studio-history: the same relay keeping 100,000 events for resumes. redis on
# the routed job: each subscriber SUBSCRIBEs its agent's own channel and each
# event is published there (Redis routing by itself, no relay).
# studio-tls: the same native clients over wss:// (TLS 1.3, rustls on both
# ends), printed beside the plain studio row. studio-queued /
# studio-sio-queued: the same relay with limits.direct_writes = false (every
# write through the connection's task), the before of the direct-write lever.
# studio-1w: the same relay with limits.worker_threads = 1 (one runtime
# thread besides its routing thread): on this box the load generator holds
# the other core, and more relay threads mostly wake each other across cores.
# sockudo: the Rust Pusher-protocol server, fed through its Redis adapter;
# skipped unless the binary is on PATH or in $SOCKUDO.
PEERS_ALL=(studio studio-1w studio-queued studio-sio studio-sio-queued studio-poll socketio ws sockudo redis)
# --repeat N: each case N times, every label in turn within a round, so
# the box's drift (steal, neighbours) falls on all of them alike.
for _ in $(seq "$REPEAT"); do
  for t in studio-adapter studio-history studio studio-1w studio-queued studio-tls studio-sio studio-sio-queued studio-poll socketio ws sockudo redis; do
    run_case "$t" fanout "$N" --duration "$D"
  done
done
for r in 1000 100; do
  for _ in $(seq "$REPEAT"); do
    for t in "${PEERS_ALL[@]}"; do run_case "$t" rate "$N" --rate "$r" --duration "$D"; done
  done
done
for _ in $(seq "$REPEAT"); do
  for t in studio studio-1w studio-queued studio-tls studio-adapter studio-history studio-sio studio-sio-queued studio-poll socketio-rooms socketio sockudo redis; do run_case "$t" routed "$RN" --agents "$RA" --duration "$D"; done
done
run_case studio routed "$BN" --agents "$BA" --duration "$D"
# Routed at the same offered load for everyone (below any target's
# saturation): latency at equal throughput. Flat out, a closed loop's
# latency is mostly its window over its own throughput.
for _ in $(seq "$REPEAT"); do
  for t in studio studio-1w studio-queued studio-sio sockudo redis; do
    run_case "$t" routed "$RN" --agents "$RA" --paced --rate "$PACED" --duration "$D"
  done
done

# Idle: the relay needs max_connections (200000 in its config) and an
# open-file limit above N; so does the load generator.
FALLBACK_DONE=0
wanted_idle=1
if [ -n "${ONLY_SCENARIOS:-}" ]; then case " $ONLY_SCENARIOS " in *" idle "*) ;; *) wanted_idle=0 ;; esac; fi
[ "$wanted_idle" = 1 ] || IDLE=()
for n in "${IDLE[@]}"; do
  if [ "$n" -gt $(( NOFILE - 2048 )) ]; then
    run_case studio idle "$n"   # prints the SKIP line
    if [ "$FALLBACK_DONE" = 0 ]; then
      cap=$(( (NOFILE - 2048) / 1000 * 1000 ))
      if [ "$cap" -ge 1000 ]; then
        log "running idle at N=$cap instead (largest the open-file limit allows)"
        run_case studio idle "$cap"
      fi
      FALLBACK_DONE=1
    fi
  else
    run_case studio idle "$n"
  fi
done

echo
echo "================ summary ($OUT) ================"
grep '^RESULT ' "$OUT" || true
echo
"$BENCH" --summarize "$OUT"
grep '^SKIP ' "$OUT" || true
