"""How every example script ends: its verdict, a reader that left, or Ctrl-C.

Not an example itself: each script's `if __name__ == "__main__":` block calls
`run_script(main)`, where `main` raises SystemExit with the audit's verdict.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def run_script(main: Callable[[], None]) -> None:
    """Run `main`; end quietly, with a shell's status, when its reader leaves or on Ctrl-C."""
    try:
        try:
            main()
        except SystemExit:  # (main's end: the audit's verdict)
            if sys.stdout is not None:  # (None: started without one, `>&-`)
                sys.stdout.flush()  # what is still buffered: a closed pipe found here, not at exit
            raise
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
