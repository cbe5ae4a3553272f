#!/usr/bin/env bash
# Endpoint choice under load: one upstream of three mock-upstream endpoints, one of them
# SLOW_FACTOR times slower than the other two, driven in a closed loop (CONNS connections) once
# per `balance` policy, policies alternating inside every round:
#   round_robin     each endpoint in turn
#   least_requests  fewest in flight
#   p2c_ewma        two at random, the lower (in flight + 1) x EWMA time to first byte
#   affinity        consistent hashing with bounded loads (load_factor LOAD_FACTOR), keyed by
#                   the JWT subject; loadgen rotates TOKENS tokens of distinct subjects
# Every gateway runs with the same [auth] (one HS256 key, tokens minted here with the Python
# standard library), so the policies differ in nothing but the choice.
# Per run: req/s, p50/p99/p99.9 of the total latency, the share of requests each endpoint
# served (from each mock's `mock_requests_total` on GET /metrics, before and after the run),
# non-2xx and transport errors. Table: medians over rounds, and each policy's req/s and p99
# against round_robin's in the same round (paired ratios, median).
#
# Knobs (defaults): DURATION=10 WARMUP=2 ROUNDS=3 CONNS=32 FAST_MS=10 SLOW_FACTOR=5
# LOAD_FACTOR=1.25 TOKENS=200 WORKERS=1 GW_CORES=0 UP_CORE=1 PORT0=9111 (mocks PORT0..+2)
# GW_PORT0=8191 (gateways GW_PORT0..+3) POLICIES="round_robin least_requests p2c_ewma affinity"
# SKIP_BUILD=1 KEEP=1 (keep the temp dir) BIN=target/release (where the three binaries are;
# BIN=target/debug SKIP_BUILD=1 smoke-tests the script). WORKERS=2 GW_CORES=0,1 spreads the
# gateway over two cores (then the fleet view merges the workers' loads).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
FAST_MS=${FAST_MS:-10}
SLOW_FACTOR=${SLOW_FACTOR:-5}
LOAD_FACTOR=${LOAD_FACTOR:-1.25}
TOKENS=${TOKENS:-200}
WORKERS=${WORKERS:-1}
GW_CORES=${GW_CORES:-0}
UP_CORE=${UP_CORE:-1}
PORT0=${PORT0:-9111}
GW_PORT0=${GW_PORT0:-8191}
read -r -a POLICIES <<<"${POLICIES:-round_robin least_requests p2c_ewma affinity}"
SLOW_MS=$((FAST_MS * SLOW_FACTOR))
MOCK_PORTS=("$PORT0" "$((PORT0 + 1))" "$((PORT0 + 2))")
MOCK_NAMES=(fast-a fast-b slow)

BIN=${BIN:-target/release}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p shardgate -p loadtest
fi
LOADGEN=$BIN/loadgen
MOCK=$BIN/mock-upstream
SHARDGATE=${SHARDGATE:-$BIN/shardgate}

lt_setup balance
port_of() {
    local i
    for i in "${!POLICIES[@]}"; do [[ ${POLICIES[$i]} == "$1" ]] && echo $((GW_PORT0 + i)); done
}
ports_free "${MOCK_PORTS[@]}" $(for c in "${POLICIES[@]}"; do port_of "$c"; done)

printf '%s' '{"model":"mock-gpt","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' >"$TMP/body.json"

# HS256 secret and TOKENS valid tokens (distinct sub, 1 h expiry).
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SECRET" >"$TMP/hs256.key"
mint_hs256 "$SECRET" "$TOKENS" >"$TMP/tokens.txt"

config() { # POLICY
    local policy=$1 keys
    keys="balance = \"$policy\""
    [[ $policy == affinity ]] &&
        keys+=$'\n'"affinity = { key = \"subject\", load_factor = $LOAD_FACTOR }"
    cat <<EOF
[server]
listen = "127.0.0.1:$(port_of "$policy")"
workers = [$GW_CORES]
pin = true
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:${MOCK_PORTS[0]}", "127.0.0.1:${MOCK_PORTS[1]}", "127.0.0.1:${MOCK_PORTS[2]}"]
$keys
[[routes]]
path = "/v1/*rest"
upstream = "mock"
auth = true
[auth]
[[auth.keys]]
kid = "hs256"
alg = "HS256"
secret = { file = "hs256.key" }
EOF
}

for i in 0 1 2; do
    latency=$FAST_MS
    [[ ${MOCK_NAMES[$i]} == slow ]] && latency=$SLOW_MS
    taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:${MOCK_PORTS[$i]}" --threads 1 \
        --model "${MOCK_NAMES[$i]}" --latency-ms "$latency" >"$TMP/mock-$i.log" 2>&1 &
    PIDS+=($!)
    wait_port "${MOCK_PORTS[$i]}" || { echo "mock ${MOCK_NAMES[$i]} did not start" >&2; exit 1; }
done

if [[ $WORKERS != "$(tr ',' '\n' <<<"$GW_CORES" | wc -l)" ]]; then
    echo "WORKERS=$WORKERS but GW_CORES=$GW_CORES lists another number of cores" >&2
    exit 1
fi
GW_SET=$GW_CORES
for c in "${POLICIES[@]}"; do
    config "$c" >"$TMP/$c.toml"
    "$SHARDGATE" check --config "$TMP/$c.toml" >/dev/null || { echo "config $c is invalid" >&2; exit 1; }
    taskset -c "$GW_SET" "$SHARDGATE" --config "$TMP/$c.toml" >"$TMP/$c.log" 2>&1 &
    PIDS+=($!)
    wait_port "$(port_of "$c")" || { echo "shardgate $c did not start:" >&2; tail -5 "$TMP/$c.log" >&2; exit 1; }
done

# Requests each mock has served (its GET /metrics counter, this scrape included).
served() {
    local p
    for p in "${MOCK_PORTS[@]}"; do
        curl -s "http://127.0.0.1:$p/metrics" | awk '/^mock_requests_total /{print $2}'
    done | paste -sd' '
}

# Sanity: every gateway answers 200 with a token.
TOKEN1=$(head -1 "$TMP/tokens.txt")
for c in "${POLICIES[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -H "authorization: Bearer $TOKEN1" --data-binary @"$TMP/body.json" \
        "http://127.0.0.1:$(port_of "$c")/v1/chat/completions" || true)
    [[ $code == 200 ]] || { echo "$c answered $code" >&2; tail -5 "$TMP/$c.log" >&2; exit 1; }
done

run() { # NAME POLICY
    local name=$1 c=$2
    served >"$TMP/$name.before"
    timeout $((DURATION + WARMUP + 30)) taskset -c "$UP_CORE" "$LOADGEN" \
        --url "http://127.0.0.1:$(port_of "$c")/v1/chat/completions" --method POST \
        --body "$TMP/body.json" -H 'content-type: application/json' \
        --token-file "$TMP/tokens.txt" --threads 1 --connections "$CONNS" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$TMP/$name.json" >"$TMP/$name.txt"
    served >"$TMP/$name.after"
}

echo "balance_run: ${POLICIES[*]} | closed loop, $CONNS conns, ${DURATION}s + ${WARMUP}s warmup," \
    "$ROUNDS rounds | endpoints ${FAST_MS}/${FAST_MS}/${SLOW_MS} ms | gateway: $WORKERS worker(s)" \
    "on cores $GW_CORES; mocks and loadgen on core $UP_CORE"
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$ROUNDS"); do
    # Rotate the starting policy each round so no policy always runs first.
    for k in "${!POLICIES[@]}"; do
        c=${POLICIES[$(((k + r - 1) % ${#POLICIES[@]}))]}
        run "$c-$r" "$c"
    done
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$TMP" "$ROUNDS" "${POLICIES[@]}" <<'PYEOF'
import json, os, statistics, sys
tmp, rounds, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def load(name):
    j = json.load(open(os.path.join(tmp, name + ".json")))
    t = j["latency_us"]["total"]
    before = [int(x) for x in open(os.path.join(tmp, name + ".before")).read().split()]
    after = [int(x) for x in open(os.path.join(tmp, name + ".after")).read().split()]
    # One scrape of each mock falls between the two counts.
    got = [a - b - 1 for a, b in zip(after, before)]
    total = max(sum(got), 1)
    bad = sum(j["errors"].values()) + sum(v for k, v in j["status"].items() if not k.startswith("2"))
    return {"rps": j["rps"], "p50": t["p50"], "p99": t["p99"], "p999": t["p99.9"],
            "slow": 100.0 * got[2] / total, "fast_a": 100.0 * got[0] / total,
            "fast_b": 100.0 * got[1] / total, "bad": bad}

head = (f"{'run':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'fast-a %':>9} {'fast-b %':>9} {'slow %':>7} {'non2xx':>7}")
print("\n" + head)
runs = {c: [load(f"{c}-{r}") for r in range(1, rounds + 1)] for c in policies}
med = {}
for c in policies:
    for r, m in enumerate(runs[c], 1):
        print(f"{c+' #'+str(r):<18} {m['rps']:>8.0f} {m['p50']/1e3:>8.2f} {m['p99']/1e3:>8.2f} "
              f"{m['p999']/1e3:>9.2f} {m['fast_a']:>9.1f} {m['fast_b']:>9.1f} {m['slow']:>7.1f} {m['bad']:>7}")
    med[c] = {k: statistics.median(x[k] for x in runs[c]) for k in runs[c][0]}

print("\nmedians over rounds, side by side:")
print(head.replace("run ", "policy", 1))
for c in policies:
    m = med[c]
    print(f"{c:<18} {m['rps']:>8.0f} {m['p50']/1e3:>8.2f} {m['p99']/1e3:>8.2f} {m['p999']/1e3:>9.2f} "
          f"{m['fast_a']:>9.1f} {m['fast_b']:>9.1f} {m['slow']:>7.1f} {m['bad']:>7}")
if "round_robin" in policies:
    print("\nagainst round_robin in the same round (median of the per-round ratios):")
    for c in policies:
        if c == "round_robin":
            continue
        rps = [x["rps"] / y["rps"] for x, y in zip(runs[c], runs["round_robin"])]
        p99 = [x["p99"] / y["p99"] for x, y in zip(runs[c], runs["round_robin"])]
        print(f"{c:<18} req/s {statistics.median(rps):.2f}x   p99 {statistics.median(p99):.2f}x   "
              f"(rounds: {' '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(rps, p99))})")
PYEOF
