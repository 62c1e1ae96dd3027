"""The built-in tiny image boots under bare QEMU (TCG) and behaves as kvmlab expects.

Proves, with no libvirt involved: DHCP lease on eth0, hostname from a NoCloud seed, the guest
agent (ping, exec with output, hostname, interfaces, shutdown), a clean ACPI power-off, reboot,
and that a file written to /data survives a power cycle.

The package cache is ``$KVMLAB_TEST_CACHE`` (default ``/var/cache/kvmlab-test``), so only the
first run downloads the kernel.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmlab.image.seed import make_nocloud_seed
from kvmlab.image.tiny import TinyImage, build_tiny_image

QEMU = shutil.which("qemu-system-x86_64")
QEMU_IMG = shutil.which("qemu-img")
CACHE = Path(os.environ.get("KVMLAB_TEST_CACHE", "/var/cache/kvmlab-test"))
HOSTNAME = "tiny-test"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        QEMU is None or QEMU_IMG is None,
        reason="qemu-system-x86_64 / qemu-img not installed (apt-get install qemu-system-x86 "
        "qemu-utils)",
    ),
]


class Guest:
    """One bare QEMU process (TCG) booting a disk, with serial log, QMP and agent sockets."""

    def __init__(self, disk: Path, seed: Path, workdir: Path, name: str) -> None:
        self.serial = workdir / f"{name}.serial"
        self.stderr = workdir / f"{name}.stderr"
        self.qmp_path = workdir / f"{name}.qmp"
        self.qga_path = workdir / f"{name}.qga"
        argv = [
            str(QEMU), "-accel", "tcg", "-m", "256", "-nographic", "-nodefaults",
            "-serial", f"file:{self.serial}", "-monitor", "none",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"file={disk},format=qcow2,if=virtio",
            "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"socket,id=ga,path={self.qga_path},server=on,wait=off",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=ga,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
        self.started = time.monotonic()
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        self._agent: Agent | None = None

    def log(self) -> str:
        """Everything the guest wrote to its serial console so far."""
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` appears ``count`` times on the console; the last match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {pattern!r} (x{count}) on the console within {timeout} s "
            f"(qemu exit {self.proc.poll()}, stderr {self.stderr.read_text()!r}); "
            f"console:\n{self.log()[-3000:]}"
        )

    @property
    def agent(self) -> Agent:
        """A guest-agent client on the virtio-serial channel (connected on first use)."""
        if self._agent is None:
            self._agent = Agent(self.qga_path)
        return self._agent

    def qmp(self, command: str) -> dict[str, Any]:
        """Run one QMP command on the monitor socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            reply: dict[str, Any] = {}
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                reply = json.loads(f.readline())
                while "return" not in reply and "error" not in reply:  # an event: skip it
                    reply = json.loads(f.readline())
            return reply

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit (the guest powered off)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the guest did not power off within {timeout} s; console:\n{self.log()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """Stop QEMU for good (used in ``finally``)."""
        if self._agent is not None:
            self._agent.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Agent:
    """The QEMU guest agent protocol: one JSON object per line, resynchronised by guest-sync."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._next_id = int(time.time()) % 100000 * 1000

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def sync(self, timeout: float) -> None:
        """Wait until the agent answers (it starts a moment after the console is ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._next_id += 1
            try:
                reply = self._call(
                    {"execute": "guest-sync", "arguments": {"id": self._next_id}},
                    1.0,
                    want_id=self._next_id,
                )
            except TimeoutError:
                continue
            assert reply == {"return": self._next_id}
            return
        raise AssertionError(f"the guest agent did not answer guest-sync within {timeout} s")

    def call(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Run one agent command; its ``return`` value (an error fails the test)."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = self._call(msg, timeout)
        assert "return" in reply, f"{command} failed: {reply}"
        return reply["return"]

    def send(self, command: str, **arguments: Any) -> None:
        """Send a command that answers nothing on success (guest-shutdown)."""
        self._file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self._file.flush()

    def run(self, script: str, timeout: float = 20.0) -> tuple[int, str]:
        """guest-exec ``/bin/sh -c script``; its exit code and stdout+stderr."""
        pid = self.call("guest-exec", path="/bin/sh", arg=["-c", script],
                        **{"capture-output": True})["pid"]  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                out = b"".join(
                    base64.b64decode(status.get(k, "")) for k in ("out-data", "err-data")
                )
                return status["exitcode"], out.decode()
            time.sleep(0.1)
        raise AssertionError(f"guest-exec {script!r} did not finish within {timeout} s")

    def _call(self, msg: dict[str, Any], timeout: float, want_id: int | None = None) -> Any:
        self._sock.settimeout(timeout)
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        try:
            while True:
                line = self._file.readline()
                if not line:
                    raise AssertionError("the guest agent closed the connection")
                reply = json.loads(line.strip(b"\xff \r\n"))
                # Late answers to earlier guest-syncs are skipped.
                if want_id is None or reply.get("return") == want_id:
                    return reply
        except TimeoutError:
            raise TimeoutError from None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyImage:
    """The tiny image, built into a temporary directory (packages cached across runs)."""
    out = tmp_path_factory.mktemp("tiny")
    return build_tiny_image(out, CACHE)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kvmlab-tiny-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_tiny_image_boots_serves_agent_and_keeps_data(tiny: TinyImage, workdir: Path) -> None:
    assert tiny.path.stat().st_size < 64 * 1024 * 1024
    disk = workdir / "disk.qcow2"
    subprocess.run(
        [
            str(QEMU_IMG),
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(tiny.path),
            str(disk),
        ],
        check=True,
    )
    seed = workdir / "seed.iso"
    seed.write_bytes(make_nocloud_seed("iid-kvmlab-test", HOSTNAME))

    first = Guest(disk, seed, workdir, "boot1")
    try:
        first.wait_for(r"kvmlab-tiny: lease eth0 10\.0\.2\.15", timeout=60)
        print(f"\nboot to lease: {time.monotonic() - first.started:.2f} s (TCG, 256 MiB)")
        first.wait_for(rf"kvmlab-tiny: hostname {HOSTNAME}\b", timeout=5)
        first.wait_for(r"kvmlab-tiny: ready", timeout=10)
        agent = first.agent
        agent.sync(timeout=30)
        assert agent.call("guest-ping") == {}
        assert agent.call("guest-get-host-name") == {"host-name": HOSTNAME}
        addresses = [a["ip-address"] for i in agent.call("guest-network-get-interfaces")
                     for a in i.get("ip-addresses", [])]  # fmt: skip
        assert "10.0.2.15" in addresses
        assert agent.run("echo hi > /data/f; sync") == (0, "")
        assert agent.run("cat /run/instance-id") == (0, "iid-kvmlab-test\n")
        # ACPI power button, as libvirt's graceful shutdown sends it.
        assert "return" in first.qmp("system_powerdown")
        assert first.wait_exit(timeout=60) == 0
        assert "kvmlab-tiny: stopping" in first.log()
    finally:
        first.kill()

    second = Guest(disk, seed, workdir, "boot2")
    try:
        second.wait_for(r"kvmlab-tiny: ready", timeout=60)
        agent = second.agent
        agent.sync(timeout=30)
        assert agent.run("cat /data/f") == (0, "hi\n")
        agent.send("guest-shutdown", mode="reboot")
        second.wait_for(r"kvmlab-tiny: ready", timeout=60, count=2)
        second.wait_for(r"kvmlab-tiny: lease eth0 10\.0\.2\.15", timeout=30, count=2)
        agent.close()
        second._agent = None  # the agent restarted with the guest: start a new session
        agent = second.agent
        agent.sync(timeout=30)
        assert agent.run("cat /data/f") == (0, "hi\n")
        agent.send("guest-shutdown", mode="powerdown")
        assert second.wait_exit(timeout=60) == 0
    finally:
        second.kill()
