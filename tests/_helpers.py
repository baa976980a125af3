"""Scaffolding several test files share: a call run in a thread, child processes.

A plain module, not fixtures: tests/ is on sys.path (tests/conftest.py puts it
there), so any test file imports it as `_helpers`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a started thread; its result or error lands in the list.

    The caller joins the thread (with a bound) and asserts on the list: one
    entry once the thread has ended, the value returned or the exception raised.
    """
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out
