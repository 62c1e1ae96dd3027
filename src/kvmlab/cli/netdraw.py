"""The terminal picture of a network (``kvmlab net show``): router, switch, machines' ports."""

from __future__ import annotations

from kvmlab.models import NetworkTopology


def topology_lines(topo: NetworkTopology) -> list[str]:
    """The terminal picture of ``kvmlab net show``."""
    n = topo.network
    lines = [
        f"network {n.name}  ({n.mode}, {n.subnet or 'no subnet'}, "
        f"{'active' if n.active else 'inactive'})"
    ]
    if n.mode == "bridge":
        lines.append("  LAN router (outside kvmlab: DHCP from the physical network)")
    elif topo.router:
        way_out = "NAT to the host's uplink" if topo.forwards else "no way out: isolated"
        dhcp = f", DHCP {n.dhcp_range[0]}-{n.dhcp_range[1]}" if n.dhcp_range else ""
        lines.append(f"  [router {topo.router}]  {way_out}{dhcp}")
    else:
        lines.append("  (no router)")
    lines.append("        |")
    lines.append(f"  [switch {topo.switch or '?'}]")
    if not topo.ports:
        lines.append("     (no machines attached)")
    for i, p in enumerate(topo.ports):
        branch = "`--" if i == len(topo.ports) - 1 else "|--"
        ip = p.ip or "-"
        lines.append(
            f"     {branch} {p.port or '(down)':<8} {p.mac}  {ip:<15}  {p.machine} "
            f"({p.state.value})"
        )
    return lines
