#!/usr/bin/env bash
# Starts a release server on a free port with a scratch data dir, runs the benchmark against
# it, and stops it. Extra arguments go to cella-bench (e.g. --suites engine --scale 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/cella-bench.XXXXXX)
CELLA_CGROUP_PARENT=cella-bench CELLA_UID_BASE=900000 CELLA_LOG=warn ./target/release/cella serve --listen "127.0.0.1:$port" --data-dir "$data" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# The Python zygotes warm up in the first seconds (imports and matplotlib's font cache): the
# figures are of a warm server, not of its start.
sleep 8
mkdir -p bench/results
./target/release/cella-bench --server "http://127.0.0.1:$port" "$@" | tee "bench/results/$(date +%Y%m%d-%H%M%S).txt"
