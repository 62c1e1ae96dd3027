"""``kvmlab host check`` on this host: the KVM probe boots the tiny kernel under KVM and TCG.

On the project's CI machines (nested, no vmx/svm in /proc/cpuinfo) KVM crawls and the check
must recommend TCG; on a host with working KVM it must recommend KVM. Either way the verdict
must agree with the measured progress, and new machines must get that accelerator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmlab.cli.main import main
from kvmlab.env import Env
from kvmlab.services import accel
from kvmlab.services.host import _cpu_flags
from kvmlab.services.machines import resolve_accel
from kvmlab.specs import Accel

pytestmark = pytest.mark.integration


def test_host_check_measures_kvm_and_recommends_the_faster(
    sandbox: Any, tmp_path: Path, test_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(uri=sandbox.uri, state_dir=tmp_path / "state", cache_dir=test_cache)
    rc = main(["host", "check", "--json"], env=env)
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert rc == 0, checks
    assert checks["libvirt daemon"]["status"] == "ok"
    assert "libvirtd (monolithic) answers on" in checks["libvirt daemon"]["detail"]
    assert "QEMU emulator version" in checks["qemu"]["detail"]

    result = accel.cached_probe(env)
    assert result is not None, "the probe's verdict is cached for this host"
    usable, _ = accel.kvm_device_usable()
    nested = usable and not ({"vmx", "svm"} & _cpu_flags())
    if nested:
        # this project's machines: /dev/kvm works, vmx/svm hidden, KVM ~100x slower than TCG
        assert checks["cpu virtualization"]["status"] == "warn"
        assert "nested virtualization" in checks["cpu virtualization"]["detail"]
        assert result.recommended == "tcg"
        assert result.kvm_bytes is not None and result.kvm_bytes * 2 < result.tcg_bytes
        assert "TCG (software emulation) recommended" in checks["accelerator"]["detail"]
        assert "far slower than software emulation" in checks["accelerator"]["detail"]
    elif usable:
        assert result.kvm_bytes is not None
        want = "kvm" if result.kvm_bytes >= accel.KVM_MIN_RATIO * result.tcg_bytes else "tcg"
        assert result.recommended == want
    else:
        assert result.recommended == "tcg"
    assert result.tcg_reached_init is not None, "TCG boots the kernel to /init within the probe"

    # new machines use the verdict; --accel overrides it
    assert resolve_accel(env) is Accel(result.recommended)
    env.accel = Accel.KVM
    assert resolve_accel(env) is Accel.KVM
    env.close()
