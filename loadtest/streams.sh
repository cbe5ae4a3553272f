#!/usr/bin/env bash
# Streams at scale (issue #13): STREAMS concurrent SSE streams of EVENTS events GAP_MS apart,
# through shardgate's full pipeline (JWT HS256 per request, the body's `model` split 80/20 over
# two deployments, a per-subject quota), with two references measured in the same run and
# alternated round by round: the same client straight to the mock ("direct": what the mock and
# the client add on their shared core) and nginx as a plain unbuffered proxy on the same core
# as the gateway. Prints, per server and round, whether every stream arrived whole and the
# client-side inter-event gaps (p50, p99, p99.9, max), then the medians over the rounds and
# what each proxy adds to the direct run's p99 and max (targets: max <= GAP_MS + 5 ms, added
# p99 <= 1 ms), and each proxy's RSS before and at its peak. Run it on a quiet machine.
#
# Environment knobs (defaults): STREAMS=1000 EVENTS=64 GAP_MS=20 ROUNDS=3 SUBJECTS=100
# GW_CORE=0 UP_CORE=1 UP_PORT=9100 GW_PORT=8180 NGX_PORT=8181 NGINX=1 (0: skip nginx)
# CLIENT_ARGS=<more streams-client flags, e.g. --close-each or --stagger-ms 0>
# SERVER_EXTRA=<more [server] lines, e.g. busy_poll_us = 50> SKIP_BUILD=1 (use existing
# release binaries) SHARDGATE=target/release/shardgate PERF_GW=<file> (perf record the gateway
# during its last round)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

STREAMS=${STREAMS:-1000}
EVENTS=${EVENTS:-64}
GAP_MS=${GAP_MS:-20}
ROUNDS=${ROUNDS:-3}
SUBJECTS=${SUBJECTS:-100}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9100}
GW_PORT=${GW_PORT:-8180}
NGX_PORT=${NGX_PORT:-8181}
PROFILE_DIR=${PROFILE_DIR:-target/release}
read -r -a CLIENT_EXTRA <<<"${CLIENT_ARGS:-}"

# Every stream holds a client socket, a proxy socket each way and an upstream socket.
ulimit -n "$(( STREAMS * 4 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p loadtest --bins
    cargo build --quiet --release -p shardgate --bin shardgate
fi
SHARDGATE=${SHARDGATE:-$PROFILE_DIR/shardgate}
MOCK=$PROFILE_DIR/mock-upstream
CLIENT=$PROFILE_DIR/streams
SERVERS=(direct shardgate)
if [[ ${NGINX:-1} != 0 ]]; then
    need_pkgs nginx || true
    NGINX_BIN=$(sbin_path nginx)
    if [[ -x $NGINX_BIN ]]; then
        SERVERS=(direct nginx shardgate)
    else
        echo "nginx is not installed and could not be: measuring without it" >&2
    fi
fi

lt_setup streams
ports_free "$UP_PORT" "$GW_PORT" "$NGX_PORT"

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
MOCK_PID=$!
PIDS+=($MOCK_PID)
wait_port "$UP_PORT" 200 || { echo "mock-upstream did not start" >&2; exit 1; }
taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_port "$GW_PORT" 200 || { echo "shardgate did not start" >&2; cat "$TMP/gateway.log" >&2; exit 1; }
NGX_PID=
if [[ " ${SERVERS[*]} " == *" nginx "* ]]; then
    nginx_proxy_conf "$NGX_PORT" "$UP_PORT" >"$TMP/nginx.conf"
    taskset -c "$GW_CORE" "$NGINX_BIN" -c "$TMP/nginx.conf" -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
    NGX_PID=$!
    PIDS+=($NGX_PID)
    wait_port "$NGX_PORT" 200 || { echo "nginx did not start" >&2; cat "$TMP/nginx-error.log" >&2; exit 1; }
fi

port_of() { case $1 in direct) echo "$UP_PORT" ;; nginx) echo "$NGX_PORT" ;; shardgate) echo "$GW_PORT" ;; esac; }
# The process whose RSS is reported (nginx: its one worker).
pid_of() {
    case $1 in
        shardgate) echo "$GW_PID" ;;
        nginx) pgrep -P "$NGX_PID" | head -1 ;;
        *) echo "" ;;
    esac
}

echo "== $STREAMS streams x $EVENTS events, $GAP_MS ms apart; servers: ${SERVERS[*]}; $ROUNDS rounds;" \
    "shardgate: JWT + split 80/20 + quota (${SERVER_EXTRA:-defaults}); client: ${CLIENT_ARGS:-defaults}"
for round in $(seq "$ROUNDS"); do
    for s in "${SERVERS[@]}"; do
        pid=$(pid_of "$s")
        perf_pid=
        if [[ -n "${PERF_GW:-}" && $s == shardgate && $round == "$ROUNDS" ]]; then
            perf record -q -F 4999 -g -p "$GW_PID" -o "$PERF_GW" 2>/dev/null &
            perf_pid=$!
            sleep 0.5
        fi
        ticks0=$( [[ -n $pid ]] && stat_ticks "/proc/$pid/stat" || echo 0)
        mock0=$(stat_ticks "/proc/$MOCK_PID/stat")
        out=$(taskset -c "$UP_CORE" "$CLIENT" --addr "127.0.0.1:$(port_of "$s")" --streams "$STREAMS" \
            --events "$EVENTS" --gap-ms "$GAP_MS" --tokens "$TMP/tokens.txt" \
            ${pid:+--gateway-pid "$pid"} "${CLIENT_EXTRA[@]}" 2>&1) || true
        if [[ -n $perf_pid ]]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
        fi
        ticks1=$( [[ -n $pid ]] && stat_ticks "/proc/$pid/stat" || echo 0)
        mock1=$(stat_ticks "/proc/$MOCK_PID/stat")
        cpu_ms=$(( (ticks1 - ticks0) * 1000 / $(getconf CLK_TCK) ))
        [[ -n $pid ]] && out+=$'\n'"proxy CPU: $cpu_ms ms"
        out+=$'\n'"mock CPU: $(( (mock1 - mock0) * 1000 / $(getconf CLK_TCK) )) ms"
        echo "$out" | sed "s/^/round $round $s: /"
        echo "$out" | awk -v s="$s" -v r="$round" '
            /^streams:/ { whole = substr($3, 2) }
            /^inter-event gap/ { for (i = 1; i <= NF; i++) if ($i ~ /^p50|^p99|^p99.9|^max/) v[$i] = $(i + 1) }
            /^gateway RSS/ { before = $3; peak = $6 }
            /^proxy CPU/ { cpu = $3 }
            /^mock CPU/ { mock = $3 }
            END { print s, r, whole, v["p50"], v["p99"], v["p99.9"], v["max"], before ? before : "-", peak ? peak : "-", cpu ? cpu : "-", mock }' >>"$TMP/rows"
        sleep 0.5
    done
done

echo
python3 - "$TMP/rows" "$GAP_MS" "$STREAMS" <<'PYEOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
gap, streams = float(sys.argv[2]), int(sys.argv[3])
order = []
by = {}
for r in rows:
    s = r[0]
    if s not in by:
        order.append(s)
        by[s] = []
    by[s].append(r)
def med(s, i):
    vals = [float(r[i]) for r in by[s] if len(r) > i and r[i] not in ("", "-")]
    return statistics.median(vals) if vals else float("nan")
print("medians over %d rounds (ms; whole = streams complete in every round)" % len(by[order[0]]))
print("| server | whole | p50 | p99 | p99.9 | max | p99 over direct | max over direct | max over nominal | RSS before / peak MiB | proxy CPU ms / round | mock CPU ms / round |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
for s in order:
    whole = all(len(r) > 2 and r[2] == str(streams) for r in by[s])
    p99, mx = med(s, 4), med(s, 6)
    over = lambda v, i: ("%+.2f" % (v - med("direct", i))) if s != "direct" and "direct" in by else ""
    rss = cpu = ""
    if s != "direct":
        rss = "%.0f / %.0f" % (med(s, 7), med(s, 8))
        cpu = "%.0f" % med(s, 9)
    print("| %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %s | %+.2f | %s | %s | %.0f |" % (
        s, "yes" if whole else "NO", med(s, 3), p99, med(s, 5), mx,
        over(p99, 4), over(mx, 6), mx - gap, rss, cpu, med(s, 10)))
print("targets (shardgate): max <= gap + 5 ms; p99 added over direct <= 1 ms")
PYEOF
