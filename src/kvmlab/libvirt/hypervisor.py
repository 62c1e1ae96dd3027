"""The adapter: every libvirt call kvmlab makes goes through :class:`Hypervisor`.

Methods take and return kvmlab's own types (XML mapper objects, :mod:`kvmlab.models`);
``libvirt`` objects never leave this package.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import libvirt

from kvmlab import errors
from kvmlab.libvirt import convert
from kvmlab.libvirt.conn import map_errors, open_connection, translate
from kvmlab.libvirt.network import NetworkXML
from kvmlab.models import Address, ExecResult, Lease, Machine, MachineState, Network, Volume

if typing.TYPE_CHECKING:
    from pathlib import Path

    from kvmlab.libvirt.domain import DomainXML
    from kvmlab.libvirt.snapshot import SnapshotXML
    from kvmlab.libvirt.storage import PoolXML, VolumeXML
    from kvmlab.models import Snapshot

# The domain, storage and snapshot mappers are imported where they are used: net create
# needs none of them, and should start as fast as virsh.

_STATE = {
    libvirt.VIR_DOMAIN_RUNNING: MachineState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: MachineState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: MachineState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: MachineState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: MachineState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: MachineState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: MachineState.SUSPENDED,
}

LS_HINT = "`kvmlab ls` lists the machines"
_HMP_TOKEN = re.compile(r"[A-Za-z0-9._-]+")  # a word HMP passes on unchanged


class Hypervisor:
    """One libvirt connection, spoken to in kvmlab's types."""

    def __init__(self, conn: libvirt.virConnect, uri: str) -> None:
        self._conn = conn
        self.uri = uri

    @classmethod
    def open(cls, uri: str) -> Hypervisor:
        """Connect to the daemon behind ``uri``."""
        return cls(open_connection(uri), uri)

    def close(self) -> None:
        """Close the connection."""
        with suppress(libvirt.libvirtError):
            self._conn.close()

    # -- host -------------------------------------------------------------------------------
    def daemon_info(self) -> dict[str, str]:
        """Which daemon answers: driver type, libvirt and hypervisor versions, hostname."""
        with map_errors(self.uri, what="ask the daemon"):
            lib = self._conn.getLibVersion()
            hv = self._conn.getVersion()
            return {
                "driver": self._conn.getType(),
                "libvirt": _version(lib),
                "hypervisor": _version(hv),
                "hostname": self._conn.getHostname(),
                "uri": self._conn.getURI(),
            }

    def capabilities(self) -> str:
        """The host capabilities XML."""
        with map_errors(self.uri, what="read capabilities"):
            return str(self._conn.getCapabilities())

    # -- machines ---------------------------------------------------------------------------
    def _domain(self, name: str) -> libvirt.virDomain:
        with map_errors(
            self.uri, not_found=f"no VM named {name!r} on {self.uri}", hint=LS_HINT
        ):
            return self._conn.lookupByName(name)

    def _exists(self, lookup: Callable[[], object], missing: int) -> bool:
        """Whether ``lookup`` finds its object; ``missing`` is libvirt's "no such" code."""
        try:
            lookup()
        except libvirt.libvirtError as e:
            if e.get_error_code() == missing:
                return False
            raise translate(e, self.uri) from e
        return True

    def has_machine(self, name: str) -> bool:
        """Whether a domain of that name exists."""
        return self._exists(lambda: self._conn.lookupByName(name), libvirt.VIR_ERR_NO_DOMAIN)

    def list_machines(self) -> list[Machine]:
        """Every domain on the connection, kvmlab's or not."""
        from kvmlab.libvirt.domain import DomainXML

        with map_errors(self.uri, what="list machines"):
            # one RPC for every domain's state, then one XMLDesc each (what virsh does too)
            stats = self._conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            out = []
            for dom, st in stats:
                try:
                    xml = dom.XMLDesc()
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # deleted while we listed
                    raise
                state = _STATE.get(st.get("state.state", -1))
                out.append(convert.machine(DomainXML.from_xml(xml), state))
        return sorted(out, key=lambda m: m.name)

    def machine(self, name: str) -> Machine:
        """One machine by name."""
        from kvmlab.libvirt.domain import DomainXML

        dom = self._domain(name)
        with map_errors(self.uri, what=f"read {name}"):
            return convert.machine(DomainXML.from_xml(dom.XMLDesc()), _STATE.get(dom.state()[0]))

    def domain_xml(self, name: str, inactive: bool = False) -> DomainXML:
        """The domain XML of a machine (live, or the persistent definition)."""
        from kvmlab.libvirt.domain import DomainXML

        dom = self._domain(name)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with map_errors(self.uri, what=f"read {name}"):
            return DomainXML.from_xml(dom.XMLDesc(flags))

    def define_machine(self, xml: DomainXML) -> None:
        """Define (create persistently, stopped) a domain."""
        with map_errors(self.uri, what=f"define {xml.name}"):
            self._conn.defineXML(xml.to_xml())

    def state(self, name: str) -> MachineState:
        """The machine's run state."""
        dom = self._domain(name)
        with map_errors(self.uri, what=f"read state of {name}"):
            return _STATE.get(dom.state()[0], MachineState.UNKNOWN)

    def _act(self, name: str, verb: str, action: Callable[[libvirt.virDomain], object]) -> None:
        """Run one call on a machine, its errors worded as "VERB NAME: ..."."""
        dom = self._domain(name)
        with map_errors(self.uri, what=f"{verb} {name}"):
            action(dom)

    def start(self, name: str) -> None:
        """Boot a stopped machine."""
        self._act(name, "start", lambda d: d.create())

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI)."""
        acpi = libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        self._act(name, "stop", lambda d: d.shutdownFlags(acpi))

    def destroy(self, name: str) -> None:
        """Pull the plug."""
        self._act(name, "kill", lambda d: d.destroy())

    def reboot(self, name: str) -> None:
        """Ask the guest to reboot (ACPI)."""
        self._act(name, "reboot", lambda d: d.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN))

    def suspend(self, name: str) -> None:
        """Pause the guest's vCPUs."""
        self._act(name, "pause", lambda d: d.suspend())

    def resume(self, name: str) -> None:
        """Resume a paused guest."""
        self._act(name, "resume", lambda d: d.resume())

    def undefine(self, name: str) -> None:
        """Remove a stopped machine's definition, with its snapshot and managed-save data."""
        dom = self._domain(name)
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        )
        with map_errors(self.uri, what=f"delete {name}"):
            dom.undefineFlags(flags)

    def interface_addresses(self, name: str, source: str) -> list[Address]:
        """Addresses from one source: ``lease`` (the network's DHCP) or ``agent``."""
        dom = self._domain(name)
        src = {
            "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
            "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
        }[source]
        try:
            found = dom.interfaceAddresses(src)
        except libvirt.libvirtError as e:
            if source == "agent" or e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return []  # no agent yet / machine not running
            raise translate(e, self.uri, what=f"addresses of {name}") from e
        out = []
        for ifname, info in (found or {}).items():
            for a in info.get("addrs") or []:
                if a.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    continue
                if a["addr"].startswith("127."):
                    continue
                out.append(
                    Address(a["addr"], a.get("prefix"), info.get("hwaddr"), source, ifname)
                )
        return out

    def agent_command(self, name: str, command: dict[str, Any], timeout: int = 10) -> Any:
        """Send one QEMU guest agent command and return its ``return`` value."""
        import json

        import libvirt_qemu

        dom = self._domain(name)
        hint = (
            f"{name} needs the QEMU guest agent (package qemu-guest-agent) running in the "
            "guest; the built-in tiny image has it"
        )
        try:
            reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), timeout, 0)
        except libvirt.libvirtError as e:
            raise translate(e, self.uri, what=f"guest agent of {name}", hint=hint) from e
        return json.loads(reply).get("return")

    def guest_exec(
        self, name: str, argv: list[str], input_data: bytes | None = None, timeout: float = 60
    ) -> ExecResult:
        """Run a command in the guest through the agent and wait for it."""
        import base64
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input_data is not None:
            args["input-data"] = base64.b64encode(input_data).decode()
        pid = self.agent_command(name, {"execute": "guest-exec", "arguments": args})["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            st = self.agent_command(
                name, {"execute": "guest-exec-status", "arguments": {"pid": pid}}
            )
            if st.get("exited"):
                return ExecResult(
                    exit_code=int(st.get("exitcode", -1 if "signal" in st else 0)),
                    stdout=base64.b64decode(st.get("out-data", "")),
                    stderr=base64.b64decode(st.get("err-data", "")),
                )
            if time.monotonic() > deadline:
                raise errors.Timeout(
                    f"{argv[0]} in {name} did not finish within {timeout:.0f} s",
                    hint="give a longer --timeout",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def open_console(self, name: str) -> ConsoleStream:
        """Open the machine's serial console (works over remote URIs too)."""
        dom = self._domain(name)
        stream = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        with map_errors(self.uri, what=f"console of {name}"):
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        return ConsoleStream(stream)

    # -- networks ---------------------------------------------------------------------------
    def _network(self, name: str) -> libvirt.virNetwork:
        with map_errors(
            self.uri,
            not_found=f"no network named {name!r} on {self.uri}",
            hint="`kvmlab net list` shows the networks",
        ):
            return self._conn.networkLookupByName(name)

    def has_network(self, name: str) -> bool:
        """Whether a network of that name exists."""
        return self._exists(
            lambda: self._conn.networkLookupByName(name), libvirt.VIR_ERR_NO_NETWORK
        )

    def list_networks(self) -> list[Network]:
        """Every libvirt network."""
        with map_errors(self.uri, what="list networks"):
            out = [
                convert.network(
                    NetworkXML.from_xml(n.XMLDesc()), bool(n.isActive()), bool(n.autostart())
                )
                for n in self._conn.listAllNetworks()
            ]
        return sorted(out, key=lambda n: n.name)

    def network(self, name: str) -> Network:
        """One network by name."""
        n = self._network(name)
        with map_errors(self.uri, what=f"read network {name}"):
            return convert.network(
                NetworkXML.from_xml(n.XMLDesc()), bool(n.isActive()), bool(n.autostart())
            )

    def network_xml(self, name: str) -> NetworkXML:
        """The network's XML."""
        with map_errors(self.uri, what=f"read network {name}"):
            return NetworkXML.from_xml(self._network(name).XMLDesc())

    def define_network(self, xml: NetworkXML, autostart: bool = True) -> None:
        """Define a persistent network."""
        with map_errors(self.uri, what=f"define network {xml.name}"):
            net = self._conn.networkDefineXML(xml.to_xml())
            net.setAutostart(1 if autostart else 0)

    def start_network(self, name: str) -> None:
        """Start a network (bridge, dnsmasq, firewall rules)."""
        net = self._network(name)
        with map_errors(self.uri, what=f"start network {name}"):
            if not net.isActive():
                net.create()

    def stop_network(self, name: str) -> None:
        """Stop a network."""
        net = self._network(name)
        with map_errors(self.uri, what=f"stop network {name}"):
            if net.isActive():
                net.destroy()

    def undefine_network(self, name: str) -> None:
        """Remove a network's definition (stopping it first)."""
        net = self._network(name)
        with map_errors(self.uri, what=f"delete network {name}"):
            if net.isActive():
                net.destroy()
            net.undefine()

    def leases(self, name: str) -> list[Lease]:
        """The network's current DHCP leases."""
        net = self._network(name)
        with map_errors(self.uri, what=f"leases of {name}"):
            raw = net.DHCPLeases() or []
        return [
            Lease(
                network=name,
                mac=le["mac"],
                ip=le["ipaddr"],
                prefix=int(le["prefix"]),
                hostname=le.get("hostname") or None,
                expires=int(le.get("expirytime") or 0),
            )
            for le in raw
            if le.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4
        ]

    # -- storage ----------------------------------------------------------------------------
    def _pool(self, name: str) -> libvirt.virStoragePool:
        with map_errors(self.uri, not_found=f"no storage pool named {name!r} on {self.uri}"):
            return self._conn.storagePoolLookupByName(name)

    def ensure_pool(self, xml: PoolXML) -> None:
        """Make sure a directory pool exists, is built, active and autostarted."""
        try:
            pool = self._conn.storagePoolLookupByName(xml.name)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise translate(e, self.uri) from e
            with map_errors(self.uri, what=f"create storage pool {xml.name}"):
                pool = self._conn.storagePoolDefineXML(xml.to_xml())
                pool.build(0)
                pool.setAutostart(1)
        with map_errors(self.uri, what=f"start storage pool {xml.name}"):
            if not pool.isActive():
                pool.create()

    def pool_xml(self, name: str) -> PoolXML:
        """The pool's XML (target path, capacity, available space)."""
        from kvmlab.libvirt.storage import PoolXML

        pool = self._pool(name)
        with map_errors(self.uri, what=f"read pool {name}"):
            pool.refresh(0)
            return PoolXML.from_xml(pool.XMLDesc())

    def list_volumes(self, pool_name: str) -> list[Volume]:
        """Every volume in a pool."""
        pool = self._pool(pool_name)
        with map_errors(self.uri, what=f"list volumes of {pool_name}"):
            vols = [_volume_model(pool_name, v) for v in pool.listAllVolumes()]
        return sorted(vols, key=lambda v: v.name)

    def _volume(self, pool_name: str, name: str, kind: str = "volume") -> libvirt.virStorageVol:
        pool = self._pool(pool_name)
        with map_errors(
            self.uri, not_found=f"no {kind} named {name!r} in pool {pool_name} on {self.uri}"
        ):
            return pool.storageVolLookupByName(name)

    def has_volume(self, pool_name: str, name: str) -> bool:
        """Whether the pool holds a volume of that name."""
        pool = self._pool(pool_name)
        return self._exists(
            lambda: pool.storageVolLookupByName(name), libvirt.VIR_ERR_NO_STORAGE_VOL
        )

    def volume(self, pool_name: str, name: str) -> Volume:
        """One volume."""
        vol = self._volume(pool_name, name)
        with map_errors(self.uri, what=f"read volume {name}"):
            return _volume_model(pool_name, vol)

    def create_volume(self, pool_name: str, xml: VolumeXML) -> Volume:
        """Create a volume from XML (an overlay when the XML has a backing store)."""
        pool = self._pool(pool_name)
        with map_errors(self.uri, what=f"create volume {xml.name}"):
            vol = pool.createXML(xml.to_xml(), 0)
            return _volume_model(pool_name, vol)

    def clone_volume(
        self, pool_name: str, xml: VolumeXML, source: str, source_pool: str | None = None
    ) -> Volume:
        """Create a volume as a full copy of another volume (of ``source_pool``, default same)."""
        pool = self._pool(pool_name)
        src = self._volume(source_pool or pool_name, source)
        with map_errors(self.uri, what=f"copy volume {source} to {xml.name}"):
            vol = pool.createXMLFrom(xml.to_xml(), src, 0)
            return _volume_model(pool_name, vol)

    def delete_volume(self, pool_name: str, name: str) -> None:
        """Delete a volume (missing is fine: deletion is idempotent)."""
        try:
            vol = self._conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            vol.delete(0)
        except libvirt.libvirtError as e:
            gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
            if e.get_error_code() in gone:
                return
            raise translate(e, self.uri, what=f"delete volume {name}") from e

    def upload_volume(
        self,
        pool_name: str,
        name: str,
        data: Path | bytes,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Write a local file or bytes into an existing volume through a libvirt stream."""
        self._upload(self._volume(pool_name, name), name, data, progress)

    def _upload(
        self,
        vol: libvirt.virStorageVol,
        name: str,
        data: Path | bytes,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        stream = self._conn.newStream(0)
        done = 0
        with map_errors(self.uri, what=f"upload into {name}"), _chunks(data) as chunks:
            vol.upload(stream, 0, size, 0)
            try:
                for chunk in chunks:
                    while chunk:
                        sent = stream.send(chunk)
                        chunk = chunk[sent:]
                        done += sent
                    if progress:
                        progress(done, size)
                stream.finish()
            except BaseException:
                stream.abort()
                raise

    def local_volume_path(self, pool_name: str, name: str) -> Path | None:
        """The volume's file as this process sees it, if it is the very file the daemon uses.

        Writes 16 random bytes at the start of the volume through libvirt and reads them back
        from the volume's path here: a remote daemon, or one in another mount namespace, gives
        None. Meant for a volume that is about to be filled (its first bytes are overwritten).
        """
        import os
        import pathlib

        vol = self._volume(pool_name, name)
        nonce = os.urandom(16)
        self._upload(vol, name, nonce)
        with map_errors(self.uri, what=f"read volume {name}"):
            path = pathlib.Path(vol.path())
        try:
            with path.open("rb") as f:
                return path if f.read(len(nonce)) == nonce else None
        except OSError:
            return None

    def refresh_pool(self, pool_name: str, timeout: float = 30.0) -> None:
        """Have libvirt re-read a pool's volumes (format, sizes) after their files changed.

        libvirt refuses while another client builds a volume in the pool (a full clone); this
        waits for that, up to ``timeout`` seconds.
        """
        pool = self._pool(pool_name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pool.refresh(0)
                return
            except libvirt.libvirtError as e:
                busy = "asynchronous jobs" in (e.get_error_message() or "")
                if not busy or time.monotonic() > deadline:
                    raise translate(e, self.uri, what=f"refresh pool {pool_name}") from e
            time.sleep(0.1)

    # -- snapshots --------------------------------------------------------------------------
    # kvmlab takes internal qcow2 snapshots only (docs/snapshots.md says why); these methods
    # speak SnapshotXML and kvmlab.models.Snapshot, never virDomainSnapshot.
    def _snapshot(self, name: str, snap: str) -> libvirt.virDomainSnapshot:
        dom = self._domain(name)
        with map_errors(
            self.uri,
            not_found=f"no snapshot named {snap!r} of VM {name!r} on {self.uri}",
            hint=f"`kvmlab snap list {name}` shows its snapshots",
        ):
            return dom.snapshotLookupByName(snap, 0)

    def list_snapshots(self, name: str) -> list[Snapshot]:
        """Every snapshot of a machine (``children`` left empty: the service builds the tree)."""
        dom = self._domain(name)
        with map_errors(self.uri, what=f"list snapshots of {name}"):
            return [_snapshot_model(name, s) for s in dom.listAllSnapshots(0)]

    def snapshot(self, name: str, snap: str) -> Snapshot:
        """One snapshot (:class:`SnapshotNotFound` with a hint if there is none)."""
        s = self._snapshot(name, snap)
        with map_errors(self.uri, what=f"read snapshot {snap} of {name}"):
            return _snapshot_model(name, s)

    def create_snapshot(self, name: str, xml: SnapshotXML) -> None:
        """Take an internal snapshot described by ``xml`` (with RAM when the machine runs)."""
        dom = self._domain(name)
        with map_errors(self.uri, what=f"snapshot {name}"):
            dom.snapshotCreateXML(xml.to_xml(), 0)

    def revert_to_snapshot(self, name: str, snap: str, *, run: bool | None = None) -> None:
        """Revert to a snapshot; ``run`` True: running afterwards, False: paused, None: as taken."""
        dom = self._domain(name)
        s = self._snapshot(name, snap)
        flags = 0
        if run is True:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        elif run is False:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        with map_errors(self.uri, what=f"revert {name} to {snap}"):
            dom.revertToSnapshot(s, flags)

    def load_snapshot_in_place(self, name: str, snap: str) -> str | None:
        """Load a RAM snapshot into the running QEMU (``loadvm``); None when done, else why not.

        libvirt 9.0 reverts a running machine by stopping its QEMU (a kill loop that sleeps
        200 ms) and starting a new one that loads the snapshot, ~1 s for 256 MiB. QEMU can load
        its own internal snapshot into the running process instead (HMP ``loadvm``, what libvirt
        itself did for years; ~0.15 s here), which is safe only when the machine's hardware is
        what the snapshot saved: the guest layout of the live definition must equal the
        snapshot's (:func:`guest_layout`). libvirt's metadata is then told which snapshot is
        current. Done through libvirt's monitor passthrough ("tainted: custom-monitor" in its
        log). On any refusal the machine is as it was; if QEMU fails midway the caller must
        revert through libvirt (which restarts QEMU from the snapshot), and the reason says so.
        """
        import xml.etree.ElementTree as ET

        import libvirt_qemu

        from kvmlab.libvirt.snapshot import guest_layout

        if not _HMP_TOKEN.fullmatch(snap):
            return "the snapshot's name is not a plain word"
        dom = self._domain(name)
        s = self._snapshot(name, snap)
        with map_errors(self.uri, what=f"revert {name} to {snap}"):
            if dom.state()[0] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
                return "the machine is not running"
            snap_xml = s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            saved = ET.fromstring(snap_xml).find("./domain")
            if saved is None or guest_layout(saved) != guest_layout(ET.fromstring(dom.XMLDesc(0))):
                return "the machine's hardware changed since the snapshot"
            try:
                reply = libvirt_qemu.qemuMonitorCommand(
                    dom, f"loadvm {snap}", libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
                ).strip()
            except libvirt.libvirtError as e:  # no passthrough (e.g. libvirt's test driver)
                return f"libvirt did not pass the load on to QEMU ({e.get_error_message()})"
            if reply:
                return f"QEMU could not load it in place ({reply})"
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                dom.resume()  # loadvm restarts only a guest that was running before
            flags = (
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            )
            dom.snapshotCreateXML(snap_xml, flags)
        return None

    def delete_snapshot(self, name: str, snap: str) -> None:
        """Delete one snapshot; its children are re-parented to its parent."""
        s = self._snapshot(name, snap)
        with map_errors(self.uri, what=f"delete snapshot {snap} of {name}"):
            s.delete(0)

    def snapshot_state_sizes(self, name: str) -> dict[str, int]:
        """Saved RAM/device-state bytes per internal snapshot, read from QEMU (running only).

        QMP ``query-block`` through libvirt's monitor passthrough: libvirt 9.0 has no API for
        qcow2 snapshot sizes. It marks the domain "tainted: custom-monitor" in its log.
        """
        import json

        import libvirt_qemu

        dom = self._domain(name)
        try:
            if dom.state()[0] not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
                return {}
            reply = libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "query-block"}), 0)
        except libvirt.libvirtError:
            return {}  # sizes are an extra: a listing must not fail for them
        sizes: dict[str, int] = {}
        for dev in json.loads(reply).get("return", []):
            image = (dev.get("inserted") or {}).get("image") or {}
            for s in image.get("snapshots") or []:
                sizes[s["name"]] = sizes.get(s["name"], 0) + int(s.get("vm-state-size", 0))
        return sizes

    # -- clones -----------------------------------------------------------------------------
    def volume_allocation(self, pool_name: str, name: str) -> int | None:
        """Bytes a volume uses on the host now (None if it does not exist).

        Reads the file's size afresh (``virStorageVolGetInfo`` refreshes it), so it can
        follow a copy that ``createXMLFrom`` is writing from another thread.
        """
        try:
            vol = self._conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            return int(vol.info()[2])
        except libvirt.libvirtError as e:
            gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
            if e.get_error_code() in gone:
                return None
            raise translate(e, self.uri, what=f"read volume {name}") from e

    def machine_names(self) -> set[str]:
        """The names of every domain (one RPC; no XML)."""
        with map_errors(self.uri, what="list machines"):
            return {d.name() for d in self._conn.listAllDomains()}


    # -- networks (issue 3) -----------------------------------------------------------------
    def machine_metadata(self, name: str, namespace: str) -> str | None:
        """The machine's metadata element of ``namespace`` (persistent config), or None."""
        dom = self._domain(name)
        try:
            return str(
                dom.metadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                    namespace,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG,
                )
            )
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise translate(e, self.uri, what=f"read metadata of {name}") from e

    def set_machine_metadata(
        self, name: str, key: str, namespace: str, xml: str | None
    ) -> None:
        """Set (or with ``None`` remove) one metadata element, live and persistent."""
        dom = self._domain(name)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with map_errors(self.uri, what=f"write metadata of {name}"):
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                xml,
                key if xml is not None else None,
                namespace,
                flags,
            )

    def add_dhcp_host(self, network: str, mac: str, name: str | None, ip: str) -> None:
        """Reserve ``ip`` for ``mac`` in a network's DHCP server, live and persistent."""
        self._update_dhcp_host(
            network, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, mac, name, ip, "reserve"
        )

    def remove_dhcp_host(self, network: str, mac: str, ip: str) -> None:
        """Drop the reservation of ``ip`` for ``mac``, live and persistent."""
        self._update_dhcp_host(
            network, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, mac, None, ip, "unreserve"
        )

    def _update_dhcp_host(
        self, network: str, command: int, mac: str, name: str | None, ip: str, verb: str
    ) -> None:
        from kvmlab.libvirt.network import DhcpHostXML

        host = DhcpHostXML()
        host.mac, host.name, host.ip = mac, name, ip
        net = self._network(network)
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        with map_errors(self.uri, what=f"{verb} {ip} in network {network}"):
            if net.isActive():
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host.to_xml(), flags)

class ConsoleStream:
    """A serial console as bytes in and out; hides the libvirt stream from the services."""

    def __init__(self, stream: libvirt.virStream) -> None:
        self._stream = stream

    def recv(self, size: int = 4096) -> bytes | None:
        """Bytes from the guest; None when nothing is there yet; b"" once it closed."""
        try:
            data = self._stream.recv(size)
        except libvirt.libvirtError:
            return b""
        if isinstance(data, int):  # -2: would block
            return None
        return bytes(data)

    def send(self, data: bytes) -> None:
        """Bytes to the guest."""
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(view.tobytes())
            except libvirt.libvirtError:
                return  # the console closed; the reader notices
            if sent == -2:
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        """Close the console."""
        with suppress(libvirt.libvirtError):
            self._stream.finish()


UPLOAD_CHUNK = 1024 * 1024
"""Bytes per stream message of an upload. 256 MiB into a local pool, sizes alternating in one
process: 256 KiB 0.20-0.26 s, 1 MiB 0.16-0.41 s, 4 MiB 0.52-1.08 s (libvirt took every chunk
whole; the rest of a partly sent chunk would be sent again)."""


@contextmanager
def _chunks(data: Path | bytes, size: int = UPLOAD_CHUNK) -> Iterator[Iterator[bytes]]:
    if isinstance(data, bytes):
        yield iter([data[i : i + size] for i in range(0, len(data), size)])
        return
    with data.open("rb") as f:
        yield iter(lambda: f.read(size), b"")


def _volume_model(pool_name: str, vol: libvirt.virStorageVol) -> Volume:
    """A libvirt volume as kvmlab's :class:`Volume` (raises libvirtError: map it)."""
    from kvmlab.libvirt.storage import VolumeXML

    return convert.volume(pool_name, VolumeXML.from_xml(vol.XMLDesc()))


def _snapshot_model(machine: str, s: libvirt.virDomainSnapshot) -> Snapshot:
    """A libvirt snapshot as kvmlab's :class:`Snapshot` (raises libvirtError: map it)."""
    from kvmlab.libvirt.snapshot import SnapshotXML
    from kvmlab.models import Snapshot, SnapshotKind

    xml = SnapshotXML.from_xml(s.getXMLDesc(0))
    external = xml.memory_snapshot == "external" or any(
        d.snapshot == "external" for d in xml.disks
    )
    memory = xml.memory_snapshot in ("internal", "external") or (
        xml.memory_snapshot is None and xml.state not in ("shutoff", "disk-snapshot")
    )
    return Snapshot(
        machine=machine,
        name=xml.name or s.getName(),
        kind=SnapshotKind.MEMORY if memory else SnapshotKind.DISK,
        state=xml.state or "unknown",
        location="external" if external else "internal",
        created=xml.creation_time or 0,
        parent=xml.parent_name,
        description=xml.description,
        current=bool(s.isCurrent(0)),
    )


def _version(n: int) -> str:
    return f"{n // 1000000}.{(n // 1000) % 1000}.{n % 1000}"
