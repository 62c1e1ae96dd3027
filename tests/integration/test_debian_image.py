"""The mmdebstrap'ed Debian image boots, and cloud-init applies kvmlab's generated user-data.

Slow: the first run builds the image (mmdebstrap from the Debian mirror, ~3 minutes; kept in
the test cache afterwards) and the guest boots systemd + cloud-init under TCG.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmlab import errors
from kvmlab.env import Env
from kvmlab.models import ExecResult
from kvmlab.services import agent, cloudinit, images, machines, networks
from kvmlab.services.imagebuild import build_debian
from kvmlab.specs import Accel, MachineSpec, NetworkSpec, NicSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _exec(env: Env, name: str, script: str) -> ExecResult:
    return agent.exec_in_guest(env, name, ["/bin/sh", "-c", script])


def _wait_for(env: Env, name: str, script: str, timeout: float) -> bytes:
    """Run ``script`` in the guest until it succeeds (the agent may not be up yet)."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        try:
            res = _exec(env, name, script)
            if res.exit_code == 0:
                return res.stdout
            last = res.stdout + res.stderr
        except errors.KvmlabError as e:
            last = str(e).encode()
        time.sleep(2)
    raise AssertionError(f"{script!r} did not succeed in {name} within {timeout:.0f} s: {last!r}")


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_debian_image_applies_user_data(sandbox, tmp_path: Path, test_cache: Path) -> None:  # type: ignore[no-untyped-def]
    env = Env(uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=test_cache,
              accel=Accel.TCG)  # fmt: skip
    ident = tmp_path / "id_ed25519"  # a real key pair: `kvmlab ssh` logs in with it below
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ident)], check=True)
    key = ident.with_suffix(".pub")
    user_data = cloudinit.user_data_for(
        home=tmp_path, user="alice", ssh_key=key, run=("touch /root/kvmlab-ran",)
    )
    try:
        vol = build_debian(env)
        assert vol.format == "qcow2"
        networks.create_network(env, NetworkSpec(name="t-deb", subnet="10.213.61.0/24"))
        spec = MachineSpec(name="t-deb", image="debian", memory=512 * 1024**2,
                           nics=(NicSpec("t-deb"),))  # fmt: skip
        machines.create(env, spec, start=True, user_data=user_data,
                        console_log="/var/log/libvirt/qemu/t-deb-console.log")  # fmt: skip
        keys = _wait_for(env, "t-deb", "cat /home/alice/.ssh/authorized_keys", timeout=420)
        assert key.read_text().strip().encode() in keys
        assert _wait_for(env, "t-deb", "hostname", timeout=30).strip() == b"t-deb"
        _wait_for(env, "t-deb", "test -f /root/kvmlab-ran", timeout=180)  # runcmd ran
        addrs = machines.wait_for_address(env, "t-deb", timeout=120)
        assert addrs[0].ip.startswith("10.213.61.")
        # `kvmlab ssh VM -- hostname`, from the sandbox's namespace (where the VM is reachable)
        kvmlab = str(Path(sys.executable).parent / "kvmlab")
        deadline = time.monotonic() + 180
        while True:
            out = sandbox.run_in_netns(
                ["env", f"KVMLAB_STATE_DIR={tmp_path / 'state'}", kvmlab, "-c", sandbox.uri,
                 "ssh", "t-deb", "-l", "alice", "-i", str(ident), "--", "hostname"],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            if out.returncode == 0:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(3)
        assert out.stdout.strip() == "t-deb"
    finally:
        if env.hypervisor.has_machine("t-deb"):
            machines.delete(env, "t-deb", force=True)
        if env.hypervisor.has_network("t-deb"):
            networks.delete_network(env, "t-deb")
        if "debian" in [v.name for v in images.list_images(env)]:
            images.remove_image(env, "debian")
        env.close()
