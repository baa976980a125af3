"""Prometheus metrics: exact values after known operations, per-engine registries, off switch."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import prometheus_client
import pytest

from jackpot import (
    ConcurrencyViolationError,
    InsufficientFundsError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    ValidationError,
    serve_metrics,
)
from jackpot.metrics import OPERATIONS, PrometheusObserver
from jackpot.stats import OUTCOMES

from .conftest import samples, value, write_lock_held


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


def test_serve_metrics_serves_the_engine_registry(engine: JackpotEngine) -> None:
    engine.contribute("1", groups="minor")
    server, thread = serve_metrics(engine, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert 'jackpot_operations_total{operation="contribute",outcome="ok"} 1.0' in body
    assert 'jackpot_level_version{level="minor"} 2.0' in body


def test_a_closed_engine_exports_failing_health_and_no_levels(engine: JackpotEngine) -> None:
    engine.close()
    found = samples(engine)
    assert found[("jackpot_health_status", frozenset({("status", "failing")}))] == 1
    assert not any(name == "jackpot_level_amount" for name, _ in found)
