"""One in-process ``kvmlab ls --json`` cut into phases: ``python ls_phases.py URI``.

Prints ``{"phase": milliseconds, ...}`` as JSON. ``bench_ls.py`` runs it in fresh
interpreters (so imports are measured cold, as the CLI pays them) and reports the medians.
Imports nothing before the clock starts but ``time``, and uses only kvmlab's public names,
in the order the console script does the same work.
"""

import time

_MARKS = [("start", time.perf_counter())]


def _mark(name: str) -> None:
    _MARKS.append((name, time.perf_counter()))


def main(uri: str) -> dict[str, float]:
    import kvmlab.cli.fast  # noqa: F401  (what the console script imports first)

    _mark("import kvmlab.cli.fast (the console script entry)")
    from kvmlab.cli.output import emit_json
    from kvmlab.env import Env
    from kvmlab.services.machines import list_machines

    _mark("import services.machines + cli.output")
    env = Env(uri=uri)
    env.hypervisor  # noqa: B018  (imports the libvirt adapter, opens the connection)
    _mark("import libvirt adapter + connect")
    machines = list_machines(env)
    _mark("list_machines (RPCs, XML parse, convert)")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        emit_json([m.to_dict() for m in machines])
    _mark("to_dict + JSON output")
    env.close()
    _mark("close")
    return {name: (t - _MARKS[i][1]) * 1000 for i, (name, t) in enumerate(_MARKS[1:])}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main(sys.argv[1])))
