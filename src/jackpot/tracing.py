"""OpenTelemetry spans per operation, when `opentelemetry-api` is installed.

`observer()` returns a `TracingObserver`, or None when OpenTelemetry is not
importable; the engine then uses `no_span` and registers no observer, so
tracing costs nothing. Install the `otel` extra and configure a tracer provider
(the OpenTelemetry SDK) in the host application to record spans.

Each operation is a span `jackpot.<operation>` (a child of the caller's
current span) with attributes jackpot.op_id, jackpot.operation, jackpot.level
and, at its end, jackpot.outcome; failed operations record their exception, and
outcomes error, timeout and conflict set the span's status to ERROR.

Lock waits, retries, version conflicts, cache reloads, busy incidents and
lock timeouts are span events. They are reported from the actor threads,
where the operation's span is not current (and `Stats` events carry no op_id),
so each is attached to the oldest open span of the same operation that shares
a level with the event (a group-committed batch reports its kinds and levels
comma-joined).
That is exact while one such operation is in flight; when several run at once
an event may land on a sibling span of the same operation and level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from jackpot.service import Operation
from jackpot.stats import after_the_fact

__all__ = ["TracingObserver", "no_span", "observer"]

_ERROR_OUTCOMES = frozenset({"error", "timeout", "conflict"})
_EVENT_NAMES = {"retries": "jackpot.retry", "conflicts": "jackpot.version_conflict",
                "busy_incidents": "jackpot.busy_incident", "lock_timeouts": "jackpot.lock_timeout",
                "reloads": "jackpot.cache_reload"}
_NO_SPAN: AbstractContextManager[None] = nullcontext()


class Span(Protocol):
    """The part of `opentelemetry.trace.Span` used here."""

    def set_attribute(self, key: str, value: Any) -> None: ...
    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None
                  ) -> None: ...
    def record_exception(self, exception: BaseException) -> None: ...
    def set_status(self, status: Any) -> None: ...
    def is_recording(self) -> bool: ...
    def end(self) -> None: ...


class Tracer(Protocol):
    """The part of `opentelemetry.trace.Tracer` used here."""

    def start_span(self, name: str, *, attributes: Mapping[str, Any]) -> Span: ...


@dataclass(slots=True, eq=False)
class _Open:
    kind: str
    names: frozenset[str]
    span: Span


# The span a caller opened and that its `Stats.operation` report will end.
# A context variable, so threads and asyncio tasks each see their own.
_current: ContextVar[_Open | None] = ContextVar("jackpot_span", default=None)


def no_span(_op: Operation) -> AbstractContextManager[None]:
    """Do nothing (tracing off)."""
    return _NO_SPAN


def observer() -> TracingObserver | None:
    """Return a tracing observer on the global tracer provider, or None without OpenTelemetry."""
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return TracingObserver(trace.get_tracer("jackpot"),
                           error_status=trace.Status(trace.StatusCode.ERROR),
                           configured=_provider_set(trace))


def _provider_set(trace: Any) -> Callable[[], bool]:
    """Return a check of whether the host has set a global tracer provider.

    Until it has, the global tracer is the API's proxy, whose spans never
    record: opening one cost a contribution some 2% of its instructions. The
    check reads what the proxy itself reads (the API's `_TRACER_PROVIDER`,
    set by `set_tracer_provider` or loaded from OTEL_PYTHON_TRACER_PROVIDER),
    so a provider set later is found at the next call; `get_tracer_provider()`
    would cost more than the span it saves (it looks in the environment each
    time). An API without that name gets every span opened, as before.
    """
    if not hasattr(trace, "_TRACER_PROVIDER"):
        return _always

    def configured() -> bool:
        return trace._TRACER_PROVIDER is not None  # noqa: SLF001 - see above

    return configured


def _always() -> bool:
    return True


class TracingObserver:
    """Opens a span per operation (`span`) and fills it from `Stats` events."""

    def __init__(self, tracer: Tracer, *, error_status: Any = None,
                 configured: Callable[[], bool] = _always) -> None:
        """Use `tracer`; `error_status` is set on spans whose outcome is a failure.

        `configured`: whether `tracer` can record yet (a global tracer provider
        is set); False skips the span. Once True it is not asked again (a
        provider, once set, stays).
        """
        self._tracer = tracer
        self._error_status = error_status
        self._configured = configured
        self._live = False
        self._lock = threading.Lock()
        self._open: list[_Open] = []

    def span(self, op: Operation) -> AbstractContextManager[None]:
        """Open the operation's span; `on_operation` ends it with the outcome.

        A span that does not record (OpenTelemetry's API without an SDK, or
        sampled out) is dropped at once: no bookkeeping on the hot path. With
        no tracer provider set at all, none is opened.
        """
        if not self._live:
            if not self._configured():
                _current.set(None)
                return _NO_SPAN
            self._live = True  # (set once: a provider is never taken back)
        span = self._tracer.start_span(f"jackpot.{op.kind}", attributes={
            "jackpot.op_id": op.op_id, "jackpot.operation": op.kind,
            "jackpot.level": ",".join(op.names)})
        if not span.is_recording():
            _current.set(None)
            return _NO_SPAN
        return self._recording(_Open(op.kind, frozenset(op.names), span))

    @contextmanager
    def _recording(self, entry: _Open) -> Iterator[None]:
        with self._lock:
            self._open.append(entry)
        _current.set(entry)
        try:
            yield
        except BaseException as e:
            # A report on a final outcome: a failing tracer must not replace the error.
            after_the_fact(entry.span.record_exception, e)
            raise
        finally:
            with self._lock:
                self._open.remove(entry)

    def _find(self, operation: str, level: str) -> Span | None:
        # A group-committed batch reports its kinds and levels comma-joined.
        kinds = operation.split(",")
        names = frozenset(level.split(",")) if level else None
        with self._lock:
            for entry in self._open:
                if entry.kind in kinds and (names is None or names & entry.names):
                    return entry.span
        return None

    # -- Observer -------------------------------------------------------------

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        """Add a retry, conflict, reload, busy incident or lock timeout to the operation's span."""
        name = _EVENT_NAMES.get(event)
        span = None if name is None else self._find(operation, level)
        if span is not None and name is not None:
            span.add_event(name, {"jackpot.level": level, "jackpot.count": n})

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """End the caller's span with the outcome."""
        entry = _current.get()
        if entry is None or entry.kind != operation:
            return
        _current.set(None)
        entry.span.set_attribute("jackpot.outcome", outcome)
        entry.span.set_attribute("jackpot.duration_seconds", seconds)
        if outcome in _ERROR_OUTCOMES and self._error_status is not None:
            entry.span.set_status(self._error_status)
        entry.span.end()

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        """Add a lock wait to the operation's span."""
        span = self._find(operation, "")
        if span is not None:
            span.add_event("jackpot.lock_wait",
                           {"jackpot.lock": lock, "jackpot.wait_seconds": seconds})
