#!/usr/bin/env bash
# Streams at scale (issue #13): STREAMS concurrent SSE streams of EVENTS events GAP_MS apart
# through the full pipeline (JWT HS256 per request, the body's `model` split 80/20 over two
# deployments, a per-subject quota), gateway alone on GW_CORE. Prints whether every stream
# arrived whole, the client-side inter-event gaps (largest and p99 over the nominal gap: the
# no-stall target is max <= GAP_MS + 5 ms, added p99 <= 1 ms) and the gateway's RSS before and
# at its peak. Run it on a quiet machine; the client needs a core of its own.
#
# Environment knobs (defaults): STREAMS=1000 EVENTS=64 GAP_MS=20 SUBJECTS=100 GW_CORE=0
# UP_CORE=1 UP_PORT=9100 GW_PORT=8180 SERVER_EXTRA=<more [server] lines, e.g. busy_poll_us = 50>
# SKIP_BUILD=1 (use existing release binaries) SHARDGATE=target/release/shardgate
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

STREAMS=${STREAMS:-1000}
EVENTS=${EVENTS:-64}
GAP_MS=${GAP_MS:-20}
SUBJECTS=${SUBJECTS:-100}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9100}
GW_PORT=${GW_PORT:-8180}
PROFILE_DIR=${PROFILE_DIR:-target/release}

# Every stream holds a client socket, a gateway socket each way and an upstream socket.
ulimit -n "$(( STREAMS * 4 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p loadtest --bins
    cargo build --quiet --release -p shardgate --bin shardgate
fi
SHARDGATE=${SHARDGATE:-$PROFILE_DIR/shardgate}
MOCK=$PROFILE_DIR/mock-upstream
CLIENT=$PROFILE_DIR/streams

lt_setup streams

SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SECRET" >"$TMP/hs256.key"
mint_hs256 "$SECRET" "$SUBJECTS" >"$TMP/tokens.txt"

{
    cat <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
workers = [$GW_CORE]
pin = true
${SERVER_EXTRA:-}
[limits]
max_connections_per_worker = $(( STREAMS * 2 + 1000 ))
EOF
    full_pipeline_toml "$UP_PORT" 1000000
    echo 'tokens_per_minute = 1000000000'
} >"$TMP/gateway.toml"
"$SHARDGATE" check --config "$TMP/gateway.toml" >/dev/null

taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$UP_PORT" --threads 1 \
    --chunks "$EVENTS" --gap-ms "$GAP_MS" >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" 200 || { echo "mock-upstream did not start" >&2; exit 1; }
taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_port "$GW_PORT" 200 || { echo "shardgate did not start" >&2; cat "$TMP/gateway.log" >&2; exit 1; }

# The baseline: the same client straight to the mock, whose gaps are what the mock and the
# client add on their shared core; the gateway's share is the difference.
echo "== $STREAMS streams x $EVENTS events, $GAP_MS ms apart, straight to the mock (baseline)"
taskset -c "$UP_CORE" "$CLIENT" --addr "127.0.0.1:$UP_PORT" --streams "$STREAMS" --events "$EVENTS" \
    --gap-ms "$GAP_MS" --tokens "$TMP/tokens.txt" --gateway-pid "$GW_PID" | grep -v '^gateway RSS'
echo
echo "== $STREAMS streams x $EVENTS events, $GAP_MS ms apart, JWT + split 80/20 + quota (${SERVER_EXTRA:-defaults})"
taskset -c "$UP_CORE" "$CLIENT" --addr "127.0.0.1:$GW_PORT" --streams "$STREAMS" --events "$EVENTS" \
    --gap-ms "$GAP_MS" --tokens "$TMP/tokens.txt" --gateway-pid "$GW_PID"
