# Shared helpers of the load scripts (sourced, not run): a temp dir that is removed with every
# process the script started, port checks, packages, CPU accounting from /proc, test tokens.
# shellcheck shell=bash

# lt_setup NAME: $TMP (a fresh temp dir), $PIDS (processes to stop on exit). KEEP=1 keeps the
# temp dir. Call once, before starting anything.
lt_setup() {
    TMP=$(mktemp -d "/tmp/shardgate-$1.XXXXXX")
    PIDS=()
    trap lt_cleanup EXIT INT TERM
}
lt_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n "${KEEP:-}" ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_port PORT [TRIES]: 50 ms a try, 100 tries by default.
wait_port() {
    local _
    for _ in $(seq "${2:-100}"); do port_open "$1" && return 0; sleep 0.05; done
    return 1
}
# ports_free PORT...: exits naming the first port already taken, or given twice (servers that
# set SO_REUSEPORT, as shardgate and HAProxy do, would share it and split the load silently).
ports_free() {
    local p
    for p in "$@"; do
        if port_open "$p"; then echo "port $p is already in use" >&2; exit 1; fi
    done
    p=$(printf '%s\n' "$@" | sort | uniq -d | head -1)
    if [[ -n $p ]]; then echo "port $p is given to two servers" >&2; exit 1; fi
}

# need_pkgs COMMAND...: installs the Debian packages of the same names when one is missing.
need_pkgs() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || [[ -x "/usr/sbin/$c" ]] || missing+=("$c")
    done
    ((${#missing[@]})) || return 0
    apt-get install -y "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
}
# sbin_path COMMAND: its path, also when /usr/sbin is not on PATH.
sbin_path() { command -v "$1" || echo "/usr/sbin/$1"; }

# stat_ticks FILE: utime+stime (clock ticks) of one /proc stat file.
stat_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "$1"; }
# cpu_ticks PID...: utime+stime summed over processes (all their threads); gone ones count 0.
cpu_ticks() {
    local total=0 p
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        total=$((total + $(stat_ticks "/proc/$p/stat")))
    done
    echo "$total"
}
# worker_stat PID: the stat file of the process's first shardgate worker thread (else the
# process's own).
worker_stat() {
    local t
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) == shardgate-w* ]] && { echo "$t/stat"; return; }
    done
    echo "/proc/$1/stat"
}

# mint_hs256 SECRET N: N valid HS256 tokens (kid "hs256", subjects user-0.., 1 h expiry), one a
# line, made with the Python standard library.
mint_hs256() {
    python3 - "$1" "$2" <<'PYEOF'
import base64, hashlib, hmac, json, sys, time
secret, n = sys.argv[1].encode(), int(sys.argv[2])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "hs256"}, separators=(",", ":")).encode())
for i in range(n):
    claims = {"sub": f"user-{i}", "iat": now, "exp": now + 3600, "jti": f"j{i}"}
    si = head + b"." + b64(json.dumps(claims, separators=(",", ":")).encode())
    print((si + b"." + b64(hmac.new(secret, si, hashlib.sha256).digest())).decode())
PYEOF
}

# full_pipeline_toml UPSTREAM_PORT REQUESTS_PER_MINUTE: the gateway's full pipeline after its
# [server] table: two deployments on the mock (`m-a`, `m-b`) split 80/20 by the body's model,
# HS256 JWTs (hs256.key beside the config, kid "hs256") and a per-subject quota. It ends inside
# the quota rule, so a caller may add keys to it (tokens_per_minute = ...) before more tables.
full_pipeline_toml() {
    cat <<EOF
[[deployments]]
model = "m-a"
version = "1.0.0"
endpoints = ["127.0.0.1:$1"]
served_name = "mock-a"
[[deployments]]
model = "m-b"
version = "1.0.0"
endpoints = ["127.0.0.1:$1"]
served_name = "mock-b"
[[routes]]
path = "/*rest"
targets = [{ model = "m-a", weight = 80 }, { model = "m-b", weight = 20 }]
auth = true
[auth]
[[auth.keys]]
kid = "hs256"
alg = "HS256"
secret = { file = "hs256.key" }
[quota]
backend = "local"
[[quota.rules]]
name = "per-subject"
key = "subject"
requests_per_minute = $2
EOF
}

# nginx_proxy_conf PORT UPSTREAM_PORT: nginx as a plain keep-alive reverse proxy (one worker,
# no access log, responses not buffered so streams pass through), its files under $TMP.
nginx_proxy_conf() {
    mkdir -p "$TMP/ngx"
    cat <<EOF
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
        server 127.0.0.1:$2;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
}
