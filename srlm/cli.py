"""How every command line of srlm ends on bad input: one line naming file, line and key, exit 2.

    if __name__ == "__main__":
        run_cli(main, "generate.py")           # main(argv) parses its own flags

Bad input (a DataError or CheckpointError, a missing file, a value out of range: all ValueError
or FileNotFoundError) is the user's to fix, so it is printed as one line on stderr,
`generate.py: error: data/x.jsonl:3: key 'prompt' must be a string, got int`, and the process
exits with code 2, argparse's code for a bad command line. `failures` are errors that are not
about the input but still need no traceback (training diverged): one line, exit 1. Everything
else is a bug and keeps its traceback. `--debug` anywhere on the command line is removed before
main sees it and shows the full traceback of a bad-input error too.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Optional, Sequence

BAD_INPUT_EXIT = 2

BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)  # DataError, CheckpointError too


def one_line(error: BaseException) -> str:
    """The error's message on one line (a message with newlines would look like several errors)."""
    return " ".join(str(error).split("\n")) or type(error).__name__


def run_cli(main: Callable[[list[str]], object], prog: str, argv: Optional[Sequence[str]] = None,
            failures: tuple = ()) -> object:
    """Run `main(argv)` (default: sys.argv[1:]); bad input -> one line on stderr, SystemExit(2)."""
    from srlm import dist

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except BAD_INPUT + tuple(failures) as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(BAD_INPUT_EXIT if isinstance(e, BAD_INPUT) else 1) from None
    finally:
        dist.cleanup()
