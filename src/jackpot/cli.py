"""The `jackpot` command (console script): checks its extra, then runs the commands.

The commands live in `jackpot._cli` and need click and rich, which the `cli`
extra installs (`pip install 'jackpot[cli]'`): a game server that only embeds
the library does not carry them. Without them, `jackpot` says so in one line.
"""

from __future__ import annotations

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

    status = run(argv)
    try:
        if sys.stdout is not None:  # (None: started without one, `>&-`)
            sys.stdout.flush()  # what is still buffered: a reader that left is found here
    except BrokenPipeError:
        if not reader_left():
            raise
        status = READER_LEFT
    if status == READER_LEFT:
        # The reader left early (`jackpot history | head`): end quietly, as a
        # program the pipe's SIGPIPE ends does, not with "Exception ignored ...
        # BrokenPipeError" as the interpreter flushes stdout at exit (status
        # 120); 1 would say the audit failed. Python's docs, signal: "Note on
        # SIGPIPE".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)


if __name__ == "__main__":
    main()
