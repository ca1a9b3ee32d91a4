#!/bin/sh
# firecracer lab: PID 1 of the L1 machine (busybox). Loads the modules, mounts this host's root read-only
# over 9p under a tmpfs overlay, mounts the caller's writable shares at their own paths, then runs the
# job's launcher in a chroot. Each stage is stamped with /proc/uptime into /run/stages (the host reports
# them). Any failure prints one 'lab-init:' line on the console and powers L1 off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 run /run
stamp() { read -r up _ < /proc/uptime; echo "$1 $up" >> /run/stages; }
die() { echo "lab-init: $*" > /dev/console; sync; poweroff -f; sleep 10; }
stamp init
labdir=
for arg in $(cat /proc/cmdline); do
  case "$arg" in lab.dir=*) labdir="${arg#lab.dir=}" ;; esac
done
[ -n "$labdir" ] || die "no lab.dir= on the kernel command line"

for m in $(cat /lib/modules/order); do
  insmod "/lib/modules/$m.ko" || die "insmod $m failed"
  stamp "module:$m"
done
[ -c /dev/kvm ] || die "/dev/kvm did not appear after loading kvm_amd (does the CPU model have svm?)"
ip link set lo up
hostname firecracer-lab

opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,cache=loose,ro" hostroot /lower || die "cannot mount the host's root (9p)"
mount -t tmpfs -o mode=0755 upper /upper || die "cannot mount the overlay's tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
  || die "cannot mount the overlay over the host's root"
stamp root
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
ln -sf pts/ptmx $R/dev/ptmx
mount -t tmpfs -o mode=1777 shm $R/dev/shm
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
[ -f "$R$labdir/shares" ] || die "$labdir/shares is not visible in L1"
while IFS="	" read -r tag path; do
  [ -n "$tag" ] || continue
  mount -t 9p -o "$opts,cache=mmap,rw" "$tag" "$R$path" || die "cannot mount the writable share $path"
done < "$R$labdir/shares"
launch="$R$labdir/launch.sh"
[ -f "$launch" ] || die "$labdir/launch.sh is not visible in L1"
# a fresh /run (the host's holds its own VMs' sockets and state); the stages go along
mount -t tmpfs -o mode=0755 run $R/run
stamp chroot
cat /run/stages > $R/run/lab-stages
exec chroot $R /bin/sh "$labdir/launch.sh"
