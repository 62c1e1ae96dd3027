"""Names are refused before anything is created, with a message saying what is wrong."""

from __future__ import annotations

import pytest

from kvmlab.errors import ExitStatus, InvalidInput
from kvmlab.names import validate_name

BAD = {
    "a/b": "'/'",
    "..": "'..'",
    "a..b": "'..'",
    "-rf": "starts with '-'",
    "it's": "\"'\"",
    'say"hi': "'\"'",
    "a<b": "'<'",
    "a&b": "'&'",
    "two words": "' '",
    "x" * 65: "more than 64",
    "": "empty",
    ".hidden": "starts with '.'",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_names_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_name(name, "machine")
    assert BAD[name] in str(err.value)
    assert "letters, digits" in str(err.value)  # the hint says what is allowed
    assert err.value.exit_status is ExitStatus.USAGE


@pytest.mark.parametrize("name", ["web", "web-1", "db_2", "a.b", "X" * 64, "9lives"])
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name
