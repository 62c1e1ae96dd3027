#!/bin/sh
# kvmlab tiny image, stage 2: everything after switch_root, in one busybox sh script that
# acts on the name it is called by (symlinks made at build time) or on its first argument:
#   /sbin/tiny-rc boot         busybox init's sysinit: mounts, hostname from the NoCloud seed,
#                              DHCP on every NIC, acpid for the ACPI power button
#   /sbin/tiny-rc stop         busybox init's shutdown: stop everything, flush, remount / ro
#   /sbin/tiny-rc console      the root shell on a console (busybox init respawns it)
#   /sbin/tiny-rc agent        qemu-ga on the virtio-serial port org.qemu.guest_agent.0
#   /sbin/tiny-rc meta FILE    print the hostname and instance-id NoCloud meta-data gives
#   /usr/share/udhcpc/default.script EVENT   udhcpc's hook: apply a lease, report it
#   /sbin/shutdown [-r|-H|-P] ...            what qemu-ga runs for guest-shutdown
#   /etc/acpi/PWRF/00000080                  what busybox acpid runs for the power button
# Lines starting "kvmlab-tiny: " on the console are what the host watches for.

say() { echo "kvmlab-tiny: $*" >/dev/console; }

# read_meta FILE: sets $given_hostname and $instance_id from NoCloud meta-data (YAML
# "key: value" lines or JSON). Shell built-ins only: under TCG every process started costs the
# boot tens of milliseconds before its first DHCP request.
read_meta() {
    given_hostname=
    instance_id=
    [ -r "$1" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        if meta_key "$line" local-hostname; then given_hostname=$value; fi
        if meta_key "$line" instance-id; then instance_id=$value; fi
    done <"$1"
}

# meta_key LINE KEY: if LINE gives KEY a value, set $value to it (quotes removed).
meta_key() {
    case "$1" in *"$2"*) ;; *) return 1 ;; esac
    rest=${1#*"$2"}
    rest=${rest#\"}
    rest=${rest#"${rest%%[![:space:]]*}"}
    case "$rest" in :*) rest=${rest#:} ;; *) return 1 ;; esac
    rest=${rest#"${rest%%[![:space:]]*}"}
    case "$rest" in
    \"*)
        rest=${rest#\"}
        value=${rest%%\"*}
        ;;
    \'*)
        rest=${rest#\'}
        value=${rest%%\'*}
        ;;
    *) value=${rest%%[[:space:],\}]*} ;;
    esac
}

# find_seed: the device holding the NoCloud seed (ISO9660 labelled cidata), if any.
find_seed() {
    findfs LABEL=cidata 2>/dev/null && return 0
    findfs LABEL=CIDATA 2>/dev/null && return 0
    # findfs ignores devices shorter than 68 KiB (unpadded ISOs): read the label itself.
    for dev in /dev/vd? /dev/sr?; do
        [ -b "$dev" ] && [ "$(dd if="$dev" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] ||
            continue
        case "$(dd if="$dev" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ')" in
        cidata | CIDATA)
            echo "$dev"
            return 0
            ;;
        esac
    done
    return 1
}

# set_hostname: the hostname from the NoCloud seed's local-hostname (else "tiny"); the seed's
# instance-id goes to /run/instance-id. The seed stays mounted on /run/cidata until
# start_network has started DHCP (seed_done).
set_hostname() {
    name=tiny
    seed=$(find_seed)
    if [ -n "$seed" ]; then
        if mount -t iso9660 -o ro "$seed" /run/cidata 2>/dev/null; then
            seed_mounted=1
            read_meta /run/cidata/meta-data
            case "$given_hostname" in
            *[!A-Za-z0-9.-]*) given_hostname=$(printf %s "$given_hostname" | tr -cd 'A-Za-z0-9.-') ;;
            esac
            while [ "${#given_hostname}" -gt 63 ]; do given_hostname=${given_hostname%?}; done
            [ -n "$given_hostname" ] && name=$given_hostname
            echo "$instance_id" >/run/instance-id
        else
            say "cannot mount the NoCloud seed $seed (iso9660 expected)"
        fi
    fi
    echo "$name" >/proc/sys/kernel/hostname
    echo "$name" >/etc/hostname
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost\n' "$name" >/etc/hosts
    say "hostname $name"
}

seed_done() {
    [ -z "$seed_mounted" ] || umount /run/cidata
}

start_network() {
    ip link set lo up
    for path in /sys/class/net/*; do
        ifc=${path##*/}
        case "$ifc" in
        eth* | ens* | enp* | eno*) ;;
        *) continue ;;
        esac
        ip link set "$ifc" up
        # Runs for good: retries every few seconds until a DHCP server answers, then renews.
        udhcpc -f -i "$ifc" -s /usr/share/udhcpc/default.script -t 5 -T 1 -A 3 \
            -x "hostname:$name" -p "/run/udhcpc.$ifc.pid" >/dev/null 2>&1 &
    done
}

boot() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null # normally moved here by the initramfs
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
    mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
    mkdir -p /data /root /run/cidata
    # Power button -> /etc/acpi/PWRF/00000080 -> poweroff: libvirt's ACPI shutdown is clean.
    acpid -l /run/acpid.log
    set_hostname
    start_network
    seed_done
}

stop() {
    say "stopping"
    kill -s TERM -1
    usleep 200000
    kill -s KILL -1
    sync
    mount -o remount,ro / || say "could not remount / read-only (it was synced)"
}

console() {
    export HOME=/root
    cd /root || cd /
    echo "kvmlab-tiny: ready"
    exec sh -l
}

agent() {
    while :; do
        for f in /sys/class/virtio-ports/*/name; do
            [ "$(cat "$f" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
            port=${f%/name}
            exec /usr/sbin/qemu-ga -m virtio-serial -p "/dev/${port##*/}" \
                -l /run/qemu-ga.log -f /run/qemu-ga.pid -t /run
        done
        sleep 5 # no agent channel (yet); busybox init would respawn us at once
    done
}

dhcp_event() {
    lease_file=/run/lease.$interface
    case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        rm -f "$lease_file" "/run/resolv.$interface"
        ;;
    bound | renew)
        old=$(cat "$lease_file" 2>/dev/null)
        [ "$old" = "$ip" ] || ip -4 addr flush dev "$interface"
        ip addr replace "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
        # One default route per NIC; the first NIC (lowest ifindex) wins.
        metric=$((100 + $(cat "/sys/class/net/$interface/ifindex")))
        for r in $router; do
            ip route add default via "$r" dev "$interface" metric "$metric" && break
        done
        {
            [ -n "$domain" ] && echo "search $domain"
            for d in $dns; do echo "nameserver $d"; done
        } >"/run/resolv.$interface"
        echo "$ip" >"$lease_file"
        [ "$old" = "$ip" ] || say "lease $interface $ip"
        ;;
    esac
    cat /run/resolv.* >/etc/resolv.conf 2>/dev/null
    return 0
}

shutdown_request() {
    # qemu-ga runs "shutdown [-h] -P|-H|-r +0 MESSAGE"; busybox has no shutdown applet.
    action=poweroff
    for arg in "$@"; do
        case "$arg" in
        -r) action=reboot ;;
        -H) action=halt ;;
        esac
    done
    say "$action requested"
    "$action"
}

case "${0##*/}" in
default.script) dhcp_event "$@" ;;
shutdown) shutdown_request "$@" ;;
00000080) poweroff ;;
*)
    case "$1" in
    boot | stop | console | agent) "$1" ;;
    meta)
        read_meta "$2" || exit 1
        printf 'hostname=%s\ninstance-id=%s\n' "$given_hostname" "$instance_id"
        ;;
    *)
        echo "usage: $0 boot|stop|console|agent|meta FILE" >&2
        exit 2
        ;;
    esac
    ;;
esac
