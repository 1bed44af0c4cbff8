"""Small file helpers shared by every step of the loop: JSONL in, JSONL out, atomically.

Every long job in srlm writes its results through these functions, so that
- a malformed input line fails with an error naming the file and the line number, and
- an output file is either the old version or the complete new one, never half written
  (write to a temporary file in the same folder, fsync, then rename over the target).

    from srlm.io import read_jsonl, write_jsonl
    rows = read_jsonl("prompts.jsonl", required=("prompt",))
    write_jsonl("out.jsonl", rows)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence


class DataError(ValueError):
    """Bad input data; the message names the file (and line or key) at fault."""


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    """Read a JSON-lines file into a list of dicts; blank lines are skipped.

    Raises DataError naming the file and 1-based line number for a line that is not a JSON
    object or lacks one of the `required` keys, and for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing required field(s) {missing}")
            rows.append(row)
    return rows


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Swap a fully written folder `tmp` into place at `path`, replacing any old one.

    The old folder is renamed aside first and deleted only after the new one is in place, so an
    interruption leaves either the old or the new folder (under its own or the aside name), never a mix.
    """
    tmp, path = Path(tmp), Path(path)
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write rows as JSON lines, atomically (the old file survives a crash mid-write)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write one JSON document, atomically, pretty-printed."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSONL log (metrics, partial results) and flush them to disk.

    Used for resumable jobs: each finished unit of work is appended as one complete line, so
    after a kill at most the last, partial line is lost; `read_jsonl_partial` ignores it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_partial(path: str | os.PathLike) -> list[dict]:
    """Read a resumable JSONL log: missing file -> [], a torn last line (from a kill) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn final line from an interrupted write
                break
            raise DataError(f"{path}:{i + 1}: malformed JSON in the middle of a log file") from None
    return rows
