"""The `jackpot` command (console script): checks its extra, then runs the commands.

The commands live in `jackpot._cli` and need click and rich, which the `cli`
extra installs (`pip install 'jackpot[cli]'`): a game server that only embeds
the library does not carry them. Without them, `jackpot` says so in one line.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from importlib.util import find_spec

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the `jackpot` command line; exits with its status."""
    missing = [name for name in ("click", "rich") if find_spec(name) is None]
    if missing:
        sys.stderr.write(f"jackpot: error: the command needs {' and '.join(missing)}: "
                         "pip install 'jackpot[cli]'\n")
        sys.exit(1)
    from jackpot._cli import READER_LEFT, reader_left, run  # noqa: PLC0415 - only once its dependencies are known present

    _whole_writes()
    status = run(argv)
    stdout_gone = status == READER_LEFT
    try:
        if sys.stdout is not None:  # (None: started without one, `>&-`)
            sys.stdout.flush()  # what is still buffered: a reader that left is found here
    except BrokenPipeError:
        if not reader_left():
            raise
        stdout_gone = True
        # A failure (a failed audit, an error, Ctrl-C) keeps its status: 141
        # says only that the output was cut, and would hide it.
        status = status or READER_LEFT
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except BrokenPipeError:  # its reader left: what it holds, no one reads (not status 120)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    if stdout_gone:
        # The reader left early (`jackpot history | head`): end quietly, as a
        # program the pipe's SIGPIPE ends does, not with "Exception ignored ...
        # BrokenPipeError" as the interpreter flushes stdout at exit (status
        # 120); 1 would say the audit failed. Python's docs, signal: "Note on
        # SIGPIPE".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)


def _whole_writes() -> None:
    """Put a buffered writer under an unbuffered stdout (PYTHONUNBUFFERED=1, `python -u`).

    Python's unbuffered stdout is a text layer straight on the file, which
    ignores how much of a write the file took: a reader that left in the
    middle of one (`jackpot ledger --tail 1000 | head`, its table written at
    once) cut the output short unsaid, and the command ended with status 0,
    not 141. A buffered writer writes the rest or raises BrokenPipeError.
    Still nothing waits in it: a line is written as soon as it is whole, and
    the commands flush what they print.
    """
    out = sys.stdout
    if not isinstance(out, io.TextIOWrapper) or not isinstance(out.buffer, io.FileIO):
        return  # (buffered already, or no file: a capture, None with `>&-`, Windows' console)
    raw = io.FileIO(out.fileno(), "w", closefd=False)  # (fd 1 stays open, as the original's)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=out.encoding,
                                  errors=out.errors, newline="\n", line_buffering=True,
                                  write_through=True)


if __name__ == "__main__":
    main()
