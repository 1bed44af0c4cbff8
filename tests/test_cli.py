"""Tests for srlm/cli.py: bad input ends in one line on stderr and exit code 2; --debug shows more.

    python -m pytest -q tests/test_cli.py
"""
import pytest

from srlm.cli import run_cli
from srlm.io import DataError


def fails_with(error):
    def main(argv):
        assert "--debug" not in argv
        raise error
    return main


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(fails_with(DataError("x.jsonl:3: key 'prompt' must be a string,\ngot int")), "tool.py", ["--a"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "tool.py: error: x.jsonl:3: key 'prompt' must be a string, got int\n"


def test_debug_flag_adds_the_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(fails_with(FileNotFoundError("m: model directory not found")), "tool.py", ["--debug"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("tool.py: error: m: model directory not found\n")


def test_failures_exit_1_and_bugs_keep_their_traceback(capsys):
    class Diverged(RuntimeError):
        pass

    with pytest.raises(SystemExit) as e:
        run_cli(fails_with(Diverged("loss is nan at step 3")), "train.py", [], failures=(Diverged,))
    assert e.value.code == 1 and capsys.readouterr().err == "train.py: error: loss is nan at step 3\n"
    with pytest.raises(KeyError):
        run_cli(fails_with(KeyError("bug")), "tool.py", [])
    assert run_cli(lambda argv: argv, "tool.py", ["--x", "--debug"]) == ["--x"]
