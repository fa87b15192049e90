#!/usr/bin/env bash
# Runs a command in a qemu guest that boots Debian 12's stock kernel (from its package,
# extracted, never installed here) with cgroup v2 alone: a small busybox initramfs mounts this
# machine's root read-only over 9p under a tmpfs overlay, then the command runs as root in it.
# Exits with the command's status. Software emulation (TCG): this machine's /dev/kvm cannot
# boot a stock kernel; where KVM works, `GUEST_ACCEL=kvm` makes the guest several times faster.
#
#   scripts/guest.sh 'cd /work/main && target/release/deps/limits-... --test-threads=2'
set -euo pipefail

CACHE=/var/cache/cella/guest
SHARE=/var/tmp/cella-guest
ACCEL=${GUEST_ACCEL:-tcg}
# Half the machine's memory, at most 6 GiB: the tests' sandboxes need a few GiB.
half=$(awk '/MemTotal/ {print int($2 / 2048)}' /proc/meminfo)
MEMORY_MB=${GUEST_MEMORY_MB:-$(( half < 6144 ? half : 6144 ))}

log() { printf '\033[1;34m[guest]\033[0m %s\n' "$*" >&2; }

# The kernel: the package Debian's linux-image-amd64 names, unpacked once.
kernel_package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kernel_package" ] || { echo "guest: no linux-image-amd64 in apt's lists" >&2; exit 1; }
version=${kernel_package#linux-image-}
kernel_dir=$CACHE/$version
if [ ! -f "$kernel_dir/ready" ]; then
  log "unpacking $kernel_package"
  rm -rf "$kernel_dir" && mkdir -p "$kernel_dir"
  (cd "$kernel_dir" && apt-get download -q "$kernel_package" >/dev/null 2>&1 \
    && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
  touch "$kernel_dir/ready"
fi
modules=$kernel_dir/root/lib/modules/$version
# The package leaves the module index to its postinst: without it nothing loads on demand
# (veth, nf_tables, ...).
[ -f "$modules/modules.dep" ] || depmod -b "$kernel_dir/root" "$version"

# The initramfs: busybox, the modules that reach the root (virtio, 9p, overlay), and an init
# that builds the root and hands over to the command. Rebuilt when this script changes.
initrd=$kernel_dir/initrd.gz
stamp=$(sha256sum "$0" | cut -c1-16)
if [ "$(cat "$kernel_dir/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building the initramfs"
  work=$(mktemp -d)
  mkdir -p "$work"/{bin,lib/modules,proc,sys,dev,lower,upper,newroot}
  cp /bin/busybox "$work/bin/"
  load="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"
  for m in $load; do cp "$(find "$modules" -name "$m.ko" | head -1)" "$work/lib/modules/"; done
  cat > "$work/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $load; do insmod /lib/modules/\$m.ko; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /lower
mount -t tmpfs -o size=4g tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot
mkdir -p /newroot/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,ro modules /newroot/lib/modules
umount /proc /sys /dev
exec switch_root /newroot /bin/sh $SHARE/init.sh
EOF
  chmod +x "$work/init"
  (cd "$work" && find . | busybox cpio -o -H newc 2>/dev/null | gzip > "$initrd")
  rm -rf "$work"
  echo "$stamp" > "$kernel_dir/initrd.stamp"
fi

# pid 1 of the guest once the root is built: the mounts a host has, cgroup2 alone; the
# command; its status on the console; power off.
mkdir -p "$SHARE"
cat > "$SHARE/init.sh" <<'EOF'
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# A static node, as systemd makes for modules that load on first open (tun, for slirp4netns).
mkdir -p /dev/net && mknod /dev/net/tun c 10 200 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# With systemd's options: nsdelegate makes cgroup namespaces delegation boundaries.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
# /tmp stays the overlay's (this machine's, written to the tmpfs above it): a checkout under
# /tmp is where the command finds it.
mount -t tmpfs tmpfs /run
ip link set lo up
hostname cella-guest
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "guest: kernel $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
bash /var/tmp/cella-guest/command.sh
status=$?
# What the kernel said of CPUs or tasks stuck (soft lockups, RCU stalls, hung tasks), with
# their stacks: shown, never filtered out with the rest of its log.
dmesg | awk '/soft lockup|rcu.*stall|blocked for more than/ {n = 60} n-- > 0 {print "guest-kernel: " $0}'
echo "GUEST-EXIT=$status"
echo o > /proc/sysrq-trigger
sleep 30
EOF
printf '%s\n' "$1" > "$SHARE/command.sh"

log "booting $version ($ACCEL) for: $1"
out=$(mktemp)
timeout "${GUEST_TIMEOUT:-1800}" qemu-system-x86_64 -machine q35,accel="$ACCEL" -cpu max -smp "$(nproc)" \
  -m "$MEMORY_MB" -nographic -no-reboot \
  -kernel "$kernel_dir/root/boot/vmlinuz-$version" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 softlockup_all_cpu_backtrace=1" \
  -virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs "local,path=${modules%/*},mount_tag=modules,security_model=passthrough,readonly=on" \
  2>&1 | tee "$out" | grep --line-buffered -v -E '^\[ *[0-9.]+\]|SeaBIOS|iPXE|Booting from|Press Ctrl-B' || true
status=$(sed -n 's/.*GUEST-EXIT=\([0-9]*\).*/\1/p' "$out" | tail -1)
rm -f "$out"
[ -n "$status" ] || { echo "guest: the command did not finish (see the console above)" >&2; exit 1; }
exit "$status"
