#!/usr/bin/env bash
# The end-to-end tests that depend on the host (cgroups, limits, isolation, recovery, the
# language runtimes, network egress) on the hosts users have: a cgroup v2 guest with Debian
# 12's stock kernel (scripts/guest.sh), with the server's cgroup in three layouts.
#   bare       the server at the v2 root, its sandboxes under /sys/fs/cgroup/cella-test-*:
#              every host-dependent suite
#   systemd    the server in a delegated service's cgroup (system.slice/cella.service)
#   container  the server at the root of a cgroup namespace that holds processes, as Docker
#              and Kubernetes start a container (it moves them to a leaf itself)
#              (these two: what the layout changes, the limits and the runtimes that read them)
# Under software emulation a guest runs several times slower than this machine: the tests'
# bounds on "promptly" scale by CELLA_TEST_SLOWDOWN, and the one test of warm pools filling
# within a deadline is left to the host run. Ends with each layout's counts.
set -euo pipefail
cd "$(dirname "$0")/.."

suites=(limits isolation api recovery runs network)
binaries=$(cargo test --release -p cella-e2e --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
')
declare -A binary
for suite in "${suites[@]}"; do
  binary[$suite]=$(awk -v s="$suite" '$1 == s {print $2}' <<< "$binaries")
  [ -n "${binary[$suite]}" ] || { echo "guest tests: no test binary for $suite" >&2; exit 1; }
done

# Slow host, slow calls: what a test leaves to the server's defaults gets the time it needs.
run="cd $PWD && export CELLA_LOG=warn CELLA_TEST_SLOWDOWN=${CELLA_TEST_SLOWDOWN:-6} CELLA_SANDBOX__EXEC_TIMEOUT_SECS=600"
limits="${binary[limits]} --test-threads=2"

bare="$run
status=0
$limits --skip warm_pools_give_way_to_requests_at_the_sandbox_cap || status=1"
for suite in isolation api recovery runs network; do
  bare+="
${binary[$suite]} --test-threads=2 || status=1"
done
bare+="
exit \$status"

layout_tests="runtimes memory_limit fork_bomb infinite_loop process_limit files_filling"

systemd="$run
echo +memory +pids +cpu > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/system.slice/cella.service
echo +memory +pids +cpu > /sys/fs/cgroup/system.slice/cgroup.subtree_control
echo \$\$ > /sys/fs/cgroup/system.slice/cella.service/cgroup.procs
grep -qx '0::/system.slice/cella.service' /proc/self/cgroup
$limits $layout_tests"

container="$run
mkdir /sys/fs/cgroup/pod
echo \$\$ > /sys/fs/cgroup/pod/cgroup.procs
echo +memory +pids +cpu > /sys/fs/cgroup/cgroup.subtree_control
unshare -Cm bash -c 'umount /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && grep -qx 0::/ /proc/self/cgroup \
  && $limits $layout_tests'"

status=0
summary=()
for layout in bare systemd container; do
  echo "== guest, $layout layout"
  log=$(mktemp)
  started=$SECONDS
  if ! scripts/guest.sh "${!layout}" 2>&1 | tee "$log"; then
    status=1
  fi
  # libtest's lines, without the colours of the guest's console.
  counts=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed", p, f}')
  rm -f "$log"
  summary+=("guest, $layout layout: $counts in $((SECONDS - started)) s")
done
printf '== %s\n' "${summary[@]}"
exit $status
