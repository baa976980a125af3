"""Closing an engine: `JackpotEngine.close` ends it within a bound and tells what it left.

It refuses new calls, waits for those in flight (sweeping the asyncio
engine's stranded answers meanwhile), stops the actors, closes the reader
and waits for the reads that hold a connection of their own (`verify()`,
`health()`'s probe); what is still running when its time is up is logged,
once, and left for a later close() or the exit hook (`_lifecycle`) to
finish. These are functions of the engine rather than methods: they read
and change the engine's own state (its lock, its in-flight count, what an
earlier close() left), which the call path shares, and hold no reference
to it once they return, so a dropped engine is still freed at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, SupportsIndex

from jackpot._lifecycle import Late, Stopping, closing, log_late, shut_down
from jackpot._plural import counted
from jackpot.actors import in_actor_thread, wait_stopped
from jackpot.errors import ValidationError, exact_int, shown
from jackpot.service import Operation

if TYPE_CHECKING:
    from jackpot.engine import JackpotEngine

__all__ = ["close_engine", "probe_closed", "probe_opening", "stop_everything"]

logger = logging.getLogger("jackpot")

_SWEEP_INTERVAL_S = 0.1  # seconds between sweeps while close() waits for calls in flight
_NAMED = 10  # interrupted calls a close() names, at most, of those it left unreported


def close_engine(engine: JackpotEngine, timeout: float | SupportsIndex | None) -> None:
    """Close `engine` within `timeout` seconds (`JackpotEngine.close`, which says how)."""
    deadline = _deadline(timeout)
    if engine._pid != os.getpid():
        # Without the lock: a fork may have copied it held. Calls here are
        # refused before they would take it (`_check_process`).
        engine._closed = True
        return
    if in_actor_thread(engine.stats) or getattr(engine._own, "restarting", False):
        with engine._lock_state:
            engine._closed = True  # from now on, new calls are refused
        threading.Thread(target=engine.close, args=(timeout,), name="jackpot-close",
                         daemon=True).start()
        return
    if getattr(engine._own, "closing", False):
        return  # called back (by a log handler) from this thread's own close(): it is closing
    try:
        _close(engine, deadline)
    finally:
        engine._own.closing = False


def _close(engine: JackpotEngine, deadline: float | None) -> None:
    """Do close()'s work in the calling thread, the one it may wait in (see `close_engine`)."""
    wait_limit = time.monotonic() + engine._run_timeout if deadline is None else deadline
    mine = False
    late: Late = []
    reads: list[str] = []
    left_in_flight, unreported = _await_calls(engine, wait_limit)
    try:
        with engine._lock_state:
            # A close interrupted before this point (Ctrl-C while waiting) left
            # everything running: a later close(), or the exit hook, finishes
            # it. While another close() is stopping the actors, wait for it,
            # within this one's own limit; in slices, so a lost wake-up (a
            # Ctrl-C in the other's notify) cannot strand this one.
            if deadline is None:
                wait_limit = time.monotonic() + engine._run_timeout
            while engine._stopping and (left := _left(wait_limit)) > 0:
                engine._cond.wait(min(_SWEEP_INTERVAL_S, left))
            if engine._stopping:
                return  # (the close() stopping them tells what it left)
            engine._own.closing = True  # from here on, it closes for this thread too
            mine = engine._stopping = not engine._shut
        given = _left(wait_limit) > 0  # (else none is called late: see `shut_down`)
        if mine:
            late, left_running = stop_everything(engine, wait_limit)
            engine._lost.detach()
            with engine._lock_state:
                engine._left_running = left_running
                engine._shut = True
        elif given:  # stopped by an earlier close(), which may have left some running
            late = _finish(engine, wait_limit)
        reads = _reads_left(engine, wait_limit)
        # (Unfinished, the exit hook finishes it, as a later close() would.)
        closing(engine, finished=not (engine._left_running or reads))
    finally:
        if mine:
            with engine._lock_state:
                engine._stopping = False
                engine._cond.notify_all()
    _tell_left_in_flight(engine, left_in_flight, engine._run_timeout if deadline is None
                         else None, unreported)
    log_late(late)
    if given:
        _log_reads_left(reads)


def _await_calls(engine: JackpotEngine, wait_limit: float) -> tuple[int, list[Operation]]:
    """Refuse new calls; wait until `wait_limit` for those in flight (see `_await_inflight`).

    Returns how many are still in flight then, and those of them whose
    callers were interrupted or are gone (to be told: `_tell_left_in_flight`).
    """
    with engine._lock_state:
        engine._closed = True  # from now on, new calls are refused
    left_in_flight = _await_inflight(engine, wait_limit)
    if not left_in_flight:
        return 0, []
    # (Asked before taking the state lock: the asyncio engine takes its own.)
    gone = _asyncio_callers_gone(engine)
    with engine._lock_state:
        return left_in_flight, [*engine._unreported.values(), *gone]


def _tell_left_in_flight(engine: JackpotEngine, calls: int, bound: float | None,
                         unreported: list[Operation]) -> None:
    """Log the calls a close() left in flight (see `_log_left_in_flight`), unless told.

    Told once: the first close() to tell these calls (or all but those
    of its own thread, which their callers tell) told them, and no call
    starts since. Taken as told only here, as it is said: a close() that
    gave up first may return before (to the close() stopping the actors)
    or be interrupted, and the one that says it then is another.
    """
    if not calls:
        return
    with engine._lock_state:  # (decided at once: closes may run together)
        told, engine._told_in_flight = engine._told_in_flight, True
        unnamed = [op for op in unreported if id(op) not in engine._named]
        engine._named.update((id(op), op) for op in unnamed)
    _log_left_in_flight(0 if told else calls, bound, unnamed)


def _finish(engine: JackpotEngine, deadline: float) -> Late:
    """Wait until `deadline` for the actors an earlier close() left running.

    Those it gave up on, or gave no time: each has stopped and closed its
    connection once it answers its stop. Returns those still running.
    """
    with engine._lock_state:
        running = list(engine._left_running)
    left = [s for s in running if not wait_stopped(s[1], s[2], deadline)]
    with engine._lock_state:  # (a concurrent close() may have seen some stop first)
        engine._left_running = [s for s in engine._left_running if s in left]
    return [named for named, _, _ in left]


def _reads_left(engine: JackpotEngine, deadline: float) -> list[str]:
    """Wait until `deadline` for the reads of other threads that hold a connection.

    A read holding the reader closes it as it ends (`JackpotEngine._reading`),
    and `verify()` its own connection. Returns those still running: "a read",
    "verify()". Those of the calling thread are not waited for: they
    cannot end while it waits.
    """
    left = []
    if (engine._reader_close_pending and not getattr(engine._own, "reading", False)
            and not _close_reader(engine, deadline)):
        left.append("a read")
    if not getattr(engine._own, "verifying", False):
        if not engine._verify_lock.acquire(timeout=_left(deadline)):
            left.append("verify()")
        else:  # none runs, and none starts now: each checks the engine is open first
            engine._verify_lock.release()
    if not getattr(engine._own, "probing", False) and not _await_probes(engine, deadline):
        left.append("health()'s probe")
    return left


def _await_probes(engine: JackpotEngine, deadline: float) -> bool:
    """Wait until `deadline` for health()'s probe connections to close; say if they did.

    None opens once the engine is closed (`probe_opening`).
    """
    with engine._lock_state:
        return engine._cond.wait_for(lambda: not engine._probes, _left(deadline))


def probe_opening(engine: JackpotEngine) -> None:
    """Count a health() probe's connection as it opens; refused once the engine is closed.

    Runs in the probe's thread, which may outlast its health() caller (a
    storage that does not answer): checked here rather than as health()
    starts, so that no probe connection opens after a close() that did
    not wait for it.
    """
    with engine._lock_state:
        engine._check_not_closed()  # (the probe says so: "cannot open the database")
        engine._probes += 1
    engine._own.probing = True  # a close() in this thread must not wait for it


def probe_closed(engine: JackpotEngine) -> None:
    """Count a health() probe's connection closed (or failed to open)."""
    engine._own.probing = False
    with engine._lock_state:
        engine._probes -= 1
        engine._cond.notify_all()


def _asyncio_callers_gone(engine: JackpotEngine) -> list[Operation]:
    """Return the asyncio calls in flight whose callers are gone (see `JackpotEngine._attach`)."""
    gone: list[Operation] = []
    for ref in list(engine._callers_gone):
        callers_gone = ref()
        if callers_gone is not None:
            gone += callers_gone()
    return gone


def _await_inflight(engine: JackpotEngine, deadline: float) -> int:
    """Wait until no call is in flight or `deadline` passes, sweeping now and then.

    Calls that only the current thread can finish are not waited for: its
    own sync calls, and the asyncio calls of the event loop it runs.
    Returns how many calls were still in flight at `deadline` (0: none
    but those): the loop's calls among them, once there are others (they
    were never waited for, so are still in flight, and a close() names
    those whose callers are gone), but not the thread's own sync calls,
    which its caller is in the middle of reporting.
    """
    own = getattr(engine._own, "n", 0)
    loops = 0
    for counter in list(engine._loop_calls):
        count = counter()
        if count is not None:
            loops += count()
    mine = own + loops
    while True:
        for ref in list(engine._sweeps):
            sweep = ref()
            if sweep is not None:
                sweep()
        with engine._lock_state:
            # Not for calls in flight in this very thread (a log handler
            # closing the engine): they cannot end while this one waits.
            if engine._cond.wait_for(lambda: engine._inflight <= mine,
                                     min(_SWEEP_INTERVAL_S, _left(deadline))):
                return 0
            left = engine._inflight - own
        if _left(deadline) <= 0:
            return left


def stop_everything(engine: JackpotEngine, deadline: float | None = None
                    ) -> tuple[Late, list[Stopping]]:
    """Stop every actor, then close the reader (default deadline: the longest operation).

    Under the restart lock: an actor restart that raced the close either
    finished first (and its replacement is stopped here) or sees the
    engine closed and starts nothing. Returns the actors that did not
    stop in time, and those not seen to stop (see `shut_down`).
    """
    with engine._restart_lock:
        return shut_down(engine._actors, engine._checkpointer,
                         functools.partial(_close_reader, engine),
                         time.monotonic() + engine._run_timeout if deadline is None
                         else deadline)


def _close_reader(engine: JackpotEngine, deadline: float) -> bool:
    """Close the reader now, or, if a read holds it past `deadline`, when that read ends.

    Returns whether it is closed now.
    """
    if getattr(engine._own, "reading", False):
        # close() called inside this thread's own read (a signal handler
        # that ran in the middle of it): that read cannot end while this
        # waits, so it closes the reader when it ends.
        engine._reader_close_pending = True
        return False
    if not engine._reader_lock.acquire(timeout=_left(deadline)):
        # The read in progress closes it (`JackpotEngine._reading`).
        engine._reader_close_pending = True
        if not engine._reader_lock.acquire(blocking=False):
            return False
    try:  # the read ended (or there was none): close it here
        engine._reader.close()
        engine._reader_close_pending = False
    finally:
        engine._reader_lock.release()
    return True


def _log_reads_left(reads: list[str]) -> None:
    for what in reads:
        with contextlib.suppress(Exception):  # a failing log must not fail the close
            logger.error("%s did not end in time: it still holds a connection to the "
                         "database, and closes it when it ends", what,
                         extra={"outcome": "stop_timeout"})


def _log_left_in_flight(calls: int, bound: float | None, unreported: list[Operation]) -> None:
    """Say that close() stopped waiting for `calls` still in flight.

    `bound`: the default wait of a close() given no timeout (its actors then
    got a wait of their own); None: its timeout ran out, leaving them none.
    `unreported`: those of them whose callers were interrupted, named: no
    caller will learn their outcomes, and an exit right after close() ends
    the threads that would log them. Each is told once (see `_tell_left_in_flight`):
    `calls` is 0 once a close() told them, and `unreported` holds only those
    not named yet.
    """
    held = f"{counted(calls, 'call')} still in flight"
    with contextlib.suppress(Exception):  # a failing log must not fail the close
        if calls and bound is None:
            logger.warning("close() timed out with %s: the actors were asked to stop after "
                           "their work, with no time left to wait for that", held,
                           extra={"outcome": "close_timeout"})
        elif calls:
            logger.warning("close() stopped waiting after %.1f s with %s: the actors were "
                           "asked to stop after their work", bound, held,
                           extra={"outcome": "close_timeout"})
    if not unreported:
        return
    named = "; ".join(f"{op.kind} {op.op_id!r} on {', '.join(op.names)}"
                      for op in unreported[:_NAMED])
    more = len(unreported) - _NAMED
    one = len(unreported) == 1
    with contextlib.suppress(Exception):  # (as above)
        logger.warning(
            "close() left %d interrupted call%s whose outcome%s not known yet: %s%s. %s "
            "logged when %s, unless the process ends first: resend %s with the same op_id "
            "to learn it", len(unreported), "" if one else "s", " was" if one else "s were",
            named, f"; and {more} more" if more > 0 else "",
            "Its outcome is" if one else "Their outcomes are", "it comes" if one else "they come",
            "it" if one else "each", extra={"outcome": "close_timeout",
                                            "op_ids": [op.op_id for op in unreported]})


_MAX_SECONDS = 10**18
"""Longer than any wait means (about 3e10 years); an int timeout beyond it is clamped."""


def _deadline(timeout: object) -> float | None:
    """Return the monotonic deadline `timeout` seconds from now (None: no timeout given)."""
    if timeout is None:
        return None
    whole = exact_int(timeout)  # an int, or an exact integer of another kind (numpy.int64)
    if whole is not None:
        # Beyond any float (10**400 s) is still a number of seconds: clamp it.
        timeout = float(max(-_MAX_SECONDS, min(whole, _MAX_SECONDS)))
    if not isinstance(timeout, float) or math.isnan(timeout):
        msg = f"timeout must be a number of seconds or None, not {shown(timeout)}"
        raise ValidationError(msg)
    return time.monotonic() + timeout


def _left(deadline: float) -> float:
    """Return the seconds until `deadline`, within what a lock wait accepts."""
    return min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
