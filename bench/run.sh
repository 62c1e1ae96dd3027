#!/usr/bin/env bash
# Run kvmlab's benchmarks against their peers: bench/run.sh [ls] [boot]  (default: all).
#
# Installs what the peers need, once:
#   - Debian packages: virtinst, libvirt-clients (virsh), qemu-utils, and what building
#     libvirt-python from PyPI takes (libvirt-dev, pkg-config, gcc, python3-dev);
#   - bench/.venv-peers: kcli and libvirt-python pinned to this host's libvirt version
#     (kcli's own libvirt binding, kept apart from kvmlab's venv).
# Then runs each bench/bench_NAME.py with kvmlab's venv (.venv at the repository root).
# Results: a markdown table on stdout and bench/results/NAME.json.
#
# Needs root (the benches start a private libvirtd in a network namespace, tests/sandbox.py),
# libvirtd and qemu-system-x86_64. BENCH_RUNS overrides the number of timed runs per case.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
KVMLAB_PY=$REPO/.venv/bin/python
PEERS=$BENCH_DIR/.venv-peers

die() {
    echo "bench/run.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, a private libvirtd)"
[ -x "$KVMLAB_PY" ] || die "no kvmlab venv at $REPO/.venv (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
[ -x "$REPO/.venv/bin/kvmlab" ] || die "kvmlab is not installed in $REPO/.venv"

install_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "bench/run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_debs virtinst libvirt-clients qemu-utils libvirt-dev pkg-config gcc python3-dev

# The libvirt the client library on this host is (virsh --version prints the library's).
LIBVIRT_VERSION=$(virsh --version)
[ -n "$LIBVIRT_VERSION" ] || die "cannot tell the libvirt version (virsh --version)"

peers_ready() {
    [ -x "$PEERS/bin/kcli" ] &&
        [ "$("$PEERS/bin/python" -c 'import libvirt; print(libvirt.getVersion())' 2>/dev/null)" = \
            "$(echo "$LIBVIRT_VERSION" | awk -F. '{print $1 * 1000000 + $2 * 1000 + $3}')" ]
}

if ! peers_ready; then
    echo "bench/run.sh: making $PEERS (kcli, libvirt-python==$LIBVIRT_VERSION)" >&2
    [ -x "$PEERS/bin/python" ] || python3 -m venv "$PEERS"
    "$PEERS/bin/pip" install -q --disable-pip-version-check kcli "libvirt-python==$LIBVIRT_VERSION"
    peers_ready || die "kcli / libvirt-python did not install into $PEERS"
fi

names=("$@")
if [ "${#names[@]}" -eq 0 ]; then
    for file in "$BENCH_DIR"/bench_*.py; do
        name=${file##*/bench_}
        names+=("${name%.py}")
    done
fi

status=0
for name in "${names[@]}"; do
    script=$BENCH_DIR/bench_$name.py
    [ -f "$script" ] || die "no benchmark $script"
    echo "=== bench $name ===" >&2
    (cd "$REPO" && "$KVMLAB_PY" "$script") || status=1
done
exit "$status"
