"""An interactive serial console over a libvirt stream (works for remote URIs too)."""

from __future__ import annotations

import os
import select
import termios
import threading
import tty

from kvmlab.env import Env
from kvmlab.names import validate_name

ESCAPE = b"\x1d"  # Ctrl-], as virsh console


def attach(env: Env, name: str, in_fd: int, out_fd: int) -> None:
    """Copy between the terminal and the machine's serial console until Ctrl-] is pressed."""
    validate_name(name, "machine")
    console = env.hypervisor.open_console(name)
    done = threading.Event()

    def pump_out() -> None:
        while not done.is_set():
            data = console.recv()
            if data is None:
                done.wait(0.02)
                continue
            if not data:
                break
            os.write(out_fd, data)
        done.set()

    reader = threading.Thread(target=pump_out, daemon=True)
    reader.start()
    old = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    try:
        if old is not None:
            tty.setraw(in_fd)
        while not done.is_set():
            ready, _, _ = select.select([in_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(in_fd, 1024)
            if not data or ESCAPE in data:
                console.send(data.split(ESCAPE, 1)[0])
                break
            console.send(data)
    finally:
        done.set()
        if old is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, old)
        reader.join(timeout=1)
        console.close()
