#!/usr/bin/env bash
# The second anchor (issue #13): shardgate's full AI pipeline against HAProxy doing what it can
# natively, and both plain proxies against nginx, on the same traffic in alternation.
#
# Servers (each one process, one thread/worker, pinned to GW_CORE):
#   nginx     proxy_pass to upstream A (plain proxy)
#   haproxy   plain proxy to upstream A
#   haproxy+  HAProxy 2.6 as an AI gateway: `jwt_verify` HS256 with `exp` checked against the
#             clock, the subject tracked in a stick-table with a per-subject request-rate limit
#             (never reached), the subject copied to a header, servers A and B weighted 80/20
#   shardgate plain route to upstream A
#   shardgate+ the full pipeline: JWT (HS256, exp) per request, the body's `model` split 80/20
#             over two deployments (A and B), a per-subject quota (never reached), the subject
#             copied to a header
# Upstreams A and B are two mock-upstream processes on UP_CORE; loadgen runs there too and sends
# a JWT per request (TOKENS distinct subjects, rotating) to every server (the plain ones ignore
# it, so every server reads the same bytes).
#
# Per server and mode: req/s, p50/p99/p99.9, CPU µs/request (utime+stime from /proc after warmup),
# errors; closed loop (CONNS connections), open loop (RATE req/s over RATE_CONNS connections),
# concurrency 1 (added latency over direct). Then one more closed-loop run per server under
# `perf stat -e raw_syscalls:sys_enter` for kernel entries per request. Tables are medians over
# ROUNDS rounds; the ratios against nginx and haproxy+ come from the same run.
#
# Knobs (defaults): DURATION=5 WARMUP=1 ROUNDS=3 CONNS=32 RATE=5000 RATE_CONNS=16 GW_CORE=0
# UP_CORE=1 UP_PORT=9000 (A; B is +1) GW_PORT0=8280 (ports GW_PORT0..+4) TOKENS=1000
# SKIP_BUILD=1 (use existing release binaries) SHARDGATE=target/release/shardgate SYSCALLS=0
# (skip the perf stat pass) KEEP=1 (keep the temp dir)
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
UP_B=$((UP_PORT + 1))
GW_PORT0=${GW_PORT0:-8280}
TOKENS=${TOKENS:-1000}
SYSCALLS=${SYSCALLS:-1}
PATH_REQ=/v1/chat/completions
SERVERS=(nginx haproxy haproxy+ shardgate shardgate+)

need_pkgs nginx haproxy
NGINX=$(sbin_path nginx)
HAPROXY=$(sbin_path haproxy)
if [[ $SYSCALLS == 1 ]] && ! command -v perf >/dev/null; then
    echo "perf not found: kernel entries are not counted (SYSCALLS=0)" >&2
    SYSCALLS=0
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p shardgate -p loadtest
fi
LOADGEN=target/release/loadgen
MOCK=target/release/mock-upstream
SHARDGATE=${SHARDGATE:-target/release/shardgate}

lt_setup haproxy
port_of() {
    local i
    [[ $1 == direct ]] && { echo "$UP_PORT"; return; }
    for i in "${!SERVERS[@]}"; do [[ ${SERVERS[$i]} == "$1" ]] && echo $((GW_PORT0 + i)); done
}
ports_free "$UP_PORT" "$UP_B" $(for s in "${SERVERS[@]}"; do port_of "$s"; done)

printf '%s' '{"model":"mock-gpt","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' >"$TMP/body.json"
# One HS256 secret for both gateways (the file's bytes are the key, as HAProxy's argument is),
# TOKENS valid tokens with distinct subjects, 1 h expiry.
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SECRET" >"$TMP/hs256.key"
mint_hs256 "$SECRET" "$TOKENS" >"$TMP/tokens.txt"

# --- configurations --------------------------------------------------------------------------
shardgate_config() { # NAME
    cat <<EOF
[server]
listen = "127.0.0.1:$(port_of "$1")"
workers = [$GW_CORE]
pin = true
EOF
    if [[ $1 == shardgate ]]; then
        cat <<EOF
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
upstream = "mock"
EOF
        return
    fi
    cat <<EOF
[[deployments]]
model = "mock-gpt"
version = "1.0.0"
endpoints = ["127.0.0.1:$UP_PORT"]
[[deployments]]
model = "mock-gpt"
version = "1.1.0"
endpoints = ["127.0.0.1:$UP_B"]
[[routes]]
path = "/v1/chat/completions"
methods = ["POST"]
targets = [
  { model = "mock-gpt", version = "=1.0.0", weight = 80 },
  { model = "mock-gpt", version = "=1.1.0", weight = 20 },
]
[auth]
[[auth.keys]]
kid = "hs256"
alg = "HS256"
secret = { file = "hs256.key" }
[[auth.claim_headers]]
claim = "sub"
header = "x-subject"
[quota]
backend = "local"
[[quota.rules]]
name = "per-subject"
key = "subject"
requests_per_minute = 2000000000
EOF
}
shardgate_config shardgate >"$TMP/shardgate.toml"
shardgate_config shardgate+ >"$TMP/shardgate-ai.toml"

nginx_proxy_conf "$(port_of nginx)" "$UP_PORT" >"$TMP/nginx.conf"

haproxy_config() { # NAME
    cat <<EOF
global
    nbthread 1
    maxconn 8000
    log stderr format short local0 warning
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$(port_of "$1")
EOF
    if [[ $1 == haproxy ]]; then
        printf '    default_backend plain\nbackend plain\n    server a 127.0.0.1:%s\n' "$UP_PORT"
        return
    fi
    cat <<EOF
    stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int le 0 }
    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
    http-request track-sc0 var(txn.sub)
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 2000000000 }
    http-request set-header x-subject %[var(txn.sub)]
    default_backend models
backend models
    balance roundrobin
    server a 127.0.0.1:$UP_PORT weight 80
    server b 127.0.0.1:$UP_B weight 20
EOF
}
haproxy_config haproxy >"$TMP/haproxy.cfg"
haproxy_config haproxy+ >"$TMP/haproxy-ai.cfg"
"$HAPROXY" -c -f "$TMP/haproxy-ai.cfg" >/dev/null || { echo "haproxy rejected its config" >&2; exit 1; }

# --- processes -------------------------------------------------------------------------------
for p in "$UP_PORT" "$UP_B"; do
    taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$p" --threads 1 >"$TMP/mock-$p.log" 2>&1 &
    PIDS+=($!)
    wait_port "$p" || { echo "mock-upstream on $p did not start" >&2; exit 1; }
done
declare -A PID_OF
start() { # NAME COMMAND...
    local name=$1
    shift
    taskset -c "$GW_CORE" "$@" >"$TMP/$name.log" 2>&1 &
    PID_OF[$name]=$!
    PIDS+=($!)
    if ! wait_port "$(port_of "$name")" || ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
        echo "$name did not start; its log:" >&2
        tail -5 "$TMP/$name.log" >&2
        exit 1
    fi
}
start nginx "$NGINX" -c "$TMP/nginx.conf" -g 'daemon off;'
start haproxy "$HAPROXY" -db -f "$TMP/haproxy.cfg"
start haproxy+ "$HAPROXY" -db -f "$TMP/haproxy-ai.cfg"
start shardgate "$SHARDGATE" --config "$TMP/shardgate.toml"
start shardgate+ "$SHARDGATE" --config "$TMP/shardgate-ai.toml"

# Every pid of a server (nginx: master and worker).
pids_of() {
    [[ $1 == direct ]] && return
    echo "${PID_OF[$1]}"
    [[ $1 == nginx ]] && pgrep -P "${PID_OF[$1]}" || true
}
# run FILE SERVER MODE(closed|open|c1|sys) → $TMP/FILE.json, .cpu (ticks after warmup), .sys
run() {
    local name=$1 server=$2 mode=$3 args=() pids perf=
    case $mode in
    closed | sys) args=(--connections "$CONNS") ;;
    open) args=(--connections "$RATE_CONNS" --rate "$RATE") ;;
    c1) args=(--connections 1) ;;
    esac
    pids=$(pids_of "$server" | xargs)
    timeout $((DURATION + WARMUP + 30)) taskset -c "$UP_CORE" "$LOADGEN" \
        --url "http://127.0.0.1:$(port_of "$server")$PATH_REQ" --method POST --body "$TMP/body.json" \
        -H 'content-type: application/json' --token-file "$TMP/tokens.txt" --threads 1 \
        --duration "$DURATION" --warmup "$WARMUP" "${args[@]}" --json "$TMP/$name.json" \
        >"$TMP/$name.txt" &
    local lg=$!
    sleep "$WARMUP"
    if [[ $mode == sys ]]; then
        perf stat -x, -e raw_syscalls:sys_enter -p "${pids// /,}" -o "$TMP/$name.perf" \
            -- sleep "$DURATION" 2>/dev/null &
        perf=$!
    fi
    local before
    before=$(cpu_ticks $pids)
    wait "$lg"
    echo $(($(cpu_ticks $pids) - before)) >"$TMP/$name.cpu"
    if [[ -n $perf ]]; then
        wait "$perf" || true
        awk -F, '/raw_syscalls/ {print $1}' "$TMP/$name.perf" >"$TMP/$name.sys"
    fi
}

echo "haproxy_compare: ${SERVERS[*]} | ${DURATION}s + ${WARMUP}s warmup per run, $ROUNDS rounds," \
    "closed $CONNS conns, open $RATE req/s over $RATE_CONNS conns, JWT per request ($TOKENS subjects)"
echo "$("$HAPROXY" -v | head -1); $("$NGINX" -v 2>&1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    for mode in closed open; do
        for s in "${SERVERS[@]}"; do run "$s-$mode-$r" "$s" "$mode"; done
    done
    for s in direct "${SERVERS[@]}"; do run "$s-c1-$r" "$s" c1; done
done
if [[ $SYSCALLS == 1 ]]; then
    for s in "${SERVERS[@]}"; do run "$s-sys" "$s" sys; done
fi
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$TMP" "$ROUNDS" "$(getconf CLK_TCK)" "$DURATION" "${SERVERS[@]}" <<'PYEOF'
import json, os, statistics, sys

tmp, rounds, hz, duration, servers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]

def load(name):
    with open(os.path.join(tmp, name + ".json")) as f:
        j = json.load(f)
    ticks = int(open(os.path.join(tmp, name + ".cpu")).read() or 0)
    t, n = j["latency_us"]["total"], j["completed"]
    errors = sum(j["errors"].values()) + sum(v for k, v in j["status"].items() if not k.startswith("2"))
    m = {"rps": j["rps"], "p50": t["p50"], "p99": t["p99"], "p99.9": t["p99.9"],
         "cpu_us": ticks * 1e6 / hz / n if n else float("nan"), "errors": errors}
    sys_path = os.path.join(tmp, name + ".sys")
    if os.path.exists(sys_path):
        raw = open(sys_path).read().strip()
        # perf counted over DURATION seconds; loadgen measured its requests over the same span.
        m["sys"] = float(raw) / (j["rps"] * duration) if raw and raw[0].isdigit() and j["rps"] else float("nan")
    return m

def median(runs):
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

def row(label, m):
    print(f"{label:<16} {m['rps']:>9.0f} {m['p50']/1000:>8.3f} {m['p99']/1000:>8.3f} "
          f"{m['p99.9']/1000:>9.3f} {m['cpu_us']:>10.2f} {m['errors']:>7}")

summary = {}
for mode in ("closed", "open"):
    print(f"\n== {mode} loop ==")
    print(f"{'run':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'cpu us/req':>10} {'errors':>7}")
    for s in servers:
        runs = [load(f"{s}-{mode}-{r}") for r in range(1, rounds + 1)]
        for r, m in enumerate(runs, 1):
            row(f"{s} #{r}", m)
        summary[(s, mode)] = median(runs)
        row(f"{s} median", summary[(s, mode)])

c1 = {s: median([load(f"{s}-c1-{r}") for r in range(1, rounds + 1)]) for s in ["direct"] + servers}
added = {s: (c1[s]["p50"] - c1["direct"]["p50"], c1[s]["p99"] - c1["direct"]["p99"]) for s in servers}
print("\n== added latency at concurrency 1 (through the server minus direct, medians) ==")
for s in servers:
    print(f"{s:<16} p50 +{added[s][0]/1000:.3f} ms  p99 +{added[s][1]/1000:.3f} ms")

sysc = {}
for s in servers:
    p = os.path.join(tmp, f"{s}-sys.json")
    if os.path.exists(p):
        sysc[s] = load(f"{s}-sys").get("sys", float("nan"))
if sysc:
    print("\n== kernel entries per request (perf stat raw_syscalls:sys_enter, one closed-loop run) ==")
    for s, v in sysc.items():
        print(f"{s:<16} {v:.2f}")

def ratio(a, b):
    return a / b if b else float("nan")

print("\n== ratios (one run; medians) ==")
print(f"{'a / b':<24} {'cpu closed':>10} {'req/s closed':>12} {'cpu open':>9} {'p99 open':>9} {'c1 p50':>7} {'sys/req':>8}")
for a, b in [("shardgate+", "haproxy+"), ("shardgate+", "nginx"), ("shardgate", "nginx"),
             ("shardgate", "haproxy"), ("haproxy", "nginx"), ("haproxy+", "nginx")]:
    sa, sb = summary[(a, "closed")], summary[(b, "closed")]
    oa, ob = summary[(a, "open")], summary[(b, "open")]
    sr = ratio(sysc.get(a, float("nan")), sysc.get(b, float("nan"))) if sysc else float("nan")
    print(f"{a + ' / ' + b:<24} {ratio(sa['cpu_us'], sb['cpu_us']):>9.2f}x {ratio(sa['rps'], sb['rps']):>11.2f}x "
          f"{ratio(oa['cpu_us'], ob['cpu_us']):>8.2f}x {ratio(oa['p99'], ob['p99']):>8.2f}x "
          f"{ratio(added[a][0], added[b][0]):>6.2f}x {sr:>7.2f}x")
PYEOF
