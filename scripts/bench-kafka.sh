#!/usr/bin/env bash
# `make bench-kafka`: the benchmark against a throwaway single-node Apache Kafka (scripts/kafka/kraft.sh)
# and Debian's redis-server, both on free loopback ports and both stopped on exit.
#   scripts/bench-kafka.sh PYTHON [tripwire bench flags...]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=$1; shift
command -v redis-server >/dev/null || { echo "bench-kafka needs redis-server (apt-get install redis-server)" >&2; exit 1; }

work=$(mktemp -d -t tripwire-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Three distinct free ports: the sockets are held together while the kernel picks them.
read -r kport cport rport < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

"$HERE/kafka/kraft.sh" fetch
CONTROLLER_PORT=$cport "$HERE/kafka/kraft.sh" start "$kport" "$work/kafka" >"$work/kafka.out" 2>&1 &
pids+=($!)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.out" 2>&1 &
pids+=($!)

"$PY" -m streams bench --bootstrap "127.0.0.1:$kport" --redis "redis://127.0.0.1:$rport/0" "$@"
