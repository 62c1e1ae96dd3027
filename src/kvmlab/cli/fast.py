"""The console script's entry point, with a click-free fast path for ``kvmlab ls``.

``kvmlab ls`` is what people and scripts run most, and it should start about as fast as
``virsh list``. Importing click costs ~20 ms, a fifth of the whole command, so the plain forms
``kvmlab [-c URI] [--json] ls [--json]`` are recognised here and served by the very same
service and output functions the click command uses; anything else (help, other options,
other commands) goes to the full CLI in :mod:`kvmlab.cli.main`. tests/cli/test_fast_ls.py
checks that both paths print the same bytes and exit codes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def parse_fast_ls(argv: Sequence[str]) -> tuple[str | None, bool] | None:
    """``(uri, as_json)`` if ``argv`` is a plain ``ls`` invocation, else None."""
    uri: str | None = None
    as_json = False
    seen_ls = False
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "ls" and not seen_ls:
            seen_ls = True
        elif a == "--json":
            as_json = True
        elif not seen_ls and a in ("-c", "--connect") and i + 1 < len(args):
            uri = args[i + 1]
            i += 1
        elif not seen_ls and a.startswith("--connect="):
            uri = a.split("=", 1)[1]
        else:
            return None
        i += 1
    return (uri, as_json) if seen_ls else None


def fast_ls(uri: str | None, as_json: bool) -> int:
    """``kvmlab ls`` without click: same service, same output, same error reporting."""
    from kvmlab.cli.output import emit_json, machines_table, report_error
    from kvmlab.env import Env
    from kvmlab.errors import KvmlabError
    from kvmlab.services.machines import list_machines

    env = Env(uri=uri or os.environ.get("KVMLAB_CONNECT") or None)
    try:
        machines = list_machines(env)
    except KvmlabError as e:
        return report_error(e)
    finally:
        env.close()
    if as_json:
        emit_json([m.to_dict() for m in machines])
    else:
        machines_table(machines)
    return 0


def entry() -> None:
    """Console-script entry point."""
    parsed = parse_fast_ls(sys.argv[1:])
    if parsed is not None:
        sys.exit(fast_ls(*parsed))
    from kvmlab.cli.main import main

    sys.exit(main())
