"""What the engine observes about itself: counters, and hooks for metrics.

`Stats` is the one object the engine, the service layer and the actors report
to. It always keeps plain counters (cheap, lock-protected) so tests and the
health check can read them; `observers` (e.g. the Prometheus exporter) receive
the same events when metrics are enabled, and cost nothing when there are none.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import types
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from jackpot._throttle import Throttle

__all__ = ["Observer", "Stats", "after_the_fact", "count_once", "raised_by_signal_handler"]

logger = logging.getLogger("jackpot")

OUTCOMES = ("ok", "replayed", "rejected", "conflict", "timeout", "error", "unknown")


@runtime_checkable
class Observer(Protocol):
    """Receives the engine's events (implemented by the metrics exporter).

    Called in the engine's threads as events happen, some of them while an
    operation holds a lock: keep each call quick. An observer that raises is
    logged and changes no operation's outcome (an exception a signal's
    handler raises as it runs, a request deadline's, is not the observer's:
    it reaches the interrupted caller, as Ctrl-C does).
    """

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        """Count `n` occurrences of `event` (conflicts, retries, busy_incidents...)."""

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """Record one finished operation, its outcome and its latency."""

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        """Record how long an operation waited for a lock ("database" or "coordinator")."""


class Stats:
    """Counts conflicts, retries, busy incidents, timeouts, replays, reloads, restarts, outcomes.

    Keys of `snapshot()` are "<event>" totals, "<event>:<operation>:<level>"
    breakdowns and "operations:<operation>:<outcome>" counts. `recent()` gives
    the outcomes of the last operations, for the health check's rates.
    """

    EVENTS = ("conflicts", "retries", "busy_incidents", "lock_timeouts", "replays",
              "actor_restarts", "reloads")

    def __init__(self, window: int = 1000, horizon: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Start every counter at zero; keep the last `window` outcomes of `horizon` seconds."""
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._recent: deque[tuple[float, str, bool]] = deque(maxlen=window)
        self._horizon = horizon
        self.observers: list[Observer] = []

    def add(self, event: str, operation: str = "", level: str = "", n: int = 1) -> None:
        """Count `n` occurrences of `event` for an operation on a level."""
        with self._lock:
            self._counts[event] += n
            if operation:
                self._counts[f"{event}:{operation}:{level}"] += n
            if event == "conflicts":
                self._recent.append((self._clock(), "conflict", True))
        for o in self.observers:
            try:
                o.on_event(event, operation, level, n)
            except Exception as e:  # logged; an observer never fails an operation
                if raised_by_signal_handler(e):
                    raise  # not the observer's failure: its caller's interrupt (a deadline)
                _observer_failed(o, e, operation, level)

    def operation(self, operation: str, outcome: str, seconds: float, *,
                  judged: bool = True, receipt: list[bool] | None = None) -> None:
        """Record a finished operation with its outcome (one of OUTCOMES).

        `judged=False` keeps it out of `recent()` (the health check's window):
        a call refused for its arguments never queued for a lock. `receipt`
        gets True as it is counted (with no call in between, where an
        interrupt could land): a caller whose count an interrupt cut short
        learns whether to count it again (`count_once`).
        """
        with self._lock:
            self._counts[f"operations:{operation}:{outcome}"] += 1
            if receipt is not None:
                receipt.append(True)
            if judged:
                self._recent.append((self._clock(), outcome, False))
        for o in self.observers:
            try:
                o.on_operation(operation, outcome, seconds)
            except Exception as e:  # (as above)
                if raised_by_signal_handler(e):
                    raise  # (as above)
                _observer_failed(o, e, operation)

    def lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        """Record a lock wait."""
        for o in self.observers:
            try:
                o.on_lock_wait(lock, operation, seconds)
            except Exception as e:  # (as above)
                if raised_by_signal_handler(e):
                    raise  # (as above)
                _observer_failed(o, e, operation)

    def recent(self) -> list[tuple[str, bool]]:
        """Return the latest (outcome or "conflict", is_conflict_event) pairs, oldest first.

        At most the last `window` of them, and only those of the last `horizon`
        seconds: a burst of failures long past does not keep a quiet engine
        unhealthy until a thousand operations have succeeded since.
        """
        since = self._clock() - self._horizon
        with self._lock:
            return [(outcome, conflict) for at, outcome, conflict in self._recent
                    if at >= since]

    def snapshot(self) -> dict[str, int]:
        """Return a copy of every counter (totals always present)."""
        with self._lock:
            out = dict.fromkeys(self.EVENTS, 0)
            out.update(self._counts)
            return out


_OBSERVER_FAILURES = Throttle(60.0, kept=64)


def _observer_failed(observer: Observer, error: Exception, operation: str = "",
                     level: str = "") -> None:
    """Log an observer's failure (with its traceback once a minute per observer and error).

    Observers are told of events in the middle of an operation too (lock
    waits, conflicts, retries, before the commit): one that raises must not
    fail a bet, nor leave a transaction half done. The operation and level
    the event was about go in the record's `operation` and `level` fields
    (`logs.FIELDS`), null where there is none, as in every other record.
    """
    shown = _shown(error)
    kind = (type(observer).__qualname__, type(error).__name__, shown[:300])
    traced = _OBSERVER_FAILURES.admit(kind) is not None
    with _CONTAINED:  # a failing log handler changes nothing either
        logger.error("stats observer %s failed: %s: %s%s", kind[0], kind[1], shown,
                     "" if traced else " (traceback logged once a minute for this error)",
                     exc_info=error if traced else None,
                     extra={"outcome": "report_failed", "operation": operation or None,
                            "level": level or None})


def _named(report: object) -> str:
    """Return the report's qualified name (`Logger.warning`), or its type's; never raises."""
    try:
        name = getattr(report, "__qualname__", None)
        return name if isinstance(name, str) else type(report).__qualname__
    except Exception as e:  # a caller's callable: its failure is not the one told
        if raised_by_signal_handler(e):
            raise
        return type(report).__qualname__


def _shown(error: Exception) -> str:
    """Return `str(error)`, or a stand-in if even that raises (it is the observer's code)."""
    try:
        return str(error)
    except Exception as e:  # the failure being contained must not escape here
        if raised_by_signal_handler(e):
            raise
        return f"<str() failed: {type(e).__name__}>"


def count_once(stats: Stats, operation: str, outcome: str, started: float,
               receipt: list[bool], *, judged: bool = True) -> None:
    """Count a finished operation (`Stats.operation`) unless `receipt` says it is counted.

    Called in a `try`, then again in its `finally`: an interrupt (Ctrl-C)
    that lands as the first count starts, before anything was counted,
    leaves the second to count it; one that lands after (in an observer)
    does not count it twice. `started`: its `time.perf_counter()` start;
    `judged`: as `Stats.operation`'s.
    """
    if outcome and not receipt:
        after_the_fact(stats.operation, operation, outcome, time.perf_counter() - started,
                       judged=judged, receipt=receipt)


class About(Protocol):
    """What an operation's report is about (a `service.Operation`), for its failure's log line."""

    @property
    def op_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def names(self) -> tuple[str, ...]: ...


def after_the_fact(report: Callable[..., Any], *args: Any, about: About | None = None,
                   **kwargs: Any) -> None:
    """Run `report(*args)` (a log line, an observer event) about what has already happened.

    An operation's outcome, mostly: the operation has committed (or failed)
    by then, and a failing observer or log filter must not turn a committed
    operation into an error for its caller (who might send it again without
    an op_id), nor replace the error of a failed one. Its failure is logged
    instead, if logging works, in words that fit every caller (an actor's
    start, stop or restart, a level `open()` kept, a hold that expired:
    no operation there), naming the report that failed; `about`, the
    operation it reported on, fills that line's op_id, operation and level
    fields (null without it), so that a failed "paid" line can be told whose.

    An exception a signal's handler raised as the report ran (a request
    deadline's TimeoutError on SIGALRM) is no failure of the report: it is
    the caller's interrupt, and goes on up to the caller as Ctrl-C does
    (`raised_by_signal_handler`). Contained, the deadline never fired, and
    the log blamed the report.
    """
    try:
        report(*args, **kwargs)
    except Exception as e:  # what happened stands; its report failing is logged below
        if raised_by_signal_handler(e):
            raise
        with _CONTAINED:
            logger.exception("a report failed (%s); what it was reporting stands all the same",
                             _named(report), extra=_failed_report(about))


def _failed_report(about: About | None) -> dict[str, Any]:
    """Return the fields of the line that says a report about `about` failed."""
    fields: dict[str, Any] = {"outcome": "report_failed"}
    if about is not None:
        fields.update(op_id=about.op_id, operation=about.kind, level=",".join(about.names))
    return fields


def raised_by_signal_handler(error: BaseException) -> bool:
    """Say whether `error` came out of a signal's handler, not the code it landed in.

    Python runs a signal's handler in the main thread, between two bytecodes
    of whatever runs there (first as a call of C code returns): a request
    deadline's TimeoutError (SIGALRM) comes out of a log filter or an
    observer as if it were theirs. Its traceback tells them apart: it runs
    through the handler's frame, the code of a function set with
    `signal.signal` (a function, a method, a `functools.partial` of one, or
    an object's `__call__`). Not its type: a metrics backend's socket
    timeout is a TimeoutError too, and a failure to contain.

    What this cannot see is taken for the code's own failure, as before: a
    handler written in C, or one that puts another handler in its place
    before it raises (the handler it was is no longer set by the time its
    exception is looked at).
    """
    if threading.current_thread() is not threading.main_thread():  # (handlers run there only)
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    handlers = {code for signum in signal.valid_signals()
                if (code := _code_of(signal.getsignal(signum))) is not None}
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


def _code_of(handler: object) -> types.CodeType | None:
    """Return the code a Python signal handler runs (None for SIG_DFL, SIG_IGN, C code)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if isinstance(handler, types.MethodType):
        handler = handler.__func__
    if not isinstance(handler, types.FunctionType):
        handler = getattr(type(handler), "__call__", None)  # noqa: B004 - its code, if Python
        handler = getattr(handler, "__func__", handler)
    return handler.__code__ if isinstance(handler, types.FunctionType) else None


class _Contained:
    """`contextlib.suppress(Exception)`, but for a signal handler's exception (see above).

    Around the log line of a report that failed: a deadline that lands as
    it is written is the caller's, as in the report itself.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: types.TracebackType | None) -> bool:
        return isinstance(error, Exception) and not raised_by_signal_handler(error)


_CONTAINED = _Contained()
