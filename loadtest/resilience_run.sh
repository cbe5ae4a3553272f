#!/usr/bin/env bash
# Resilience run: a route split 50/50 over two deployments (two mock-upstream processes with
# different --model), open-loop load at RATE req/s; deployment B is SIGKILLed between phases.
#
# Three back-to-back loadgen runs (the gap between them is loadgen's start-up, a few ms):
#   before  BEFORE s, both deployments up
#   during  DURING s; B gets SIGKILL KILL_AT s after this run starts (no warmup in this run)
#   after   AFTER s, B still dead
# Each reports completed, 2xx, non-2xx by status, transport errors and p50/p99/max of the
# coordinated-omission-corrected total latency (loadgen --rate). Short breaker/health settings
# ([defaults.breaker], [defaults.health_check]) so the gateway stops sending to B quickly.
# MODE=endpoints puts both mocks behind ONE upstream (two endpoints, plain route) instead,
# where a refused connect is retried on the other endpoint within the retry budget.
#
# Knobs (defaults): RATE=2000 RATE_CONNS=16 BEFORE=8 DURING=4 KILL_AT=0.5 AFTER=8
# LATENCY_MS=5 GW_CORE=0 UP_CORE=1 PORT_A=9101 PORT_B=9102 GW_PORT=8190 MODE=split
# SKIP_BUILD=1 KEEP=1
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

RATE=${RATE:-2000}
RATE_CONNS=${RATE_CONNS:-16}
BEFORE=${BEFORE:-8}
DURING=${DURING:-4}
KILL_AT=${KILL_AT:-0.5}
AFTER=${AFTER:-8}
LATENCY_MS=${LATENCY_MS:-5}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
PORT_A=${PORT_A:-9101}
PORT_B=${PORT_B:-9102}
GW_PORT=${GW_PORT:-8190}
MODE=${MODE:-split}
TOTAL=$((BEFORE + DURING + AFTER + 30))

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p shardgate -p loadtest
fi
LOADGEN=target/release/loadgen
MOCK=target/release/mock-upstream
SHARDGATE=${SHARDGATE:-target/release/shardgate}

lt_setup resilience
ports_free "$PORT_A" "$PORT_B" "$GW_PORT"

printf '%s' '{"model":"mock-gpt","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' >"$TMP/body.json"

{
    cat <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
workers = [$GW_CORE]
pin = true
[defaults.breaker]
failure_rate = 0.5
min_calls = 10
window_ms = 2000
consecutive_failures = 3
open_base_ms = 500
open_factor = 2.0
open_max_ms = 5000
open_jitter = 0.1
half_open_probes = 1
[defaults.health_check]
path = "/health"
interval_ms = 250
timeout_ms = 200
healthy_threshold = 2
unhealthy_threshold = 1
EOF
    if [[ $MODE == split ]]; then
        cat <<EOF
[[deployments]]
model = "mock-a"
version = "1.0.0"
endpoints = ["127.0.0.1:$PORT_A"]
[[deployments]]
model = "mock-b"
version = "1.0.0"
endpoints = ["127.0.0.1:$PORT_B"]
[[routes]]
path = "/v1/chat/completions"
methods = ["POST"]
targets = [{ model = "mock-a", weight = 50 }, { model = "mock-b", weight = 50 }]
EOF
    else
        cat <<EOF
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$PORT_A", "127.0.0.1:$PORT_B"]
[[routes]]
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "mock"
EOF
    fi
} >"$TMP/gateway.toml"
"$SHARDGATE" check --config "$TMP/gateway.toml" >/dev/null || { echo "invalid config" >&2; exit 1; }

start_mock() { # PORT MODEL
    taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$1" --threads 1 --model "$2" \
        --latency-ms "$LATENCY_MS" --run-for "$TOTAL" >"$TMP/mock-$2.log" 2>&1 &
    PIDS+=($!)
    wait_port "$1" || { echo "mock $2 did not start" >&2; exit 1; }
}
start_mock "$PORT_A" mock-a
start_mock "$PORT_B" mock-b
B_PID=${PIDS[-1]}

taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
wait_port "$GW_PORT" || { echo "shardgate did not start:" >&2; tail -5 "$TMP/gateway.log" >&2; exit 1; }
sleep 0.5 # first health probes

phase() { # NAME SECONDS WARMUP
    timeout $(($2 + 30)) taskset -c "$UP_CORE" "$LOADGEN" \
        --url "http://127.0.0.1:$GW_PORT/v1/chat/completions" --method POST \
        --body "$TMP/body.json" -H 'content-type: application/json' --threads 1 \
        --connections "$RATE_CONNS" --rate "$RATE" --duration "$2" --warmup "$3" --timeout 5 \
        --json "$TMP/$1.json" >"$TMP/$1.txt"
}

echo "resilience_run ($MODE): $RATE req/s open loop over $RATE_CONNS conns, mock latency" \
    "${LATENCY_MS} ms; before ${BEFORE}s | during ${DURING}s (SIGKILL B at +${KILL_AT}s) | after ${AFTER}s"
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
phase before "$BEFORE" 1
phase during "$DURING" 0 &
LG=$!
sleep "$KILL_AT"
kill -KILL "$B_PID"
echo "SIGKILL deployment B (pid $B_PID) at $(date -u +%T.%N | cut -c1-12)"
wait "$LG"
phase after "$AFTER" 0
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$TMP" <<'PYEOF'
import json, os, sys
tmp = sys.argv[1]
print(f"\n{'phase':<8} {'done':>7} {'2xx':>7} {'non-2xx':>20} {'errors':>14} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for ph in ("before", "during", "after"):
    j = json.load(open(os.path.join(tmp, ph + ".json")))
    t = j["latency_us"]["total"]
    ok = sum(v for k, v in j["status"].items() if k.startswith("2"))
    bad = {k: v for k, v in j["status"].items() if not k.startswith("2")}
    errs = {k: v for k, v in j["errors"].items() if v}
    bad_s = ",".join(f"{k}:{v}" for k, v in sorted(bad.items())) or "0"
    err_s = ",".join(f"{k}:{v}" for k, v in sorted(errs.items())) or "0"
    print(f"{ph:<8} {j['completed']:>7} {ok:>7} {bad_s:>20} {err_s:>14} {t['p50']/1e3:>8.2f} "
          f"{t['p99']/1e3:>8.2f} {t.get('max', 0)/1e3:>8.2f}")
PYEOF
echo "gateway log (last lines):"
tail -5 "$TMP/gateway.log"
