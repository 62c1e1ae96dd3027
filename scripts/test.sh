#!/usr/bin/env bash
# Command 2 of the README: install the test dependencies and run the whole suite.
# Unit and CLI tests use libvirt's test driver; integration tests start their own libvirtd
# inside a private network namespace (nothing touches the host's networks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest -v --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$rc"
