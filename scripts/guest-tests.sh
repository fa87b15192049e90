#!/usr/bin/env bash
# The end-to-end tests that depend on the host (cgroups, limits, isolation) on the hosts users
# have: a cgroup v2 guest with Debian 12's stock kernel (scripts/guest.sh), with the server's
# cgroup in three layouts.
#   bare       the server at the v2 root, its sandboxes under /sys/fs/cgroup/cella-test-*
#   systemd    the server in a delegated service's cgroup (system.slice/cella.service)
#   container  the server at the root of a cgroup namespace that holds processes, as Docker
#              and Kubernetes start a container (it moves them to a leaf itself)
# Under software emulation a guest is ~10x slower than this machine: the test of warm pools
# filling within a deadline is left to the host run.
set -euo pipefail
cd "$(dirname "$0")/.."

binaries=$(cargo test --release -p cella-e2e --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("limits", "isolation"):
        print(m["target"]["name"], m["executable"])
')
limits=$(awk '$1 == "limits" {print $2}' <<< "$binaries")
isolation=$(awk '$1 == "isolation" {print $2}' <<< "$binaries")
[ -n "$limits" ] && [ -n "$isolation" ] || { echo "guest tests: build the e2e tests first" >&2; exit 1; }

run="cd $PWD && export CELLA_LOG=warn"
skip="--skip warm_pools_give_way_to_requests_at_the_sandbox_cap"

bare="$run && $limits --test-threads=2 $skip && $isolation --test-threads=2"

systemd="$run
echo +memory +pids +cpu > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/system.slice/cella.service
echo +memory +pids +cpu > /sys/fs/cgroup/system.slice/cgroup.subtree_control
echo \$\$ > /sys/fs/cgroup/system.slice/cella.service/cgroup.procs
grep -qx '0::/system.slice/cella.service' /proc/self/cgroup
$limits --test-threads=2 runtimes memory_limit fork_bomb infinite_loop"

container="$run
mkdir /sys/fs/cgroup/pod
echo \$\$ > /sys/fs/cgroup/pod/cgroup.procs
echo +memory +pids +cpu > /sys/fs/cgroup/cgroup.subtree_control
unshare -Cm bash -c 'umount /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && grep -qx 0::/ /proc/self/cgroup \
  && $limits --test-threads=2 runtimes memory_limit fork_bomb infinite_loop'"

status=0
for layout in bare systemd container; do
  echo "== guest, $layout layout"
  if ! scripts/guest.sh "${!layout}"; then
    echo "== guest, $layout layout: FAILED"
    status=1
  fi
done
exit $status
