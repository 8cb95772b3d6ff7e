"""The commands' shared error exit."""

import pytest

from labse_tf import cli


def test_exit_on_prints_the_error_and_exits_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with cli.exit_on(FileNotFoundError, ValueError):
            raise ValueError("data.tsv:3: 2 fields, expected 3")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data.tsv:3: 2 fields, expected 3\n"


def test_exit_on_lets_other_errors_through():
    with pytest.raises(KeyError):
        with cli.exit_on(ValueError):
            raise KeyError("a bug, with its traceback")
