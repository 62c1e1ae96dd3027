"""Create + start a NAT network: ``kvmlab net create`` against ``virsh net-define`` +
``virsh net-start`` of the same XML (issue 3's target: kvmlab / virsh <= 1.2).

Both run as the console programs a person types, inside one ``tests.sandbox.Sandbox`` (a
private libvirtd in its own network namespace), so the bridge, dnsmasq and firewall rules
libvirt makes never touch the host. The virsh case gets the exact XML kvmlab defines
(``network_from_spec`` with the same name, subnet and bridge). Each created network is
destroyed and undefined untimed before the next run; the two alternate, ``$BENCH_RUNS``
(default 10) timed runs each after a warm-up.

kvmlab does more than virsh here: it checks the name, the subnet against every libvirt
network and the daemon host's routes (one ``ip route`` in the daemon's namespace), picks a
free bridge name, and sets autostart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    KVMLAB,
    SANDBOX_PREFIX,
    Ratio,
    interleave,
    python_env,
    report,
    run_timed,
    runs_from_env,
)
from tests.sandbox import Sandbox, cleanup_stale_sandboxes

from kvmlab.libvirt.build import network_from_spec
from kvmlab.specs import NetworkSpec

SUBNET = "10.213.80.0/24"


def _drop(uri: str, name: str) -> None:
    for verb in ("net-destroy", "net-undefine"):
        subprocess.run(["virsh", "-c", uri, verb, name], capture_output=True, check=False)


def main() -> int:
    runs = runs_from_env(10)
    load_at_start = os.getloadavg()
    cleanup_stale_sandboxes(SANDBOX_PREFIX)
    with Sandbox(SANDBOX_PREFIX) as sb, tempfile.TemporaryDirectory() as tmp:
        xml = network_from_spec(
            NetworkSpec(name="bn-virsh", subnet=SUBNET), bridge="virbr0", created="2026-01-01"
        )
        xml_file = Path(tmp) / "net.xml"
        xml_file.write_text(xml.to_xml())
        kvmlab_argv = [str(KVMLAB), "-c", sb.uri, "net", "create", "bn-kvmlab", "--subnet", SUBNET]
        define = ["virsh", "-c", sb.uri, "net-define", str(xml_file)]
        start = ["virsh", "-c", sb.uri, "net-start", "bn-virsh"]

        def kvmlab_case() -> float:
            try:
                return run_timed(kvmlab_argv, env=python_env())
            finally:
                _drop(sb.uri, "bn-kvmlab")

        def virsh_case() -> float:
            try:
                return run_timed(define) + run_timed(start)
            finally:
                _drop(sb.uri, "bn-virsh")

        stats = interleave({"kvmlab": kvmlab_case, "virsh": virsh_case}, runs=runs, warmup=1)
    report(
        "net",
        stats,
        [Ratio("kvmlab", "virsh", at_most=1.2)],
        commands={
            "kvmlab": f"kvmlab -c URI net create bn-kvmlab --subnet {SUBNET}",
            "virsh": "virsh -c URI net-define net.xml; virsh -c URI net-start bn-virsh",
        },
        load_at_start=load_at_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
