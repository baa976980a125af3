"""Prometheus metrics: exact values after known operations, per-engine registries, off switch."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import prometheus_client
import pytest

from _helpers import in_thread
from jackpot import (
    AsyncJackpotEngine,
    ConcurrencyViolationError,
    EngineClosedError,
    InsufficientFundsError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    ValidationError,
    serve_metrics,
)
from jackpot.metrics import OPERATIONS, PrometheusObserver
from jackpot.service import execute_batch
from jackpot.stats import OUTCOMES, Stats
from jackpot.storage import SQLiteStore

from .conftest import samples, value, write_lock_held

QUIET = Settings(enable_metrics=False)


def test_a_known_sequence_gives_exact_counts(engine: JackpotEngine) -> None:
    engine.contribute("10", op_id="c1")                      # every level: the coordinator
    engine.contribute("10", op_id="c1")                      # replay
    engine.process_win("minor", op_id="w1")
    with pytest.raises(InsufficientFundsError):
        engine.process_win("minor", amount="1000000", op_id="w2")
    with pytest.raises(ConcurrencyViolationError):
        engine.update_config("minor", expected_version=1, cap="500", op_id="k1")

    found = samples(engine)  # one scrape

    def got(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    expected = {("contribute", "ok"): 1, ("contribute", "replayed"): 1, ("win", "ok"): 1,
                ("win", "rejected"): 1, ("config", "conflict"): 1}
    for operation in OPERATIONS:
        for outcome in OUTCOMES:  # every series exists from the start, at 0 when unused
            assert got("jackpot_operations_total", operation=operation,
                       outcome=outcome) == expected.get((operation, outcome), 0)
    for operation, n in (("contribute", 2), ("win", 2), ("config", 1), ("adjust", 0)):
        assert got("jackpot_operation_duration_seconds_count", operation=operation) == n
    # Each operation (a replay too) takes the database write lock once; the
    # multi-level contributions also wait for the coordinator's holds.
    for lock, operation, n in (("database", "contribute", 2), ("coordinator", "contribute", 2),
                               ("database", "win", 2), ("database", "config", 1)):
        assert got("jackpot_lock_wait_seconds_count", lock=lock, operation=operation) == n
    for operation in OPERATIONS:
        assert got("jackpot_busy_incidents_total", operation=operation) == 0
        assert got("jackpot_lock_timeouts_total", operation=operation) == 0
    # A stale expected_version is refused before any write: no retry, no version conflict.
    names = {name for name, _ in found}
    assert "jackpot_retries_total" not in names
    assert "jackpot_version_conflicts_total" not in names


def test_level_gauges_are_read_at_scrape_time(engine: JackpotEngine) -> None:
    engine.contribute("100", groups=("minor", "major"))
    engine.process_win("major")
    engine.contribute("3", groups="minor")
    pools = engine.pools()
    for name, pool in pools.items():
        assert Decimal(str(value(engine, "jackpot_level_amount", level=name))) == pool.amount
        assert value(engine, "jackpot_level_reserve", level=name) == 0
        assert value(engine, "jackpot_level_version", level=name) == pool.version
    assert [pools[n].version for n in ("major", "mega", "minor")] == [3, 1, 3]
    assert value(engine, "jackpot_level_amount", level="minor") == 100.515
    assert value(engine, "jackpot_health_status", status="ok") == 1
    assert value(engine, "jackpot_health_status", status="degraded") == 0
    assert value(engine, "jackpot_health_status", status="failing") == 0


@pytest.mark.usefixtures("blind_to_other_writers")  # found by the version-checked UPDATE
def test_a_stale_cache_counts_one_conflict_and_one_retry(
        open_engine: Callable[..., JackpotEngine]) -> None:
    a, b = open_engine(), open_engine()  # two engines (two "processes") on one file
    b.contribute("10", groups="minor")     # a's actor still caches minor at version 1
    result = a.contribute("10", groups="minor")
    assert result.versions == {"minor": 3}
    assert value(a, "jackpot_version_conflicts_total", operation="contribute", level="minor") == 1
    assert value(a, "jackpot_retries_total", operation="contribute", level="minor") == 1
    assert value(a, "jackpot_operations_total", operation="contribute", outcome="ok") == 1
    assert value(a, "jackpot_lock_wait_seconds_count", lock="database",
                 operation="contribute") == 2  # the conflicting attempt and the retry
    # The two engines' registries are separate: b saw no conflict, one operation of its own.
    assert ("jackpot_version_conflicts_total",
            frozenset({("operation", "contribute"), ("level", "minor")})) not in samples(b)
    assert value(b, "jackpot_operations_total", operation="contribute", outcome="ok") == 1
    assert value(b, "jackpot_level_version", level="minor") == 3


def test_a_level_another_engine_moved_is_one_reload_not_a_conflict(
        open_engine: Callable[..., JackpotEngine]) -> None:
    a, b = open_engine(), open_engine()
    b.contribute("10", groups="minor")     # a's actor still caches minor at version 1
    result = a.contribute("10", groups=("major", "minor"))  # major: unchanged, minor: moved
    assert result.versions == {"major": 2, "minor": 3}
    assert value(a, "jackpot_cache_reloads_total", operation="contribute", level="minor") == 1
    assert ("jackpot_cache_reloads_total",
            frozenset({("operation", "contribute"), ("level", "major")})) not in samples(a)
    assert ("jackpot_version_conflicts_total",
            frozenset({("operation", "contribute"), ("level", "minor")})) not in samples(a)
    assert value(a, "jackpot_lock_wait_seconds_count", lock="database",
                 operation="contribute") == 1  # re-read in the same transaction


def test_a_held_write_lock_gives_a_timeout(open_engine: Callable[..., JackpotEngine],
                                           db_path: Path) -> None:
    engine = open_engine(settings=Settings(lock_timeout_ms=200))
    with write_lock_held(db_path), pytest.raises(LockTimeoutError):
        engine.contribute("10", groups="minor")
    assert value(engine, "jackpot_operations_total", operation="contribute",
                 outcome="timeout") == 1
    assert value(engine, "jackpot_operations_total", operation="contribute", outcome="ok") == 0
    assert value(engine, "jackpot_operation_duration_seconds_count", operation="contribute") == 1
    # The exporter mirrors what the engine counted as lock timeouts, exactly.
    assert value(engine, "jackpot_lock_timeouts_total",
                 operation="contribute") == engine.stats.snapshot()["lock_timeouts"]
    assert value(engine, "jackpot_level_version", level="minor") == 1  # nothing changed


def test_a_batch_that_times_out_counts_one_lock_timeout_per_operation(db_path: Path) -> None:
    """Two bets and a win in one transaction give up on a held write lock: three timeouts.

    `jackpot_lock_timeouts_total` counts operations that gave up, under
    their own kind, as the operations' `timeout` outcomes are counted: a
    group-committed batch counted one, under "contribute,win".
    """
    with JackpotEngine.open(db_path, settings=QUIET) as engine:  # makes the file and requests
        ops = [engine._requests.contribute(Decimal(1), groups="minor", op_id=f"bet-{i}")
               for i in range(2)]
        ops.append(engine._requests.win("minor", op_id="win-1", amount=None, winner=None))
    stats = Stats()
    store = SQLiteStore(str(db_path))
    try:
        with write_lock_held(db_path):
            outcomes, changed = execute_batch(store, ops, None,
                                              settings=Settings(lock_timeout_ms=50),
                                              stats=stats)
    finally:
        store.close()
    assert [type(o.error) for o in outcomes] == [LockTimeoutError] * 3
    assert changed == {}
    assert {k: n for k, n in stats.snapshot().items() if k.startswith("lock_timeouts")} == {
        "lock_timeouts": 3, "lock_timeouts:contribute:minor": 2, "lock_timeouts:win:minor": 1}


def test_a_wait_for_the_write_lock_that_times_out_is_recorded_as_long_as_it_lasted(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    """Only waits that ended holding the lock were recorded: the longest never were.

    A lock-wait panel then looked quiet while every writer gave up.
    """
    engine = open_engine(settings=Settings(lock_timeout_ms=200))
    engine.contribute("1", groups="minor")
    before = value(engine, "jackpot_lock_wait_seconds_sum", lock="database",
                   operation="contribute")
    with write_lock_held(db_path), pytest.raises(LockTimeoutError):
        engine.contribute("1", groups="minor", op_id="gave-up")
    assert value(engine, "jackpot_lock_wait_seconds_count", lock="database",
                 operation="contribute") == 2
    waited = value(engine, "jackpot_lock_wait_seconds_sum", lock="database",
                   operation="contribute") - before
    assert waited >= 0.2  # the whole lock timeout, at least: it gave up only after it
    assert value(engine, "jackpot_lock_timeouts_total", operation="contribute") == 1


def test_a_level_held_past_its_limit_counts_its_lock_timeouts(
        open_engine: Callable[..., JackpotEngine]) -> None:
    """A level actor that cannot get its level's guard fails its batch: counted as timeouts."""
    engine = open_engine(settings=Settings(max_retry_attempts=0))
    guard = engine._guards["minor"]
    real = guard.lock
    guard.lock = _NeverFree()  # type: ignore[assignment]
    try:
        with pytest.raises(LockTimeoutError, match="stayed held"):
            engine.contribute("1", groups="minor", op_id="held")
    finally:
        guard.lock = real
    assert engine.stats.snapshot()["lock_timeouts:contribute:minor"] == 1
    assert value(engine, "jackpot_lock_timeouts_total", operation="contribute") == 1
    assert value(engine, "jackpot_operations_total", operation="contribute",
                 outcome="timeout") == 1


def test_a_coordinator_batch_that_cannot_hold_its_levels_counts_each_operation(
        open_engine: Callable[..., JackpotEngine]) -> None:
    """Two multi-level bets queued together, then refused their levels: two lock timeouts.

    The first bet's coordinator waits in `minor`'s guard while the next two
    queue; released, the guard refuses every hold, so the first times out
    alone and the other two as one batch: three operations, three timeouts.
    """
    engine = open_engine(settings=Settings(max_retry_attempts=0))
    entered, release, queued = threading.Event(), threading.Event(), threading.Event()
    guard = engine._guards["minor"]
    real = guard.lock
    guard.lock = _HeldUntil(entered, release)  # type: ignore[assignment]
    mailbox = engine._mailboxes[None]
    put = mailbox.put
    puts: list[int] = []

    def counted_put(*args: Any) -> bool:
        woke = put(*args)
        puts.append(1)
        if len(puts) == 3:
            queued.set()
        return woke

    mailbox.put = counted_put  # type: ignore[method-assign]
    def bet(i: int) -> tuple[threading.Thread, list[Any]]:
        return in_thread(lambda: engine.contribute("1", groups=("major", "minor"),
                                                   op_id=f"both-{i}"))

    bets = [bet(0)]
    try:
        assert entered.wait(10)
        bets += [bet(1), bet(2)]
        assert queued.wait(10)
    finally:
        release.set()
        for thread, _ in bets:
            thread.join(30)
        guard.lock = real
        mailbox.put = put  # type: ignore[method-assign]
    assert [type(out[0]) for _, out in bets] == [LockTimeoutError] * 3
    assert engine.stats.snapshot()["lock_timeouts:contribute:major,minor"] == 3
    assert value(engine, "jackpot_lock_timeouts_total", operation="contribute") == 3


class _HeldUntil:
    """A level guard that is never free: the first acquire waits for `release`, then all fail."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self._entered, self._release = entered, release

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._entered.set()
        assert self._release.wait(30)
        return False

    def release(self) -> None:
        raise AssertionError("never held")


class _NeverFree:
    """A level guard that is never free: every acquire times out at once."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return False

    def release(self) -> None:
        raise AssertionError("never held")


def test_two_engines_in_one_process_do_not_collide(
        open_engine: Callable[..., JackpotEngine], tmp_path: Path) -> None:
    a = open_engine(tmp_path / "a.db")
    b = open_engine(tmp_path / "b.db")
    a.contribute("1", groups="minor")
    a.contribute("1", groups="minor")
    b.contribute("1", groups="major")
    assert value(a, "jackpot_operations_total", operation="contribute", outcome="ok") == 2
    assert value(b, "jackpot_operations_total", operation="contribute", outcome="ok") == 1
    assert value(a, "jackpot_level_version", level="minor") == 3
    assert value(b, "jackpot_level_version", level="minor") == 1
    # Nothing lands in the process-wide default registry.
    default = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("jackpot_") for name in default)


def test_disabled_by_environment_registers_no_observer(
        monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    monkeypatch.setenv("JACKPOT_ENABLE_METRICS", "false")
    with JackpotEngine.open(db_path) as engine:
        assert engine.settings.enable_metrics is False
        assert engine.stats.observers == []
        engine.contribute("1")
        assert engine.metrics_text() == ""
        with pytest.raises(ValidationError, match="metrics are disabled"):
            serve_metrics(engine, 0)


@pytest.mark.parametrize(("engine_arg", "port", "addr", "says"), [
    (None, "abc", "127.0.0.1", "port must be a port number"),  # was an OSError
    (None, 70000, "127.0.0.1", "port must be a port number"),  # was an OverflowError
    (None, -1, "127.0.0.1", "port must be a port number"),
    (None, True, "127.0.0.1", "port must be a port number"),
    (None, 0, 127, "addr must be a host name"),
    # were a UnicodeError from the socket's host name encoding (idna)
    (None, 0, f"host{chr(0xD800)}", "addr must be a host name"),
    (None, 0, "h" * 300, "addr must be a host name"),
    (None, 0, "127.0.0.1\x00evil", "addr must be a host name"),  # was served on 127.0.0.1
    # were an OSError "cannot serve metrics on :0: Name or service not known" (as a
    # socket's "", "every interface" was meant; the resolver takes no empty name)
    (None, 0, "", r"addr is empty: .*'0\.0\.0\.0' or '::' for every interface"),
    (None, 0, "  ", "addr is empty"),
    (object(), 0, "127.0.0.1", "engine must be a JackpotEngine"),  # was an AttributeError
])
def test_serve_metrics_refuses_bad_arguments_with_a_validation_error(
        engine: JackpotEngine, engine_arg: object, port: object, addr: object,
        says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        serve_metrics(engine if engine_arg is None else engine_arg,  # type: ignore[arg-type]
                      port, addr=addr)  # type: ignore[arg-type]


def test_enabled_registers_the_prometheus_and_tracing_observers(engine: JackpotEngine) -> None:
    kinds = [type(o).__name__ for o in engine.stats.observers]
    assert kinds == ["PrometheusObserver", "TracingObserver"]  # opentelemetry-api is installed
    assert isinstance(engine.stats.observers[0], PrometheusObserver)


@contextmanager
def _serving(engine: JackpotEngine | AsyncJackpotEngine) -> Iterator[WSGIServer]:
    """serve_metrics(engine, 0) on 127.0.0.1; shut down, closed and joined on the way out."""
    server, thread = serve_metrics(engine, 0)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_serve_metrics_serves_the_engine_registry(engine: JackpotEngine) -> None:
    engine.contribute("1", groups="minor")
    with _serving(engine) as server:
        assert server.server_address[0] == "127.0.0.1"
        body = _scrape(server.server_port)
    assert 'jackpot_operations_total{operation="contribute",outcome="ok"} 1.0' in body
    assert 'jackpot_level_version{level="minor"} 2.0' in body


def test_a_closed_engine_exports_failing_health_and_no_levels(engine: JackpotEngine) -> None:
    engine.close()
    found = samples(engine)
    assert found[("jackpot_health_status", frozenset({("status", "failing")}))] == 1
    assert not any(name == "jackpot_level_amount" for name, _ in found)


@pytest.mark.parametrize("wrapped", [False, True], ids=["sync", "asyncio"])
def test_serve_metrics_refuses_a_closed_engine_and_a_served_one_closed_keeps_its_last_counts(
        engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch, wrapped: bool) -> None:
    # It bound the port and served an engine that would never count again.
    bound: list[int] = []

    def start(port: int, **kwargs: Any) -> Any:
        bound.append(port)
        return prometheus_client.start_http_server(port, **kwargs)

    monkeypatch.setattr("jackpot.metrics.start_http_server", start)
    served = AsyncJackpotEngine(engine) if wrapped else engine
    engine.contribute("1", groups="minor", op_id="c1")
    with _serving(served) as server:
        engine.close()
        # One served before the close goes on: the last counts, failing health, no levels.
        body = _scrape(server.server_port)
    assert 'jackpot_operations_total{operation="contribute",outcome="ok"} 1.0' in body
    assert 'jackpot_health_status{status="failing"} 1.0' in body
    assert "jackpot_level_amount{" not in body
    with pytest.raises(EngineClosedError, match=r"^the engine is closed: "):
        serve_metrics(served, 0)
    assert bound == [0]  # only the server started before the close
