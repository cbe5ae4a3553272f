#!/usr/bin/env bash
# Feature cost: what auth, API keys, quota, metrics+access-log and spend cost one pinned
# shardgate worker.
#
# Eight shardgate processes run side by side, each with one worker pinned to GW_CORE and its own
# port, in front of the same mock-upstream (UP_CORE); loadgen (closed loop, CONNS connections,
# UP_CORE) drives them one at a time, configurations alternating inside every round:
#   plain  proxy route, no auth, no quota (default metrics: per_route = true, no access log)
#   auth   plain + [auth] with one HS256 key; loadgen sends valid HS256 tokens (--token-file,
#          TOKENS distinct subjects, minted here with the Python standard library)
#   apikey plain + [auth.api_keys]; loadgen sends `Bearer sg-...` API keys (APIKEYS distinct
#          keys, created here with `shardgate keys --file`)
#   quota  plain + [quota] one local rule keyed by client_ip, requests_per_minute = 2e9
#          (nothing is rejected; every request still takes the quota path)
#   bare   [metrics] per_route = false, no access log
#   obs    per_route = true + [access_log] sample_rate = 0.01 to a file
#   model  a model split route (the body is read, usage counted) to one deployment, no spend
#   spend  model + [spend] with a price + [budgets] one daily token budget keyed by client_ip
#          (never reached; every request still takes the budget path, and is priced and
#          recorded)
#   adapt  plain with provider = "anthropic" on the upstream: every request is translated to
#          the mock's /v1/messages and its answer back to a chat.completion (issue #15)
#   full   the whole pipeline: JWT (tokens as for auth), the body's model split 80/20 over two
#          deployments, a per-subject quota (never reached), the subject copied to a header
#   trace01, trace1  full + [tracing] at sample_ratio 0.01 and 1.0, exporting OTLP/HTTP to a
#          collector stand-in on UP_CORE (a Python server that reads each export and answers 200)
# Per run: req/s, p50/p99, CPU µs/request of the worker thread (shardgate-w0) and of the whole
# process (utime+stime from /proc, sampled after warmup until loadgen exits, divided by the
# requests loadgen measured), non-2xx/errors. Tables: medians over rounds, then the ratios
# auth/plain, apikey/plain, apikey/auth, quota/plain, obs/bare, spend/model, adapt/plain (req/s ratio;
# CPU ratio is the inverse cost).
#
# RATE=N: open loop at N req/s over CONNS connections instead of closed loop (every config then
# does the same work per second, so CPU µs/request is compared at equal batching).
# Knobs (defaults): DURATION=4 WARMUP=1 ROUNDS=3 CONNS=32 GW_CORE=0 UP_CORE=1 UP_PORT=9000
# GW_PORT0=8180 (ports GW_PORT0..+11) TOKENS=1000 APIKEYS=100 SKIP_BUILD=1 KEEP=1 (keep the temp dir)
# CONFIGS="full trace01 trace1" (a subset, in this order; ratios whose two sides ran are printed)
# BASELINE=<another shardgate binary>: a config named NAME@base runs NAME's config under that
# binary (e.g. CONFIGS="full full@base auth auth@base"), and NAME/NAME@base is printed: the
# change between two builds, paired in every round.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9000}
GW_PORT0=${GW_PORT0:-8180}
TOKENS=${TOKENS:-1000}
APIKEYS=${APIKEYS:-100}
read -r -a CONFIGS <<<"${CONFIGS:-plain auth apikey quota bare obs model spend adapt full trace01 trace1}"
COLLECTOR_PORT=$((UP_PORT + 2))

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p shardgate -p loadtest
fi
LOADGEN=target/release/loadgen
MOCK=target/release/mock-upstream
SHARDGATE=${SHARDGATE:-target/release/shardgate}

lt_setup feature
port_of() {
    local i
    for i in "${!CONFIGS[@]}"; do [[ ${CONFIGS[$i]} == "$1" ]] && echo $((GW_PORT0 + i)); done
}
ports_free "$UP_PORT" "$COLLECTOR_PORT" $(for c in "${CONFIGS[@]}"; do port_of "$c"; done)

printf '%s' '{"model":"mock-gpt","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' >"$TMP/body.json"

# HS256 secret and TOKENS valid tokens (distinct sub, 1 h expiry).
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SECRET" >"$TMP/hs256.key"
mint_hs256 "$SECRET" "$TOKENS" >"$TMP/tokens.txt"

# APIKEYS API keys (distinct owners) in keys.json; the keys themselves, one a line, for loadgen.
for i in $(seq "$APIKEYS"); do
    "$SHARDGATE" keys --file "$TMP/keys.json" create --name "bench-$i" --owner "user-$i" 2>/dev/null
done | python3 -c 'import json, sys
d = json.JSONDecoder(); s = sys.stdin.read().strip(); i = 0
while i < len(s):
    v, i = d.raw_decode(s, i); print(v["key"]); i = len(s) - len(s[i:].lstrip())' >"$TMP/apikeys.txt"
[[ $(wc -l <"$TMP/apikeys.txt") -eq $APIKEYS ]] || { echo "creating $APIKEYS API keys failed" >&2; exit 1; }

config() { # NAME (NAME@base: NAME's config, see BASELINE)
    local name=${1%@base}
    cat <<EOF
[server]
listen = "127.0.0.1:$(port_of "$1")"
workers = [$GW_CORE]
pin = true
EOF
    if [[ $name == model || $name == spend ]]; then
        cat <<EOF
[[deployments]]
model = "mock-gpt"
version = "1.0.0"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
targets = [{ model = "mock-gpt", weight = 1 }]
EOF
    elif [[ $name == full || $name == trace* ]]; then
        cat <<EOF
[[deployments]]
model = "mock-gpt"
version = "1.0.0"
endpoints = ["127.0.0.1:$UP_PORT"]
[[deployments]]
model = "mock-gpt"
version = "1.1.0"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
auth = true
targets = [
  { model = "mock-gpt", version = "=1.0.0", weight = 80 },
  { model = "mock-gpt", version = "=1.1.0", weight = 20 },
]
EOF
    else
        cat <<EOF
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$UP_PORT"]
$([[ $name == adapt ]] && echo 'provider = "anthropic"')
[[routes]]
path = "/*rest"
upstream = "mock"
EOF
    fi
    [[ $name == auth ]] && echo 'auth = true'
    case $name in
    auth | full | trace*) cat <<EOF
[auth]
[[auth.keys]]
kid = "hs256"
alg = "HS256"
secret = { file = "hs256.key" }
EOF
    ;;&
    full | trace*) cat <<EOF
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
    ;;&
    trace*) printf '[tracing]\nendpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\n' \
        "$COLLECTOR_PORT" "$([[ $name == trace1 ]] && echo 1.0 || echo 0.01)" ;;
    apikey) printf 'auth = true\n[auth]\n[auth.api_keys]\nfile = "keys.json"\n' ;;
    quota) cat <<EOF
[quota]
backend = "local"
[[quota.rules]]
name = "all"
key = "client_ip"
model = "*"
requests_per_minute = 2000000000
EOF
    ;;
    bare) printf '[metrics]\nper_route = false\n' ;;
    obs) printf '[metrics]\nper_route = true\n[access_log]\npath = "access.log"\nsample_rate = 0.01\n' ;;
    spend) cat <<EOF
[spend]
file = "spend.json"
[[spend.prices]]
model = "*"
input = 0.6
output = 0.8
[budgets]
[[budgets.rules]]
name = "daily"
key = "client_ip"
period = "day"
tokens = 1000000000000
EOF
    ;;
    esac
}

taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$UP_PORT" --threads 1 >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" || { echo "mock-upstream did not start" >&2; exit 1; }
# The OTLP collector stand-in for the trace* configs: reads each export, answers 200 with an
# empty ExportTraceServiceResponse, counts the bytes it was sent.
taskset -c "$UP_CORE" python3 - "$COLLECTOR_PORT" "$TMP/collector.bytes" >"$TMP/collector.log" 2>&1 <<'PYEOF' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
total = [0, 0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        total[0] += 1; total[1] += n
        open(out, "w").write(f"{total[0]} exports, {total[1]} bytes\n")
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PYEOF
PIDS+=($!)
wait_port "$COLLECTOR_PORT" || { echo "the collector stand-in did not start" >&2; exit 1; }

declare -A GW_PID
for c in "${CONFIGS[@]}"; do
    config "$c" >"$TMP/$c.toml"
    "$SHARDGATE" check --config "$TMP/$c.toml" >/dev/null || { echo "config $c is invalid" >&2; exit 1; }
    bin=$SHARDGATE
    if [[ $c == *@base ]]; then
        bin=${BASELINE:?"$c needs BASELINE=<binary>"}
    fi
    taskset -c "$GW_CORE" "$bin" --config "$TMP/$c.toml" >"$TMP/$c.log" 2>&1 &
    GW_PID[$c]=$!
    PIDS+=($!)
    wait_port "$(port_of "$c")" || { echo "shardgate $c did not start:" >&2; tail -5 "$TMP/$c.log" >&2; exit 1; }
done

# Sanity: every config answers 200 (auth with a token).
for c in "${CONFIGS[@]}"; do
    if [[ ${c%@base} == apikey ]]; then TOKEN1=$(head -1 "$TMP/apikeys.txt"); else TOKEN1=$(head -1 "$TMP/tokens.txt"); fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -H "authorization: Bearer $TOKEN1" --data-binary @"$TMP/body.json" \
        "http://127.0.0.1:$(port_of "$c")/v1/chat/completions" || true)
    [[ $code == 200 ]] || { echo "$c answered $code" >&2; tail -5 "$TMP/$c.log" >&2; exit 1; }
done

run() { # NAME CONFIG
    local name=$1 c=$2 kind=${2%@base} extra=()
    [[ $kind == auth || $kind == full || $kind == trace* ]] && extra=(--token-file "$TMP/tokens.txt")
    [[ $kind == apikey ]] && extra=(--token-file "$TMP/apikeys.txt")
    [[ -n ${RATE:-} ]] && extra+=(--rate "$RATE")
    local wst="" pst="/proc/${GW_PID[$c]}/stat"
    wst=$(worker_stat "${GW_PID[$c]}")
    timeout $((DURATION + WARMUP + 30)) taskset -c "$UP_CORE" "$LOADGEN" \
        --url "http://127.0.0.1:$(port_of "$c")/v1/chat/completions" --method POST \
        --body "$TMP/body.json" -H 'content-type: application/json' "${extra[@]}" \
        --threads 1 --connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP" \
        --json "$TMP/$name.json" >"$TMP/$name.txt" &
    local lg=$!
    sleep "$WARMUP"
    local w0 p0
    w0=$(stat_ticks "$wst"); p0=$(stat_ticks "$pst")
    wait "$lg"
    echo "$(($(stat_ticks "$wst") - w0)) $(($(stat_ticks "$pst") - p0))" >"$TMP/$name.cpu"
}

echo "feature_cost: ${CONFIGS[*]} | ${DURATION}s + ${WARMUP}s warmup, $ROUNDS rounds, $([[ -n ${RATE:-} ]] && echo "open loop $RATE req/s over" || echo "closed loop")" \
    "$CONNS conns, worker on core $GW_CORE, mock+loadgen on core $UP_CORE"
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    # Rotate the starting config each round so no config always runs first.
    for k in "${!CONFIGS[@]}"; do
        c=${CONFIGS[$(((k + r - 1) % ${#CONFIGS[@]}))]}
        run "$c-$r" "$c"
    done
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -s $TMP/access.log ]] && echo "access log lines (obs, sample 0.01): $(wc -l <"$TMP/access.log")"
[[ -s $TMP/collector.bytes ]] && echo "collector stand-in received: $(cat "$TMP/collector.bytes")"

python3 - "$TMP" "$ROUNDS" "$(getconf CLK_TCK)" "${CONFIGS[@]}" <<'PYEOF'
import json, os, statistics, sys
tmp, rounds, hz, configs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def load(name):
    j = json.load(open(os.path.join(tmp, name + ".json")))
    w, p = (int(x) for x in open(os.path.join(tmp, name + ".cpu")).read().split())
    n = j["completed"]
    t = j["latency_us"]["total"]
    bad = sum(j["errors"].values()) + sum(v for k, v in j["status"].items() if not k.startswith("2"))
    return {"rps": j["rps"], "p50": t["p50"], "p99": t["p99"],
            "w_us": w * 1e6 / hz / n, "p_us": p * 1e6 / hz / n, "bad": bad}

print(f"\n{'run':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'wkr us/req':>10} {'proc us/req':>11} {'non2xx':>7}")
med = {}
for c in configs:
    runs = [load(f"{c}-{r}") for r in range(1, rounds + 1)]
    for r, m in enumerate(runs, 1):
        print(f"{c+' #'+str(r):<10} {m['rps']:>9.0f} {m['p50']/1e3:>8.3f} {m['p99']/1e3:>8.3f} "
              f"{m['w_us']:>10.2f} {m['p_us']:>11.2f} {m['bad']:>7}")
    med[c] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    m = med[c]
    print(f"{c+' med':<10} {m['rps']:>9.0f} {m['p50']/1e3:>8.3f} {m['p99']/1e3:>8.3f} "
          f"{m['w_us']:>10.2f} {m['p_us']:>11.2f} {m['bad']:>7}")

print("\nratios: medians of the medians, and the median of the per-round paired ratios (each")
print("pair ran back to back in the same round). rps = on/off; cpu = off/on (>= target is good)")
for on, off, target in (("auth", "plain", 0.90), ("apikey", "plain", 0.97), ("apikey", "auth", 1.0),
                        ("quota", "plain", 0.95), ("obs", "bare", 0.95), ("spend", "model", 0.97),
                        ("adapt", "plain", 0.909), ("adapt", "model", 0), ("trace01", "full", 0.98),
                        ("trace1", "full", 0)) + tuple((c, c + "@base", 0) for c in configs):
    if on not in med or off not in med:
        continue
    a, b = med[on], med[off]
    ons = [load(f"{on}-{r}") for r in range(1, rounds + 1)]
    offs = [load(f"{off}-{r}") for r in range(1, rounds + 1)]
    prps = [x["rps"] / y["rps"] for x, y in zip(ons, offs)]
    pcpu = [y["w_us"] / x["w_us"] for x, y in zip(ons, offs)]
    print(f"{on+'/'+off:<12} rps {a['rps']/b['rps']:.3f} (paired {statistics.median(prps):.3f})  "
          f"worker-cpu {b['w_us']/a['w_us']:.3f} (paired {statistics.median(pcpu):.3f})  "
          f"proc-cpu {b['p_us']/a['p_us']:.3f}  worker {a['w_us']-b['w_us']:+.2f} us/req  target >= {target}")
    print(f"{'':<12} per-round rps {' '.join(f'{x:.2f}' for x in prps)} | cpu {' '.join(f'{x:.2f}' for x in pcpu)}")
PYEOF
