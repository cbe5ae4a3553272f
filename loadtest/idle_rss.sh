#!/usr/bin/env bash
# Memory per idle keep-alive client connection: shardgate's VmRSS with N idle connections
# open, against its baseline after a short warmup.
#
# Starts mock-upstream and shardgate (one worker on GW_CORE), sends WARMUP requests on one
# connection (so the upstream pool and first-request allocations exist), reads the baseline
# VmRSS, then opens N connections, sends one request on each (a real keep-alive connection
# that has served a request) and holds them all open while VmRSS is read again; then closes
# them and reads it once more (is the memory given back?). ROUNDS repeats the open/close
# cycle: a second round that costs no more than the first shows retention, not a leak.
#
# Environment knobs (defaults): CONNS=10000 WARMUP=200 HOLD=2 ROUNDS=2 GW_CORE=0 UP_CORE=1
# UP_PORT=9100 GW_PORT=8180 SKIP_BUILD=1 (use existing release binaries)
# SHARDGATE=target/release/shardgate (the binary measured).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh

CONNS=${CONNS:-10000}
WARMUP=${WARMUP:-200}
HOLD=${HOLD:-2}
ROUNDS=${ROUNDS:-2}
GW_CORE=${GW_CORE:-0}
UP_CORE=${UP_CORE:-1}
UP_PORT=${UP_PORT:-9100}
GW_PORT=${GW_PORT:-8180}

# Client sockets + the gateway's client and upstream sockets, with headroom.
want=$((CONNS + 1024))
if (($(ulimit -n) < want)); then
    ulimit -n "$want" || { echo "cannot raise ulimit -n to $want (hard: $(ulimit -Hn))" >&2; exit 1; }
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --quiet --release -p loadtest --bin mock-upstream
    cargo build --quiet --release -p shardgate --bin shardgate
fi

lt_setup idle-rss

cat >"$TMP/shardgate.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
workers = [$GW_CORE]
pin = true
[limits]
max_connections_per_worker = $((CONNS + 100))
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:$UP_PORT"]
[[routes]]
path = "/*rest"
upstream = "mock"
EOF

taskset -c "$UP_CORE" target/release/mock-upstream --listen "127.0.0.1:$UP_PORT" --threads 1 \
    >"$TMP/mock.log" 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT" || { echo "mock-upstream did not start" >&2; exit 1; }
taskset -c "$GW_CORE" "${SHARDGATE:-target/release/shardgate}" --config "$TMP/shardgate.toml" >"$TMP/sg.log" 2>&1 &
SG_PID=$!
PIDS+=("$SG_PID")
wait_port "$GW_PORT" || { echo "shardgate did not start:" >&2; cat "$TMP/sg.log" >&2; exit 1; }

taskset -c "$UP_CORE" python3 - "$GW_PORT" "$SG_PID" "$CONNS" "$WARMUP" "$HOLD" "$ROUNDS" <<'PYEOF'
import socket, sys, time

port, pid, conns, warmup, hold, rounds = (int(a) for a in sys.argv[1:])
REQ = (b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")

def status_kib(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def rss_kib():
    return status_kib("VmRSS")

def anon_kib():
    """The heap and stacks: RssAnon (VmRSS less the binary's mapped pages)."""
    return status_kib("RssAnon")

def exchange(s):
    """Sends one request and reads one Content-Length response."""
    s.sendall(REQ)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before a response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed mid-body")
        body += chunk

w = socket.create_connection(("127.0.0.1", port))
for _ in range(warmup):
    exchange(w)
time.sleep(0.5)
base = rss_kib()
base_anon = anon_kib()

print(f"shardgate VmRSS baseline:    {base / 1024:8.1f} MiB (after {warmup} requests; anonymous {base_anon / 1024:.1f} MiB)")
for r in range(rounds):
    socks = []
    t0 = time.time()
    for i in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        exchange(s)
        socks.append(s)
    opened = time.time() - t0
    time.sleep(hold)
    held = rss_kib()
    held_anon = anon_kib()
    # Every connection is still alive: one more request on the first and the last.
    exchange(socks[0])
    exchange(socks[-1])
    # Close them all (the warmup connection stays) and let the worker notice.
    for s in socks:
        s.close()
    socks = []
    time.sleep(hold)
    exchange(w)
    time.sleep(0.5)
    after = rss_kib()
    after_anon = anon_kib()
    delta = held - base
    print(f"round {r + 1}: {conns} idle keep-alive connections (opened and used in {opened:.1f} s)")
    print(f"  shardgate VmRSS with conns:  {held / 1024:8.1f} MiB (anonymous {held_anon / 1024:.1f} MiB)")
    print(f"  added:                       {delta / 1024:8.1f} MiB = {delta * 1024 / conns:.0f} bytes per connection")
    print(f"  after they closed:           {after / 1024:8.1f} MiB (anonymous {after_anon / 1024:.1f} MiB; "
          f"{(after - base) / 1024:.1f} MiB above baseline)")
PYEOF
