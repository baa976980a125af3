"""Health of a running engine: database, disk space, actors, recent lock, conflict, error rates.

`assess` owns the verdict. Each check says `ok`, `degraded` (the engine still
serves, but worse than it should: an operator should look) or `failing` (it
cannot serve); the report's status is the worst of them, and its reasons name
every check that is not ok. Thresholds come from `Settings` (JACKPOT_HEALTH_*).

The database probe uses its own connection with a short busy timeout and takes
the write lock the way every writer does (`BEGIN IMMEDIATE`), reads the level
table, and rolls back: it proves the file is reachable and writable without
ever writing, and without waiting the engine's full lock timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from jackpot._plural import counted
from jackpot.errors import EngineClosedError, JackpotError, LockTimeoutError
from jackpot.settings import Settings

__all__ = ["DEGRADED", "FAILING", "OK", "HealthCheck", "HealthReport", "OpenStore", "ProbeStore",
           "assess", "bounded_checks", "probe_database", "tracked"]

OK, DEGRADED, FAILING = "ok", "degraded", "failing"
STATUSES = (OK, DEGRADED, FAILING)


class ProbeStore(Protocol):
    """The part of a store (any backend) the database probe uses."""

    def write(self) -> AbstractContextManager[None]:
        """Open a write transaction that rolls back if the block raises."""
        ...

    def load_levels(self) -> Mapping[str, Any]:
        """Read every level."""
        ...

    def probe_writable(self) -> None:
        """Inside `write()`: raise if this transaction may not write, writing nothing."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


OpenStore = Callable[[str, Settings], ProbeStore]
"""How the engine opens a store on a target with given settings."""


class _TrackedStore:
    """A probe's store that tells its closing (see `tracked`)."""

    def __init__(self, store: ProbeStore, closed: Callable[[], None]) -> None:
        self._store = store
        self._closed = closed

    def write(self) -> AbstractContextManager[None]:
        return self._store.write()

    def load_levels(self) -> Mapping[str, Any]:
        return self._store.load_levels()

    def probe_writable(self) -> None:
        self._store.probe_writable()

    def close(self) -> None:
        try:
            self._store.close()
        finally:
            self._closed()


def tracked(open_store: OpenStore, opening: Callable[[], None],
            closed: Callable[[], None]) -> OpenStore:
    """Return `open_store` telling each probe connection's life: for an engine's close() to wait.

    `opening` runs first, in the probe's thread, and may refuse the
    connection by raising (`EngineClosedError`: the probe says so, to that
    engine's callers alone); `closed` runs once the connection is closed, or
    failed to open.
    """
    def open_tracked(path: str, settings: Settings) -> ProbeStore:
        opening()
        try:
            return _TrackedStore(open_store(path, settings), closed)
        except BaseException:
            closed()
            raise

    return open_tracked


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check: its name, its status and a sentence saying what was seen."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The engine's health: the worst status of its checks, and why.

    `checks` are database, disk, actors, lock_success, conflicts and errors, in that order;
    `reasons` holds "<check>: <detail>" for every check that is not ok.
    """

    status: str
    checks: tuple[HealthCheck, ...]
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every check is ok."""
        return self.status == OK

    def check(self, name: str) -> HealthCheck:
        """Return the check called `name` (KeyError if there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe form (for `jackpot health --json`)."""
        return {"status": self.status, "reasons": list(self.reasons),
                "checks": {c.name: {"status": c.status, "detail": c.detail}
                           for c in self.checks}}


def report_of(checks: Iterable[HealthCheck]) -> HealthReport:
    """Combine checks into a report whose status is the worst of theirs."""
    checks = tuple(checks)
    status = max((c.status for c in checks), key=STATUSES.index, default=OK)
    reasons = tuple(f"{c.name}: {c.detail}" for c in checks if c.status != OK)
    return HealthReport(status, checks, reasons)


def assess(
    *,
    path: str,
    settings: Settings,
    open_store: OpenStore,
    recent: list[tuple[str, bool]],
    levels_alive: Mapping[str, bool],
    coordinator_alive: bool,
    closed: bool,
    refused: str | None = None,
    checkpointer_alive: bool | None = None,
) -> HealthReport:
    """Run every check and return the report.

    Args:
        path: the database file (or URL).
        settings: thresholds (the health_* fields).
        open_store: opens a store on `path` (the engine's backend factory).
        recent: `Stats.recent()`: (outcome or "conflict", is_conflict_event).
        levels_alive: per level, whether its actor is running.
        coordinator_alive: whether the coordinator actor is running.
        closed: whether the engine was closed: the database is then not probed
            (a closed engine opens no connection to it) nor its disk checked.
        refused: why the engine's connections refuse every write (a moved file, a failed disk).
        checkpointer_alive: whether the checkpoint actor runs (None: there is
            none, PostgreSQL checkpoints by itself).

    """
    operations = [outcome for outcome, is_conflict in recent if not is_conflict]
    conflicts = sum(1 for _, is_conflict in recent if is_conflict)
    if closed:  # (the actors check says it is: failing)
        database = HealthCheck("database", OK, "not probed: the engine is closed")
        disk = HealthCheck("disk", OK, "not checked: the engine is closed")
    elif refused is not None and Path(path).exists():  # (a missing file: the probe says so)
        database = HealthCheck("database", FAILING, f"writes are refused: {refused}")
        disk = HealthCheck("disk", OK, "not checked: the database refuses writes")
    else:
        database, disk = bounded_checks(path, settings, open_store, serving=True)
    return report_of((
        database,
        disk,
        _actors(levels_alive, coordinator_alive=coordinator_alive,
                checkpointer_alive=checkpointer_alive, closed=closed),
        _lock_success(operations, settings),
        _conflicts(len(operations), conflicts, settings),
        _errors(operations, settings),
    ))


class _ProbeDoneError(Exception):
    """Raised inside the probe's transaction so that it rolls back."""


def _take_lock_and_roll_back(store: ProbeStore) -> None:
    with store.write():
        store.load_levels()
        store.probe_writable()
        raise _ProbeDoneError


_SECRET_KEYS = frozenset({"password", "sslpassword", "oauth_client_secret"})


def _userinfo_end(rest: str) -> int:
    """Return where a URL's user information ends (its last "@"), or -1 if it has none.

    libpq ends it at the first "@" before the first "/". A password with an
    unencoded "@" or "/" is misread by libpq (and refused by the store); here
    it is masked all the same, to the last "@" that can still belong to it.
    """
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    at = authority.find("@")
    if at >= 0:  # extend over "@"s the password may hold, up to the query
        query = authority.find("?", at)
        return authority.rfind("@", 0, len(authority) if query < 0 else query)
    query = rest.find("?")
    before_query = rest if query < 0 else rest[:query]
    at = before_query.rfind("@")
    return at if at >= 0 and ":" in authority else -1  # "user:pa/ss@host"


def _mask_parameter(item: str) -> str:
    key, eq, _ = item.partition("=")
    if eq and unquote(key).lower() in _SECRET_KEYS:  # libpq decodes keys too
        return f"{key}=***"
    return item


def redact(path: str) -> str:
    """Return a database path or URL fit for reports and logs: no password in it.

    Masks the password in the user information and the `password`,
    `sslpassword` and `oauth_client_secret` parameters of the query (which
    starts at the first "?" after the user information; libpq splits it on
    "&" only, so a value runs to the next "&").
    """
    if "://" not in path:
        return path
    scheme, rest = path.split("://", 1)
    end = _userinfo_end(rest)
    userinfo, after = (rest[:end], rest[end + 1:]) if end >= 0 else ("", rest)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    base, mark, query = after.partition("?")
    if mark:
        query = "&".join(_mask_parameter(item) for item in query.split("&"))
    return f"{scheme}://{userinfo + '@' if end >= 0 else ''}{base}{mark}{query}"


_PROBE_MARGIN = 2.0
"""Seconds a probe may take beyond its lock wait (opening the connection, the reads)."""


class _Probe(threading.Thread):
    """A probe's thread, the moment its caller stops waiting for it, and what it found."""

    def __init__(self, target: Callable[[], None], deadline: float, settings: Settings, *,
                 serving: bool) -> None:
        super().__init__(target=target, name="jackpot-health-probe", daemon=True)
        self.deadline = deadline
        self.settings = settings
        self.serving = serving
        self.found: list[tuple[HealthCheck, HealthCheck]] = []
        self.ended_by: BaseException | None = None  # what ended it without an answer
        # Its engine closed before it connected (see `tracked`): its answer says
        # so, for that engine's callers alone (another engine on the file is open).
        self.engine_closed = False


_stuck: dict[str, _Probe] = {}
"""Per database, the probe running, or one that never returned (a hung disk), not to be piled on."""
_stuck_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Start a forked child with no probe running (the parent's threads are not here)."""
    global _stuck_lock  # noqa: PLW0603 - a lock the parent may have held at the fork
    _stuck_lock = threading.Lock()
    _stuck.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


def bounded_checks(path: str, settings: Settings, open_store: OpenStore, *,
                   serving: bool = False) -> tuple[HealthCheck, HealthCheck]:
    """Run `probe_database`, then `disk_space`, in a thread; wait at most its timeout plus a margin.

    Storage that stops answering (a frozen filesystem, a hung network mount)
    holds a probe in the kernel for as long: the caller of `health()` (a
    liveness probe) gets "failing" instead of waiting with it. A probe that
    has not returned is not started again; the next check reports it.
    Returns the database and disk checks; `serving`: an open engine asks
    (see `probe_database`).
    """
    unchecked = HealthCheck("disk", OK, "not checked: the storage is not answering")
    limit = settings.health_probe_timeout_ms / 1000 + _PROBE_MARGIN
    # This caller's own bound, whatever other callers' probes take: theirs
    # may have a longer one (another engine's settings), or be of another kind.
    deadline = time.monotonic() + limit
    while True:
        with _stuck_lock:
            running = _stuck.get(path)
            if running is None or not running.is_alive():
                probe = _start_probe(path, settings, open_store, serving=serving, limit=limit)
                break
        # Another caller's probe of this database is running (two probes at
        # once: a liveness and a readiness check, two engines on one file). Not
        # stuck while within its own bound: its answer is this caller's too.
        left = min(running.deadline, deadline) - time.monotonic()
        if left > 0:
            running.join(left)
        if running.is_alive():
            if time.monotonic() < running.deadline:
                return _not_answering(path, limit), unchecked
            return HealthCheck("database", FAILING, f"an earlier probe has not returned: the "
                               f"storage of {redact(path)} is not answering"), unchecked
        # Shared only if it judged as this caller would: other settings (a
        # higher health_min_free_mb) could pass what this caller's would fail.
        if (running.found and running.serving == serving and running.settings == settings
                and not running.engine_closed):
            return running.found[0]
        # (It asked for another kind of check, or with other settings: this
        # caller runs its own, unless other callers' probes used up its bound.)
        if time.monotonic() >= deadline:
            return _not_answering(path, limit), unchecked
    probe.join(max(0.0, deadline - time.monotonic()))
    return _answer(probe, path, limit)


def _answer(probe: _Probe, path: str, limit: float) -> tuple[HealthCheck, HealthCheck]:
    """Say what this caller's own probe found, its wait over (`limit` seconds at most)."""
    # Asked first: it answers before it ends, so one found ended now had no
    # answer to give. Asked after the answer was looked for, a probe that
    # answered (and ended) in between was told as ending without one.
    ended = not probe.is_alive()
    if probe.found:
        with _stuck_lock:
            if _stuck.get(path) is probe:
                del _stuck[path]
        return probe.found[0]
    if ended:  # it returned, with no answer: not a storage that does not answer
        return _ended(probe), HealthCheck("disk", OK, "not checked: the probe gave no answer")
    return _not_answering(path, limit), HealthCheck("disk", OK,
                                                    "not checked: the storage is not answering")


def _ended(probe: _Probe) -> HealthCheck:
    """Say what ended a probe that gave no answer (a BaseException it raised, and raises on)."""
    e = probe.ended_by
    why = "" if e is None else f": {type(e).__name__}{f': {e}' if str(e) else ''}"
    return HealthCheck("database", FAILING, f"the probe ended without an answer{why}")


def _not_answering(path: str, limit: float) -> HealthCheck:
    """Say the storage did not answer a caller within its bound (`limit` seconds)."""
    return HealthCheck("database", FAILING, f"the probe did not return within "
                       f"{limit * 1000:.0f} ms: the storage of {redact(path)} is not answering")


def _start_probe(path: str, settings: Settings, open_store: OpenStore, *, serving: bool,
                 limit: float) -> _Probe:
    """Start a probe of `path` in a thread of its own, noted in `_stuck` (hold `_stuck_lock`)."""

    def opened(path: str, settings: Settings) -> ProbeStore:
        try:
            return open_store(path, settings)
        except EngineClosedError:
            probe.engine_closed = True
            raise

    def run() -> None:
        try:
            try:
                database = probe_database(path, settings, opened, serving=serving)
            except Exception as e:  # noqa: BLE001 - whatever stopped it is the verdict
                database = HealthCheck("database", FAILING,
                                       f"the probe failed: {type(e).__name__}: {e}")
            probe.found.append((database, disk_space(path, settings)))
        except BaseException as e:  # (a KeyboardInterrupt raised in it...): told, then on up
            probe.ended_by = e
            raise
        finally:
            # Returned after its caller gave up: no caller will take it off the
            # list, and a path checked no more (an engine closed) kept it forever.
            with _stuck_lock:
                if _stuck.get(path) is probe:
                    del _stuck[path]

    probe = _Probe(run, time.monotonic() + limit, settings, serving=serving)
    probe.start()
    _stuck[path] = probe
    return probe


def disk_space(path: str, settings: Settings) -> HealthCheck:
    """Judge the space left on the filesystem of a database file (its directory).

    A full disk fails every commit, and the database probe cannot see it
    coming (it writes nothing); `jackpot health`, which has no operations to
    judge, would say ok until then. Degraded below
    `settings.health_min_free_mb` (0: not checked).
    """
    minimum = settings.health_min_free_mb
    if "://" in path:
        return HealthCheck("disk", OK, "not checked: the database is on a server")
    if minimum == 0:
        return HealthCheck("disk", OK, "not checked (health_min_free_mb is 0)")
    try:
        st = os.statvfs(Path(path).parent)
    except OSError as e:
        return HealthCheck("disk", DEGRADED, f"free space unknown: {e}")
    free_mb = st.f_bavail * st.f_frsize / 2**20
    # MiB, as the setting counts (2**20 bytes), not the 10**6 bytes "MB" would say.
    shown = f"{free_mb:,.0f} MiB" if free_mb >= 1 else f"{free_mb:.2f} MiB"
    if free_mb < minimum:
        return HealthCheck("disk", DEGRADED,
                           f"{shown} free beside {redact(path)}, below {minimum:,} MiB: commits "
                           "fail when it runs out (free space or move the database)")
    return HealthCheck("disk", OK, f"{shown} free")


def _may_not_write(path: str) -> bool:
    """Say whether `path` is a file this process's user may not read and write."""
    return "://" not in path and not os.access(path, os.R_OK | os.W_OK)


def _unwritable(path: str, *, serving: bool) -> HealthCheck:
    if serving:
        return HealthCheck(
            "database", DEGRADED,
            f"this user may no longer write {path!r} (permissions): the engine still "
            "writes through the connections it opened, but a new engine (or a "
            "restarted actor) may not be able to open it")
    return HealthCheck("database", FAILING,
                       f"not writable: this user may not write {path!r} (permissions)")


def probe_database(path: str, settings: Settings, open_store: OpenStore, *,
                   serving: bool = False) -> HealthCheck:
    """Take the write lock on a new connection, read the levels, roll back.

    The connection waits at most `settings.health_probe_timeout_ms` for the lock.
    `serving`: an open engine asks; a file whose permissions no longer let
    this user write it is then degraded, not failing: the engine's
    connections, opened before, still write (its errors check says if not),
    and failing would have a supervisor restart a process that serves into
    one that cannot open the file.
    """
    timeout_ms = settings.health_probe_timeout_ms
    # (os.path.isfile: Path.is_file raises on a name longer than the directory takes.)
    if "://" not in path and not os.path.isfile(path):  # noqa: PTH113 - opening would create it
        return HealthCheck("database", FAILING, f"database file {path!r} does not exist")
    if _may_not_write(path):  # (opening it anyway would leave -wal and -shm files behind)
        return _unwritable(path, serving=serving)
    probe = replace(settings, lock_timeout_ms=timeout_ms,
                    concurrency_check_interval_ms=min(10, timeout_ms))
    store = _opened(path, probe, open_store)
    if isinstance(store, HealthCheck):
        return store
    try:
        _take_lock_and_roll_back(store)
    except _ProbeDoneError:
        return HealthCheck("database", OK, f"reachable and writable ({redact(path)})")
    except LockTimeoutError:
        return HealthCheck("database", DEGRADED,
                           f"write lock not had within {timeout_ms} ms: another "
                           "connection holds it, writes are waiting")
    except JackpotError as e:
        return HealthCheck("database", FAILING, f"not writable: {e}")
    finally:
        store.close()
    raise AssertionError  # pragma: no cover - the probe always raises


def _opened(path: str, probe: Settings, open_store: OpenStore) -> ProbeStore | HealthCheck:
    """Return the probe's store, or the verdict on a database it could not open."""
    try:
        return open_store(path, probe)
    except LockTimeoutError as e:
        # Opening waited its turn as long as the probe may and had none: on
        # PostgreSQL, every connection of the process's pool was in use
        # (pg_pool_size; the probe shares the pool). As busy as a held write
        # lock, not broken: "failing" had a supervisor restart a process whose
        # pool was merely all in use.
        return HealthCheck("database", DEGRADED, f"not opened within "
                           f"{probe.lock_timeout_ms} ms, writes are waiting: {e}")
    except JackpotError as e:
        return HealthCheck("database", FAILING, f"cannot open the database: {e}")


def _actors(alive: Mapping[str, bool], *, coordinator_alive: bool,
            checkpointer_alive: bool | None, closed: bool) -> HealthCheck:
    """Judge the actors: degraded while one is stopped, until it is replaced.

    A level's or the coordinator's is replaced by the next operation that
    needs it; the checkpointer, by the next commit that makes a checkpoint
    due (the writers copy the WAL into the database themselves meanwhile).
    """
    if closed:
        return HealthCheck("actors", FAILING, "the engine is closed")
    dead = sorted(name for name, up in alive.items() if not up)
    if not coordinator_alive:
        dead.append("the coordinator")
    stopped = [f"{', '.join(dead)} (restarted on their next operation)"] if dead else []
    if checkpointer_alive is False:
        stopped.append("the checkpointer (replaced when the next checkpoint falls due; the "
                       "writers copy the WAL into the database meanwhile)")
    if stopped:
        return HealthCheck("actors", DEGRADED, f"stopped: {'; '.join(stopped)}")
    others = " and the coordinator" if checkpointer_alive is None else (
        ", the coordinator and the checkpointer")
    return HealthCheck("actors", OK, f"{counted(len(alive), 'level actor')}{others} running")


def _lock_success(operations: list[str], settings: Settings) -> HealthCheck:
    return _share("lock_success", operations, "timeout", settings, lambda bad, pct: (
        f"{pct:.1f}% of the last {counted(len(operations), 'operation')} got their locks "
        f"in time ({bad} timed out)"))


def _share(check: str, operations: list[str], bad_outcome: str, settings: Settings,
           describe: Callable[[int, float], str]) -> HealthCheck:
    """Judge the share of recent operations not ending in `bad_outcome` (lock-success limits).

    `describe(bad, pct)` words the detail. The failing threshold never
    exceeds the degraded one: setting only the degraded one below the
    failing default lowers both.
    """
    if len(operations) < settings.health_min_operations:
        return HealthCheck(check, OK, _too_few(len(operations), settings))
    bad = operations.count(bad_outcome)
    pct = 100 * (len(operations) - bad) / len(operations)
    detail = describe(bad, pct)
    degraded = settings.health_min_lock_success_pct
    failing = min(settings.health_failing_lock_success_pct, degraded)
    if pct < failing:
        return HealthCheck(check, FAILING, f"{detail}; failing below {failing}%")
    if pct < degraded:
        return HealthCheck(check, DEGRADED, f"{detail}; degraded below {degraded}%")
    return HealthCheck(check, OK, detail)


def _conflicts(operations: int, conflicts: int, settings: Settings) -> HealthCheck:
    if operations < settings.health_min_operations:
        return HealthCheck("conflicts", OK, _too_few(operations, settings))
    per_100 = 100 * conflicts / operations
    detail = (f"{counted(conflicts, 'version conflict')} in the last "
              f"{counted(operations, 'operation')} ({per_100:.1f} per 100)")
    if per_100 > settings.health_max_conflict_pct:
        return HealthCheck("conflicts", DEGRADED,
                           f"{detail}; degraded above {settings.health_max_conflict_pct} per 100")
    return HealthCheck("conflicts", OK, detail)


def _errors(operations: list[str], settings: Settings) -> HealthCheck:
    """Judge the share of recent operations that did not fail with an unexpected error.

    The probe cannot see every failure (a full disk lets it take the lock and
    roll back, yet every commit fails), so the engine's own outcomes count
    too, against the lock_success thresholds.
    """
    return _share("errors", operations, "error", settings, lambda bad, pct: (
        f"{bad} of the last {counted(len(operations), 'operation')} failed with an "
        f"unexpected error ({pct:.1f}% did not)"))


def _too_few(n: int, settings: Settings) -> str:
    return (f"{counted(n, 'recent operation')}; rates are judged from "
            f"{settings.health_min_operations} on")
