"""Tests for srlm/io.py: strict JSONL reading, atomic writes, resumable logs after a kill.

    python -m pytest -q tests/test_io.py
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srlm.io import (DataError, append_jsonl, atomic_write_text, drop_torn_tail, read_jsonl,
                     read_jsonl_partial, write_json, write_jsonl)

ROOT = Path(__file__).resolve().parents[1]


def test_read_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError, match=r"rows.jsonl:3: malformed JSON"):
        read_jsonl(f)
    f.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: expected a JSON object, got list"):
        read_jsonl(f)
    f.write_text('{"a": 1}\n{"b": 1}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: missing required field\(s\) \['a'\]"):
        read_jsonl(f, required=("a",))
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_read_jsonl_non_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes('{"a": "ok"}\n{"a": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8"):
        read_jsonl(f)


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
        write_json(tmp_path / "b.json", {"x": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    for name in ("a.jsonl", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o640  # what open() gives, for comparison


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    f = tmp_path / "out.jsonl"
    write_jsonl(f, [{"x": 1}])
    before = f.read_bytes()

    def rows():
        yield {"x": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(f, rows())
    assert f.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind
    atomic_write_text(f, "new\n")
    assert f.read_text() == "new\n"


def test_torn_last_line_is_dropped_on_read_and_cut_before_the_next_append(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"i": 0}, {"i": 1}])
    with open(log, "ab") as f:  # what a kill in the middle of an append leaves
        f.write('{"i": 2, "text": "caf\u00e9'.encode()[:-1])  # cut inside a UTF-8 character
    assert read_jsonl_partial(log) == [{"i": 0}, {"i": 1}]
    append_jsonl(log, [{"i": 3}])
    assert read_jsonl_partial(log) == [{"i": 0}, {"i": 1}, {"i": 3}]
    assert read_jsonl(log) == [{"i": 0}, {"i": 1}, {"i": 3}]  # strict reading agrees: nothing torn inside


def test_malformed_line_inside_a_log_is_an_error_naming_it(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"i": 0}\n{"i": \n{"i": 2}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: malformed JSON"):
        read_jsonl_partial(log)
    log.write_text('{"i": 0}\n{"i": \n')  # a torn line that later got its newline: still the last
    assert read_jsonl_partial(log) == [{"i": 0}]


def test_drop_torn_tail_counts_bytes_and_handles_a_log_of_one_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"i": 0')
    assert drop_torn_tail(log) == 7 and log.read_bytes() == b""
    log.write_bytes(b'{"i": 0}\n')
    assert drop_torn_tail(log) == 0 and log.read_bytes() == b'{"i": 0}\n'
    assert drop_torn_tail(tmp_path / "missing") == 0


CHILD = """
import sys
from srlm.io import append_jsonl
row = {"text": "x" * (16 << 20)}
while True:
    append_jsonl(sys.argv[1], [row])
"""


def test_kill_during_append_then_resume(tmp_path):
    """SIGKILL a process in the middle of appending a long line; the next append and read work.

    Linux stops a large write() between pages when a fatal signal arrives, so killing the
    writer while the file size is not a whole number of lines leaves a torn last line.
    """
    log = tmp_path / "log.jsonl"
    line = len(json.dumps({"text": "x" * (16 << 20)})) + 1
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            size = log.stat().st_size if log.exists() else 0
            if size % line:  # a write is under way
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    whole, torn = divmod(log.stat().st_size, line)
    assert torn, "the kill did not land inside a write; the test could not tear a line"
    assert len(read_jsonl_partial(log)) == whole
    append_jsonl(log, [{"resumed": True}])
    rows = read_jsonl_partial(log)
    assert len(rows) == whole + 1 and rows[-1] == {"resumed": True}
    assert log.stat().st_size == whole * line + len('{"resumed": true}\n')


def test_read_jsonl_types_unique_and_check_name_line_and_key(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "x"}\n\n{"id": 2, "prompt": 42}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: key 'prompt' must be a string, got int 42"):
        read_jsonl(f, types={"id": "id", "prompt": "str"})
    f.write_text('{"id": ["a"], "prompt": "x"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:1: key 'id' must be a string or an integer, got list"):
        read_jsonl(f, types={"id": "id"})
    f.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: key 'id': duplicate value 'a' \(first on line 1\)"):
        read_jsonl(f, unique="id")
    with pytest.raises(DataError, match=r"p\.jsonl:2: key 'id' is b"):
        read_jsonl(f, check=lambda r: "key 'id' is b" if r["id"] == "b" else None)
    f.write_text('{"s": [1, NaN]}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:1: key 's' must be a list of numbers"):
        read_jsonl(f, types={"s": "list[number]"})


def test_input_hash_is_order_independent_and_sensitive_to_content():
    from srlm.io import input_hash

    assert input_hash({"a": 1, "b": [1, 2]}) == input_hash({"b": [1, 2], "a": 1})
    assert input_hash({"a": 1}) != input_hash({"a": 2})
    assert input_hash(["x", "y"]) != input_hash(["y", "x"])  # reordered candidates are different inputs
    assert len(input_hash("x")) == 16


def test_check_replace_refuses_fewer_rows_unless_overwrite(tmp_path):
    from srlm.io import check_replace

    out = tmp_path / "out.jsonl"
    check_replace(out, 0)  # nothing to replace
    write_jsonl(out, [{"i": i} for i in range(3)])
    check_replace(out, 3) and check_replace(out, 5)
    with pytest.raises(DataError, match=r"out\.jsonl: would replace its 3 rows with 1; .* --overwrite"):
        check_replace(out, 1)
    check_replace(out, 0, overwrite=True)


def test_check_settings_names_each_difference(tmp_path):
    from srlm.io import check_settings

    f = tmp_path / "run" / "settings.json"
    check_settings(f, {"seed": 0})  # no record yet
    write_json(f, {"seed": 0, "dpo_lr": 1e-4, "device": "cpu", "iterations": 2})
    check_settings(f, {"seed": 0, "dpo_lr": 1e-4, "device": "cuda", "iterations": 3}, ignore=("device", "iterations"))
    with pytest.raises(DataError, match=r"run: this run directory was made with other settings "
                                        r"\(dpo_lr: recorded 0\.0001, now 0\.0003; seed: recorded 0, now 5\)"):
        check_settings(f, {"seed": 5, "dpo_lr": 3e-4, "device": "cpu", "iterations": 2})


def test_check_settings_added_keys_take_the_old_behaviour(tmp_path):
    """A record from before a setting existed continues when the setting keeps the old behaviour."""
    from srlm.io import check_settings

    f = tmp_path / "run" / "settings.json"
    write_json(f, {"seed": 0})
    check_settings(f, {"seed": 0, "min_margin": 0.0}, added={"min_margin": 0.0})
    with pytest.raises(DataError, match=r"min_margin: recorded 0\.0, now 1\.5"):
        check_settings(f, {"seed": 0, "min_margin": 1.5}, added={"min_margin": 0.0})
    with pytest.raises(DataError, match="min_margin: recorded null, now 0.0"):   # not declared as added
        check_settings(f, {"seed": 0, "min_margin": 0.0})


def test_read_text_names_a_file_that_is_not_utf8(tmp_path):
    from srlm.io import read_text

    (tmp_path / "ok.txt").write_text("café", encoding="utf-8")
    assert read_text(tmp_path / "ok.txt") == "café"
    (tmp_path / "latin1.txt").write_bytes("ab café!".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text \(invalid continuation byte at byte 7\)"):
        read_text(tmp_path / "latin1.txt")

