"""How every example script ends: its verdict, a reader that left, Ctrl-C, or a --db refused.

Not an example itself: each script's `if __name__ == "__main__":` block calls
`run_script(main)`, where `main` raises SystemExit with the audit's verdict,
and each opens the engine on its --db inside `opening_db`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jackpot import StorageError, ValidationError


class DatabaseRefusedError(Exception):
    """The engine refused to open the database named with --db: a bad argument."""


@contextmanager
def opening_db(path: Path, *, given: bool) -> Iterator[None]:
    """Around the engine's open of `path`: refused, a --db given is a bad argument.

    The scripts check --db before they start (an existing file, a missing
    directory); what the engine then refuses to open (a name too long for the
    directory, a directory it may not write; a name it does not take, such as
    `:memory:` or one not in UTF-8) was a traceback with status 1.
    `run_script` ends it as argparse ends a bad argument: one line, status 2.
    Only the open: a failure later in the run is not the argument's fault and
    stays what it is; nor is a temporary file's (`given` False) the user's.
    """
    try:
        yield
    except (StorageError, ValidationError) as e:  # (a name it refuses: ValidationError)
        if not given:
            raise
        msg = f"--db {path}: {e}"
        raise DatabaseRefusedError(msg) from e


def run_script(main: Callable[[], None]) -> None:
    """Run `main`; end quietly, with a shell's status, when its reader leaves or on Ctrl-C."""
    try:
        try:
            main()
        except SystemExit:  # (main's end: the audit's verdict)
            if sys.stdout is not None:  # (None: started without one, `>&-`)
                sys.stdout.flush()  # what is still buffered: a closed pipe found here, not at exit
            raise
    except DatabaseRefusedError as e:
        # As argparse's parser.error ends a bad argument, less its usage lines:
        # `<prog>: error: <message>` and status 2 (opening_db above).
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader left early (`... | head`): stop quietly, as a program the
        # pipe's SIGPIPE ends does (141 = 128 + SIGPIPE), not with a traceback;
        # 1 would say the audit failed. Python's docs, signal: "Note on SIGPIPE".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (exit flushes again)
        sys.exit(141)
    except KeyboardInterrupt:
        # Ctrl-C: one line, not a traceback, and the status a shell gives a
        # program SIGINT ended (130 = 128 + SIGINT). Each bet or win the engine
        # was sent is committed whole or not at all; `jackpot --db PATH verify`
        # audits a database kept with --db.
        print("interrupted (Ctrl-C): each operation sent was committed whole or not at all",
              file=sys.stderr)
        sys.exit(130)
