"""Is KVM actually usable here, or is software emulation (TCG) faster?

``/dev/kvm`` existing is not enough: under nested virtualization without ``vmx``/``svm``
exposed, KVM can be a hundred times slower than TCG. The probe boots the built-in image's
kernel for a few seconds under each accelerator side by side and compares how far each got
(bytes the kernel wrote to its serial console). The verdict is cached per host.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmlab.env import Env
from kvmlab.specs import Accel

PROBE_SECONDS = 4.0
# KVM wins unless it makes less than this fraction of TCG's progress.
KVM_MIN_RATIO = 0.5
MARKER = b"Run /init as init process"


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of booting the probe kernel under each accelerator."""

    recommended: str
    reason: str
    kvm_bytes: int | None
    tcg_bytes: int
    kvm_reached_init: float | None
    tcg_reached_init: float | None
    seconds: float
    host: str
    kernel: str

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


def kvm_device_usable() -> tuple[bool, str]:
    """Whether ``/dev/kvm`` exists and can be opened read-write."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm cannot be opened: {e.strerror}"
    os.close(fd)
    return True, "/dev/kvm opens read-write"


def qemu_binary() -> str | None:
    """The x86_64 system emulator on this host, if any."""
    return shutil.which("qemu-system-x86_64")


def _cache_file(env: Env) -> Path:
    return env.state_dir / "accel.json"


def cached_probe(env: Env) -> ProbeResult | None:
    """The last probe result for this host, if one was made."""
    try:
        data = json.loads(_cache_file(env).read_text())
    except (OSError, ValueError):
        return None
    if data.get("host") != socket.gethostname():
        return None
    try:
        return ProbeResult(**data)
    except TypeError:
        return None


def probe(env: Env, kernel: Path, initrd: Path | None = None) -> ProbeResult:
    """Boot ``kernel`` under KVM and TCG at once for a few seconds; cache and return the verdict."""
    qemu = qemu_binary()
    if qemu is None:
        from kvmlab.errors import HostNotReady

        raise HostNotReady(
            "qemu-system-x86_64 is not installed", hint="run `kvmlab host setup`"
        )
    usable, why = kvm_device_usable()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvmlab-probe-") as tmp:
        runs = {"tcg": _launch(qemu, "tcg", kernel, initrd, Path(tmp) / "tcg.log")}
        if usable:
            runs["kvm"] = _launch(qemu, "kvm", kernel, initrd, Path(tmp) / "kvm.log")
        reached = _watch(runs, Path(tmp))
        sizes = {name: (Path(tmp) / f"{name}.log").stat().st_size for name in runs}
    tcg_bytes = sizes["tcg"]
    kvm_bytes = sizes.get("kvm")
    if kvm_bytes is None:
        recommended, reason = "tcg", f"KVM is not available ({why})"
    elif kvm_bytes >= KVM_MIN_RATIO * tcg_bytes or reached.get("kvm") is not None:
        recommended = "kvm"
        reason = f"KVM boots normally ({kvm_bytes} vs {tcg_bytes} console bytes under TCG)"
    else:
        recommended = "tcg"
        if kvm_bytes == 0:
            progress = f"KVM made no visible progress while TCG printed {tcg_bytes} bytes"
        else:
            progress = (
                f"KVM is about {tcg_bytes / kvm_bytes:.0f}x slower ({kvm_bytes} vs "
                f"{tcg_bytes} console bytes)"
            )
        reason = (
            f"KVM is usable but far slower than software emulation: {progress} of kernel "
            f"boot log in {PROBE_SECONDS:.0f} s (typical of nested virtualization)"
        )
    result = ProbeResult(
        recommended=recommended,
        reason=reason,
        kvm_bytes=kvm_bytes,
        tcg_bytes=tcg_bytes,
        kvm_reached_init=reached.get("kvm"),
        tcg_reached_init=reached.get("tcg"),
        seconds=round(time.monotonic() - start, 2),
        host=socket.gethostname(),
        kernel=str(kernel),
    )
    try:
        env.state_dir.mkdir(parents=True, exist_ok=True)
        _cache_file(env).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    except OSError:
        pass  # a read-only state dir only costs a re-probe next time
    return result


def _launch(
    qemu: str, accel: str, kernel: Path, initrd: Path | None, log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        qemu, "-accel", accel, "-m", "256", "-smp", "1",
        "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
        "-serial", f"file:{log}",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 loglevel=7 ignore_loglevel",
    ]  # fmt: skip
    # No "-cpu host": it aborts on nested hosts ("failed to set MSR 0x10a").
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _watch(runs: dict[str, subprocess.Popen[bytes]], tmp: Path) -> dict[str, float | None]:
    """Let the guests run for PROBE_SECONDS; note when each reached the init marker."""
    t0 = time.monotonic()
    reached: dict[str, float | None] = {name: None for name in runs}
    try:
        while time.monotonic() - t0 < PROBE_SECONDS:
            time.sleep(0.1)
            for name in runs:
                if reached[name] is None and MARKER in _read(tmp / f"{name}.log"):
                    reached[name] = round(time.monotonic() - t0, 2)
    finally:
        for p in runs.values():
            p.kill()
        for p in runs.values():
            p.wait()
    return reached


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def choose_accel(env: Env, capabilities_has_kvm: bool) -> Accel:
    """The accelerator new machines get: ``--accel`` wins, then the cached probe, then KVM.

    The probe itself runs in ``host check`` and on the first ``vm create`` of a host (see
    :func:`kvmlab.services.machines.create`), because it needs the built-in kernel.
    """
    if env.accel is not None:
        return env.accel
    if not capabilities_has_kvm:
        return Accel.TCG
    cached = cached_probe(env)
    if cached is not None:
        return Accel(cached.recommended)
    return Accel.KVM
