"""The storage contract every backend must keep, as one abstract test suite.

`BackendContract` is subclassed once per backend (test_sqlite.py,
test_postgres.py); a subclass provides the `target` fixture (a file path or a
postgresql:// URL naming a fresh, empty database) and `hold_level_lock`
(another connection holding what a writer of that level must wait for).
Every test then runs unchanged on each backend: first against the narrow
`Store` interface, then through `JackpotEngine`, whose guarantees
(idempotency, version conflicts, serialized wins, bounded lock waits, the
audit) must not depend on the backend.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from _helpers import run_together
from jackpot import (
    ConcurrencyViolationError,
    GroupConfig,
    IdempotencyConflictError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    StorageError,
    ValidationError,
    domain,
)
from jackpot.domain import LevelState, Meters
from jackpot.storage import Store, StoredOperation, open_store
from jackpot.storage.base import LedgerPass
from jackpot.storage.schema import METERS

MINOR_SEED, MINOR_RATE = Decimal(100), Decimal("0.005")  # domain.DEFAULT_GROUPS
GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)

# The schema's ledger indexes dropped or rebuilt to guard less (SQL, run as
# `; `-separated statements), and the problem verify() then reports: the same
# on every backend (adversarial/test_tampered_database.py, test_postgres.py).
WEAKENED_INDEXES = [
    ("DROP INDEX ledger_level_kind", "integrity_check: index ledger_level_kind is missing"),
    (("DROP INDEX ledger_level_version; "
      "CREATE INDEX ledger_level_version ON ledger (level, version_after)"),
     "integrity_check: index ledger_level_version is not unique: a level's versions may repeat"),
    # One of the name that no longer guards what it should: its columns, a WHERE.
    (("DROP INDEX ledger_level_version; "
      "CREATE UNIQUE INDEX ledger_level_version ON ledger (seq)"),
     "integrity_check: index ledger_level_version is not on (level, version_after) for every row"),
    (("DROP INDEX ledger_level_version; CREATE UNIQUE INDEX ledger_level_version "
      "ON ledger (level, version_after) WHERE kind = 'create'"),
     "integrity_check: index ledger_level_version is not on (level, version_after) for every row"),
    (("DROP INDEX ledger_level_kind; "
      "CREATE INDEX ledger_level_kind ON ledger (level, lower(kind), seq)"),
     "integrity_check: index ledger_level_kind is not on (level, kind, seq) for every row"),
]


def draw(low: int, high: int) -> int:
    return low  # deterministic must-hit-by triggers


def new_level(name: str, **config: Any) -> LevelState:
    state, _ = domain.create(GroupConfig(name, Decimal(100), Decimal("0.01"), **config),
                             1_000, draw)
    return state


def full_level(name: str) -> LevelState:
    """A level with every optional field set to something other than its default."""
    state = new_level(name, cap=Decimal(5000), reserve_rate=Decimal("0.002"),
                      min_bet=Decimal("0.10"), max_contribution=Decimal(50),
                      must_hit_by=Decimal(4000), overflow_to="reserve")
    return replace(state, amount=123_456_789, reserve=987_654, carry=999_999_999,
                   reserve_carry=1, pending={"seed": 150_000_000, "must_hit_by": None},
                   version=7, lock_holder="op-9", last_modified_at=1_700_000_000_123,
                   meters=Meters(*(k * 1_000_003 for k in range(1, len(METERS) + 1))))


def snapshot(store: Store) -> tuple[Any, ...]:
    """Every level and ledger row plus the orphan check: equal means nothing changed."""
    with store.read():
        return (store.load_levels(), store.ledger(), store.operation_ids_without_ledger())


def _same_pass(passed: LedgerPass, three: tuple[Any, ...]) -> None:
    """The one pass read what the queries apart read, counts past the limit included.

    (`Shown` equals a plain list of its rows: `==` alone ignores `.more`.)
    """
    assert tuple(passed) == three
    assert [passed.broken.more, passed.unread_bets.more, passed.untyped.more] == [
        three[1].more, three[3].more, three[4].more]


class BackendContract:
    """The tests every backend passes. Subclasses: `target`, `hold_level_lock`."""

    latest_schema: int
    """The backend's newest schema version (each backend numbers its own)."""

    @pytest.fixture
    def target(self) -> str:
        """A fresh, empty database: a file path or a postgresql:// URL."""
        raise NotImplementedError

    def hold_level_lock(self, target: str, level: str) -> AbstractContextManager[None]:
        """Hold, on another connection, the lock a writer of `level` must wait for."""
        raise NotImplementedError

    def set_schema_version(self, target: str, version: int) -> None:
        """Record `version` as the database's schema version, behind the store's back."""
        raise NotImplementedError

    def raw_schema_version(self, target: str) -> int:
        """Read the database's schema version on a connection of the test's own."""
        raise NotImplementedError

    @pytest.fixture
    def make_store(self, target: str) -> Iterator[Callable[..., Store]]:
        stores: list[Store] = []

        def _make(**kwargs: Any) -> Store:
            store = open_store(target, **kwargs)
            stores.append(store)
            return store

        yield _make
        for store in stores:
            store.close()

    @pytest.fixture
    def store(self, make_store: Callable[..., Store]) -> Store:
        store = make_store()
        store.migrate()
        return store

    @pytest.fixture
    def make_engine(self, target: str) -> Iterator[Callable[..., JackpotEngine]]:
        engines: list[JackpotEngine] = []

        def _make(groups: Any = None, **settings: Any) -> JackpotEngine:
            engine = JackpotEngine.open(target, groups, settings=Settings(**settings))
            engines.append(engine)
            return engine

        yield _make
        for engine in engines:
            engine.close()

    # -- the Store interface ---------------------------------------------------

    def test_migrate_is_idempotent_and_keeps_data(self, store: Store,
                                                  make_store: Callable[..., Store]) -> None:
        with store.write():
            store.insert_level(new_level("minor"))
        again = make_store()
        assert again.migrate() == store.migrate() == self.latest_schema
        assert list(again.load_levels()) == ["minor"]
        assert again.integrity_check() == "ok"

    def test_a_newer_schema_is_refused_and_left_as_it_was(
            self, target: str, make_engine: Callable[..., JackpotEngine],
            make_store: Callable[..., Store]) -> None:
        make_engine().close()
        self.set_schema_version(target, 99)
        newer = (f"has schema version 99, newer than this library's {self.latest_schema}: "
                 "upgrade jackpot")
        with pytest.raises(StorageError, match=newer):
            JackpotEngine.open(target)
        with pytest.raises(StorageError, match=newer):
            make_store().migrate()  # SQLite refuses at open, PostgreSQL at the latest here
        with pytest.raises(StorageError, match=newer):
            open_store(target, read_only=True)
        assert self.raw_schema_version(target) == 99

    def test_a_schema_made_newer_under_a_running_engine_fails_its_health(
            self, target: str, make_engine: Callable[..., JackpotEngine]) -> None:
        """A newer library migrated the database: this engine's new connections refuse it."""
        engine = make_engine()
        try:
            self.set_schema_version(target, 99)
            (database,) = [c for c in engine.health().checks if c.name == "database"]
            assert database.status == "failing"
            assert f"newer than this library's {self.latest_schema}" in database.detail
        finally:
            engine.close()
        assert self.raw_schema_version(target) == 99

    def test_a_read_only_store_reads_and_refuses_to_write(
            self, target: str, make_engine: Callable[..., JackpotEngine],
            make_store: Callable[..., Store]) -> None:
        make_engine().close()
        reader = make_store(read_only=True)
        assert reader.schema_version() == self.latest_schema
        with reader.read():
            assert list(reader.load_levels()) == ["major", "mega", "minor"]
        with pytest.raises(StorageError, match="read-only: nothing was changed"), \
                reader.write():
            pass  # pragma: no cover - refused before the block

    def test_level_round_trips_exactly(self, store: Store) -> None:
        full, plain = full_level("full"), new_level("plain")
        with store.write():
            store.insert_level(full)
            store.insert_level(plain)
        assert store.load_level("full") == full
        assert store.load_level("plain") == plain
        assert store.load_level("absent") is None
        assert store.load_levels() == {"full": full, "plain": plain}

    def test_levels_load_in_byte_order_of_names(self, store: Store) -> None:
        names = ["minor", "Major", "a_1", "a-1", "a.1", "B", "a1"]
        with store.write():
            for name in names:
                store.insert_level(new_level(name))
        assert list(store.load_levels()) == sorted(names)

    def test_update_is_version_checked(self, store: Store) -> None:
        level = new_level("minor")
        with store.write():
            store.insert_level(level)
        moved = replace(level, amount=level.amount + 5, version=2)
        with store.write():
            assert store.update_level(moved, expected_version=2) is False  # row is at 1
            assert store.update_level(moved, expected_version=1) is True
            assert store.update_level(replace(moved, version=3), expected_version=1) is False
        assert store.load_level("minor") == moved

    def test_a_failed_write_changes_nothing(self, store: Store) -> None:
        level = new_level("minor")
        with store.write():
            store.insert_level(level)
            store.append("create:minor", [domain.create(
                GroupConfig("minor", Decimal(100), Decimal("0.01")), 1_000, draw)[1]])
        before = snapshot(store)
        state, entries, _ = domain.contribute(level, 10_000_000, 2_000, draw)

        def doomed() -> None:
            with store.write():
                assert store.update_level(state, expected_version=1)
                store.append("bet-1", entries)
                store.record_operations([StoredOperation("bet-1", "contribute", "f", {})],
                                        2_000)
                store.insert_level(new_level("other"))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            doomed()
        assert snapshot(store) == before
        assert store.find_operation("bet-1") is None

    def test_ledger_rows_round_trip_and_filter(self, store: Store) -> None:
        level = new_level("minor")
        state, create = level, domain.create(
            GroupConfig("minor", Decimal(100), Decimal("0.01")), 1_000, draw)[1]
        with store.write():
            store.insert_level(level)
            store.append("create:minor", [create])
        details = []
        for i, bet in enumerate((10_000_000, 25_000_000)):
            new, entries, _ = domain.contribute(state, bet, 2_000 + i, draw)
            with store.write():
                assert store.update_level(new, expected_version=state.version)
                store.append(f"bet-{i}", entries)
            state = new
            details.append(entries[0].detail)
        new, entry = domain.win(state, None, 3_000, draw, winner="player-1")
        with store.write():
            assert store.update_level(new, expected_version=state.version)
            store.append_entries([("win-1", entry)])
        rows = store.ledger()
        assert [r.kind for r in rows] == ["create", "contribute", "contribute", "win"]
        assert [r.version_after for r in rows] == [1, 2, 3, 4]
        assert [r.op_id for r in rows] == ["create:minor", "bet-0", "bet-1", "win-1"]
        assert [r.delta for r in rows] == [100_000_000, 100_000, 250_000, -350_000]
        assert [r.balance_after for r in rows] == [100_000_000, 100_100_000, 100_350_000,
                                                   100_000_000]
        assert (rows[-1].paid, rows[-1].house_funded, rows[-1].who) == (
            100_350_000, 100_000_000, "player-1")
        assert [r.detail for r in rows[1:3]] == details
        assert details[0] is not None
        assert rows == sorted(rows, key=lambda r: r.seq)
        assert store.ledger(kinds=("win", "hit")) == [rows[-1]]
        assert store.ledger(level="minor", newest_first=True, limit=2) == rows[:1:-1]
        assert store.ledger(level="other") == []

    def test_history_is_append_only(self, store: Store) -> None:
        level = new_level("minor")
        with store.write():
            store.insert_level(level)
            store.append("create:minor", [domain.create(
                GroupConfig("minor", Decimal(100), Decimal("0.01")), 1_000, draw)[1]])
            store.record_operations([StoredOperation("op-1", "contribute", "f", {"a": 1})], 5)
        before = snapshot(store)
        for sql in ("UPDATE ledger SET delta = 0", "DELETE FROM ledger",
                    "UPDATE operations SET result = '{}'", "DELETE FROM operations"):
            with pytest.raises(StorageError, match="append-only"), store.write():
                store._exec(sql)
        assert snapshot(store) == before
        assert store.find_operation("op-1") == StoredOperation("op-1", "contribute", "f",
                                                                {"a": 1})

    def test_operations_round_trip_and_an_op_id_is_stored_once(self, store: Store) -> None:
        first = StoredOperation("op-1", "win", "fp-1", {"amount": "1.5", "nested": [1, None]})
        with store.write():
            store.record_operations([first, StoredOperation("op-2", "config", "fp-2", {})], 7)
        assert store.find_operation("op-1") == first
        assert set(store.find_operations(["op-1", "op-2", "op-3"])) == {"op-1", "op-2"}
        with pytest.raises(StorageError), store.write():
            store.record_operations([StoredOperation("op-1", "win", "fp-x", {})], 8)
        assert store.find_operation("op-1") == first

    def test_find_operations_takes_many_ids(self, store: Store) -> None:
        records = [StoredOperation(f"op-{i:04d}", "contribute", f"fp-{i}", {"i": i})
                   for i in range(1_200)]
        with store.write():
            store.record_operations(records, 1)
        asked = [f"op-{i:04d}" for i in range(0, 2_400, 2)]
        found = store.find_operations(asked)
        assert sorted(found) == [f"op-{i:04d}" for i in range(0, 1_200, 2)]
        assert found["op-0010"].result == {"i": 10}

    def test_op_ids_are_found_by_prefix_exactly(self, store: Store) -> None:
        ids = ["AUTO-1", "auto-2", "auto_3", "autox", "create:a", "create-b", "zauto-4",
               "auto-5", "auto-6", "auto%7"]
        with store.write():
            store.record_operations([StoredOperation(i, "win", "f", {}) for i in ids], 1)
        with store.read():
            assert sorted(store.operation_ids_starting(("auto-", "create:"))) == [
                "auto-2", "auto-5", "auto-6", "create:a"]
            assert list(store.operation_ids_starting(())) == []

    def test_audit_queries_of_rate_periods_and_stored_results(self, store: Store) -> None:
        created = domain.create(GroupConfig("minor", Decimal(100), Decimal("0.01")), 1_000,
                                draw)
        state, first, _ = domain.contribute(created[0], 10_000_000, 2_000, draw)
        state, config = domain.reconfigure(state, {"contribution_rate": 20_000_000}, 3_000)
        state, second, _ = domain.contribute(state, 3_000_000, 4_000, draw)
        state, third, _ = domain.contribute(state, 1_000_000, 5_000, draw)
        result = {"op_id": "bet-2", "contributions": {"minor": "0.060000"},
                  "balances": {"minor": "100.160000"}, "versions": {"minor": 4}, "hits": []}
        with store.write():
            store.insert_level(state)
            store.append("create:minor", [created[1]])
            store.append("bet-1", first)
            store.append("config-1", [config])
            store.append("bet-2", second)
            store.append("bet-3", third)
            store.record_operations([StoredOperation("bet-2", "contribute", "f", result)], 4)
        with store.read():
            periods = store.contributions_by_period()
            recorded = list(store.recorded_results())
            hits = store.recorded_hits()
        assert periods == {"minor": {1: (10_000_000, 0), 2: (4_000_000, 0)}}
        [bet_2] = recorded
        assert (bet_2.op_id, bet_2.kind) == ("bet-2", "contribute")
        assert json.loads(bet_2.result) == result
        assert bet_2.levels == {"minor": (4, 100_160_000, 60_000, 0)}
        assert bet_2.level_kinds == {"minor": {"contribute"}}
        assert hits == {}

    def test_audit_queries_add_up_the_ledger(self, store: Store) -> None:
        level = new_level("minor")
        create = domain.create(GroupConfig("minor", Decimal(100), Decimal("0.01")),
                               1_000, draw)[1]
        state, entries, _ = domain.contribute(level, 10_000_000, 2_000, draw)
        with store.write():
            store.insert_level(state)
            store.append("create:minor", [create])
            store.append("bet-1", entries)
            store.record_operations([StoredOperation("lost", "contribute", "f", {})], 2)
        with store.read():
            totals = store.ledger_totals()
            broken = store.broken_ledger_rows()
            orphans = store.operation_ids_without_ledger()
        t = totals["minor"]
        assert (t.rows, t.min_version, t.max_version) == (2, 1, 2)
        assert (t.delta, t.reserve_delta, t.min_balance, t.min_reserve) == (
            100_100_000, 0, 100_000_000, 0)
        assert t.meters == {**dict.fromkeys(t.meters, 0), "bets": 1, "wagered": 10_000_000,
                            "contributed": 100_000, "house_funded": 100_000_000}
        assert broken == []
        assert orphans == ["lost"]
        # A row whose balance does not follow from the previous one is found.
        bad = replace(entries[0], balance_after=entries[0].balance_after + 1, version_after=3)
        with store.write():
            store.append("bad", [bad])
        assert store.broken_ledger_rows() == [("minor", 3, store.ledger()[-1].seq)]

    def test_the_audit_s_one_pass_reads_what_its_three_queries_read(self, store: Store) -> None:
        # `ledger_pass` walks the ledger once for the totals, the broken rows,
        # the bets per rate period and the unreadable bets: the same as the queries apart, rows that do
        # not add up included (found by the query that names them).
        config = GroupConfig("minor", Decimal(100), Decimal("0.01"))
        minor, created = domain.create(config, 1_000, draw)
        major, major_created = domain.create(replace(config, name="major"), 1_000, draw)
        with store.write():
            store.insert_level(minor)
            store.insert_level(major)
            store.append("create:minor", [created])
            store.append("create:major", [major_created])
        for i, bet in enumerate((10_000_000, 3_000_000, 1_000_000, 7_000_000)):
            minor, entries, _ = domain.contribute(minor, bet, 2_000 + i, draw)
            major, major_entries, _ = domain.contribute(major, bet * 2, 2_000 + i, draw)
            if i == 1:
                minor, config_entry = domain.reconfigure(minor, {"contribution_rate": 20_000_000},
                                                         3_000)
                entries = [*entries, config_entry]
            with store.write():
                store.append(f"bet-{i}", [*entries, *major_entries])

        def apart() -> tuple[object, ...]:
            return (store.ledger_totals(), store.broken_ledger_rows(limit=1),
                    store.contributions_by_period(), store.unreadable_bets(limit=1),
                    store.untyped_ledger_rows(limit=1))

        with store.read():
            passed, three = store.ledger_pass(limit=1), apart()
        _same_pass(passed, three)
        assert passed.periods == {"minor": {1: (13_000_000, 0), 2: (8_000_000, 0)},
                                  "major": {1: (42_000_000, 0)}}
        assert passed.totals["minor"].rows == 6
        last = minor.version
        bad = replace(entries[0], balance_after=entries[0].balance_after + 1,
                      version_after=last + 1)
        with store.write():
            store.append("bad", [bad, replace(bad, version_after=last + 2)])
        with store.read():
            passed, three = store.ledger_pass(limit=1), apart()
        _same_pass(passed, three)
        assert passed.broken == [("minor", last + 1, store.ledger()[-2].seq)]
        # (And how many more of each there are: the second bad row.)
        assert [passed.broken.more, passed.unread_bets.more, passed.untyped.more] == [1, 0, 0]

    def test_a_limit_of_0_shows_none_of_the_audit_s_rows_and_counts_them_all(
            self, store: Store) -> None:
        # A capped query counted what it found in a column of its rows: with
        # LIMIT 0 no row came back to carry it, and rows that do not add up, a
        # bet's unreadable detail, a bet of several winners were 0 more: none.
        config = GroupConfig("minor", Decimal(100), Decimal("0.01"))
        minor, created = domain.create(config, 1_000, draw)
        minor, bet, _ = domain.contribute(minor, 10_000_000, 2_000, draw)
        last = minor.version
        bad = replace(bet[0], balance_after=bet[0].balance_after + 1, version_after=last + 1)
        with store.write():
            store.insert_level(minor)
            store.append("create:minor", [created])
            store.append("bet", bet)
            store.append("bad", [bad, replace(bad, version_after=last + 2)])
            store.append("unread", [replace(bad, version_after=last + 3, detail={})])
            store.append("split", [replace(bad, kind="hit", who=who, version_after=last + v)
                                   for v, who in ((4, "ann"), (5, "bob"))])
        cappeds = (store.broken_ledger_rows, store.unreadable_bets, store.untyped_ledger_rows,
                   store.split_hit_winners)
        with store.read():
            every = [len(capped(limit=100)) for capped in cappeds]
            shown = [(list(rows), rows.more) for rows in (capped(limit=0) for capped in cappeds)]
            passed = store.ledger_pass(limit=0)
        assert every == [5, 1, 0, 1]
        assert shown == [([], n) for n in every]
        assert [(list(rows), rows.more) for rows in (
            passed.broken, passed.unread_bets, passed.untyped)] == [([], n) for n in every[:3]]

    @pytest.mark.parametrize("limit", [-1, 1.5, True])
    def test_a_limit_that_is_no_count_of_rows_is_refused(self, store: Store,
                                                         limit: object) -> None:
        # SQLite read LIMIT -1 as none (every row), PostgreSQL refused it (a
        # StorageError), a capped query counted its rows and showed rows[:-1]
        # of the one it read; 1.5 was cut to 1, True read as 1.
        minor, created = domain.create(GroupConfig("minor", Decimal(100), Decimal("0.01")),
                                       1_000, draw)
        with store.write():
            store.insert_level(minor)
            store.append("create:minor", [created])
        reads: tuple[Callable[..., object], ...] = (
            store.ledger, store.ledger_pass, store.broken_ledger_rows, store.unreadable_bets,
            store.untyped_ledger_rows, store.split_hit_winners)
        with store.read():
            for read in reads:
                with pytest.raises(ValidationError) as info:
                    read(limit=limit)
                assert str(info.value) == f"limit must be an int of 0 or more, got {limit!r}"

    def test_the_audit_s_rows_of_a_few_kinds_are_every_level_s(self, store: Store) -> None:
        # `ledger_of_kinds` finds them level by level through the index: the
        # same rows, in the same order, as `ledger(kinds=...)` reading them all.
        config = GroupConfig("minor", Decimal(100), Decimal("0.01"))
        states = {}
        with store.write():
            for name in ("minor", "major", "mega"):
                states[name], created = domain.create(replace(config, name=name), 1_000, draw)
                store.insert_level(states[name])
                store.append(f"create:{name}", [created])
        for i, name in enumerate(("mega", "minor", "major", "mega")):
            state, bet, _ = domain.contribute(states[name], 10_000_000, 2_000 + i, draw)
            states[name], change = domain.reconfigure(
                state, {"contribution_rate": 20_000_000 + i}, 3_000 + i)
            with store.write():
                store.append(f"bet-{i}", bet)
                store.append(f"config-{i}", [change])
        with store.read():
            found = store.ledger_of_kinds(("create", "config"))
            assert found == store.ledger(kinds=("create", "config"))
            assert store.ledger_of_kinds(("win",)) == []
        assert [(r.level, r.kind) for r in found] == [
            ("minor", "create"), ("major", "create"), ("mega", "create"),
            ("mega", "config"), ("minor", "config"), ("major", "config"), ("mega", "config")]

    def test_integrity_check_says_ok(self, store: Store) -> None:
        assert store.integrity_check() == "ok"

    def test_a_read_is_one_snapshot(self, store: Store, make_store: Callable[..., Store]
                                    ) -> None:
        level = new_level("minor")
        with store.write():
            store.insert_level(level)
        other = make_store()
        with store.read():
            assert store.load_level("minor") == level
            with other.write():
                assert other.update_level(replace(level, version=2), expected_version=1)
            assert store.load_level("minor") == level
            assert store.load_levels() == {"minor": level}
        assert store.load_level("minor") == replace(level, version=2)

    def test_a_level_read_in_a_write_holds_off_other_writers(
            self, store: Store, make_store: Callable[..., Store]) -> None:
        level = new_level("minor")
        with store.write():
            store.insert_level(level)
        other = make_store(lock_timeout_ms=300)
        with store.write():
            assert store.load_level("minor") == level
            started = time.monotonic()
            with pytest.raises(LockTimeoutError), other.write():
                other.update_level(replace(level, version=2), expected_version=1)
            waited = time.monotonic() - started
            assert store.update_level(replace(level, version=2, amount=7), expected_version=1)
        assert waited >= 0.29  # it waited (from below only: a loaded machine only adds)
        assert store.load_level("minor") == replace(level, version=2, amount=7)

    # -- the engine on this backend -------------------------------------------

    def test_open_creates_the_default_levels_once(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        first = make_engine()
        assert first.groups == ("major", "mega", "minor")
        first.close()
        again = make_engine([GroupConfig("bonus", Decimal(5), Decimal("0.01"))])
        assert again.groups == ("bonus", "major", "mega", "minor")
        assert again.pool("minor").amount == MINOR_SEED
        report = again.verify()
        assert (report.ok, report.levels, report.ledger_rows) == (True, 4, 4)

    def test_engines_opening_at_once_create_each_level_once(
            self, make_engine: Callable[..., JackpotEngine], make_store: Callable[..., Store]
            ) -> None:
        engines = run_together(*[lambda: make_engine(GROUPS) for _ in range(3)])
        assert all(isinstance(e, JackpotEngine) for e in engines), engines
        creates = Counter(r.level for r in make_store().ledger(kinds=("create",)))
        assert creates == {"major": 1, "mega": 1, "minor": 1}
        assert engines[0].verify().ok

    def test_operations_history_and_audit(self, make_engine: Callable[..., JackpotEngine]
                                          ) -> None:
        engine = make_engine()
        c = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-1")
        assert c.contributions == {"major": Decimal("0.0075"), "minor": Decimal("0.0125")}
        assert c.versions == {"major": 2, "minor": 2}
        w = engine.process_win("minor", op_id="win-1", winner="player-9")
        assert (w.amount, w.balance, w.version) == (Decimal("100.0125"), MINOR_SEED, 3)
        with pytest.raises(ConcurrencyViolationError):
            engine.update_config("minor", op_id="cfg-stale", expected_version=2,
                                 contribution_rate="0.01")
        cfg = engine.update_config("minor", op_id="cfg-1", expected_version=3,
                                   contribution_rate="0.01", who="ops", reason="promo")
        assert cfg.version == 4
        assert engine.contribute(Decimal(10), groups="minor").contributions == {
            "minor": Decimal("0.1")}
        history = engine.history("minor")
        assert [(h.op_id, h.amount, h.winner, h.version) for h in history] == [
            ("win-1", Decimal("100.0125"), "player-9", 3)]
        report = engine.verify()
        assert (report.ok, report.problems, report.ledger_rows) == (True, [], 8)

    def test_the_audit_checks_winners_configs_and_skipped_levels(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        engine = make_engine([GroupConfig("minor", Decimal(100), Decimal("0.01")),
                              GroupConfig("major", Decimal(1000), Decimal("0.01"),
                                          min_bet=Decimal(10))])
        engine.contribute(Decimal(20), op_id="big")
        small = engine.contribute(Decimal(5), op_id="small")
        assert (small.contributions["major"], small.versions["major"]) == (0, 2)
        engine.process_win("minor", op_id="w1", winner="p-9")
        engine.update_config("minor", op_id="c1", contribution_rate="0.02", who="ops")
        store = engine._reader
        with store.read():
            details = store.recorded_details()
            balances = store.balances_at([("major", 2), ("major", 1), ("major", 99),
                                          ("nosuch", 1)])
        assert {k: (d.level, d.kind, d.who) for k, d in details.items()} == {
            "w1": ("minor", "win", "p-9"), "c1": ("minor", "config", "ops")}
        assert json.loads(details["w1"].detail or "") == {"reset": True}
        assert balances == {("major", 2): 1_000_200_000, ("major", 1): 1_000_000_000}
        assert engine.verify().problems == []

    def test_a_bet_s_hits_on_several_levels_verify_in_the_ledger_s_order(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        # The audit compares a stored result's hits with the ledger's in order.
        engine = make_engine([GroupConfig(name, Decimal(10), Decimal("0.1"),
                                          must_hit_by=Decimal("10.000001"))
                              for name in ("b", "a")])
        bet = engine.contribute(Decimal("0.00002"), op_id="m1", player="p-7")
        assert [(h.group, h.version, h.winner) for h in bet.hits] == [
            ("a", 3, "p-7"), ("a", 5, "p-7"), ("b", 3, "p-7"), ("b", 5, "p-7")]
        engine.contribute(Decimal("0.00001"), groups=["b", "a"], op_id="m2")
        assert engine.verify().problems == []

    def test_an_op_id_applies_once_across_engines(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        one, two = make_engine(), make_engine()
        first = one.contribute(Decimal(10), groups="minor", op_id="bet-1")
        again = two.contribute(Decimal(10), groups="minor", op_id="bet-1")
        assert again.replayed is True
        assert replace(again, replayed=False) == first
        with pytest.raises(IdempotencyConflictError):
            two.contribute(Decimal(11), groups="minor", op_id="bet-1")
        win = two.process_win("major", op_id="win-1")
        assert one.process_win("major", op_id="win-1") == replace(win, replayed=True)
        assert one.pool("minor").version == 2
        assert one.pool("major").version == 2
        assert two.verify().ok

    def test_a_stale_cache_is_noticed_once_then_the_write_goes_through(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        one, two = make_engine(), make_engine()  # both have read minor at version 1
        one.contribute(Decimal(10), groups="minor", op_id="one-1")
        done = two.contribute(Decimal(20), groups="minor", op_id="two-1")
        assert done.versions == {"minor": 3}
        assert done.balances == {"minor": MINOR_SEED + Decimal("0.15")}
        stats = two.stats.snapshot()
        # Re-read as the write began, before anything was applied: a reload, not a conflict.
        assert (stats["conflicts"], stats["retries"], stats["reloads"]) == (0, 0, 1)
        assert one.stats.snapshot()["conflicts"] == 0
        assert two.verify().ok

    def test_a_stale_cache_is_reloaded_without_spending_a_retry(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        strict, writer = make_engine(max_retry_attempts=0), make_engine()
        strict.contribute(Decimal(10), groups=("major", "minor"), op_id="strict-1")
        writer.contribute(Decimal(20), groups="minor", op_id="writer-1")
        # Re-read before anything was applied: no retry is needed, so none is spent.
        done = strict.contribute(Decimal(30), groups=("major", "mega", "minor"), op_id="strict-2")
        assert done.versions == {"major": 3, "mega": 2, "minor": 4}
        counts = strict.stats.snapshot()
        assert (counts["conflicts"], counts["retries"], counts["reloads"]) == (0, 0, 1)
        assert strict.verify().ok

    def test_simultaneous_wins_are_served_one_after_the_other(
            self, make_engine: Callable[..., JackpotEngine]) -> None:
        one, two = make_engine(), make_engine()
        one.contribute(Decimal(1000), groups="minor", op_id="bet")  # pool 105
        wins = run_together(lambda: one.process_win("minor", op_id="w-1"),
                            lambda: two.process_win("minor", op_id="w-2"))
        assert sorted((w.amount, w.version) for w in wins) == [(MINOR_SEED, 4),
                                                               (Decimal(105), 3)]
        assert one.pool("minor").amount == MINOR_SEED
        assert one.verify().ok

    def test_a_held_level_times_out_and_changes_nothing(
            self, target: str, make_engine: Callable[..., JackpotEngine],
            make_store: Callable[..., Store]) -> None:
        engine = make_engine(lock_timeout_ms=400)
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        before = snapshot(make_store())
        counts = engine.stats.snapshot()
        with self.hold_level_lock(target, "minor"):
            started = time.monotonic()
            with pytest.raises(LockTimeoutError):
                engine.process_win("minor", op_id="blocked")
            waited = time.monotonic() - started
        assert waited >= 0.39  # it waited (from below only: a loaded machine only adds)
        after = engine.stats.snapshot()  # one wait of the lock timeout, not retried
        assert {k: after[k] - counts[k] for k in ("lock_timeouts", "retries")
                } == {"lock_timeouts": 1, "retries": 0}
        assert snapshot(make_store()) == before
        assert engine.process_win("minor", op_id="blocked").amount == Decimal("100.05")

    def test_verify_names_a_level_its_ledger_does_not_add_up_to(
            self, make_engine: Callable[..., JackpotEngine], make_store: Callable[..., Store]
            ) -> None:
        engine = make_engine()
        engine.contribute(Decimal(10), groups="minor", op_id="bet")
        store = make_store()
        with store.write():  # what no operation can do: change a pool without a ledger row
            store._exec("UPDATE levels SET amount = amount + 1 WHERE name = 'minor'")
        report = engine.verify()
        assert (report.ok, report.levels, report.ledger_rows) == (False, 3, 4)
        assert report.problems == [
            "minor: ledger sums to 100.050000, level holds 100.050001",
            ("minor: opening + contributions + seed funding + adjustments - wins - overflow "
             "= 100.050000, pool holds 100.050001"),
        ]

    def test_health_probes_the_database(self, make_engine: Callable[..., JackpotEngine]
                                        ) -> None:
        check = make_engine().health().check("database")
        assert (check.status, check.detail.startswith("reachable and writable")) == ("ok", True)

    def test_threads_of_two_engines_keep_the_books(
            self, make_engine: Callable[..., JackpotEngine], make_store: Callable[..., Store]
            ) -> None:
        engines = [make_engine(GROUPS), make_engine(GROUPS)]
        plans = [[(k, i) for i in range(25)] for k in range(4)]

        def work(k: int) -> list[Any]:
            engine, out = engines[k % 2], []
            for _, i in plans[k]:
                if i % 8 == 7:
                    out.append(engine.process_win(("minor", "major")[k % 2],
                                                  op_id=f"w-{k}-{i}"))
                else:
                    groups = (("minor",), ("major", "minor"), ("major", "mega", "minor"))[i % 3]
                    out.append(engine.contribute(Decimal(f"{17 * i + k}.37"), groups=groups,
                                                 op_id=f"c-{k}-{i}"))
            return out

        results = run_together(*[lambda k=k: work(k) for k in range(4)])
        expected = {g.name: g.seed for g in GROUPS}
        for out in results:
            assert isinstance(out, list), out
            for r in out:
                if hasattr(r, "contributions"):
                    for level, added in r.contributions.items():
                        expected[level] += added
                else:
                    expected[r.group] += r.balance - r.amount  # paid out, reset to seed
        pools = engines[0].pools()
        assert {n: p.amount for n, p in pools.items()} == expected
        rows = make_store().ledger()
        per_op = Counter(r.op_id for r in rows)
        for k in range(4):
            for i in range(25):
                assert per_op[f"w-{k}-{i}" if i % 8 == 7 else f"c-{k}-{i}"] == (
                    1 if i % 8 == 7 else 1 + i % 3)
        assert engines[1].verify().ok
