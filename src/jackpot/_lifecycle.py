"""The process around the engines: the exit hook, the reaper, stopping an engine's actors.

An engine open at interpreter exit is closed by the exit hook (`atexit`,
registered at the first open), within `EXIT_SECONDS` each; one the program
dropped without `close()` is closed by the reaper thread, which its
finalizer (`lost`) hands it to. `shut_down` stops an engine's actors, for
close() and for both of those.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import queue
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jackpot.actors import (
    ActorProxy,
    ActorRef,
    Checkpointer,
    Coordinator,
    Future,
    PoolActor,
    wait_stopped,
)
from jackpot.storage import Store

if TYPE_CHECKING:
    from jackpot.engine import JackpotEngine

__all__ = ["EXIT_SECONDS", "OPEN_ENGINES", "UNFINISHED", "Actors", "Late", "Stopping", "closing",
           "log_late", "lost", "opened", "prepare_process", "shut_down"]

logger = logging.getLogger("jackpot")


OPEN_ENGINES: weakref.WeakKeyDictionary[JackpotEngine, int] = weakref.WeakKeyDictionary()
"""Engines not closed yet, with the process that opened them (guarded by `_OPEN_LOCK`)."""
UNFINISHED: dict[JackpotEngine, int] = {}
"""Engines whose close() left actors or a read running, as `OPEN_ENGINES` (same lock).

Held, not weakly: close() detached the dropped-engine finalizer, so one the
program drops after such a close would be finished by nobody, its actors
cut off at exit with their connections open.
"""
_OPEN_LOCK = threading.Lock()
EXIT_SECONDS = 5.0
"""Longest the exit hook spends closing one engine: its in-flight operations, then its actors."""


@dataclass(eq=False)
class Actors:
    """An engine's current actors (replacements included), held apart from the engine.

    Closing an engine the program dropped needs them after the engine is
    gone, so the engine keeps them here rather than in its own attributes.
    """

    pools: dict[str, ActorProxy[PoolActor]] = field(default_factory=dict)
    coordinator: ActorProxy[Coordinator] | None = None


_Lost = tuple[int, str, Actors, Checkpointer | None, Store]
_LOST: queue.SimpleQueue[_Lost | None] = queue.SimpleQueue()
"""Engines dropped without `close()`, for the reaper thread (None: the exit's stop sign)."""
_REAPER: threading.Thread | None = None  # this process's reaper (guarded by _OPEN_LOCK)
_REAPED = 0  # engines the reaper has begun to close (the exit hook watches it progress)


def prepare_process() -> None:
    """Before an engine starts anything: register the exit hook, have a live reaper thread.

    The hook is registered at the first open rather than at import, so that
    hooks the program registers earlier (a tracer's or a log listener's
    shutdown) run after the engines are closed.
    """
    global _REAPER  # noqa: PLW0603 - one reaper per process
    _register_exit_hook()
    with _OPEN_LOCK:
        if _REAPER is None or not _REAPER.is_alive():
            reaper = threading.Thread(target=_reap, name="jackpot-reaper", daemon=True)
            reaper.start()
            _REAPER = reaper


def _after_fork_in_child() -> None:
    """Reset a forked child: none of its parent's threads (the reaper) came with it."""
    global _REAPER, _LOST, _OPEN_LOCK
    _REAPER, _LOST, _OPEN_LOCK = None, queue.SimpleQueue(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.cache
def _register_exit_hook() -> None:
    atexit.register(_close_open_engines)


def opened(engine: JackpotEngine) -> None:
    """Remember an open engine, for the exit hook."""
    with _OPEN_LOCK:
        OPEN_ENGINES[engine] = os.getpid()


def closing(engine: JackpotEngine, *, finished: bool = True) -> None:
    """Forget a closed engine, or (not `finished`) hold it for the exit hook to finish."""
    with _OPEN_LOCK:
        if finished:
            OPEN_ENGINES.pop(engine, None)
            UNFINISHED.pop(engine, None)
        elif (pid := OPEN_ENGINES.get(engine)) is not None:
            UNFINISHED[engine] = pid


def _close_open_engines() -> None:
    """At interpreter exit, close every engine the program left open, then those it dropped.

    Left open counts an engine whose close() gave up (`UNFINISHED`), dropped or not.

    Actor threads are daemon threads, so a program that ends (or crashes)
    without `close()` still exits; this lets their in-flight batches commit
    or roll back and closes their connections first, spending at most
    `EXIT_SECONDS` per engine (a stuck actor is abandoned: an unfinished
    transaction rolls back, as after a crash). Engines dropped without
    `close()` that the reaper has not closed yet are closed too.
    """
    with _OPEN_LOCK:
        engines = [e for e, pid in {**OPEN_ENGINES, **UNFINISHED}.items()
                   if pid == os.getpid()]  # a forked child's: their threads are not here
        reaper = _REAPER
    for engine in engines:
        try:
            engine.close(timeout=EXIT_SECONDS)
        except Exception:  # exiting: report it, then close the others
            with contextlib.suppress(Exception):  # (whatever a log filter does)
                logger.exception("closing an engine left open at exit failed",
                                 extra={"outcome": "close_failed"})
    if reaper is not None and reaper.is_alive():
        _LOST.put(None)  # after the dropped engines queued so far
        seen = -1
        while reaper.is_alive() and seen != _REAPED:  # a budget per engine, not in all
            seen = _REAPED
            reaper.join(EXIT_SECONDS + 1)
    while True:  # what a slow or dead reaper left
        try:
            item = _LOST.get_nowait()
        except queue.Empty:
            return
        if item is not None:
            _close_lost(item)


def lost(pid: int, where: str, actors: Actors, checkpointer: Checkpointer | None,
          reader: Store) -> None:
    """Hand an engine dropped without `close()` to the reaper (its finalizer).

    This runs inside garbage collection, in whichever thread happened to
    allocate, which may hold any lock at that moment (a connection pool's, a
    log handler's, an actor inbox's). So it takes none: `SimpleQueue.put` is
    safe there (documented for weakref callbacks), and the reaper thread
    does the rest.
    """
    _LOST.put((pid, where, actors, checkpointer, reader))


def _reap() -> None:
    """Close the engines the program dropped, one by one, until the exit's stop sign."""
    global _REAPED  # noqa: PLW0603 - only this thread writes it
    while (item := _LOST.get()) is not None:
        _REAPED += 1
        _close_lost(item)
        del item  # hold nothing of it while waiting for the next


def _close_lost(item: _Lost) -> None:
    """Stop a dropped engine's actors, close its reader, say so; never raises.

    Engines a forked child inherited are left alone: their threads and
    connections belong to the parent.
    """
    pid, where, actors, checkpointer, reader = item
    if pid != os.getpid():
        return
    done = "closing it failed"
    try:
        log_late(shut_down(actors, checkpointer, lambda _deadline: reader.close(),
                             time.monotonic() + EXIT_SECONDS)[0])
        done = "it is closed now"
    except Exception:  # noqa: BLE001 - reported; the reaper goes on with the next
        _say(logger.exception, "closing a dropped engine on %s failed", where,
             outcome="close_failed")
    finally:
        # -W error raises it, and a hook may raise anything (a log filter under
        # logging.captureWarnings): the log line below says it all the same.
        with contextlib.suppress(Exception):
            warnings.warn(f"JackpotEngine({where!r}) was never closed; {done} "
                          "(call close(), or open it in a with block)", ResourceWarning,
                          stacklevel=1)
        _say(logger.warning, f"an engine on %s was dropped without close(); {done}",
             where, outcome="engine_lost")


def _say(log: Callable[..., None], msg: str, where: str, *, outcome: str) -> None:
    """Log from the reaper; a failing log filter or handler falls back to stderr."""
    try:
        log(msg, where, extra={"outcome": outcome})
    except Exception:  # noqa: BLE001 - the reaper must live on
        with contextlib.suppress(Exception):
            sys.stderr.write(f"jackpot: {msg % where} (and logging it failed)\n")


Late = list[tuple[str, str | None]]
"""Actors still running after close()'s wait: what each is ("coordinator"), and its level."""
Stopping = tuple[tuple[str, str | None], ActorRef[Any], Future[None]]
"""An actor asked to stop: what it is (as `Late` names it), its ref, the answer to the stop."""


def shut_down(actors: Actors, checkpointer: Checkpointer | None,
               close_reader: Callable[[float], object], deadline: float
               ) -> tuple[Late, list[Stopping]]:
    """Stop the actors (coordinator, levels, checkpointer), then close the reader.

    Every stop is requested at once, then awaited against one deadline, so
    no actor waits behind a stuck one and none is left unasked. Returns the
    actors that did not stop in time, for the caller to log once it holds
    no lock (a log handler may do anything, call close() included), and
    every actor not seen to stop, for a later close() to wait for. Asked
    once `deadline` has passed (calls in flight used up close()'s timeout),
    none was given any time, idle ones included: none is called late then.
    """
    # Each closes its connection in a request of its own (`close_and_stop`), not
    # in Pykka's stop, which may never reach `on_stop` (see `stop_and_close`).
    # Each is named as an operator knows it (an urn tells nothing to act on):
    # (what, level) as `log_late` tells it.
    stopping: list[Stopping] = []
    if actors.coordinator is not None:
        stopping.append((("coordinator", None), actors.coordinator.actor_ref,
                         actors.coordinator.close_and_stop()))
    stopping += [((f"actor of level {name}", name), p.actor_ref, p.close_and_stop())
                 for name, p in actors.pools.items()]
    if checkpointer is not None:
        stopping.append((("checkpointer", None), *checkpointer.stop_soon()))
    if time.monotonic() >= deadline:
        left, late = stopping, []
    else:
        left = [s for s in stopping if not wait_stopped(s[1], s[2], deadline)]
        late = [named for named, _, _ in left]
    close_reader(deadline)
    return late, left


def log_late(late: Late) -> None:
    for what, level in late:
        with contextlib.suppress(Exception):  # a failing log must not fail the close
            logger.error("%s did not stop in time: it is still running a request, and stops "
                         "when that ends", what,
                         extra={"outcome": "stop_timeout", **({"level": level} if level else {})})
