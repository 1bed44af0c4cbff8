"""Small file helpers shared by every step of the loop: JSONL in, JSONL out, atomically.

Every long job in srlm writes its results through these functions, so that
- a malformed input line fails with an error naming the file and the line number, and
- an output file is either the old version or the complete new one, never half written
  (write to a temporary file in the same folder, fsync, then rename over the target), and gets
  the permissions the user's umask gives any new file (mkstemp alone would make it 0600);
- a resumable log killed in the middle of an append loses only its torn last line: readers
  drop it, and the next append cuts it off first, so it never ends up in the middle of the log.

    from srlm.io import read_jsonl, write_jsonl
    rows = read_jsonl("prompts.jsonl", required=("prompt",))
    write_jsonl("out.jsonl", rows)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence


class DataError(ValueError):
    """Bad input data; the message names the file (and line or key) at fault."""


def _lines(path: Path) -> list[bytes]:
    """The raw lines of a file, each with its b"\\n" (the last one may lack it)."""
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def _decode(line: bytes, path: Path, lineno: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line); "
                        f"save the file as UTF-8") from None


# What a key of a row may hold, for read_jsonl's `types`: name -> (check, words for the message).
FIELD_TYPES = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "id": (lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)), "a string or an integer"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a number"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "list[number]": (lambda v: isinstance(v, list) and all(FIELD_TYPES["number"][0](x) for x in v),
                     "a list of numbers"),
}


def read_text(path: str | os.PathLike) -> str:
    """A whole text file (a config, a template); not UTF-8 is a DataError naming the file and byte."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start + 1}); save the file as UTF-8") from None


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), types: dict[str, str] | None = None,
               unique: str | None = None, check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """Read a JSON-lines file into a list of dicts; blank lines are skipped.

    Raises DataError naming the file, the 1-based line number and the key for a line that is not
    UTF-8, not a JSON object, lacks one of the `required` keys, has a key of the wrong type
    (`types`: key -> a name in FIELD_TYPES, checked where the key is present), repeats the value
    of the `unique` key or fails `check(row)` (which returns None or what is wrong, naming the
    key); and for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows, seen = [], {}
    for lineno, raw in enumerate(_lines(path), start=1):
        line = _decode(raw, path, lineno)
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
        for key, kind in (types or {}).items():
            ok, words = FIELD_TYPES[kind]
            if key in row and not ok(row[key]):
                raise DataError(f"{path}:{lineno}: key {key!r} must be {words}, got {_type_name(row[key])} "
                                f"{json.dumps(row[key], ensure_ascii=False)[:40]}")
        if unique is not None and unique in row:
            value = str(row[unique])
            if value in seen:
                raise DataError(f"{path}:{lineno}: key {unique!r}: duplicate value {row[unique]!r} "
                                f"(first on line {seen[value]})")
            seen[value] = lineno
        problem = check(row) if check is not None else None
        if problem:
            raise DataError(f"{path}:{lineno}: {problem}")
        rows.append(row)
    return rows


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open(path, "w") would have given the file
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
    after a kill at most the last, partial line is lost; `read_jsonl_partial` ignores it, and
    this function cuts it off before appending (else it would end up in the middle of the log).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def drop_torn_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (no newline at its end: a kill in the middle of an append) off a log.

    Returns the number of bytes removed. Every complete line of a log ends with "\n", so
    whatever follows the last newline is the unfinished write of a killed process.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:  # scan back in blocks for the last newline
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep


def read_jsonl_partial(path: str | os.PathLike) -> list[dict]:
    """Read a resumable JSONL log: missing file -> [], a torn last line (from a kill) is dropped.

    The torn line is one without its final newline (`append_jsonl` writes whole lines; a kill
    can cut one anywhere, even inside a UTF-8 character), or a last line that does not parse.
    Malformed JSON anywhere else is a DataError naming the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = _lines(path)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # torn final line from an interrupted write
    rows = []
    for i, raw in enumerate(lines):
        try:
            line = _decode(raw, path, i + 1)
            if not line.strip():
                continue
            rows.append(json.loads(line))
        except (json.JSONDecodeError, DataError):
            if i == len(lines) - 1:  # a last line that was torn and then ended by a newline
                break
            raise DataError(f"{path}:{i + 1}: malformed JSON (or not UTF-8) in the middle of a log "
                            f"file; delete the file to start this step over") from None
    return rows


# ---- resuming only what still matches, replacing only with complete results ----
def input_hash(obj) -> str:
    """A short fingerprint of everything that produced a result (prompt text, settings, model).

    Resumable steps store it in each row ("input_hash") and reuse a row only when the hash of
    its inputs is unchanged; canonical JSON (sorted keys) makes it independent of dict order.
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def check_replace(path: str | os.PathLike, n_rows: int, overwrite: bool = False, what: str = "rows") -> None:
    """Refuse to replace an existing JSONL output with fewer rows (or none) unless `overwrite`.

    A run that produces less than the file it would replace (an empty or cut input, a wrong
    path) is far more often a mistake than an intent; the old file stays as it is.
    """
    path = Path(path)
    if overwrite or not path.is_file():
        return
    old = sum(1 for line in _lines(path) if line.strip())
    if n_rows < old:
        raise DataError(f"{path}: would replace its {old} {what} with {n_rows}; the file is left as it is "
                        f"(pass --overwrite to replace it anyway)")


def check_settings(path: str | os.PathLike, settings: dict, ignore: Iterable[str] = (),
                   added: dict | None = None) -> None:
    """Refuse to continue work recorded in `path` (a settings.json) under other `settings`.

    Each difference is named: "seed: recorded 0, now 5". Keys in `ignore` (where the work runs,
    how many iterations to go on for) may change between runs. `added`: settings newer than some
    records, with the value that does what a record without them did; a record that lacks one
    counts as holding that value. A missing file passes.
    """
    path = Path(path)
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e}); delete it only if the run directory is to start over") from None
    if not isinstance(old, dict):
        raise DataError(f"{path}: expected a JSON object of settings, got {type(old).__name__}")
    now = json.loads(json.dumps(settings, default=str))  # compare as JSON would record them
    ignore = set(ignore)
    old = {**json.loads(json.dumps(added or {})), **old}
    diff = [f"{k}: recorded {json.dumps(old.get(k))}, now {json.dumps(now.get(k))}"
            for k in sorted(set(old) | set(now)) if k not in ignore and old.get(k) != now.get(k)]
    if diff:
        raise DataError(f"{path.parent}: this run directory was made with other settings ({'; '.join(diff)}); "
                        f"rerun with the recorded settings, or choose a new directory")


def partial_log(output: str | os.PathLike, rank: int = 0, world_size: int = 1) -> Path:
    """The resumable log a rank appends to while it works towards `output`:
    `<output>.partial` in one process, `<output>.partial.rank{r}` under torchrun."""
    output = Path(output)
    return output.with_name(output.name + (f".partial.rank{rank}" if world_size > 1 else ".partial"))


def all_partial_logs(output: str | os.PathLike) -> list[Path]:
    """Every resumable log of `output`, whatever world size wrote it."""
    output = Path(output)
    return sorted(output.parent.glob(output.name + ".partial*")) if output.parent.is_dir() else []
