"""Prometheus metrics of one engine: a `Stats` observer and a scrape-time collector.

Every engine gets its own `CollectorRegistry`, so two engines in one process
(and the tests) never collide, and nothing is registered in the global
registry. Counters and histograms are fed by the engine's `Stats` events; the
levels' amount, reserve and version, and the health status, are read only when
someone scrapes (`_EngineCollector`), so they cost nothing on the hot path.

Exposed metrics (all prefixed `jackpot_`):

- `operations_total{operation,outcome}`: finished operations; outcome is one
  of ok, replayed, rejected, conflict, timeout, error, unknown (a caller
  interrupted twice, whose request may still be applied: see the README).
- `retries_total{operation,level}`, `version_conflicts_total{operation,level}`:
  `level` is the level, or the sorted comma-joined levels of a multi-level
  operation.
- `cache_reloads_total{operation,level}`: cached levels another connection
  changed, found as the write lock was taken and re-read before anything was
  applied (writers of several processes; not a conflict).
- `busy_incidents_total{operation}`: SQLITE_BUSY without waiting (a would-be
  deadlock) or a coordinator that could not hold its levels in time.
- `lock_timeouts_total{operation}`, `actor_restarts_total{actor}`.
- `operation_duration_seconds{operation}`, `lock_wait_seconds{lock,operation}`
  (histograms; lock is "database" or "coordinator").
- `level_amount{level}`, `level_reserve{level}` (currency units),
  `level_version{level}`, `health_status{status}` (1 for the current status).

Counters, histograms and the health status belong to one engine, in one
process: scrape the game server's own (`engine.metrics_text()`,
`serve_metrics`). `database_registry` serves what the database alone holds,
the level gauges, for the `jackpot metrics` command, which runs no engine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, SupportsIndex
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from jackpot.errors import EngineClosedError, JackpotError, ValidationError, exact_int, shown
from jackpot.health import STATUSES, HealthReport
from jackpot.results import PoolSnapshot
from jackpot.stats import OUTCOMES, Stats

__all__ = ["OPERATIONS", "EngineView", "PrometheusObserver", "database_registry",
           "serve_metrics", "serve_registry"]

OPERATIONS = ("contribute", "win", "config", "suspend", "resume", "adjust", "retire")
"""Operation kinds, pre-declared so every series exists (at 0) from the start."""

# Operations commit with an fsync (about a millisecond) and wait at most the
# lock timeout (seconds): buckets span 0.5 ms (0.1 ms for lock waits) to 10 s.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)
_LOCK_BUCKETS = (0.0001, 0.00025, *_DURATION_BUCKETS)


class EngineView(Protocol):
    """What the scrape-time collector reads from an engine."""

    def pools(self) -> Mapping[str, PoolSnapshot]:
        """Return every level's committed state."""
        ...

    def health(self) -> HealthReport:
        """Return the engine's health."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the engine was closed (or dropped)."""
        ...


class PrometheusObserver:
    """Turns `Stats` events into Prometheus series in a registry of its own.

    Attributes:
        registry: this engine's `CollectorRegistry` (serve it with
            `prometheus_client.start_http_server(port, registry=...)`).

    """

    def __init__(self, engine: EngineView) -> None:
        """Create the registry and its metrics; levels are read at scrape time."""
        self.registry = CollectorRegistry()
        self._engine = engine
        self._pid = os.getpid()  # the engine's process: a forked child's copy counts nothing
        r = self.registry
        self._operations = Counter(
            "jackpot_operations", "Finished operations by kind and outcome.",
            ("operation", "outcome"), registry=r)
        self._retries = Counter(
            "jackpot_retries", "Retries after a version conflict or a busy database.",
            ("operation", "level"), registry=r)
        self._conflicts = Counter(
            "jackpot_version_conflicts",
            "Writes that found the level at another version than cached (then retried).",
            ("operation", "level"), registry=r)
        self._reloads = Counter(
            "jackpot_cache_reloads",
            "Cached levels found changed by another connection as the write lock was taken "
            "(re-read before anything was applied; not a conflict).",
            ("operation", "level"), registry=r)
        self._busy = Counter(
            "jackpot_busy_incidents",
            "Would-be deadlocks: SQLITE_BUSY without waiting, or levels not held in time.",
            ("operation",), registry=r)
        self._timeouts = Counter(
            "jackpot_lock_timeouts", "Operations that did not get a lock in time.",
            ("operation",), registry=r)
        self._restarts = Counter(
            "jackpot_actor_restarts", "Stopped actors replaced by the engine.",
            ("actor",), registry=r)
        self._duration = Histogram(
            "jackpot_operation_duration_seconds", "Latency of operations, queueing included.",
            ("operation",), buckets=_DURATION_BUCKETS, registry=r)
        self._lock_wait = Histogram(
            "jackpot_lock_wait_seconds",
            "Time spent acquiring the database write lock or the coordinator's level holds.",
            ("lock", "operation"), buckets=_LOCK_BUCKETS, registry=r)
        r.register(_EngineCollector(engine))
        # The labelled children of the hot path, looked up once: `labels()`
        # takes the metric's lock and builds a key on every call.
        self._counted = {(operation, outcome): self._operations.labels(operation, outcome)
                         for operation in OPERATIONS for outcome in OUTCOMES}
        self._timed = {operation: self._duration.labels(operation) for operation in OPERATIONS}
        self._waited: dict[tuple[str, str], Any] = {}  # filled on first use: levels vary
        for operation in OPERATIONS:
            self._busy.labels(operation)
            self._timeouts.labels(operation)
        self._events: dict[str, Callable[[str, str, int], None]] = {
            "retries": lambda op, level, n: self._retries.labels(op, level).inc(n),
            "conflicts": lambda op, level, n: self._conflicts.labels(op, level).inc(n),
            "reloads": lambda op, level, n: self._reloads.labels(op, level).inc(n),
            "busy_incidents": lambda op, _, n: self._busy.labels(op).inc(n),
            "lock_timeouts": lambda op, _, n: self._timeouts.labels(op).inc(n),
            "actor_restarts": lambda _, level, n: self._restarts.labels(level).inc(n),
        }

    def text(self) -> str:
        """Return the registry in the Prometheus text exposition format."""
        return generate_latest(self.registry).decode()

    def check_process(self) -> None:
        """Refuse to serve in a forked child: its copy holds the parent's counts, frozen.

        The copy's counters never move again (the actors are the parent's),
        and its level and health series are refused there: served, it would
        look like a healthy engine that stopped working.
        """
        if self._pid != os.getpid():
            msg = (f"this engine was opened in process {self._pid}, not in this one "
                   f"({os.getpid()}): its metrics count what that process does, so serve "
                   "them there. Open an engine in each process after it starts (after the fork)")
            raise EngineClosedError(msg)

    def check_open(self) -> None:
        """Refuse to start serving a closed engine: its figures would never move again.

        A server started before the close goes on serving (see `serve_metrics`).
        """
        if self._engine.closed:
            msg = ("the engine is closed: its metrics no longer change; serve those of "
                   "the engine opened in its place")
            raise EngineClosedError(msg)

    # -- Observer -------------------------------------------------------------

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        """Count an event; replays are counted as operations with outcome "replayed"."""
        count = self._events.get(event)
        if count is not None:
            count(operation, level, n)

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """Count a finished operation and observe its latency."""
        counted = self._counted.get((operation, outcome))
        if counted is None:
            counted = self._operations.labels(operation, outcome)
        counted.inc()
        timed = self._timed.get(operation)
        if timed is None:
            timed = self._duration.labels(operation)
        timed.observe(seconds)

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        """Observe a lock acquisition time."""
        waited = self._waited.get((lock, operation))
        if waited is None:
            waited = self._waited[lock, operation] = self._lock_wait.labels(lock, operation)
        waited.observe(seconds)


class _Engine(Protocol):
    """What `serve_metrics` needs of an engine (sync or asyncio): its stats."""

    @property
    def stats(self) -> Stats: ...


def serve_metrics(engine: _Engine, port: SupportsIndex, *, addr: str = "127.0.0.1"
                  ) -> tuple[WSGIServer, threading.Thread]:
    """Serve the engine's metrics at http://addr:port/metrics from a daemon thread.

    Binds to 127.0.0.1 unless told otherwise (put a reverse proxy in front to
    expose it); port 0 picks a free port (`server.server_port`). Returns
    `(server, thread)`; stop it with `server.shutdown()`, then free its port with
    `server.server_close()`.

    Closing the engine does not stop the server (it is the caller's): it goes
    on answering, with the counters and histograms as they were at the close,
    `jackpot_health_status` failing ("the engine is closed") and no level
    gauges, so a scrape still succeeds and the health alert says why the
    figures stopped. Stop it when you close the engine.

    Raises:
        ValidationError: the engine runs with metrics disabled, or `port` is
            not a port number (0-65535) or `addr` not a host name (or empty).
        EngineClosedError: the engine is closed (no port is bound), or called
            in a forked child on an engine the parent opened (its metrics are
            the parent's).
        OSError: the port cannot be bound; the message names the address and port.

    """
    port = _check_port(port, addr)
    observers = getattr(getattr(engine, "stats", None), "observers", None)
    if not isinstance(observers, list):
        msg = f"engine must be a JackpotEngine or AsyncJackpotEngine, not {type(engine).__name__}"
        raise ValidationError(msg)
    for observer in observers:
        if isinstance(observer, PrometheusObserver):
            observer.check_process()
            observer.check_open()
            return serve_registry(observer.registry, port, addr=addr)
    msg = "metrics are disabled for this engine (JACKPOT_ENABLE_METRICS=false)"
    raise ValidationError(msg)


def serve_registry(registry: CollectorRegistry, port: int, *, addr: str = "127.0.0.1"
                   ) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at http://addr:port/metrics from a daemon thread (see `serve_metrics`).

    Raises:
        ValidationError: `port` is not a port number (0-65535) or `addr` not a host name (or empty).
        OSError: the port cannot be bound; the message names the address and port.

    """
    port = _check_port(port, addr)
    try:
        return start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        msg = f"cannot serve metrics on {addr}:{port}: {e.strerror or e}"
        raise OSError(e.errno, msg) from e


def _check_port(port: object, addr: object) -> int:
    """Return `port` as an int (numpy.int64 too); refuse it, or `addr`, by name."""
    number = exact_int(port)
    if number is None or not 0 <= number <= 65535:  # noqa: PLR2004
        msg = f"port must be a port number from 0 to 65535 (0: any free port), not {shown(port)}"
        raise ValidationError(msg)
    if not isinstance(addr, str):
        msg = f"addr must be a host name or IP address string, not {type(addr).__name__}"
        raise ValidationError(msg)
    if not addr.strip():  # a socket's "" (every interface): the resolver finds no such host
        msg = ("addr is empty: name the address to listen on ('127.0.0.1' for this host "
               "only, '0.0.0.0' or '::' for every interface)")
        raise ValidationError(msg)
    if "\x00" in addr or not _encodes_as_host(addr):
        msg = f"addr must be a host name or IP address, not {shown(addr)}"
        raise ValidationError(msg)
    return number


def _encodes_as_host(addr: str) -> bool:
    """Say whether the socket can encode `addr` as a host name (IDNA).

    A surrogate, or a label past 63 characters, is a UnicodeError there (a
    NUL, refused apart, would cut the name short).
    """
    try:
        addr.encode("idna")
    except UnicodeError:
        return False
    return True


def database_registry(read_pools: Callable[[], Mapping[str, PoolSnapshot]]
                      ) -> CollectorRegistry:
    """Return a registry of the level gauges alone, read by `read_pools` at each scrape.

    No counter, histogram or health status: those are an engine's, per process.
    """
    registry = CollectorRegistry()
    registry.register(_LevelCollector(read_pools))
    return registry


class _LevelCollector:
    """Reads the levels' amount, reserve and version from the database when scraped."""

    def __init__(self, read_pools: Callable[[], Mapping[str, PoolSnapshot]]) -> None:
        self._read_pools = read_pools

    def describe(self) -> Iterable[Metric]:
        """Declare the series so registration does not call `collect` early."""
        return _families()[:3]

    def collect(self) -> Iterable[Metric]:
        """Read every level's committed state (no sample when the database cannot be read)."""
        return _level_gauges(self._read_pools)


class _EngineCollector:
    """Reads the levels and the health when scraped (never on the hot path)."""

    def __init__(self, engine: EngineView) -> None:
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        """Declare the series so registration does not call `collect` early."""
        return _families()

    def collect(self) -> Iterable[Metric]:
        """Read every level's committed state and the health status."""
        levels = _level_gauges(self._engine.pools)
        health = _families()[3]
        try:
            status = self._engine.health().status
        except EngineClosedError:  # the engine was dropped (its view holds it weakly)
            return levels
        for s in STATUSES:
            health.add_metric([s], 1.0 if s == status else 0.0)
        return (*levels, health)


def _level_gauges(read_pools: Callable[[], Mapping[str, PoolSnapshot]]
                  ) -> tuple[GaugeMetricFamily, ...]:
    """Return the amount, reserve and version gauges, read now."""
    amount, reserve, version, _ = _families()
    try:
        pools = read_pools()
    except JackpotError:  # closed engine or unreadable file: health says why
        pools = {}
    for name, p in pools.items():
        amount.add_metric([name], float(p.amount))
        reserve.add_metric([name], float(p.reserve))
        version.add_metric([name], p.version)
    return (amount, reserve, version)


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily("jackpot_level_amount",
                          "Committed pool amount of a level, in currency units.",
                          labels=["level"]),
        GaugeMetricFamily("jackpot_level_reserve",
                          "Committed reserve of a level (funds the next reset), in currency "
                          "units.", labels=["level"]),
        GaugeMetricFamily("jackpot_level_version",
                          "Committed version of a level (+1 per change).", labels=["level"]),
        GaugeMetricFamily("jackpot_health_status",
                          "1 for the engine's current health status, 0 for the others.",
                          labels=["status"]),
    )
