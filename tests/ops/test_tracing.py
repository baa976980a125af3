"""Tracing: a span per operation with op_id, operation, level; lock waits and retries as events."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jackpot import (
    AsyncJackpotEngine,
    InsufficientFundsError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    tracing,
)
from jackpot.tracing import TracingObserver

from .conftest import write_lock_held


class FakeSpan:
    recording = True

    def __init__(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.name = name
        self.attributes = dict(attributes)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.exceptions: list[BaseException] = []
        self.status: Any = None
        self.ended = 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.events.append((name, dict(attributes or {})))

    def record_exception(self, exception: BaseException) -> None:
        self.exceptions.append(exception)

    def set_status(self, status: Any) -> None:
        self.status = status

    def is_recording(self) -> bool:
        return self.recording

    def end(self) -> None:
        self.ended += 1


class FakeTracer:
    def __init__(self, *, recording: bool = True) -> None:
        self.spans: list[FakeSpan] = []
        self.recording = recording

    def start_span(self, name: str, *, attributes: Mapping[str, Any]) -> FakeSpan:
        self.spans.append(FakeSpan(name, attributes))
        self.spans[-1].recording = self.recording
        return self.spans[-1]


def traced(engine: JackpotEngine) -> FakeTracer:
    """Replace the engine's tracing observer by one on a fake tracer."""
    tracer = FakeTracer()
    observer = TracingObserver(tracer, error_status="ERROR")
    engine.stats.observers = [o for o in engine.stats.observers
                              if not isinstance(o, TracingObserver)] + [observer]
    engine._trace = observer.span
    return tracer


def test_each_operation_is_a_span_with_its_identity_and_outcome(engine: JackpotEngine) -> None:
    tracer = traced(engine)
    engine.contribute("10", groups=("minor", "major"), op_id="bet-1")
    engine.contribute("10", groups=("minor", "major"), op_id="bet-1")
    with pytest.raises(InsufficientFundsError):
        engine.process_win("mega", amount="99999", op_id="win-1")
    bet, replay, win = tracer.spans
    assert (bet.name, win.name) == ("jackpot.contribute", "jackpot.win")
    assert {k: v for k, v in bet.attributes.items() if k != "jackpot.duration_seconds"} == {
        "jackpot.op_id": "bet-1", "jackpot.operation": "contribute",
        "jackpot.level": "major,minor", "jackpot.outcome": "ok"}
    assert replay.attributes["jackpot.outcome"] == "replayed"
    assert win.attributes["jackpot.outcome"] == "rejected"
    assert [type(e) for e in win.exceptions] == [InsufficientFundsError]
    assert win.status is None  # a refusal is the caller's error, not the engine's
    assert [s.ended for s in tracer.spans] == [1, 1, 1]
    assert [name for name, _ in bet.events] == ["jackpot.lock_wait", "jackpot.lock_wait"]
    assert [e["jackpot.lock"] for _, e in bet.events] == ["coordinator", "database"]


@pytest.mark.usefixtures("blind_to_other_writers")  # found by the version-checked UPDATE
def test_a_conflict_and_its_retry_are_events(open_engine: Callable[..., JackpotEngine]) -> None:
    a, b = open_engine(), open_engine()
    tracer = traced(a)
    b.contribute("1", groups="minor")
    a.contribute("1", groups="minor", op_id="bet-2")
    (span,) = tracer.spans
    assert [name for name, _ in span.events] == [
        "jackpot.lock_wait", "jackpot.version_conflict", "jackpot.retry", "jackpot.lock_wait"]
    assert span.events[1][1] == {"jackpot.level": "minor", "jackpot.count": 1}
    assert span.attributes["jackpot.outcome"] == "ok"


def test_a_reload_is_an_event(open_engine: Callable[..., JackpotEngine]) -> None:
    a, b = open_engine(), open_engine()
    tracer = traced(a)
    b.contribute("1", groups="minor")
    a.contribute("1", groups="minor", op_id="bet-3")
    (span,) = tracer.spans
    assert [name for name, _ in span.events] == ["jackpot.lock_wait", "jackpot.cache_reload"]
    assert span.events[1][1] == {"jackpot.level": "minor", "jackpot.count": 1}
    assert span.attributes["jackpot.outcome"] == "ok"


def test_without_opentelemetry_there_is_no_observer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails
    assert tracing.observer() is None


def test_with_opentelemetry_the_observer_uses_the_global_tracer() -> None:
    observer = tracing.observer()
    assert isinstance(observer, TracingObserver)


class CountingTracer:
    """Counts the spans asked of the tracer it wraps."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.asked = 0

    def start_span(self, name: str, *, attributes: Mapping[str, Any]) -> Any:
        self.asked += 1
        return self.tracer.start_span(name, attributes=attributes)


class FakeProvider:
    """A tracer provider as an SDK's, handing out one fake tracer."""

    def __init__(self) -> None:
        self.tracer = FakeTracer()

    def get_tracer(self, *_args: Any, **_kwargs: Any) -> FakeTracer:
        return self.tracer


def engine_observer(engine: JackpotEngine) -> TracingObserver:
    (observer,) = (o for o in engine.stats.observers if isinstance(o, TracingObserver))
    return observer


def test_with_no_tracer_provider_set_no_span_is_opened(engine: JackpotEngine) -> None:
    # OpenTelemetry's API alone (no SDK, no provider): its spans never record,
    # and opening one cost a contribution some 2% of its instructions.
    observer = engine_observer(engine)
    counted = observer._tracer = CountingTracer(observer._tracer)
    engine.contribute("1", groups="minor", op_id="bet-1")
    engine.process_win("minor", op_id="win-1")
    assert counted.asked == 0


def test_a_tracer_provider_set_after_open_gets_the_spans(
        engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace  # noqa: PLC0415 - the tests' extra has it

    engine.contribute("1", groups="minor", op_id="bet-1")  # none set yet
    provider = FakeProvider()
    # (what `trace.set_tracer_provider` sets, and undone: it can be set once a process)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    engine.contribute("1", groups="minor", op_id="bet-2")
    (span,) = provider.tracer.spans
    assert span.name == "jackpot.contribute"
    assert span.attributes["jackpot.op_id"] == "bet-2"
    assert span.attributes["jackpot.outcome"] == "ok"
    assert span.ended == 1


def test_an_api_without_the_providers_name_gets_every_span_opened() -> None:
    # The check reads the API's own global; an API that lacks it (renamed in
    # some release) must not lose the spans: every one is opened, as before.
    assert tracing._provider_set(SimpleNamespace())() is True
    assert tracing._provider_set(SimpleNamespace(_TRACER_PROVIDER=None))() is False
    assert tracing._provider_set(SimpleNamespace(_TRACER_PROVIDER=FakeProvider()))() is True


def test_an_event_with_no_open_span_is_dropped() -> None:
    tracer = FakeTracer()
    observer = TracingObserver(tracer)
    observer.on_event("retries", "contribute", "minor", 1)
    observer.on_lock_wait("database", "win", 0.1)
    observer.on_operation("win", "ok", 0.1)  # no span opened in this context
    assert tracer.spans == []


def test_a_timeout_marks_the_span_as_an_error(open_engine: Callable[..., JackpotEngine],
                                              db_path: Path) -> None:
    engine = open_engine(settings=Settings(lock_timeout_ms=50))
    tracer = traced(engine)
    with write_lock_held(db_path), pytest.raises(LockTimeoutError):
        engine.contribute("1", groups="minor", op_id="bet-3")
    (span,) = tracer.spans
    assert span.attributes["jackpot.outcome"] == "timeout"
    assert span.status == "ERROR"
    assert [type(e) for e in span.exceptions] == [LockTimeoutError]


def test_spans_that_do_not_record_are_dropped_at_once(engine: JackpotEngine) -> None:
    tracer = FakeTracer(recording=False)  # OpenTelemetry's API without an SDK
    observer = TracingObserver(tracer, error_status="ERROR")
    engine.stats.observers = [o for o in engine.stats.observers
                              if not isinstance(o, TracingObserver)] + [observer]
    engine._trace = observer.span
    engine.contribute("10", groups="minor", op_id="bet-1")
    with pytest.raises(InsufficientFundsError):
        engine.process_win("mega", amount="99999", op_id="win-1")
    assert len(tracer.spans) == 2
    assert all((s.ended, s.events, s.exceptions, s.status) == (0, [], [], None)
               for s in tracer.spans)  # nothing was written to a span that drops it
    assert "jackpot.outcome" not in tracer.spans[0].attributes
    assert observer._open == []


class BrokenSpan(FakeSpan):
    def record_exception(self, exception: BaseException) -> None:
        msg = "exporter down"
        raise RuntimeError(msg)


def test_a_tracer_failing_to_record_an_error_does_not_replace_it(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture) -> None:
    tracer = traced(engine)
    tracer.start_span = lambda name, *, attributes: BrokenSpan(name, attributes)  # type: ignore[method-assign]
    with pytest.raises(InsufficientFundsError):  # was: RuntimeError('exporter down')
        engine.process_win("mega", amount="99999", op_id="win-1")
    assert any(getattr(r, "outcome", None) == "report_failed" for r in caplog.records)


def test_an_asyncio_call_keeps_its_error_and_its_books_when_the_tracer_fails(
        db_path: Path) -> None:
    async def run() -> int:
        engine = await AsyncJackpotEngine.open(db_path)
        try:
            tracer = traced(engine.sync)
            tracer.start_span = lambda name, *, attributes: BrokenSpan(  # type: ignore[method-assign]
                name, attributes)
            with pytest.raises(InsufficientFundsError):  # was: RuntimeError('exporter down')
                await engine.process_win("mega", amount="99999", op_id="win-1")
            return engine.sync.stats.snapshot().get("operations:win:rejected", 0)
        finally:
            await engine.close(timeout=5)

    assert asyncio.run(run()) == 1  # its books closed: counted as the refusal it was
