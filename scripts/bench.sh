#!/usr/bin/env bash
# Starts a release server on a free port with a scratch data dir, and a registry on loopback
# holding a ~30 MB image (bench/big:1) for the images suite; runs the benchmark against them,
# and stops both. Extra arguments go to cella-bench (e.g. --suites engine --scale 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
registry_port=$(free_port)
data=$(mktemp -d /tmp/cella-bench.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT

# The registry, and the image: a static busybox and 30 MB of random bytes.
cat > "$data/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $data/registry}}
http: {addr: 127.0.0.1:$registry_port}
YML
docker-registry serve "$data/registry.yml" >/dev/null 2>&1 &
pids+=($!)
umoci init --layout "$data/layout" >/dev/null
umoci new --image "$data/layout:big"
umoci unpack --image "$data/layout:big" "$data/bundle" >/dev/null
mkdir -p "$data/bundle/rootfs/bin" "$data/bundle/rootfs/mnt"
cp /bin/busybox "$data/bundle/rootfs/bin/"
for applet in sh head; do ln -s busybox "$data/bundle/rootfs/bin/$applet"; done
head -c 30000000 /dev/urandom > "$data/bundle/rootfs/payload"
umoci repack --image "$data/layout:big" "$data/bundle"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$registry_port/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --dest-tls-verify=false "oci:$data/layout:big" "docker://127.0.0.1:$registry_port/bench/big:1"
printf '[images.registries."127.0.0.1:%s"]\ninsecure = true\n' "$registry_port" > "$data/cella.toml"

CELLA_CONFIG="$data/cella.toml" CELLA_CGROUP_PARENT=cella-bench CELLA_UID_BASE=900000 CELLA_LOG=warn \
  ./target/release/cella serve --listen "127.0.0.1:$port" --data-dir "$data/server" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# The Python zygotes warm up in the first seconds (imports and matplotlib's font cache): the
# figures are of a warm server, not of its start. A slow machine (the qemu guest of
# scripts/guest.sh) sets a longer warm-up.
sleep "${BENCH_WARMUP_SECS:-8}"
mkdir -p bench/results
./target/release/cella-bench --server "http://127.0.0.1:$port" --registry "127.0.0.1:$registry_port" "$@" \
  | tee "bench/results/$(date +%Y%m%d-%H%M%S).txt"
