"""The console script's entry point, with a click-free fast path for the commands run most.

Importing click and every CLI module costs ~30 ms. ``kvmlab ls`` should start about as fast as
``virsh list``, and ``kvmlab net create`` (one ~80 ms libvirt call) should stay within 1.2x of
``virsh net-define`` + ``virsh net-start``, and ``snap create``/``snap revert`` (a few hundred
ms) should not be ~20% slower than virsh only for starting, and ``image pull`` is measured
against curl. So their plain forms are recognised here::

    kvmlab [-c URI] [--json] ls [--json]
    kvmlab [-c URI] [--json] net create NAME [--nat|--isolated] [--subnet S]
           [--dhcp-range FIRST-LAST] [--domain D] [--json]
    kvmlab [-c URI] [--json] snap create VM [NAME] [--memory|--disk-only] [-m TEXT] [--json]
    kvmlab [-c URI] [--json] snap revert VM NAME [--start] [--json]
    kvmlab [-c URI] [--json] image pull URL|NAME [--name N] [--sha256 HEX] [--checksums URL]

(``--connect URI`` and ``--connect=URI``, ``--subnet=S`` etc. too) and served by the very same
service and output functions the click commands use, with the same error reporting and exit
codes. Anything else (help, other options such as ``--bridge`` or ``--debug``, an option
value that starts with ``-``, a missing or extra argument, other commands) goes to the full
CLI in :mod:`kvmlab.cli.main`, which also reports the usage errors. tests/cli/test_fast_*.py
check that both paths print the same bytes and exit codes.
"""

# No ``from __future__ import annotations`` (as in kvmlab.models): NamedTuple would compile
# every string annotation into a ForwardRef, ~1 ms of each command's start.
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from kvmlab.env import DEFAULT_URI, Env


class FastCommand(NamedTuple):
    """A command the fast path serves: the options it understands and what runs it.

    ``--json`` is understood by every command. ``run`` gets the environment, ``--json``, the
    positional arguments and the options by key; it raises :class:`KvmlabError` on failure.
    """

    flags: dict[str, tuple[str, str]]  # e.g. "--isolated": ("mode", "isolated")
    valued: dict[str, str]  # an option taking a value, and its key: "--subnet": "subnet"
    arguments: int  # how many positional arguments
    run: Callable[[Env, bool, list[str], dict[str, str]], None]
    optional: int = 0  # how many more positional arguments it may have


class Invocation(NamedTuple):
    """A command line the fast path serves, parsed."""

    words: tuple[str, ...]
    uri: str | None
    as_json: bool
    arguments: list[str]
    options: dict[str, str]


def _ls(env: Env, as_json: bool, _arguments: list[str], _options: dict[str, str]) -> None:
    from kvmlab.cli.output import emit_json, machines_table
    from kvmlab.services.machines import list_machines

    machines = list_machines(env)
    if as_json:
        emit_json([m.to_dict() for m in machines])
    else:
        machines_table(machines)


def _net_create(env: Env, as_json: bool, arguments: list[str], options: dict[str, str]) -> None:
    from kvmlab.cli.netcreate import create_routed_network

    create_routed_network(
        env,
        arguments[0],
        options.get("mode", "nat"),
        options.get("subnet"),
        options.get("dhcp_range"),
        options.get("domain"),
        as_json,
    )


def _snap_create(env: Env, as_json: bool, arguments: list[str], options: dict[str, str]) -> None:
    from kvmlab.cli.snapcmd import create_and_show

    name = arguments[1] if len(arguments) > 1 else None
    create_and_show(
        env, arguments[0], name, options.get("kind"), options.get("description"), as_json
    )


def _snap_revert(env: Env, as_json: bool, arguments: list[str], options: dict[str, str]) -> None:
    from kvmlab.cli.snapcmd import revert_and_show

    revert_and_show(env, arguments[0], arguments[1], "start" in options, as_json)


def _image_pull(env: Env, as_json: bool, arguments: list[str], options: dict[str, str]) -> None:
    from kvmlab.cli.pullcmd import pull_and_show

    pull_and_show(
        env,
        arguments[0],
        options.get("name"),
        options.get("sha256"),
        options.get("checksums"),
        as_json,
    )


FAST_COMMANDS: dict[tuple[str, ...], FastCommand] = {
    ("ls",): FastCommand({}, {}, 0, _ls),
    ("net", "create"): FastCommand(
        {"--nat": ("mode", "nat"), "--isolated": ("mode", "isolated")},  # the last one wins
        {"--subnet": "subnet", "--dhcp-range": "dhcp_range", "--domain": "domain"},
        1,
        _net_create,
    ),
    ("snap", "create"): FastCommand(
        {"--memory": ("kind", "memory"), "--disk-only": ("kind", "disk")},  # the last one wins
        {"-m": "description", "--description": "description"},
        1,
        _snap_create,
        optional=1,
    ),
    ("snap", "revert"): FastCommand({"--start": ("start", "1")}, {}, 2, _snap_revert),
    ("image", "pull"): FastCommand(
        {}, {"--name": "name", "--sha256": "sha256", "--checksums": "checksums"}, 1, _image_pull
    ),
}


def parse_fast(argv: Sequence[str]) -> Invocation | None:
    """The invocation if ``argv`` is a plain form of a fast command, else None."""
    args = list(argv)
    uri: str | None = None
    as_json = False
    i = 0
    while i < len(args):  # the global options, before the command's words
        if args[i] == "--json":
            as_json = True
        elif args[i] in ("-c", "--connect") and i + 1 < len(args):
            i += 1
            uri = args[i]
        elif args[i].startswith("--connect="):
            uri = args[i].partition("=")[2]
        else:
            break
        i += 1
    words = next((w for w in FAST_COMMANDS if tuple(args[i : i + len(w)]) == w), None)
    if words is None:
        return None
    command = FAST_COMMANDS[words]
    rest = args[i + len(words) :]
    arguments: list[str] = []
    options: dict[str, str] = {}
    j = 0
    while j < len(rest):
        a = rest[j]
        name, eq, value = a.partition("=")
        if a == "--json":
            as_json = True
        elif a in command.flags:
            key, flag_value = command.flags[a]
            options[key] = flag_value
        elif eq and name.startswith("--") and name in command.valued:  # click: -m=x is "=x"
            options[command.valued[name]] = value
        elif a in command.valued and j + 1 < len(rest) and not rest[j + 1].startswith("-"):
            j += 1
            options[command.valued[a]] = rest[j]
        elif a.startswith("-"):
            return None
        else:
            arguments.append(a)
        j += 1
    if not command.arguments <= len(arguments) <= command.arguments + command.optional:
        return None
    return Invocation(words, uri, as_json, arguments, options)


def run_fast(call: Invocation) -> int:
    """Run a fast command as :func:`kvmlab.cli.main.main` runs a click one: the same
    environment (``-c``, then ``$KVMLAB_CONNECT``), error reports and exit codes."""
    from kvmlab.cli.output import report_error, report_unexpected, say
    from kvmlab.errors import ExitStatus, KvmlabError

    env = Env(uri=call.uri or os.environ.get("KVMLAB_CONNECT") or DEFAULT_URI)
    if not call.as_json:
        env.progress = lambda msg: say(f"… {msg}")
    try:
        FAST_COMMANDS[call.words].run(env, call.as_json, call.arguments, call.options)
    except KvmlabError as e:
        return report_error(e)
    except KeyboardInterrupt:
        say("interrupted")
        return int(ExitStatus.INTERRUPTED)
    except Exception as e:
        return report_unexpected(e)
    finally:
        env.close()
    return int(ExitStatus.OK)


def entry() -> None:
    """Console-script entry point."""
    call = parse_fast(sys.argv[1:])
    if call is not None:
        rc = run_fast(call)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # e.g. a closed pipe: let the interpreter report it as it always does
            sys.exit(rc)
        if sys.getprofile() is not None or sys.gettrace() is not None:
            sys.exit(rc)  # a profiler or coverage tool writes its results at exit
        # The interpreter's teardown (freeing every module, libvirt's exit handlers) takes
        # ~9 ms, and nothing on these paths needs it: the connection is closed and the
        # output flushed, no atexit handler or temporary file is left.
        os._exit(rc)
    from kvmlab.cli.main import main

    sys.exit(main())
