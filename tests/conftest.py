"""Shared fixtures: a file database in tmp_path, engines that always close, table dumps.

The dump reads the database through its own read-only APSW connection, so a
test can assert "nothing changed" on what is committed in the file, not on
what the engine believes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import settings as hypothesis_settings

from _helpers import read_ledger
from jackpot import GroupConfig, JackpotEngine, Settings, _throttle
from jackpot.results import Contribution
from jackpot.storage import SQLiteStore

Dump = dict[str, tuple[tuple[Any, ...], ...]]

# No per-example deadline (Hypothesis's default is 200 ms): a time limit is
# a speed check, which belongs to the benchmarks; on a loaded machine it
# failed examples that were right (DeadlineExceeded, or Flaky when the re-run
# was quick). Tests that set their own settings keep everything else.
hypothesis_settings.register_profile("jackpot", deadline=None)
hypothesis_settings.load_profile("jackpot")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the calling shell's engine settings (JACKPOT_<setting>) out of every test."""
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f"JACKPOT_{f.name.upper()}", raising=False)


@pytest.fixture(autouse=True)
def _fresh_jackpot_logger_level() -> Iterator[None]:
    """Start every test with no level on the `jackpot` logger, as a new process has.

    `open()` keeps a level set before it: one test's `log_level="critical"`
    would otherwise silence the records the next test looks for.
    """
    log = logging.getLogger("jackpot")
    before = log.level
    log.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        log.setLevel(before)


@pytest.fixture(autouse=True)
def _no_traceback_held_back() -> None:
    """Start every test with no error's traceback held back, as a new process has.

    A failure's traceback is logged once a minute per error (`Throttle`): a
    test that logged the same error less than a minute before made this
    one's record say "(traceback logged once a minute for this error)", so
    whether it passed hung on how fast the tests in between ran (the failing
    tracer of tests/aio/test_aio_edges.py, then of
    tests/integration/test_signal_handler_exceptions.py, run together).
    """
    for throttle in list(_throttle._ALL):  # every throttle of the process
        with throttle._lock:
            throttle._seen.clear()


@contextmanager
def _blind_to_other_writers() -> Iterator[None]:
    """Make every SQLite write believe no other connection committed since its last.

    A write then trusts its cache as a PostgreSQL write does (it cannot
    tell), and only the version checks can find the cache stale: a conflict
    and a retry, where the check as the lock is taken would have reloaded.
    """
    begin = SQLiteStore._begin  # the step under test

    def blind_begin(self: SQLiteStore, started: float) -> None:
        begin(self, started)
        self.seen_versions = None  # as on PostgreSQL: no cached level is known current

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SQLiteStore, "_begin", blind_begin)
        yield


@pytest.fixture(scope="session")
def blinded() -> Callable[[], AbstractContextManager[None]]:
    """Return a context manager in which SQLite writes cannot tell that others committed."""
    return _blind_to_other_writers


@pytest.fixture
def blind_to_other_writers() -> Iterator[None]:
    """Only the version-checked UPDATE (and version reads) can find a cache stale."""
    with _blind_to_other_writers():
        yield


@pytest.fixture(params=["found-on-taking-the-lock", "found-by-the-version-checks"])
def stale_detection(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test both ways a stale cache is found.

    A SQLite writer knows when another connection has committed since its
    last write (`seen_versions`) and compares its cache with the rows
    before applying anything (a reload). The version-checked UPDATE (and the
    version read of a level a batch consulted but left unchanged) must still
    catch what that misses (a conflict): the second way blinds the first.
    """
    if request.param == "found-by-the-version-checks":
        with _blind_to_other_writers():
            yield request.param
    else:
        yield request.param


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pools.db"


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def open_engine(db_path: Path, settings: Settings) -> Iterator[Callable[..., JackpotEngine]]:
    """Return open(path=db_path, groups=None, settings=settings); closes all at teardown."""
    engines: list[JackpotEngine] = []

    def _open(path: Path | str | None = None, groups: list[GroupConfig] | None = None,
              settings: Settings | None = settings) -> JackpotEngine:
        engine = JackpotEngine.open(db_path if path is None else path, groups,
                                    settings=settings)
        engines.append(engine)
        return engine

    yield _open
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(open_engine: Callable[..., JackpotEngine]) -> JackpotEngine:
    """An engine on a new file with the default levels minor, major, mega."""
    return open_engine()


def read_tables(path: Path | str) -> Dump:
    """Return every table's rows (schema included), read in one snapshot, read-only."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.execute("BEGIN")
        try:
            # sqlite_stat* hold the query planner's statistics, which
            # PRAGMA optimize refreshes when a connection closes: not content.
            dump: Dump = {"sqlite_master": tuple(conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE name NOT LIKE 'sqlite_stat%' ORDER BY type, name"))}
            names = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_stat%' ORDER BY name")]
            for name in names:
                rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
                dump[name] = tuple(sorted(rows, key=repr))
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    return dump


def checksum(dump: Dump) -> str:
    """Return a digest of a dump: equal digests mean equal content."""
    return hashlib.sha256(repr(sorted(dump.items())).encode()).hexdigest()


@pytest.fixture
def dump_db(db_path: Path) -> Callable[..., Dump]:
    """Return dump(path=db_path): every table's content of the file."""

    def _dump(path: Path | str | None = None) -> Dump:
        return read_tables(db_path if path is None else path)

    return _dump


@pytest.fixture
def db_checksum(db_path: Path) -> Callable[..., str]:
    """Return checksum(path=db_path): a digest of every table's content of the file."""

    def _checksum(path: Path | str | None = None) -> str:
        return checksum(read_tables(db_path if path is None else path))

    return _checksum


@pytest.fixture
def ledger(db_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """Return ledger(level=None, path=db_path): the file's ledger rows in seq order."""

    def _ledger(level: str | None = None, path: Path | str | None = None
                ) -> list[dict[str, Any]]:
        return read_ledger(db_path if path is None else path, level)

    return _ledger


OneBatch = Callable[[JackpotEngine, str, dict[str, "str | None"]],
                    dict[str, "Contribution | BaseException"]]
BusyActor = Callable[[JackpotEngine, str, Callable[[], object]], threading.Thread]


def _busy_actor(engine: JackpotEngine, level: str, first: Callable[[], object]
                ) -> threading.Thread:
    """Hold `level`'s guard, run `first` (a call on `level`) in a thread; return it.

    Returns once the level's actor has taken that call and waits for the
    guard (held here, as a multi-level batch would hold it): calls made now
    queue in its mailbox. The caller releases `engine._guards[level].lock`.
    """
    guard, box = engine._guards[level], engine._mailboxes[level]
    taken = threading.Event()
    real_take = box.take

    def take() -> object:
        got = real_take()
        taken.set()
        return got

    box.take = take  # type: ignore[method-assign]
    guard.lock.acquire()
    thread = threading.Thread(target=first)
    try:
        thread.start()
        assert taken.wait(30)  # the actor holds the first call and waits for the guard
    except BaseException:
        guard.lock.release()
        raise
    finally:
        box.take = real_take  # type: ignore[method-assign]
    return thread


@pytest.fixture
def busy_actor() -> BusyActor:
    """Return `_busy_actor(engine, level, first)`: the level's actor busy, the guard held."""
    return _busy_actor


@pytest.fixture
def one_batch() -> OneBatch:
    """Return run(engine, level, {key: op_id}): bets of 10 that share one batch of `level`.

    A first bet ("blocker") is taken by the level's actor, which then waits
    for the level's guard (see `busy_actor`); the bets of `ops` queue
    meanwhile, and all go into the actor's next transaction once the guard
    is released. Returns each key's result or error.
    """

    def run(engine: JackpotEngine, level: str, ops: dict[str, str | None]
            ) -> dict[str, Contribution | BaseException]:
        results: dict[str, Contribution | BaseException] = {}

        def call(key: str, op_id: str | None) -> None:
            try:
                results[key] = engine.contribute("10", groups=level, op_id=op_id)
            except Exception as e:  # recorded for the assertions
                results[key] = e

        box, guard = engine._mailboxes[level], engine._guards[level]
        threads = [_busy_actor(engine, level, lambda: call("blocker", "blocker"))]
        try:
            threads += [threading.Thread(target=call, args=item) for item in ops.items()]
            for t in threads[1:]:
                t.start()
            deadline = time.monotonic() + 30
            while len(box._items) < len(ops):  # all queued behind "blocker": one batch
                assert time.monotonic() < deadline, "the bets did not queue"
                threading.Event().wait(0.001)
        finally:
            guard.lock.release()
        for t in threads:
            t.join(30)
        return results

    return run
