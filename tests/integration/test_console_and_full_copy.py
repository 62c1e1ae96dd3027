"""`vm console` on a real guest, and `vm create --full` (a copy, not an overlay)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kvmlab.env import Env
from kvmlab.services import images, machines
from kvmlab.services.console import ESCAPE, attach
from kvmlab.services.storage import IMAGE_POOL, MACHINE_POOL
from kvmlab.specs import Accel, MachineSpec

pytestmark = pytest.mark.integration


def test_full_copy_machine_and_its_serial_console(
    sandbox: Any, tmp_path: Path, test_cache: Path
) -> None:
    env = Env(uri=sandbox.uri, state_dir=tmp_path / "s", cache_dir=test_cache, accel=Accel.TCG)
    images.build_tiny(env)
    image = env.hypervisor.volume(IMAGE_POOL, "tiny")
    machines.create(env, MachineSpec(name="con", image="tiny", full_copy=True), start=True)
    try:
        disk = env.hypervisor.volume(MACHINE_POOL, "con.qcow2")
        assert disk.backing is None, "--full copies the image instead of an overlay on it"
        assert disk.capacity == image.capacity

        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        seen = bytearray()

        def collect() -> None:
            while True:
                chunk = os.read(out_r, 4096)
                if not chunk:
                    return
                seen.extend(chunk)

        failed: list[BaseException] = []

        def console() -> None:
            try:
                attach(env, "con", in_r, out_w)
            except BaseException as e:
                failed.append(e)

        threading.Thread(target=collect, daemon=True).start()
        session = threading.Thread(target=console, daemon=True)
        session.start()
        deadline = time.monotonic() + 90
        while b"con42sole" not in seen:  # the shell computes it: proof of a round trip
            assert not failed, failed
            assert time.monotonic() < deadline, bytes(seen[-2000:]).decode(errors="replace")
            os.write(in_w, b"echo con$((40+2))sole\n")
            time.sleep(1)
        os.write(in_w, ESCAPE)
        session.join(timeout=10)
        assert not session.is_alive(), "Ctrl-] leaves the console"
        assert b"kvmlab-tiny: hostname con" in seen
        os.close(in_w)
        os.close(out_w)
    finally:
        machines.delete(env, "con", force=True)
        env.close()
    # the image is untouched and nothing of the machine is left
    assert env.hypervisor.volume(IMAGE_POOL, "tiny").allocation == image.allocation
    assert not env.hypervisor.has_volume(MACHINE_POOL, "con.qcow2")
