#!/usr/bin/env bash
# Comparison benchmark: shardgate vs nginx as a reverse proxy in front of the same mock
# upstream, driven by the same loadgen load, in alternation.
#
# Layout (2-core host): shardgate and nginx on GW_CORE (one worker each), mock-upstream and
# loadgen on UP_CORE. Per server and mode it prints req/s, p50/p99/p99.9, the server's CPU µs
# per request (utime+stime from /proc, sampled after warmup until the run ends, over the
# requests loadgen measured), then shardgate/nginx ratios and the gateway-added latency at
# concurrency 1 (p50/p99 through the proxy minus direct to the upstream). Every mode runs in
# every round, servers in alternation, and the tables report medians over rounds.
#
# Environment knobs (defaults): DURATION=5 WARMUP=1 ROUNDS=3 CONNS=32 RATE=5000 RATE_CONNS=16
# GW_CORE=0 UP_CORE=1 UP_PORT=9000 GW_PORT=8080 NGX_PORT=8081 BODY=<small chat request>
# MODES="closed open c1" (the load shapes run in each round; e.g. MODES=open for the 5k req/s
# open loop alone) SKIP_BUILD=1 (use existing release binaries) SKIP_SHARDGATE=1 (nginx + direct only)
# SHARDGATE=target/release/shardgate (the binary measured) BASELINE=<another shardgate binary>
# (also measured, as `baseline` on GW_PORT+2, for before/after ratios in the same run)
# GW_EXTRA / BASELINE_EXTRA: more [server] lines for shardgate / the baseline, e.g. the same
# binary as both with BASELINE_EXTRA=$'busy_poll_us = 50' or $'[server.io_uring]\nsqpoll = true'
# (issue #13: each ring setting's effect in one run).
# WRK=1 (after the rounds, one closed-loop wrk run per server, same core, conns and body:
# a cross-check of loadgen's numbers).
# HAPROXY=1 (default when haproxy is installed; 0 skips): the second anchor (issue #13).
# HAProxy (one thread) as a plain proxy (`haproxy`, HAP_PORT=8084) and as an AI gateway doing
# what it can natively (`haproxy-ai`, HAP_PORT+1): `jwt_verify` HS256 with `exp` checked, a
# stick-table request limit per subject, the subject copied to `x-subject`, servers weighted
# 80/20; and shardgate's full pipeline on the same traffic (`shardgate-ai`, GW_PORT+3: JWT
# HS256, the body's `model` split 80/20, a per-subject quota). Every server then gets a JWT
# per request (SUBJECTS=64 distinct subjects, rotated). PERF=1: kernel entries per request
# (`perf stat -e raw_syscalls:sys_enter` on the server's pids during each closed-loop run).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
RATE=${RATE:-5000}
RATE_CONNS=${RATE_CONNS:-16}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9000}
GW_PORT=${GW_PORT:-8080}
NGX_PORT=${NGX_PORT:-8081}
HAP_PORT=${HAP_PORT:-8084}
HAPAI_PORT=$((HAP_PORT + 1))
AI_PORT=$((GW_PORT + 3))
SUBJECTS=${SUBJECTS:-64}
PATH_REQ=${PATH_REQ:-/v1/chat/completions}

need_pkgs nginx wrk
NGINX=$(sbin_path nginx)
[[ ${HAPROXY:-1} == 0 ]] || need_pkgs haproxy || true
HAPROXY_BIN=$(sbin_path haproxy)
[[ ${HAPROXY:-1} != 0 && -x $HAPROXY_BIN ]] && HAPROXY=1 || HAPROXY=0

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p loadtest --bins
    [[ -n "${SKIP_SHARDGATE:-}" ]] || cargo build --quiet --release -p shardgate --bin shardgate
fi
LOADGEN=target/release/loadgen
MOCK=target/release/mock-upstream
SHARDGATE=${SHARDGATE:-target/release/shardgate}
BASELINE=${BASELINE:-}
BASE_PORT=$((GW_PORT + 2))

lt_setup compare
ports_free "$UP_PORT" "$GW_PORT" "$NGX_PORT" "$BASE_PORT" "$HAP_PORT" "$HAPAI_PORT" "$AI_PORT"

BODY_FILE=$TMP/body.json
DEFAULT_BODY='{"model":"mock-gpt","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
printf '%s' "${BODY:-$DEFAULT_BODY}" >"$BODY_FILE"

gateway_config() {
    cat <<EOF
[server]
listen = "127.0.0.1:$1"
workers = [$GW_CORE]
pin = true
${2:-}
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
upstream = "mock"
EOF
}
gateway_config "$GW_PORT" "${GW_EXTRA:-}" >"$TMP/shardgate.toml"
gateway_config "$BASE_PORT" "${BASELINE_EXTRA:-}" >"$TMP/baseline.toml"

nginx_proxy_conf "$NGX_PORT" "$UP_PORT" >"$TMP/nginx.conf"

# A JWT per request for every server (HS256, SUBJECTS distinct subjects, 1 h expiry).
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SECRET" >"$TMP/hs256.key"
mint_hs256 "$SECRET" "$SUBJECTS" >"$TMP/tokens.txt"

if [[ $HAPROXY == 1 ]]; then
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend plain
    bind 127.0.0.1:$HAP_PORT
    default_backend mock
backend mock
    server m1 127.0.0.1:$UP_PORT
frontend ai
    bind 127.0.0.1:$HAPAI_PORT
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny status 401 unless { var(txn.alg) -m str HS256 }
    http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
    http-request set-header x-subject %[var(txn.sub)]
    http-request track-sc0 var(txn.sub) table per_subject
    http-request deny deny_status 429 if { sc_http_req_rate(0,per_subject) gt 1000000000 }
    default_backend ai
backend per_subject
    stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
backend ai
    balance roundrobin
    server a 127.0.0.1:$UP_PORT weight 80
    server b 127.0.0.1:$UP_PORT weight 20
EOF
    "$HAPROXY_BIN" -c -q -f "$TMP/haproxy.cfg" || { echo "haproxy.cfg is invalid" >&2; exit 1; }
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = [%s]\npin = true\n%s\n' \
            "$AI_PORT" "$GW_CORE" "${GW_EXTRA:-}"
        full_pipeline_toml "$UP_PORT" 1000000000
        printf '[[auth.claim_headers]]\nclaim = "sub"\nheader = "x-subject"\n'
    } >"$TMP/shardgate-ai.toml"
fi

taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$UP_PORT" --threads 1 >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" || { echo "mock-upstream did not start" >&2; exit 1; }

taskset -c "$GW_CORE" "$NGINX" -c "$TMP/nginx.conf" -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_port "$NGX_PORT" || { echo "nginx did not start:" >&2; cat "$TMP/nginx-error.log" >&2; exit 1; }

SERVERS=(nginx)
if [[ -z "${SKIP_SHARDGATE:-}" ]]; then
    taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/shardgate.toml" >"$TMP/shardgate.log" 2>&1 &
    SG_PID=$!
    PIDS+=("$SG_PID")
    if wait_port "$GW_PORT" && kill -0 "$SG_PID" 2>/dev/null; then
        SERVERS=(shardgate nginx)
    else
        echo "shardgate did not start; comparing nginx and direct only. Its log:" >&2
        tail -5 "$TMP/shardgate.log" >&2 || true
    fi
fi
if [[ -n "$BASELINE" ]]; then
    taskset -c "$GW_CORE" "$BASELINE" --config "$TMP/baseline.toml" >"$TMP/baseline.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    wait_port "$BASE_PORT" || { echo "baseline did not start:" >&2; tail -5 "$TMP/baseline.log" >&2; exit 1; }
    SERVERS+=(baseline)
fi

if [[ $HAPROXY == 1 ]]; then
    taskset -c "$GW_CORE" "$HAPROXY_BIN" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
    HAP_PID=$!
    PIDS+=("$HAP_PID")
    wait_port "$HAP_PORT" && wait_port "$HAPAI_PORT" || { echo "haproxy did not start:" >&2; tail -5 "$TMP/haproxy.log" >&2; exit 1; }
    SERVERS+=(haproxy haproxy-ai)
    if [[ -z "${SKIP_SHARDGATE:-}" ]]; then
        "$SHARDGATE" check --config "$TMP/shardgate-ai.toml" >/dev/null
        taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/shardgate-ai.toml" >"$TMP/shardgate-ai.log" 2>&1 &
        AI_PID=$!
        PIDS+=("$AI_PID")
        wait_port "$AI_PORT" || { echo "shardgate-ai did not start:" >&2; tail -5 "$TMP/shardgate-ai.log" >&2; exit 1; }
        SERVERS+=(shardgate-ai)
    fi
fi

port_of() {
    case $1 in
    shardgate) echo "$GW_PORT" ;; nginx) echo "$NGX_PORT" ;; direct) echo "$UP_PORT" ;;
    baseline) echo "$BASE_PORT" ;;
    haproxy) echo "$HAP_PORT" ;; haproxy-ai) echo "$HAPAI_PORT" ;; shardgate-ai) echo "$AI_PORT" ;;
    esac
}
# All pids of a server (nginx: master and its workers).
pids_of() {
    case $1 in
    shardgate) echo "$SG_PID" ;;
    baseline) echo "$BASE_PID" ;;
    nginx) echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true) ;;
    haproxy | haproxy-ai) echo "$HAP_PID" ;;
    shardgate-ai) echo "$AI_PID" ;;
    *) echo "" ;;
    esac
}

# run NAME SERVER MODE(closed|open|c1) → $TMP/NAME.json and $TMP/NAME.cpu (ticks after warmup)
run() {
    local name=$1 server=$2 mode=$3 args=()
    case $mode in
    closed) args=(--connections "$CONNS") ;;
    open) args=(--connections "$RATE_CONNS" --rate "$RATE") ;;
    c1) args=(--connections 1) ;;
    esac
    local pids
    pids=$(pids_of "$server")
    timeout $((DURATION + WARMUP + 30)) taskset -c "$UP_CORE" "$LOADGEN" \
        --url "http://127.0.0.1:$(port_of "$server")$PATH_REQ" --method POST --body "$BODY_FILE" \
        -H 'content-type: application/json' --token-file "$TMP/tokens.txt" --threads 1 \
        --duration "$DURATION" --warmup "$WARMUP" \
        "${args[@]}" --json "$TMP/$name.json" >"$TMP/$name.txt" &
    local lg=$!
    sleep "$WARMUP"
    local before perf=""
    before=$(cpu_ticks $pids)
    if [[ -n "${PERF:-}" && $mode == closed && -n $pids ]]; then
        perf stat -e raw_syscalls:sys_enter -x, -o "$TMP/$name.perf" -p "$(echo $pids | tr ' ' ',')" \
            -- sleep "$DURATION" >/dev/null 2>&1 &
        perf=$!
    fi
    wait "$lg"
    echo $(($(cpu_ticks $pids) - before)) >"$TMP/$name.cpu"
    [[ -z $perf ]] || wait "$perf" || true
}

echo "compare: ${SERVERS[*]} | ${DURATION}s measured + ${WARMUP}s warmup per run, $ROUNDS rounds," \
    "closed loop $CONNS conns, open loop $RATE req/s over $RATE_CONNS conns, POST $PATH_REQ"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
MODES=${MODES:-closed open c1}
has_mode() { [[ " $MODES " == *" $1 "* ]]; }
for r in $(seq "$ROUNDS"); do
    for mode in closed open; do
        has_mode "$mode" || continue
        for s in "${SERVERS[@]}"; do run "$s-$mode-$r" "$s" "$mode"; done
    done
    if has_mode c1; then
        for s in direct "${SERVERS[@]}"; do run "$s-c1-$r" "$s" c1; done
    fi
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ -n "${WRK:-}" ]]; then
    python3 - "$BODY_FILE" >"$TMP/post.lua" <<'PYEOF'
import json, sys
body = open(sys.argv[1]).read()
print('wrk.method = "POST"')
print('wrk.headers["content-type"] = "application/json"')
print(f"wrk.body = {json.dumps(body)}")
PYEOF
    echo
    echo "== wrk cross-check: closed loop, $CONNS conns, ${DURATION}s, 1 thread on core $UP_CORE =="
    for s in "${SERVERS[@]}"; do
        pids=$(pids_of "$s")
        before=$(cpu_ticks $pids)
        out=$(taskset -c "$UP_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$TMP/post.lua" \
            "http://127.0.0.1:$(port_of "$s")$PATH_REQ")
        ticks=$(($(cpu_ticks $pids) - before))
        echo "$out" | awk -v s="$s" -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v d="$DURATION" '
            /^ +50%/ {p50 = $2} /^ +99%/ {p99 = $2} /^Requests\/sec/ {rps = $2}
            / requests in / {n = $1}
            END {printf "%-22s %10.0f req/s  p50 %s  p99 %s  cpu %.2f us/req\n", s, rps, p50, p99, t * 1e6 / hz / n}'
    done
fi

python3 - "$TMP" "$ROUNDS" "$(getconf CLK_TCK)" "$MODES" "${SERVERS[@]}" <<'PYEOF'
import json, os, statistics, sys

tmp, rounds, hz, servers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5:]
modes = [m for m in ("closed", "open") if m in sys.argv[4].split()]

def load(name):
    with open(os.path.join(tmp, name + ".json")) as f:
        j = json.load(f)
    cpu_path = os.path.join(tmp, name + ".cpu")
    ticks = int(open(cpu_path).read()) if os.path.exists(cpu_path) else 0
    t = j["latency_us"]["total"]
    n = j["completed"]
    errors = sum(j["errors"].values()) + sum(v for k, v in j["status"].items() if not k.startswith("2"))
    perf_path = os.path.join(tmp, name + ".perf")
    entries = float("nan")
    if os.path.exists(perf_path):
        for line in open(perf_path):
            f = line.strip().split(",")
            if len(f) > 2 and "sys_enter" in f[2] and f[0].isdigit() and n:
                entries = int(f[0]) / n
    return {"rps": j["rps"], "p50": t["p50"], "p99": t["p99"], "p99.9": t["p99.9"],
            "cpu_us": ticks * 1e6 / hz / n if n else float("nan"), "errors": errors,
            "entries": entries}

def row(label, m):
    print(f"{label:<22} {m['rps']:>10.0f} {m['p50']/1000:>9.3f} {m['p99']/1000:>9.3f} "
          f"{m['p99.9']/1000:>9.3f} {m['cpu_us']:>10.2f} {m['errors']:>7} {m['entries']:>9.2f}")

def median(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

hdr = f"{'run':<22} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'p99.9 ms':>9} {'cpu us/req':>10} {'errors':>7} {'sys/req':>9}"
summary = {}
for mode in modes:
    print(f"\n== {mode} loop ==")
    print(hdr)
    for s in servers:
        runs = [load(f"{s}-{mode}-{r}") for r in range(1, rounds + 1)]
        for r, m in enumerate(runs, 1):
            row(f"{s} #{r}", m)
        summary[(s, mode)] = median(runs)
        row(f"{s} median", summary[(s, mode)])

def ratios(a_name, b_name):
    print(f"\n== {a_name} / {b_name} (medians) ==")
    for mode in modes:
        a, b = summary[(a_name, mode)], summary[(b_name, mode)]
        r = "  ".join(f"{k} {a[k] / b[k]:.2f}x" for k in ("rps", "p50", "p99", "p99.9", "cpu_us") if b[k])
        print(f"{mode:<7} {r}")

for s in servers:
    if s != "nginx":
        ratios(s, "nginx")
if "baseline" in servers and "shardgate" in servers:
    ratios("shardgate", "baseline")
# The second anchor (issue #13): the whole AI pipeline against HAProxy doing what it can.
for a, b in (("shardgate", "haproxy"), ("shardgate-ai", "haproxy-ai"), ("shardgate-ai", "haproxy")):
    if a in servers and b in servers:
        ratios(a, b)

if "c1" not in sys.argv[4].split():
    sys.exit(0)
print("\n== gateway-added latency, concurrency 1 (through proxy minus direct, medians over rounds) ==")
c1 = {s: median([load(f"{s}-c1-{r}") for r in range(1, rounds + 1)]) for s in ["direct"] + servers}
direct = c1["direct"]
print(f"direct                 p50 {direct['p50']/1000:.3f} ms  p99 {direct['p99']/1000:.3f} ms")
for s in servers:
    m = c1[s]
    print(f"{s:<22} p50 +{(m['p50'] - direct['p50'])/1000:.3f} ms  p99 +{(m['p99'] - direct['p99'])/1000:.3f} ms"
          f"  (cpu {m['cpu_us']:.2f} us/req)")
PYEOF
