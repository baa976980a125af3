"""Fault injection: a failing disk at every SQL statement of an operation.

Every statement the engine issues passes through `SQLiteStore._exec` or
`_exec_many`; a wrapper makes the Nth of them raise the APSW error a failing
disk gives (`IOError`, `FullError`) instead of running. For each operation the
statements are first counted on a clean run; then, for every N, the operation
must raise `StorageError` (with the injected error as its cause), leave the
file's content unchanged, leave the engine's cached state as it was (the same
request sent again is applied exactly as on a twin engine that never failed:
same amounts, balances and versions), keep `verify()` ok, and keep serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from _helpers import run_together, table_dump
from jackpot import GroupConfig, JackpotEngine, StorageError
from jackpot.service import execute_batch
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)


class StatementFaults:
    """Counts the engine's statements while armed; fails the Nth if told to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._fail_at: int | None = None
        self._error: type[apsw.Error] = apsw.IOError
        self._seen: list[str] = []
        self._only = ""

    def arm(self, fail_at: int | None = None, error: type[apsw.Error] = apsw.IOError,
            *, only: str = "") -> None:
        """Count statements; fail the `fail_at`-th of those that start with `only`."""
        with self._lock:
            self._armed, self._fail_at, self._error, self._seen = True, fail_at, error, []
            self._only = only

    def disarm(self) -> list[str]:
        with self._lock:
            self._armed = False
            return list(self._seen)

    def hit(self, sql: str) -> None:
        with self._lock:
            if not self._armed:
                return
            self._seen.append(" ".join(sql.split()))
            matching = sum(seen.startswith(self._only) for seen in self._seen)
            if self._seen[-1].startswith(self._only) and matching == self._fail_at:
                msg = f"injected at statement {self._fail_at}: {sql[:60]}"
                raise self._error(msg)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> StatementFaults:
    plan = StatementFaults()
    run_one, run_many = SQLiteStore._exec, SQLiteStore._exec_many

    def _exec(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        plan.hit(sql)
        return run_one(self, sql, *args, **kwargs)

    def _exec_many(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        plan.hit(sql)
        return run_many(self, sql, *args, **kwargs)

    monkeypatch.setattr(SQLiteStore, "_exec", _exec)
    monkeypatch.setattr(SQLiteStore, "_exec_many", _exec_many)
    return plan


def books(engine: JackpotEngine) -> dict[str, Any]:
    """Every level as committed, without the wall-clock time of its last change."""
    return {n: dataclasses.replace(p, last_modified_at=0) for n, p in engine.pools().items()}


def causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


# -- the operations under test ---------------------------------------------------------


def warm(engine: JackpotEngine, path: Path) -> None:
    """Start every actor and cache every level: the state a busy engine is in."""
    engine.contribute(Decimal(250), groups=None, op_id="warm-1")
    engine.contribute(Decimal("3.33"), groups="minor", op_id="warm-2")


def warm_and_apply(engine: JackpotEngine, path: Path) -> None:
    warm(engine, path)
    engine.contribute(Decimal("12.34"), groups=("major", "minor"), op_id="op-1")


def warm_then_stale(engine: JackpotEngine, path: Path) -> None:
    warm(engine, path)
    # Another engine (another process, in effect) moves two levels on: this
    # engine's cached versions are stale. Its next write sees that another
    # connection committed, compares the cached versions with the rows and
    # re-reads the moved levels, in the same transaction, before applying
    # anything. The faults hit each of those statements too.
    with JackpotEngine.open(path) as other:
        other.contribute(Decimal("1.11"), groups=("major", "minor"), op_id="elsewhere")


def no_op_id(result: Any) -> Any:
    return dataclasses.replace(result, op_id="")


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[JackpotEngine, str], Any]
    prepare: Callable[[JackpotEngine, Path], None] = warm
    comparable: Callable[[Any], Any] = lambda r: r
    rechecks: bool = False  # the clean run compares cached versions with the rows


SCENARIOS = (
    Scenario("contribution-one-level",
             lambda e, op: e.contribute(Decimal("12.34"), groups="minor", op_id=op)),
    Scenario("contribution-one-level-no-op-id",
             lambda e, _: e.contribute(Decimal("12.34"), groups="minor"),
             comparable=no_op_id),
    Scenario("contribution-three-levels",
             lambda e, op: e.contribute(Decimal("12.34"), groups=("major", "mega", "minor"),
                                        op_id=op)),
    Scenario("contribution-two-levels-no-op-id",
             lambda e, _: e.contribute(Decimal("12.34"), groups=("major", "minor")),
             comparable=no_op_id),
    Scenario("win-whole-pool",
             lambda e, op: e.process_win("minor", op_id=op, winner="player-7")),
    Scenario("win-fixed-amount",
             lambda e, op: e.process_win("major", op_id=op, amount=Decimal("12.5"))),
    Scenario("config-change",
             lambda e, op: e.update_config("mega", op_id=op, expected_version=2,
                                           contribution_rate=Decimal("0.0007"))),
    Scenario("replay-of-a-multi-level-contribution",
             lambda e, op: e.contribute(Decimal("12.34"), groups=("major", "minor"), op_id=op),
             prepare=warm_and_apply),
    Scenario("contribution-one-level-stale-cache",
             lambda e, op: e.contribute(Decimal("12.34"), groups="minor", op_id=op),
             prepare=warm_then_stale, rechecks=True),
    Scenario("contribution-two-levels-stale-cache",
             lambda e, op: e.contribute(Decimal("12.34"), groups=("major", "minor"), op_id=op),
             prepare=warm_then_stale, rechecks=True),
)


def open_engine(path: Path) -> JackpotEngine:
    return JackpotEngine.open(path, GROUPS)


def count_statements(path: Path, scenario: Scenario, faults: StatementFaults) -> list[str]:
    with open_engine(path) as engine:
        scenario.prepare(engine, path)
        faults.arm()
        try:
            scenario.run(engine, "op-1")
        finally:
            statements = faults.disarm()
    return statements


def check_fault_at(base: Path, scenario: Scenario, faults: StatementFaults, *, n: int,
                   error: type[apsw.Error], statements: list[str]) -> None:
    where = f"{scenario.name}, {error.__name__} at statement {n} ({statements[n - 1][:50]})"
    base.mkdir()
    db, twin_db = base / "pools.db", base / "twin.db"
    with contextlib.ExitStack() as opened:
        engine = opened.enter_context(open_engine(db))
        twin = opened.enter_context(open_engine(twin_db))
        scenario.prepare(engine, db)
        scenario.prepare(twin, twin_db)
        content, state = table_dump(db), books(engine)

        faults.arm(fail_at=n, error=error)
        try:
            with pytest.raises(StorageError) as info:
                scenario.run(engine, "op-1")
        finally:
            seen = faults.disarm()
        assert seen[:n] == statements[:n], where
        assert any(isinstance(e, error) for e in causes(info.value)), where

        assert table_dump(db) == content, f"{where}: the file changed"
        assert books(engine) == state, where
        report = engine.verify()
        assert report.ok, (where, report.problems)

        if error is apsw.IOError and statements[n - 1] == "COMMIT":
            # A write the storage failed: this process writes there no more until
            # every engine on the file is closed (see jackpot.storage._files).
            with pytest.raises(StorageError, match="reported an I/O error"):
                scenario.run(engine, "op-1")
            assert not engine.health().ok, where
            engine.close()
            engine = opened.enter_context(open_engine(db))  # reads the file afresh
        # The caller retries the same request: it is applied now, exactly
        # once, exactly as on the twin that never failed. An engine that kept
        # any of the failed attempt in memory would hand out other versions.
        got, want = scenario.run(engine, "op-1"), scenario.run(twin, "op-1")
        assert scenario.comparable(got) == scenario.comparable(want), where
        # And it keeps serving, on every level.
        after = engine.contribute(Decimal("7.77"), groups=None, op_id="after")
        assert after == twin.contribute(Decimal("7.77"), groups=None, op_id="after"), where
        assert books(engine) == books(twin), where
        report = engine.verify()
        assert report.ok, (where, report.problems)


@pytest.mark.parametrize("error", [apsw.IOError, apsw.FullError], ids=["io-error", "disk-full"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_a_failing_statement_changes_nothing_and_the_engine_keeps_serving(
        tmp_path: Path, faults: StatementFaults, scenario: Scenario,
        error: type[apsw.Error]) -> None:
    statements = count_statements(tmp_path / "count.db", scenario, faults)
    # At least: take the write lock, write, commit.
    assert len(statements) >= 3, statements
    assert statements[0].startswith("BEGIN"), statements
    assert statements[-1] == "COMMIT", statements
    assert sum(s.startswith("BEGIN") for s in statements) == 1, statements
    if scenario.rechecks:
        assert any(s.startswith("SELECT name, version FROM levels") for s in statements)
    for n in range(1, len(statements) + 1):
        check_fault_at(tmp_path / f"fault-{n}", scenario, faults, n=n, error=error,
                       statements=statements)


def test_statement_counts_cover_every_write(tmp_path: Path, faults: StatementFaults) -> None:
    """The counted statements of a multi-level contribution include one write per level."""
    statements = count_statements(tmp_path / "count.db", SCENARIOS[2], faults)
    updates = [s for s in statements if s.startswith("UPDATE levels SET")]
    ledger = [s for s in statements if s.startswith("INSERT INTO ledger")]
    assert len(updates) == 3, statements  # one version-checked UPDATE per level
    assert all("version = ?" in s.split("WHERE")[-1] for s in updates), updates
    assert ledger, statements


@pytest.mark.parametrize("fail_at", [1, 2])
@pytest.mark.parametrize("statement", ["INSERT INTO ledger", "UPDATE levels", "COMMIT"])
def test_a_fault_in_a_shared_transaction_fails_no_operation_twice(
        tmp_path: Path, faults: StatementFaults, statement: str, fail_at: int) -> None:
    """Bets arriving together share a transaction (group commit); one fault hits it.

    However the bets were batched, one injected fault may fail at most the one
    bet that was alone in the failing transaction; every other bet is applied
    exactly once, at its own version, and the books stay exact.
    """
    db = tmp_path / "pools.db"
    bets = [Decimal(f"{n}.25") for n in range(1, 9)]
    with open_engine(db) as engine:
        warm(engine, db)
        before = engine.pool("minor")
        faults.arm(fail_at=fail_at, only=statement)
        try:
            outcomes = run_together(*[
                lambda i=i: engine.contribute(bets[i], groups="minor", op_id=f"bet-{i}")
                for i in range(len(bets))])
        finally:
            faults.disarm()

        failed = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
        if statement != "COMMIT":  # (after a write the storage failed, none of this process)
            assert len(failed) <= 1, outcomes
        assert all(isinstance(outcomes[i], StorageError) for i in failed), outcomes
        done = [o for o in outcomes if not isinstance(o, Exception)]
        assert sorted(o.versions["minor"] for o in done) == list(
            range(before.version + 1, before.version + 1 + len(done)))
        after = engine.pool("minor")
        assert after.version == before.version + len(done)
        assert after.amount == before.amount + sum(o.contributions["minor"] for o in done)
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            applied = [r[0] for r in conn.execute(
                "SELECT op_id FROM ledger WHERE op_id LIKE 'bet-%' ORDER BY op_id")]
        finally:
            conn.close()
        assert applied == sorted(o.op_id for o in done)
    with open_engine(db) as engine:  # (after an I/O error at COMMIT, only a new one writes)
        for i in failed:  # the caller's retry is applied, once
            again = engine.contribute(bets[i], groups="minor", op_id=f"bet-{i}")
            assert not again.replayed
        report = engine.verify()
        assert report.ok, report.problems


def test_a_busy_database_in_the_one_by_one_rerun_is_retried_with_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared transaction fails; the first bet's own re-run then finds the database busy.

    The re-run backs off as the settings say and tries again, so both bets
    are applied, once each, at consecutive versions. Pins the per-op re-run
    of `execute_batch` passing its settings on (the mutant that passes None
    there survived the mutation run: tests/model/MUTATION.md).
    """
    db = tmp_path / "pools.db"
    with open_engine(db) as engine:
        warm(engine, db)
        ops = [engine._requests.contribute(Decimal(5), groups="minor", op_id=f"bet-{n}")
               for n in (1, 2)]
    plan = [("INSERT INTO ledger", apsw.IOError), ("BEGIN", apsw.BusyError)]
    run_one, run_many = SQLiteStore._exec, SQLiteStore._exec_many

    def strike(sql: str) -> None:
        if plan and sql.startswith(plan[0][0]):
            _, error = plan.pop(0)
            raise error(f"injected: {sql[:40]}")

    def _exec(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        strike(sql)
        return run_one(self, sql, *args, **kwargs)

    def _exec_many(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        strike(sql)
        return run_many(self, sql, *args, **kwargs)

    store = SQLiteStore(str(db))
    try:
        with store.read():
            cached = {"minor": store.load_level("minor")}
        before = cached["minor"]
        assert before is not None
        monkeypatch.setattr(SQLiteStore, "_exec", _exec)
        monkeypatch.setattr(SQLiteStore, "_exec_many", _exec_many)
        stats = Stats()
        outcomes, changed = execute_batch(store, ops, cached,
                                          settings=Settings(retry_delay_ms=1), stats=stats)
        monkeypatch.undo()
    finally:
        store.close()

    assert plan == []  # both faults struck
    assert [o.error for o in outcomes] == [None, None]
    assert [o.result.versions["minor"] for o in outcomes] == [before.version + 1,
                                                               before.version + 2]
    assert changed["minor"].version == before.version + 2
    counts = stats.snapshot()
    assert {k: counts.get(k, 0) for k in ("busy_incidents", "retries")} == {
        "busy_incidents": 1, "retries": 1}
    with open_engine(db) as engine:
        assert engine.pool("minor").version == before.version + 2
        assert engine.verify().ok
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute("SELECT op_id FROM ledger WHERE op_id LIKE 'bet-%' "
                            "ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert rows == [("bet-1",), ("bet-2",)]  # one row each: applied once, in order


class _WriteError(apsw.IOError):
    """An I/O error as SQLite reports a failed write (SQLITE_IOERR_WRITE) mid-transaction."""

    extendedresult = apsw.SQLITE_IOERR_WRITE


@pytest.mark.parametrize(("statement", "error"), [
    ("COMMIT", apsw.IOError), ("INSERT INTO ledger", _WriteError)])
def test_after_the_storage_fails_a_write_this_process_writes_there_no_more_until_reopened(
        tmp_path: Path, faults: StatementFaults, statement: str,
        error: type[apsw.Error]) -> None:
    """Linux reports a failed writeback once, then a later fsync succeeds: nothing is trusted."""
    db = tmp_path / "pools.db"
    with open_engine(db) as engine:
        warm(engine, db)
        faults.arm(fail_at=1, error=error, only=statement)
        try:
            with pytest.raises(StorageError):
                engine.contribute(Decimal(5), groups="minor", op_id="failed")
        finally:
            faults.disarm()
        for write in (lambda: engine.contribute(Decimal(5), groups="major", op_id="later"),
                      lambda: engine.process_win("mega", op_id="win")):
            with pytest.raises(StorageError, match="reported an I/O error") as info:
                write()  # was: served, its commit trusted to a storage that failed one
            assert not info.value.outcome_unknown
        other = SQLiteStore(str(db))  # any connection of this process to that file
        try:
            with pytest.raises(StorageError, match="reported an I/O error"):
                other.checkpoint()  # its fsync would be trusted too
        finally:
            other.close()
        report = engine.health()
        assert report.checks[0].status == "failing"
        assert "reported an I/O error" in report.checks[0].detail
    assert Path(f"{db}-wal").exists()  # the last close kept the WAL, not folded it in
    with open_engine(db) as engine:  # every engine closed: a new one writes again
        assert not engine.contribute(Decimal(5), groups="minor", op_id="failed").replayed
        assert engine.contribute(Decimal(5), groups="major", op_id="later").versions
        assert engine.verify().ok
