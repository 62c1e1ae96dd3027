#!/usr/bin/env bash
# Install what kvmlab needs on a Debian/Ubuntu host: the virtualization stack (QEMU, libvirt,
# dnsmasq, bridge tools), the tools that build the tiny image, and a virtualenv with kvmlab.
# Idempotent: only missing packages are installed. Usage: scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (it installs packages with apt-get)" >&2
    exit 2
fi

PACKAGES=(
    # the hypervisor stack
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
    dnsmasq-base iptables nftables bridge-utils iproute2
    # building the tiny image
    busybox-static qemu-guest-agent syslinux syslinux-common mtools dosfstools e2fsprogs fdisk
    # building libvirt-python into the virtualenv
    libvirt-dev pkg-config gcc python3 python3-venv python3-dev
)
if [ "${1:-}" = "--test" ]; then
    # virt-xml-validate (golden-file tests), virt-clone/virt-install (benchmarks' peers)
    PACKAGES+=(virtinst libxml2-utils)
    # the ISO boot test builds an El Torito CD with ISOLINUX; the Debian cloud-init test
    # builds its image with mmdebstrap
    PACKAGES+=(isolinux mmdebstrap)
    # the download tests make a self-signed certificate for their local HTTPS server
    PACKAGES+=(openssl)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/tmp/kvmlab-apt.log 2>&1 || { tail -30 /tmp/kvmlab-apt.log >&2; exit 1; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
echo "== installing kvmlab${extra} into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
