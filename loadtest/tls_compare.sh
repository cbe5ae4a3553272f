#!/usr/bin/env bash
# TLS termination benchmark: shardgate's TLS listener (full pipeline: route, proxy to the mock)
# vs nginx `listen ... ssl` proxying to the same mock, on the same ECDSA P-256 certificate,
# each on one pinned core (GW_CORE), the mock on UP_CORE, driven by wrk (OpenSSL) on UP_CORE.
#
# Two modes per server, servers in alternation, ROUNDS rounds, medians reported:
# - keepalive: CONNS keep-alive TLS connections, GET /v1/models; req/s and the server's CPU
#   µs per request (utime+stime from /proc over the run, all threads/processes).
# - handshake: every request on a new connection (`Connection: close`; wrk does not resume
#   sessions), so req/s is full TLS handshakes/s on one core, and CPU µs per handshake.
# Then the ratios shardgate/nginx. The issue's targets: CPU µs/request ≤ 1.0× nginx's, new
# handshakes per second per core ≥ 1.0× nginx's.
#
# Knobs (defaults): DURATION=10 ROUNDS=3 CONNS=32 HS_CONNS=8 GW_CORE=0 UP_CORE=1 UP_PORT=9000
# GW_PORT=8443 NGX_PORT=8444 PROFILE=release (debug: for a smoke test only) SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
HS_CONNS=${HS_CONNS:-8}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9000}
GW_PORT=${GW_PORT:-8443}
NGX_PORT=${NGX_PORT:-8444}
PROFILE=${PROFILE:-release}

need_pkgs nginx wrk openssl
NGINX=$(sbin_path nginx)

if [[ -z "${SKIP_BUILD:-}" ]]; then
    if [[ "$PROFILE" == release ]]; then
        cargo build --quiet --release -p loadtest --bin mock-upstream -p shardgate --bin shardgate
    else
        cargo build --quiet -p loadtest --bin mock-upstream -p shardgate --bin shardgate
    fi
fi
MOCK=target/$PROFILE/mock-upstream
SHARDGATE=${SHARDGATE:-target/$PROFILE/shardgate}

lt_setup tls

# One ECDSA P-256 certificate for both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

cat >"$TMP/shardgate.toml" <<EOF
[server]
listen = "127.0.0.1:$((GW_PORT + 10))"
workers = [$GW_CORE]
pin = true
[server.tls]
listen = "127.0.0.1:$GW_PORT"
cert_file = "$TMP/cert.pem"
key_file = "$TMP/key.pem"
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
upstream = "mock"
EOF

mkdir -p "$TMP/ngx"
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMP/ngx/body;
    proxy_temp_path $TMP/ngx/proxy;
    fastcgi_temp_path $TMP/ngx/fastcgi;
    uwsgi_temp_path $TMP/ngx/uwsgi;
    scgi_temp_path $TMP/ngx/scgi;
    keepalive_requests 1000000;
    upstream mock {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF

taskset -c "$UP_CORE" "$MOCK" --listen "127.0.0.1:$UP_PORT" --threads 1 >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" 200 || { echo "mock-upstream did not start" >&2; exit 1; }
taskset -c "$GW_CORE" "$NGINX" -c "$TMP/nginx.conf" -g 'daemon off;' >"$TMP/nginx.log" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_port "$NGX_PORT" 200 || { echo "nginx did not start:" >&2; cat "$TMP/nginx-error.log" >&2; exit 1; }
taskset -c "$GW_CORE" "$SHARDGATE" --config "$TMP/shardgate.toml" >"$TMP/shardgate.log" 2>&1 &
SG_PID=$!
PIDS+=("$SG_PID")
wait_port "$GW_PORT" 200 || { echo "shardgate did not start:" >&2; cat "$TMP/shardgate.log" >&2; exit 1; }

pids_of() {
    case "$1" in
    shardgate) echo "$SG_PID" ;;
    nginx) echo "$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')" ;;
    esac
}
port_of() { [[ "$1" == shardgate ]] && echo "$GW_PORT" || echo "$NGX_PORT"; }
HZ=$(getconf CLK_TCK)

# run SERVER MODE -> "req_per_s cpu_us_per_req"
run() {
    local server=$1 mode=$2 port pids before out reqs ticks
    port=$(port_of "$server")
    pids=$(pids_of "$server")
    local args=(-t 1 -c "$CONNS" -d "${DURATION}s")
    [[ "$mode" == handshake ]] && args=(-t 1 -c "$HS_CONNS" -d "${DURATION}s" -H "Connection: close")
    before=$(cpu_ticks $pids)
    out=$(taskset -c "$UP_CORE" wrk "${args[@]}" "https://localhost:$port/v1/models")
    ticks=$(($(cpu_ticks $pids) - before))
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
        echo "$server $mode: errors: $(echo "$out" | grep -E 'Non-2xx|Socket errors')" >&2
    fi
    awk -v r="$reqs" -v t="$ticks" -v d="$DURATION" -v hz="$HZ" \
        'BEGIN { printf "%.0f %.1f\n", r / d, (r > 0 ? t * 1e6 / hz / r : 0) }'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }

for round in $(seq "$ROUNDS"); do
    for mode in keepalive handshake; do
        for server in shardgate nginx; do
            read -r rps us < <(run "$server" "$mode")
            echo "$rps" >>"$TMP/$server.$mode.rps"
            echo "$us" >>"$TMP/$server.$mode.us"
            echo "round $round $mode $server: $rps req/s, $us CPU µs/req" >&2
        done
    done
done

printf '\n%-10s %-10s %12s %14s\n' mode server "req/s" "CPU µs/req"
for mode in keepalive handshake; do
    for server in shardgate nginx; do
        printf '%-10s %-10s %12s %14s\n' "$mode" "$server" \
            "$(median <"$TMP/$server.$mode.rps")" "$(median <"$TMP/$server.$mode.us")"
    done
done
echo
for mode in keepalive handshake; do
    awk -v m="$mode" -v sr="$(median <"$TMP/shardgate.$mode.rps")" -v nr="$(median <"$TMP/nginx.$mode.rps")" \
        -v su="$(median <"$TMP/shardgate.$mode.us")" -v nu="$(median <"$TMP/nginx.$mode.us")" \
        'BEGIN { printf "%-10s shardgate/nginx: req/s %.2fx, CPU µs/req %.2fx\n", m, (nr ? sr/nr : 0), (nu ? su/nu : 0) }'
done
