"""The floor under ``kvmlab ls --json``: the same work with no kvmlab code in between.

``python ls_floor.py URI`` imports what kvmlab's CLI cannot do without (click, libvirt-python),
asks every domain for its state and XML (the RPCs ``kvmlab ls`` makes), parses each XML with
ElementTree and prints name, state, memory and MACs as JSON. ``bench_ls.py`` times it beside
kvmlab: the gap between the two is kvmlab's own overhead, and its ratio to ``virsh`` shows
how close to virsh a Python CLI built this way can get.
"""

import json
import sys
import xml.etree.ElementTree as ET

import click  # noqa: F401  (kvmlab's CLI framework: part of the floor)
import libvirt


def main(uri: str) -> None:
    conn = libvirt.open(uri)
    out = []
    for dom in conn.listAllDomains():
        state = dom.state()[0]
        root = ET.fromstring(dom.XMLDesc())
        out.append(
            {
                "name": root.findtext("name"),
                "state": state,
                "memory": root.findtext("memory"),
                "macs": [m.get("address") for m in root.iterfind("devices/interface/mac")],
            }
        )
    conn.close()
    json.dump(sorted(out, key=lambda m: str(m["name"])), sys.stdout, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
