#!/bin/busybox sh
# kvmlab tiny image, stage 1: the initramfs /init.
#
# Loads the drivers listed in /etc/modules (in dependency order, computed at build time),
# finds the ext4 root filesystem by its label and switch_roots onto it, where busybox init
# runs /sbin/tiny-rc (tiny_rc.sh). Kernel command line options read here:
#   kvmlab.probe      print "kvmlab-tiny: probe ok" and power off at once (boot-speed probe)
#   kvmlab.root=SPEC  the root filesystem (default LABEL=kvmlab-root), as busybox findfs takes it
#   kvmlab.shell      stop in a shell in the initramfs instead of switching root

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "kvmlab-tiny: $*" >/dev/console; }

rescue() {
    say "$1"
    say "rescue shell (the initramfs); 'poweroff -f' or 'reboot -f' to leave"
    exec setsid cttyhack sh
}

root_spec=LABEL=kvmlab-root
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    kvmlab.probe)
        say "probe ok"
        poweroff -f
        ;;
    kvmlab.root=*) root_spec=${arg#kvmlab.root=} ;;
    kvmlab.shell) want_shell=1 ;;
    esac
done

while read -r mod; do
    insmod "/lib/modules/$mod.ko" || say "could not load module $mod"
done </etc/modules

[ -n "$want_shell" ] && rescue "kvmlab.shell given"

# virtio_blk registers its disks while insmod runs, so the root is normally there already;
# the loop covers slower buses (up to 5 s).
root_dev=
tries=0
while [ "$tries" -lt 50 ]; do
    root_dev=$(findfs "$root_spec" 2>/dev/null) && break
    tries=$((tries + 1))
    usleep 100000
done
[ -n "$root_dev" ] || rescue "no root filesystem $root_spec (attach the tiny disk as a virtio disk)"

mount -t ext4 -o rw,noatime "$root_dev" /newroot || rescue "cannot mount $root_dev on /newroot"
[ -x /newroot/sbin/init ] || rescue "$root_dev holds no /sbin/init"

mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
