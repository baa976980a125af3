"""How every benchmark script ends on Ctrl-C or a reader that left, and how its children take Ctrl-C.

Not a benchmark itself: each script's `if __name__ == "__main__":` block calls
`run_script(main)`. It imports nothing heavy, so instructions.py's child
(which valgrind counts) and handoff_model.py (no engine code) may use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

INTERRUPTED = 130  # the status a shell gives a program SIGINT ended (128 + SIGINT)


def run_script(main: Callable[[], Any]) -> None:
    """Run `main` and exit with its status; Ctrl-C is one line and status 130, `| head` 141.

    A traceback said nothing the line does not (the run was cut short), and a
    script with child processes printed one per process, interleaved. Scratch
    files are each script's own to remove, in `finally` blocks, before this
    is reached.
    """
    try:
        status = main()
        if sys.stdout is not None:  # (None: started without one, `>&-`)
            sys.stdout.flush()  # what is still buffered: a closed pipe found here, not at exit
    except BrokenPipeError:
        # The reader left early (`... | head`): stop quietly, as a program the
        # pipe's SIGPIPE ends does (141 = 128 + SIGPIPE), not with a traceback.
        # Python's docs, signal: "Note on SIGPIPE".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (exit flushes again)
        sys.exit(141)
    except KeyboardInterrupt:
        # (no more than that: compare.py cut short in its PostgreSQL pass has
        # written what the SQLite pass measured, and said so above)
        print("interrupted (Ctrl-C): the run was cut short", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(status)


@contextlib.contextmanager
def deaf_to_ctrl_c() -> Iterator[None]:
    """Start child processes inside this: they ignore SIGINT for their whole life.

    Ctrl-C at a terminal reaches every process of the foreground group; a
    spawned child took it as its own and printed a traceback of wherever it
    was (often importing). A child started while SIGINT is ignored inherits
    that through exec, and Python then installs no handler of its own. The
    parent, which still takes Ctrl-C, must stop its children itself (see
    `stop_children`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # (only the main thread may set a handler; nor does Ctrl-C reach another)
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def children_started(children: Any) -> Iterator[None]:
    """Start the `multiprocessing` `children` deaf to Ctrl-C; stop those still running after.

    The block waits for them as it likes; however it ends (Ctrl-C, a
    timeout), `stop_children` ends what is left.
    """
    try:
        with deaf_to_ctrl_c():  # (Ctrl-C is the parent's: it stops them, below)
            for child in children:
                child.start()
        yield
    finally:
        stop_children(children)


def stop_children(children: Any) -> None:
    """Terminate (SIGTERM) the `multiprocessing` children still running and wait for them.

    Call it in a `finally`: after a normal run each has ended already, and
    this does nothing.
    """
    alive = [c for c in children if c.is_alive()]
    for child in alive:
        child.terminate()
    for child in alive:
        child.join(60)
