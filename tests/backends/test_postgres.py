"""The backend contract on PostgreSQL, plus what only a server with row locks can show.

Each test gets a fresh schema on the server named by JACKPOT_TEST_PG_URL (see
pg.py: without it this module fails in CI and is skipped elsewhere). Beyond
the contract: a write committed by another engine inside a batch's window is
caught by the version check; a twin op_id committed first is replayed, a
reused one refused; deadlocks and serialization failures are retried,
counted, and end as ConcurrencyViolationError when retries run out.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from _helpers import pykka_debug_raising_on, run_together
from jackpot import (
    ConcurrencyViolationError,
    Contribution,
    GroupConfig,
    IdempotencyConflictError,
    JackpotEngine,
    LockTimeoutError,
    Settings,
    StorageError,
    domain,
    reads,
)
from jackpot.audit import audit
from jackpot.storage import SerializationFailureError, Store, _pg_pool, open_store, postgres
from jackpot.storage.base import ENTRY_COLUMNS, ConnectionUnavailableError
from jackpot.storage.postgres import PostgresStore, _misread
from jackpot.storage.schema import POSTGRES_CHECKS, POSTGRES_MIGRATIONS

from .contract import MINOR_SEED, WEAKENED_INDEXES, BackendContract, new_level, snapshot
from .pg import (
    create_anycase_collation,
    fresh_schema,
    fresh_schema_named,
    read_books,
    require_pg_url,
    with_search_path,
)

PG_URL = require_pg_url()


@pytest.fixture
def pg_target() -> Iterator[str]:
    with fresh_schema(PG_URL) as url:
        yield url


@contextmanager
def row_locked(target: str, level: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold `level`'s row lock on a connection of our own until the block ends."""
    with psycopg.connect(target) as conn:  # not autocommit: the SELECT opens a transaction
        rows = conn.execute("SELECT name FROM levels WHERE name = %s FOR UPDATE",
                            (level,)).fetchall()
        assert rows == [(level,)]
        yield conn
        conn.rollback()


def wait_until_blocked(target: str, deadline_s: float = 30) -> None:
    """Return once some session of this test waits for a row lock (polled, bounded)."""
    deadline = time.monotonic() + deadline_s
    with psycopg.connect(target, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()
            if waiting and waiting[0] > 0:
                return
            time.sleep(0.005)  # polling a condition, with a deadline
    raise AssertionError("no session started waiting for a lock in time")


class TestPostgresBackend(BackendContract):
    latest_schema = len(POSTGRES_MIGRATIONS)

    @pytest.fixture
    def target(self, pg_target: str) -> str:
        return pg_target

    def hold_level_lock(self, target: str, level: str) -> Any:
        return row_locked(target, level)

    def set_schema_version(self, target: str, version: int) -> None:
        with psycopg.connect(target) as conn:
            conn.execute("UPDATE jackpot_schema SET version = %s", (version,))

    def raw_schema_version(self, target: str) -> int:
        with psycopg.connect(target) as conn:
            rows = conn.execute("SELECT version FROM jackpot_schema").fetchall()
        return int(rows[0][0])


# -- what only PostgreSQL can show --------------------------------------------------


@pytest.fixture
def engines(pg_target: str) -> Iterator[Callable[..., JackpotEngine]]:
    opened: list[JackpotEngine] = []

    def _open(**settings: Any) -> JackpotEngine:
        engine = JackpotEngine.open(pg_target, settings=Settings(**settings))
        opened.append(engine)
        return engine

    yield _open
    for engine in opened:
        engine.close()


def intercept_once(monkeypatch: pytest.MonkeyPatch, attr: str,
                   before: Callable[[], Any]) -> list[Any]:
    """Run `before()` the first time any PostgresStore calls `attr`; return its result."""
    real = getattr(PostgresStore, attr)
    seen: list[Any] = []

    def wrapper(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        if not seen:
            seen.append(None)
            seen[0] = before()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PostgresStore, attr, wrapper)
    return seen


def test_a_write_waits_for_the_levels_another_engine_is_writing(
        engines: Callable[..., JackpotEngine], pg_target: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write locks its levels' rows as it begins: another host's write waits, then re-reads."""
    one, two = engines(), engines()  # both cache minor at version 1
    one.contribute(Decimal(10), groups="minor", op_id="one-1")  # one caches version 2
    waiting: list[Contribution] = []
    other = threading.Thread(target=lambda: waiting.append(
        two.contribute(Decimal(20), groups="minor", op_id="two-1")))

    def two_writes_meanwhile() -> None:  # in one's transaction, its batch applied
        other.start()
        wait_until_blocked(pg_target)  # two waits for the row one holds

    intercept_once(monkeypatch, "update_level", two_writes_meanwhile)
    done = one.contribute(Decimal(30), groups="minor", op_id="one-2")
    other.join(timeout=30)
    assert done.versions == {"minor": 3}
    assert [c.versions for c in waiting] == [{"minor": 4}]
    assert waiting[0].balances == {"minor": MINOR_SEED + Decimal("0.30")}
    one_counts, two_counts = one.stats.snapshot(), two.stats.snapshot()
    assert (one_counts["conflicts"], one_counts["retries"]) == (0, 0)
    assert (two_counts["conflicts"], two_counts["retries"], two_counts["reloads"]) == (0, 0, 1)
    assert one.verify().ok


def test_a_twin_op_id_committed_first_is_replayed(
        engines: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = engines(), engines()
    # While one waits for the level's row (its op_id is looked up once it has it).
    seen = intercept_once(monkeypatch, "lock_levels",
                          lambda: two.contribute(Decimal(20), groups="minor", op_id="twin"))
    replay = one.contribute(Decimal(20), groups="minor", op_id="twin")
    assert seen[0].replayed is False
    assert replay.replayed is True
    assert replay.versions == seen[0].versions == {"minor": 2}
    assert one.pool("minor").amount == MINOR_SEED + Decimal("0.1")
    assert one.verify().ok


@pytest.mark.parametrize("terms", [{"amount": Decimal(80)}, {"expected_version": 2}])
def test_a_twin_op_id_committed_while_waiting_for_the_row_is_replayed_not_refused(
        engines: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch,
        terms: dict[str, Any]) -> None:
    # A win resent to another host (its first call's outcome unknown) waits for
    # the row the first one holds. Its op_id was looked up before that wait:
    # judged by the pool the first one left (80 is more than it holds now; the
    # version moved on), it was refused, "nothing changed", though that very
    # request had just been paid. The lookup follows the row locks now.
    one, two = engines(), engines()
    one.contribute(Decimal(10), groups="minor", op_id="bet")  # minor at version 2
    seen = intercept_once(monkeypatch, "lock_levels",
                          lambda: two.process_win("minor", op_id="twin", **terms))
    replay = one.process_win("minor", op_id="twin", **terms)
    assert seen[0].replayed is False
    assert replay.replayed is True
    assert replay.to_record() == seen[0].to_record()
    assert one.pool("minor").version == 3  # paid once
    assert one.verify().ok


def test_an_op_id_reused_at_the_same_time_on_another_level_is_refused(
        engines: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """No row in common, so only the operations key sees the clash: retried, then refused."""
    one, two = engines(), engines()
    seen = intercept_once(monkeypatch, "update_level",
                          lambda: two.contribute(Decimal(20), groups="major", op_id="reused"))
    with pytest.raises(IdempotencyConflictError):
        one.contribute(Decimal(20), groups="minor", op_id="reused")
    assert seen[0].versions == {"major": 2}
    assert one.pool("minor").version == 1
    stats = one.stats.snapshot()
    assert (stats["busy_incidents"], stats["retries"]) == (1, 1)
    assert one.verify().ok


def _named_by(target: str, index: str, reindexed: str, clash: str) -> str:
    """Create the operator's `index`, build the engine's `reindexed` again; name what `clash` violates.

    REINDEX CONCURRENTLY gives the rebuilt index a newer oid than the
    operator's, and PostgreSQL checks a table's unique indexes in oid order:
    a duplicate is then reported as the operator's index's, not the engine's.
    """
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(index)
        conn.execute(f"REINDEX INDEX CONCURRENTLY {reindexed}")
        with pytest.raises(pg_errors.UniqueViolation) as raised, conn.transaction():
            conn.execute(clash)
    return str(raised.value.diag.constraint_name)


@pytest.mark.parametrize("index", [
    "CREATE UNIQUE INDEX ops_op ON operations (op_id)",
    "CREATE UNIQUE INDEX ops_op ON operations (op_id, kind)",
    "CREATE UNIQUE INDEX ops_op ON operations (kind, op_id) INCLUDE (at_ms)",
])
def test_an_op_id_clash_named_by_an_operators_unique_index_is_still_a_lost_race(
        engines: Callable[..., JackpotEngine], pg_target: str,
        monkeypatch: pytest.MonkeyPatch, index: str) -> None:
    # The race was known by the name of the operations' primary key: when
    # PostgreSQL named the operator's index instead (one verify() accepts:
    # on the whole key), the loser got a StorageError ("database error:
    # UniqueViolation ... ops_op"), neither retried nor refused as a conflict.
    one, two = engines(), engines()
    one.contribute(Decimal(10), groups="minor", op_id="first")
    assert _named_by(pg_target, index, "operations_pkey",
                     "INSERT INTO operations SELECT * FROM operations WHERE op_id = 'first'"
                     ) == "ops_op"
    # In one's transaction (its levels locked, its op_id looked up), two commits it.
    seen = intercept_once(monkeypatch, "update_level",
                          lambda: two.contribute(Decimal(20), groups="major", op_id="reused"))
    with pytest.raises(IdempotencyConflictError):  # the retry found two's record
        one.contribute(Decimal(20), groups="minor", op_id="reused")
    assert seen[0].versions == {"major": 2}
    assert (one.pool("minor").version, one.pool("major").version) == (2, 2)
    stats = one.stats.snapshot()
    assert (stats["busy_incidents"], stats["retries"]) == (1, 1)
    assert one.verify().ok


@pytest.mark.parametrize("prefix", ["t_", "Jackpot schema "])  # (the index is read by name)
def test_a_ledger_version_clash_named_by_an_operators_unique_index_is_a_lost_race(
        prefix: str) -> None:
    # The engine itself never gets there (a level's next version is inserted
    # only by the transaction that moved the level's locked row to it); a
    # writer that appends without the row does, and is told so by either index.
    with fresh_schema_named(PG_URL, prefix) as name:
        target = with_search_path(PG_URL, '"' + name.replace(" ", "\\ ") + '"')
        JackpotEngine.open(target, settings=Settings(enable_metrics=False)).close()
        columns = ", ".join(("op_id", *ENTRY_COLUMNS))
        assert _named_by(target, "CREATE UNIQUE INDEX ledger_lv ON ledger (version_after, level)",
                         "ledger_level_version",
                         f"INSERT INTO ledger ({columns}) SELECT {columns} FROM ledger LIMIT 1"
                         ) == "ledger_lv"
        first, second = open_store(target), open_store(target)
        state = first.load_level("minor")
        assert state is not None
        new, entries, _ = domain.contribute(state, 10_000_000, 2_000, lambda low, _high: low)

        def append_under_first() -> None:
            with second.write():
                second.append("second", entries)  # (inserted as it commits)
                with first.write():  # another transaction commits that version first
                    assert first.update_level(new, expected_version=state.version)
                    first.append("first", entries)

        with pytest.raises(SerializationFailureError, match="committed the same level version"):
            append_under_first()
        assert [(r.op_id, r.version_after) for r in first.ledger(level="minor")] == [
            ("create:minor", 1), ("first", 2)]
        assert audit(first).ok
        for store in (first, second):
            store.close()

def test_a_deadlock_is_broken_and_reported_as_a_lost_race(pg_target: str) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL aborts one."""
    setup = open_store(pg_target)
    setup.migrate()
    with setup.write():
        setup.insert_level(new_level("a"))
        setup.insert_level(new_level("b"))
    first, second = open_store(pg_target), open_store(pg_target)
    errors: list[BaseException] = []
    locked_a = threading.Event()
    go_on = threading.Event()

    def take_a_then_b() -> None:
        try:
            with first.write():
                first.load_level("a")
                locked_a.set()
                go_on.wait(30)
                first.load_level("b")
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    thread = threading.Thread(target=take_a_then_b)
    thread.start()
    try:
        assert locked_a.wait(30)
        with second.write():
            second.load_level("b")
            go_on.set()
            wait_until_blocked(pg_target)  # first now waits for b
            try:
                second.load_level("a")  # closes the cycle
            except pg_errors.DeadlockDetected as e:
                errors.append(e)
                raise
    except SerializationFailureError as e:
        errors.append(e)
    finally:
        thread.join(60)
    translated = [e for e in errors if isinstance(e, SerializationFailureError)]
    assert len(translated) == 1, errors
    assert "40P01" in str(translated[0])
    for store in (setup, first, second):
        store.close()


def test_serialization_failures_are_retried_counted_then_a_concurrency_violation(
        engines: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engines(max_retry_attempts=2, retry_delay_ms=1)
    real = PostgresStore._exec
    failures = [0]

    def failing(self: PostgresStore, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if sql.startswith("UPDATE levels SET status") and failures[0] < budget[0]:
            failures[0] += 1
            raise pg_errors.SerializationFailure("could not serialize access (injected)")
        return real(self, sql, params)

    budget = [2]  # fails twice, the third attempt commits
    monkeypatch.setattr(PostgresStore, "_exec", failing)
    done = engine.contribute(Decimal(10), groups="minor", op_id="bet-1")
    assert done.versions == {"minor": 2}
    stats = engine.stats.snapshot()
    assert (stats["busy_incidents"], stats["retries"]) == (2, 2)

    budget[0], failures[0] = 3, 0  # more than the retries
    before = engine.pools()
    with pytest.raises(ConcurrencyViolationError) as info:
        engine.contribute(Decimal(10), groups="minor", op_id="bet-2")
    assert info.value.conflict_details == {"attempts": 3}
    assert failures[0] == 3
    assert engine.pools() == before
    assert engine.verify().ok


@pytest.mark.parametrize(("url", "said"), [
    ("postgresql://jackpot:s3cret@db.example:6432/pools", "postgresql://jackpot@db.example:6432/pools"),
    ("postgresql://db.example/pools", "postgresql://db.example/pools"),
    ("postgresql:///pools?host=/run/postgresql", "postgresql:///run/postgresql/pools"),
    ("postgresql://app@/pools", "postgresql://app@/pools"),
])
def test_a_url_is_described_by_the_parts_it_gives_without_its_password(
        url: str, said: str) -> None:
    # A URL without a user was shown as postgresql://@db.example:/pools.
    assert postgres.describe(url) == said


def test_a_bad_url_fails_at_open_without_showing_the_password() -> None:
    url = "postgresql://jackpot:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(StorageError, match="cannot open database") as info:
        JackpotEngine.open(url)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("value", ["abc", "5s", "5.5", "%20s3cret", "5%1C"])
def test_a_bad_connect_timeout_in_the_url_fails_at_open_naming_it(value: str) -> None:
    # The first, direct connection of a URL overrode its connect_timeout, so a
    # bad one passed it; every connection the pool then made failed on it, and
    # open() raised, after the lock timeout, that the pool could not make one
    # "though a direct connection just worked", never naming connect_timeout.
    # Told without the value: psycopg's and libpq's own messages quote it.
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}connect_timeout={value}"
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(url, settings=Settings(enable_metrics=False))
    assert str(info.value) == (
        f"cannot open database {postgres.describe(PG_URL)}: its connect_timeout is not a "
        "whole number of seconds (?connect_timeout=10, say); nothing was changed")


@pytest.mark.parametrize("value", ["abc", "5s", "5.5", " "])
def test_a_bad_pgconnect_timeout_fails_at_open_naming_it(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Kept since the URL's own default no longer overrides it (network_defaults),
    # a bad PGCONNECT_TIMEOUT failed open() with psycopg's "bad value for
    # connect_timeout: 'abc'", naming a keyword the URL does not set; "5.5",
    # which libpq (psql, pg_dump) refuses, was taken. As the URL's own is told.
    monkeypatch.setenv("PGCONNECT_TIMEOUT", value)
    with pytest.raises(StorageError) as info:
        PostgresStore(PG_URL)
    assert str(info.value) == (
        f"cannot open database {postgres.describe(PG_URL)}: PGCONNECT_TIMEOUT in the "
        "environment is not a whole number of seconds (PGCONNECT_TIMEOUT=10, say, or "
        "unset it); nothing was changed")


@pytest.mark.parametrize("value", ["7", " 7 ", "-1", "0", ""])
def test_a_pgconnect_timeout_libpq_reads_is_taken(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # ("": unset, as network_defaults takes it; the URL's own wins over a bad one.)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", value)
    for url in (PG_URL, f"{PG_URL}{'&' if '?' in PG_URL else '?'}connect_timeout=9"):
        store = PostgresStore(url)
        try:
            assert store.schema_version() >= 0
        finally:
            store.close()
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "abc")
    store = PostgresStore(f"{PG_URL}{'&' if '?' in PG_URL else '?'}connect_timeout=9")
    store.close()


@pytest.mark.parametrize("value", ["7", " 7 ", "-1", "0"])
def test_a_connect_timeout_libpq_reads_is_taken(value: str) -> None:
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}connect_timeout={quote(value)}"
    store = PostgresStore(url)
    try:
        assert store.schema_version() >= 0
    finally:
        store.close()


@contextmanager
def _two_hosts_caching_ledger_seqs(
        pg_target: str) -> Iterator[tuple[JackpotEngine, JackpotEngine, PostgresStore]]:
    """Yield two engines standing in for two hosts whose sessions cache ledger seqs.

    The ledger's identity caches 50 values per session (SET CACHE 50, a tuning
    for tables many sessions insert into): each engine's one connection (a pool
    of one per URL, pg_pool_size=1, shared with the third item) draws seqs
    from a block of its own, so a level's later version can get the smaller seq.
    """
    off = Settings(enable_metrics=False, pg_pool_size=1)
    with JackpotEngine.open(pg_target, settings=off):
        pass
    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger ALTER COLUMN seq SET CACHE 50")
    urls = [f"{pg_target}&application_name=host-{host}" for host in "ab"]
    sizing = [PostgresStore(url, pool_max_size=1) for url in urls]
    try:
        with JackpotEngine.open(urls[0], settings=off) as a, \
                JackpotEngine.open(urls[1], settings=off) as b:
            yield a, b, sizing[0]
    finally:
        for store in sizing:
            store.close()


def test_settings_changed_by_hosts_whose_sessions_cache_ledger_seqs_still_verify(
        pg_target: str) -> None:
    # With the ledger's identity caching values per session (SET CACHE 50, a
    # tuning for tables many sessions insert into), each host's connection draws
    # seqs from a block of its own: a level's later version can get the smaller
    # seq. The audit replayed a level's settings rows by seq, so this correct
    # database failed verify() ("minor: setting seed is ..., the ledger says ...",
    # and its changes waiting for a reset).
    with _two_hosts_caching_ledger_seqs(pg_target) as (a, b, _):
        a.update_config("minor", op_id="a-1", seed=Decimal(101))  # a's block: n..n+49
        b.update_config("minor", op_id="b-1", seed=Decimal(102))  # b's: n+50..
        a.update_config("minor", op_id="a-2", seed=Decimal(103))  # version 4, seq n+1
        _, ledger, _ = read_books(pg_target)
        rows = [r for r in ledger if r.level == "minor" and r.kind == "config"]
        assert [(r.op_id, r.version_after) for r in sorted(rows, key=lambda r: r.seq)] == [
            ("a-1", 2), ("a-2", 4), ("b-1", 3)]
        report = a.verify()
        assert (report.ok, report.problems) == (True, [])


def test_history_of_hosts_whose_sessions_cache_ledger_seqs_is_the_newest_wins(
        pg_target: str) -> None:
    # As above: a level's later win can get the smaller seq. history() took "the
    # last `limit`" by seq, so the newest win (a-2, version 4) was left out for
    # an older one (b-1, version 3), and the level's ledger listed them out of order.
    with _two_hosts_caching_ledger_seqs(pg_target) as (a, b, first):
        a.process_win("minor", op_id="a-1", amount=Decimal(1))  # a's block: n..n+49
        b.process_win("minor", op_id="b-1", amount=Decimal(1))  # b's: n+50..
        a.process_win("minor", op_id="a-2", amount=Decimal(1))  # version 4, seq n+1
        _, ledger, _ = read_books(pg_target)
        wins = sorted((r for r in ledger if r.level == "minor" and r.kind == "win"),
                      key=lambda r: r.seq)
        assert [(r.op_id, r.version_after) for r in wins] == [
            ("a-1", 2), ("a-2", 4), ("b-1", 3)]
        assert [(h.op_id, h.version) for h in a.history("minor", limit=1)] == [("a-2", 4)]
        assert [(h.op_id, h.version) for h in b.history("minor")] == [
            ("a-2", 4), ("b-1", 3), ("a-1", 2)]
        shown = reads.ledger(first, level="minor", limit=3)  # (jackpot ledger minor)
        assert [r.op_id for r in shown] == ["a-1", "b-1", "a-2"]


def test_a_search_path_naming_no_schema_that_exists_is_told_so_at_open() -> None:
    # The README's ?options=-csearch_path%3Djackpot with the schema's name
    # misspelt (or not made yet): open() raised "database error:
    # InvalidSchemaName: no schema has been selected to create in", naming
    # neither the database nor its search_path.
    missing = f"t_{uuid.uuid4().hex[:16]}"
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(with_search_path(PG_URL, missing),
                           settings=Settings(enable_metrics=False))
    message = str(info.value)
    assert message.startswith(f"database {postgres.describe(PG_URL)} has no schema to create "
                              "the tables in (no schema has been selected to create in): "
                              f"none of its search_path (search_path = {missing}) exists, "
                              "or none that exists may be used by this role; create the "
                              "schema or grant the role USAGE on it, or correct its name "
                              ), message
    assert message.endswith("; nothing was changed")


def test_a_search_path_schema_the_role_may_not_use_is_not_told_as_missing() -> None:
    # A schema that exists, on which the role has CREATE but not USAGE (a grant
    # forgotten): PostgreSQL leaves it out of the path and words it as the
    # missing schema above. The message said only "none of its search_path
    # exists; create the schema": an operator was sent to make one that was there.
    role = f"app_{uuid.uuid4().hex[:12]}"
    with fresh_schema_named(PG_URL) as schema, \
            psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE {role} LOGIN; GRANT CREATE ON SCHEMA "{schema}" TO {role}')
        try:
            parts = urlsplit(PG_URL)
            url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
            with pytest.raises(StorageError) as info:
                JackpotEngine.open(with_search_path(url, schema),
                                   settings=Settings(enable_metrics=False))
        finally:
            admin.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}; DROP ROLE {role}')
    message = str(info.value)
    assert message.startswith(f"database {postgres.describe(url)} has no schema to create "
                              "the tables in (no schema has been selected to create in): "
                              f"none of its search_path (search_path = {schema}) exists, "
                              "or none that exists may be used by this role; create the "
                              "schema or grant the role USAGE on it, "), message
    assert message.endswith("; nothing was changed")


def test_a_server_older_than_the_engine_needs_is_refused_before_anything_is_made(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # verify() reads catalog columns PostgreSQL 12 added: on an older server it
    # failed with an UndefinedColumn, after open() had made the tables. (No such
    # server here: the oldest version is raised above this one's instead.)
    with psycopg.connect(pg_target) as conn:
        version, shown = conn.info.server_version, conn.info.parameter_status("server_version")
    monkeypatch.setattr(postgres, "OLDEST_SERVER", (version // 10000 + 1) * 10000)
    with pytest.raises(StorageError) as refused:
        JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False))
    assert str(refused.value).endswith(
        f" is on PostgreSQL {shown}; jackpot needs PostgreSQL {version // 10000 + 1} or later "
        "(nothing was changed)")
    with psycopg.connect(pg_target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = "
                            "current_schema()").fetchone() == (0,)


def test_history_refuses_truncate(pg_target: str) -> None:
    store: Store = open_store(pg_target)
    try:
        store.migrate()
        with store.write():
            store.insert_level(new_level("minor"))
        before = snapshot(store)
        for table in ("ledger", "operations"):
            with pytest.raises(StorageError, match="append-only"), store.write():
                store._exec(f"TRUNCATE {table}")
        assert snapshot(store) == before
    finally:
        store.close()


def test_an_engine_dropped_without_close_is_closed_without_showing_the_password(
        pg_target: str) -> None:
    parts = urlsplit(pg_target)  # the test server trusts any password
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret@"
                                           f"{parts.hostname}:{parts.port}"))
    engine = JackpotEngine.open(url)
    refs = [engine._coordinator.actor_ref, *(p.actor_ref for p in engine._pools.values())]
    reports: list[str] = []
    reported = threading.Event()

    class Reported(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "dropped without close()" in record.getMessage():
                reports.append(record.getMessage())
                reported.set()

    handler = Reported()
    logging.getLogger("jackpot").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del engine
            assert reported.wait(30)
    finally:
        logging.getLogger("jackpot").removeHandler(handler)
    for ref in refs:
        assert ref.actor_stopped.wait(30), ref  # each returned its pooled connection
    said = [*reports, *(str(w.message) for w in caught)]
    assert len(said) == 2
    assert all(":***@" in s and "s3cret" not in s for s in said), said


def test_close_gives_back_every_pooled_connection_though_pykkas_stop_logging_raises(
        pg_target: str) -> None:
    """Each actor gives its connections back in a request of its own, then stops.

    Given back in `on_stop`, after Pykka's "Stopped" line: with the `pykka`
    logger at DEBUG and a filter raising there, close() raised the filter's
    error and the pool stayed open with the actors' connections (see the
    SQLite twin in tests/integration/test_close_edges.py).
    """
    engine = JackpotEngine.open(pg_target)
    engine.contribute(Decimal(10), groups=("major", "minor"), op_id="bet")
    with pykka_debug_raising_on("Stopped"):
        engine.close(timeout=30)
    # The last store released closes the pool: every store gave its share back.
    assert (os.getpid(), pg_target) not in postgres._POOLS._pools
    with JackpotEngine.open(pg_target) as again:
        assert again.pools()["minor"].version == 2  # (created, then the bet)


@pytest.mark.parametrize("url", [
    "postgresql://jackpot:50%off@127.0.0.1:1/db",  # an unencoded % in the password
    "postgresql://jackpot@127.0.0.1:1/db?password=s3&cret",  # an unencoded &
    "postgresql://jackpot:p@cret@127.0.0.1:1/db",  # an unencoded @: "cret@..." read as host
    "postgresql://jackpot:ab/cret@127.0.0.1:1/db",  # an unencoded /: "ab" read as the port
    "postgresql://jackpot:%90cret@127.0.0.1:1/db",  # not UTF-8 once decoded
    "postgresql://jackpot:2024/Summ3rcret@127.0.0.1:1/db",  # "2024" read as the port
])
def test_a_malformed_url_is_refused_without_quoting_any_of_it(url: str) -> None:
    with pytest.raises(StorageError, match="the PostgreSQL URL is malformed") as info:
        JackpotEngine.open(url)
    assert "off" not in str(info.value)
    assert "cret" not in str(info.value)
    assert info.value.__cause__ is None  # the driver's message (which quotes it) is not chained


@pytest.mark.parametrize("url", [
    "postgresql://jackpot:s3cret@127.0.0.1:1/db?connect_timeot=5",  # a misspelt keyword
    "postgresql://jackpot:s3cret@127.0.0.1:1/db?sslmode",  # no "="
    "postgresql://jackpot@127.0.0.1:1/db?password=s3&cret",  # an unencoded & in a value
])
def test_a_url_malformed_after_its_question_mark_is_told_so(url: str) -> None:
    """It was told to percent-encode the password, which the operator had not touched."""
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(url)
    assert ("the PostgreSQL URL is malformed after its '?': its parameters must be libpq "
            "connection keywords") in str(info.value)
    assert "cret" not in str(info.value)
    assert "timeot" not in str(info.value)  # nothing of the URL is quoted
    assert info.value.__cause__ is None


def test_the_cli_never_prints_the_password(pg_target: str) -> None:
    parts = urlsplit(pg_target)  # the test server trusts any password
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret@"
                                           f"{parts.hostname}:{parts.port}"))
    for args in (("init", "--db", url, "--json"), ("init", "--db", url),
                 ("status", "--db", url), ("health", "--db", url, "--json")):
        done = subprocess.run([sys.executable, "-m", "jackpot.cli", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode in (0, 1), done.stderr  # health may report "degraded"
        assert "s3cret" not in done.stdout + done.stderr, args


@pytest.mark.parametrize("url", [
    "postgresql://h:5432/db",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://u@h:5432,h2:5433/db",
    "postgresql://u:pw@[::1]:5432/db",
    "postgresql://h/my%40db",
    "postgresql://u:p%40ss@h/db",
    "postgresql://h:5432?sslrootcert=/etc/ssl/ca.pem&user=me@srv",  # Azure-style user names
    "postgresql://h:5432/db?user=me@srv&sslrootcert=/etc/ssl/ca.pem",
])
def test_valid_urls_are_not_taken_for_malformed_ones(url: str) -> None:
    assert not _misread(url)


# -- the audit on PostgreSQL: streamed, and never aborted by a forged row ------------------


def _tamper(target: str, table: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run `sql` with `table`'s append-only trigger off, as a hostile owner could."""
    trigger = f"{table}_append_only"
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        try:
            conn.execute(sql, params)
        finally:
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


def test_the_audit_streams_stored_results_through_a_server_side_cursor(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "_STREAM_CHUNK", 2)  # 5 operations: three fetches
    ids = [f"b{i}" for i in range(5)]
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        for op_id in ids:
            engine.contribute(Decimal(10), groups="minor", op_id=op_id)
        assert engine.verify().ok
        store = open_store(pg_target, create=False, read_only=True)
        try:
            with store.read():
                records = store.recorded_results()
                first = next(iter(records))
                cursors = store._exec("SELECT name FROM pg_cursors")
                rest = list(records)
        finally:
            store.close()
        assert cursors == [("jackpot_stream",)]  # the rows come a chunk at a time
        assert [r.op_id for r in (first, *rest)] == ids
        _tamper(pg_target, "operations",
                "UPDATE operations SET result = replace(result, '\"minor\": 6', "
                "'\"minor\": 9') WHERE op_id = 'b4'")
        assert engine.verify().problems == [
            "operation 'b4': its stored result says minor is at version 9, the ledger 6"]


@pytest.mark.parametrize("detail", [
    '{"bet": "x"}', '{"bet": " 1e6"}', '{"bet": 99999999999999999999}',
    # Digits and a space (once cast, and refused by PostgreSQL); no closing
    # brace (once read as a bet of 10).
    '{"bet": 1 0000000}', '{"bet": 10000000x',
    # Past the largest bet the engine takes (money.MAX_UNITS): once read as a bet.
    '{"bet": 100000000000000001}'])
def test_a_forged_bet_detail_is_a_problem_not_an_aborted_audit(pg_target: str,
                                                               detail: str) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        engine.contribute(Decimal(10), groups="minor", op_id="b2")
        _tamper(pg_target, "ledger", "UPDATE ledger SET detail = %s WHERE op_id = 'b2'",
                (detail,))
        report = engine.verify()  # no exception: the cast of a forged bet must not abort it
        assert not report.ok
        assert report.problems == [  # (the forged bet read as none: no bet, nothing wagered
            "minor: meter bets is 2, ledger says 1",  # or carried)
            "minor: meter wagered is 20.000000, ledger says 10.000000",
            ("minor: the pool's carried fraction is 0 billionths of a unit, but the ledger's "
             "bets, rates and retirements leave -50000000000000"),
            (f"minor: ledger row 5 (version 3) cannot be read as the engine writes it: its "
             f"detail {detail!r} is no bet's (a damaged or tampered database; read as no bet)")]


@pytest.mark.parametrize("column", ["adjusted", "paid", "balance_after"])
def test_a_forged_null_amount_is_a_row_that_does_not_add_up(pg_target: str,
                                                            column: str) -> None:
    # (A comparison with NULL is never true: the row once passed its check.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        engine.contribute(Decimal(10), groups="minor", op_id="b2")
        _tamper(pg_target, "ledger", f"ALTER TABLE ledger ALTER COLUMN {column} DROP NOT NULL")
        _tamper(pg_target, "ledger", f"UPDATE ledger SET {column} = NULL WHERE op_id = 'b2'")
        assert engine.verify().problems == [
            "minor: ledger row 5 (version 3) does not add up",
            (f"minor: ledger row 5 (version 3) holds what the engine never writes: its {column} "
             "is None, not an integer"),  # (as on SQLite)
            # (The dropped NOT NULL itself: once not reported.)
            f"integrity_check: table ledger takes a NULL in column {column} (its NOT NULL is gone)"]


def test_a_null_op_id_is_told_against_its_row(pg_target: str) -> None:
    # (Told only as the dropped NOT NULL once, the row nowhere: as on SQLite.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        engine.contribute(Decimal(10), groups="minor")  # (an op_id of the engine's own)
        _tamper(pg_target, "ledger", "ALTER TABLE ledger ALTER COLUMN op_id DROP NOT NULL")
        _tamper(pg_target, "ledger", "UPDATE ledger SET op_id = NULL WHERE starts_with(op_id, 'auto-')")
        assert engine.verify().problems == [
            ("minor: ledger row 5 (version 3) holds what the engine never writes: its op_id is "
             "None, not text"),
            "integrity_check: table ledger takes a NULL in column op_id (its NOT NULL is gone)"]


@pytest.mark.parametrize("table", ["ledger", "levels", "operations"])
def test_a_column_an_operator_added_is_not_told_as_a_lost_not_null(pg_target: str, table: str) -> None:
    # (Once told as "takes a NULL in column note (its NOT NULL is gone)": the
    # engine's schema never had it.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN note TEXT")
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        assert engine.verify().problems == []


@pytest.mark.parametrize(("table", "column", "kind"), [
    ("ledger", "overflow", "numeric"), ("ledger", "delta", "numeric(20,0)"),
    ("levels", "m_contributed", "numeric(30,6)"), ("operations", "at_ms", "numeric")])
def test_a_column_whose_type_was_changed_is_told(pg_target: str, table: str, column: str,
                                                 kind: str) -> None:
    # The values the engine wrote survive an ALTER COLUMN ... TYPE numeric, and
    # the audit found nothing, though the column then takes fractions the
    # engine never writes (and the audit's int() of a sum cut them short).
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind} "
                         f"USING {column}::{kind}")
        told = f"table {table}: column {column} is {kind}, not bigint as the engine made it"
        # (A levels column of numeric(30,6) reads as Decimal('0.000000'): each level's
        # meter is also told as no number.)
        assert f"integrity_check: {told}" in engine.verify().problems


def test_a_text_column_given_a_nondeterministic_collation_is_told(pg_target: str) -> None:
    # Its CHECK kept (the same definition), it took 'ACTIVE' for 'active';
    # the operations' primary key took op_id B1 for b1 (the bet refused as
    # lost to a concurrent one), and verify() said nothing.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            create_anycase_collation(conn)
            conn.execute("ALTER TABLE levels ALTER COLUMN status TYPE text COLLATE anycase")
            conn.execute("ALTER TABLE operations ALTER COLUMN op_id TYPE text COLLATE anycase")
        told = "not a deterministic one as the engine made it: it takes for equal text the "
        assert engine.verify().problems == [
            (f"integrity_check: table levels: column status has COLLATE anycase, {told}engine "
             f"tells apart; table operations: column op_id has COLLATE anycase, {told}engine "
             "tells apart")]


@pytest.mark.parametrize(("sql", "found"), [
    # The operations' key made again to take op_id B1 for b1 (the next bet refused as
    # lost to a concurrent one), its column deterministic.
    (("ALTER TABLE operations DROP CONSTRAINT operations_pkey; "
      "CREATE UNIQUE INDEX operations_pkey ON operations (op_id COLLATE anycase)"),
     ["table operations: index operations_pkey has COLLATE anycase on column op_id"]),
    # Beside the engine's, under another name, and a level's versions one for Minor and minor.
    (("CREATE UNIQUE INDEX op_ids ON operations (op_id COLLATE anycase); "
      "DROP INDEX ledger_level_version; CREATE UNIQUE INDEX ledger_level_version "
      "ON ledger (level COLLATE anycase, version_after)"),
     ["table ledger: index ledger_level_version has COLLATE anycase on column level",
      "table operations: index op_ids has COLLATE anycase on column op_id"]),
    # One that is not unique refuses nothing; a deterministic collation compares bytes.
    (("CREATE INDEX ledger_who ON ledger (who COLLATE anycase); "
      'CREATE UNIQUE INDEX op_ids ON operations (op_id COLLATE "C")'), []),
])
def test_a_unique_index_given_a_nondeterministic_collation_is_told(
        pg_target: str, sql: str, found: list[str]) -> None:
    # The column kept its collation (so the column's check passed it), the
    # index took B1 and b1 for one op_id; verify() said nothing.
    told = (", not a deterministic one as the engine made it: it takes for equal text the "
            "engine tells apart")
    with psycopg.connect(pg_target, autocommit=True) as conn:
        create_anycase_collation(conn)
    _index_problems(pg_target, sql, [
        f"integrity_check: {'; '.join(f + told for f in found)}"] if found else [])


def test_an_invalid_index_is_told_on_the_engines_tables_only(pg_target: str) -> None:
    # A CREATE UNIQUE INDEX CONCURRENTLY that failed leaves its index invalid: on an
    # archive copy of the operator's it was told as the engine's.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger_archive (LIKE ledger INCLUDING ALL)")
            conn.execute("INSERT INTO ledger_archive OVERRIDING SYSTEM VALUE SELECT * FROM ledger")
            for table in ("ledger_archive", "ledger"):  # (two rows of level minor in each)
                with pytest.raises(psycopg.errors.UniqueViolation):
                    conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {table}_levels ON {table} "
                                 "(level)")
        # Never ready, it is not kept up to date and refuses nothing: not told as a
        # unique index that refuses the engine's rows.
        engine.contribute(Decimal(10), groups="minor", op_id="b2")
        assert engine.verify().problems == ["integrity_check: index ledger_levels is invalid"]


@pytest.mark.parametrize(("sql", "found"), [
    # The function made to return: each trigger runs it and refuses nothing.
    (("CREATE OR REPLACE FUNCTION jackpot_append_only() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN RETURN NULL;\nEND $$"),
     ["trigger ledger_append_only is not the engine's: history is not append-only",
      "trigger operations_append_only is not the engine's: history is not append-only"]),
    # Made again for an UPDATE OF one column, with WHEN (false), or on another table (one of
    # the engine's kept beside it under that name); enabled for replication only.
    (("DROP TRIGGER operations_append_only ON operations; CREATE TRIGGER "
      "operations_append_only BEFORE UPDATE OF kind OR DELETE OR TRUNCATE ON operations "
      "FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only()"),
     ["trigger operations_append_only is not the engine's: history is not append-only"]),
    (("DROP TRIGGER operations_append_only ON operations; CREATE TRIGGER "
      "operations_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON operations "
      "FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION jackpot_append_only()"),
     ["trigger operations_append_only is not the engine's: history is not append-only"]),
    (("DROP TRIGGER ledger_append_only ON ledger; CREATE TRIGGER ledger_append_only BEFORE "
      "UPDATE OR DELETE OR TRUNCATE ON levels FOR EACH STATEMENT EXECUTE FUNCTION "
      "jackpot_append_only(); CREATE TRIGGER operations_append_only BEFORE UPDATE OR DELETE "
      "OR TRUNCATE ON levels FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only()"),
     ["trigger ledger_append_only is not the engine's: history is not append-only"]),
    ("ALTER TABLE operations ENABLE REPLICA TRIGGER operations_append_only",
     ["trigger operations_append_only is missing or disabled: history is not append-only"]),
    # Made again with its events in another order, and the function in other spacing.
    (("DROP TRIGGER operations_append_only ON operations; CREATE TRIGGER "
      "operations_append_only BEFORE TRUNCATE OR DELETE OR UPDATE ON operations "
      "FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only(); "
      "CREATE OR REPLACE FUNCTION jackpot_append_only() RETURNS trigger LANGUAGE plpgsql AS "
      "$$BEGIN\n  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME\n"
      "    USING ERRCODE = 'restrict_violation';\nEND$$"), []),
])
def test_a_trigger_of_the_engines_name_that_is_not_the_engines_is_told(
        pg_target: str, sql: str, found: list[str]) -> None:
    # Only the names (and enabled) were checked: each of these passed while the
    # operations' rows could be deleted, and an op_id applied again.
    _index_problems(pg_target, sql, [f"integrity_check: {'; '.join(found)}"] if found else [])


@pytest.mark.parametrize(("sql", "found"), [
    # A row trigger that returns NULL, or a rule DO INSTEAD NOTHING: the INSERT of the
    # operation's record succeeds and stores nothing, and its op_id applies again.
    (("CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL;\nEND $$; "
      "CREATE TRIGGER skip_ops BEFORE INSERT OR UPDATE ON operations FOR EACH ROW "
      "EXECUTE FUNCTION skip(); "
      "CREATE RULE keep_wins AS ON INSERT TO ledger WHERE NEW.kind = 'win' DO INSTEAD NOTHING"),
     ["table ledger: rule keep_wins runs instead of what",
      "table operations: trigger skip_ops runs before each row"]),
    # One that runs after the INSERT, once per statement, disabled, or on a table of the
    # operator's; a rule that runs also: the engine's row is in.
    (("CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL;\nEND $$; "
      "CREATE TABLE ledger_archive (LIKE ledger INCLUDING ALL); "
      "CREATE TRIGGER a AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION skip(); "
      "CREATE TRIGGER b BEFORE INSERT ON ledger FOR EACH STATEMENT EXECUTE FUNCTION skip(); "
      "CREATE TRIGGER c BEFORE INSERT ON levels FOR EACH ROW EXECUTE FUNCTION skip(); "
      "ALTER TABLE levels DISABLE TRIGGER c; "
      "CREATE TRIGGER d BEFORE INSERT ON ledger_archive FOR EACH ROW EXECUTE FUNCTION skip(); "
      "CREATE RULE e AS ON INSERT TO operations DO ALSO NOTIFY jackpot"), []),
])
def test_a_trigger_or_rule_that_can_drop_the_engines_rows_is_told(
        pg_target: str, sql: str, found: list[str]) -> None:
    # The engine stored no record of the op_id and applied it again as new; verify()
    # said nothing.
    told = " the engine inserts: it can drop the row unseen (an operation's record dropped, "
    _index_problems(pg_target, sql, [
        f"integrity_check: {'; '.join(f + told + 'its op_id applies again)' for f in found)}"]
        if found else [])


@pytest.mark.parametrize(("table", "column"), [("ledger", "delta"), ("levels", "m_won")])
def test_a_number_column_changed_to_text_is_told_not_a_crash(pg_target: str, table: str,
                                                             column: str) -> None:
    # Every sum of the audit failed on it: verify() raised StorageError
    # ("function sum(text) does not exist") instead of telling it.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE text")
        report = engine.verify()
    told = f"table {table}: column {column} is text, not bigint as the engine made it"
    assert (report.ok, report.problems) == (False, [
        f"integrity_check: {told}",
        (f"the ledger and levels cannot be summed: {table}.{column} is text (a number "
         "column changed to a type that is no number, or a text column to one that is no "
         "text); nothing else was checked")])


@pytest.mark.parametrize(("table", "column"), [("ledger", "detail"), ("ledger", "op_id"),
                                               ("ledger", "kind"), ("operations", "op_id")])
def test_a_text_column_changed_to_bytea_is_told_not_a_crash(pg_target: str, table: str,
                                                            column: str) -> None:
    # The audit's SQL reads them as text (a bet's detail cut and CAST, the
    # ledger joined to the operations on op_id): verify() raised StorageError
    # ("cannot cast type bytea to bigint", "operator does not exist: text =
    # bytea") instead of telling it, as it did for a number column made text.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE bytea "
                         f"USING convert_to({column}, 'UTF8')")
        report = engine.verify()
    told = f"table {table}: column {column} is bytea, not text as the engine made it"
    assert (report.ok, report.problems) == (False, [
        f"integrity_check: {told}",
        (f"the ledger and levels cannot be summed: {table}.{column} is bytea (a number "
         "column changed to a type that is no number, or a text column to one that is no "
         "text); nothing else was checked")])


@pytest.mark.parametrize(("value", "told"), [(None, "its at_ms is None, not an integer"),
                                             (-1, "its at_ms is -1, a time before 1970")])
def test_a_forged_time_of_a_ledger_row_is_told_against_its_row(
        pg_target: str, value: int | None, told: str) -> None:
    # (As on SQLite: no figure sums a row's time, and such a row once passed.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        _tamper(pg_target, "ledger", "ALTER TABLE ledger ALTER COLUMN at_ms DROP NOT NULL")
        _tamper(pg_target, "ledger", "UPDATE ledger SET at_ms = %s WHERE op_id = 'b1'",
                (value,))
        assert engine.verify().problems == [
            f"minor: ledger row 4 (version 2) holds what the engine never writes: {told}",
            "integrity_check: table ledger takes a NULL in column at_ms (its NOT NULL is gone)"]


@pytest.mark.parametrize("broken", [False, True])
def test_past_twenty_rows_of_a_sort_the_rest_are_counted(pg_target: str, broken: bool) -> None:
    # (As on SQLite: the lists were capped at 20, nothing said of the rest.)
    # `broken`: a row that does not add up makes the audit run its queries
    # apart instead of its one pass; each counts its own.
    levels = [GroupConfig("a", Decimal(10), Decimal("0.1"), must_hit_by=Decimal("10.000001"))]
    with JackpotEngine.open(pg_target, levels,
                            settings=Settings(enable_metrics=False)) as engine:
        for i in range(23):  # (each hits 'a' 3 times)
            engine.contribute(Decimal("0.00003"), op_id=f"b{i:02}", player="p-1")
        rows = engine._reader.ledger()
        bets = sum(r.kind == "contribute" for r in rows)
        _tamper(pg_target, "ledger", "ALTER TABLE ledger ALTER COLUMN at_ms DROP NOT NULL")
        _tamper(pg_target, "ledger", "UPDATE ledger SET at_ms = NULL")
        _tamper(pg_target, "ledger",
                "UPDATE ledger SET detail = '{\"bet\": 01}' WHERE kind = 'contribute'")
        _tamper(pg_target, "ledger", "UPDATE ledger SET who = 'mallory' WHERE seq IN "
                "(SELECT MIN(seq) FROM ledger WHERE kind = 'hit' GROUP BY op_id)")
        if broken:
            _tamper(pg_target, "ledger", "UPDATE ledger SET adjusted = 1 "
                    "WHERE kind = 'contribute'")
        found = engine.verify().problems
    assert [p for p in found if p.startswith("... and")] == [
        *([f"... and {bets - 20} more ledger rows that do not add up"] if broken else []),
        f"... and {len(rows) - 20} more ledger rows holding what the engine never writes",
        f"... and {bets - 20} more bet rows whose detail is no bet's",
        "... and 3 more stored results the ledger contradicts",  # (their winners)
        "... and 3 more operations whose hit rows name different winners"]


@pytest.mark.parametrize(("value", "told"), [(None, "None, not an integer"),
                                             (-1, "-1, a time before 1970")])
def test_a_forged_time_of_a_recorded_operation_is_told(
        pg_target: str, value: int | None, told: str) -> None:
    # (As on SQLite: nothing read it, and any time passed.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        _tamper(pg_target, "operations",
                "ALTER TABLE operations ALTER COLUMN at_ms DROP NOT NULL")
        _tamper(pg_target, "operations", "UPDATE operations SET at_ms = %s", (value,))
        assert engine.verify().problems == [
            f"operation 'b1': its time in the operations table is {told}",
            ("integrity_check: table operations takes a NULL in column at_ms (its NOT NULL "
             "is gone)")]


def test_a_forged_row_without_a_level_is_still_held_to_the_one_winner_check(
        pg_target: str) -> None:
    # The audit looks hits up level by level: a row whose level is NULL (its
    # NOT NULL dropped, as the table's owner can) is at no level, and was
    # once left out of the check that a bet's hits name one player.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        forged = ("INSERT INTO ledger (op_id, kind, level, delta, balance_after, reserve_delta, "
                  "reserve_after, version_after, at_ms, who, detail) "
                  "VALUES ('x', 'hit', %s, 0, 0, 0, 0, %s, 0, %s, '{}')")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger ALTER COLUMN level DROP NOT NULL")
            conn.execute(forged, ("minor", 9, "al"))
            conn.execute(forged, (None, 1, "bob"))
        assert engine.verify().problems == [
            ("minor: settings rows cannot be read as the engine writes them "
             "(KeyError: 'reset')"),  # (a forged hit's detail: {})
            "minor: ledger versions 1..9 in 3 rows, level is at version 2 (expected 1..2)",
            "minor: meter wins is 0, ledger says 1",
            "minor: meter hits is 0, ledger says 1",
            "None: no such level, yet 1 ledger row",
            "minor: ledger row 5 (version 9) does not add up",
            "operation 'x': its hit rows name different winners: a bet has one player",
            "integrity_check: table ledger takes a NULL in column level (its NOT NULL is gone)"]


@pytest.mark.parametrize("stored", ["not json", "[" * 100_000 + "]" * 100_000])
def test_a_stored_result_that_is_not_json_fails_its_replay_and_is_a_problem(
        pg_target: str, stored: str) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        _tamper(pg_target, "operations", "UPDATE operations SET result = %s WHERE op_id = 'b1'",
                (stored,))
        with pytest.raises(StorageError, match="'b1': its stored first result is not the JSON"):
            engine.contribute(Decimal(10), groups="minor", op_id="b1")
        assert engine.contribute(Decimal(10), groups="minor", op_id="b2").versions == {"minor": 3}
        assert engine.verify().problems == ["operation 'b1': its stored result is unreadable"]


# -- a connection lost at COMMIT: settled by the transaction's status ----------------------


def test_a_commit_whose_answer_was_lost_is_settled_by_the_transaction_status(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(pg_target)
    try:
        store.migrate()
        assert isinstance(store, PostgresStore)
        lost = OSError("server closed the connection unexpectedly")
        with store.write():
            committed = store._xid
        store._settle_lost_commit(committed, lost)  # committed: the caller gets its result
        aborted = _rolled_back_xid(store)
        with pytest.raises(StorageError, match="was rolled back and nothing was changed") as no:
            store._settle_lost_commit(aborted, lost)
        assert no.value.outcome_unknown is False
        with psycopg.connect(pg_target) as other:  # a transaction still open elsewhere
            (running,) = other.execute("SELECT txid_current()").fetchall()[0]
            monkeypatch.setattr(store, "_timeout_ms", 50)
            with pytest.raises(StorageError, match=r"unknown \(transaction status "
                                                   r"'in progress'\)") as unknown:
                store._settle_lost_commit(running, lost)
            assert unknown.value.outcome_unknown is True
            other.rollback()
        with monkeypatch.context() as m:  # the server cannot be asked
            m.setattr(store, "_url", "postgresql://nobody@127.0.0.1:1/none")
            with pytest.raises(StorageError, match="whether it committed is unknown") as down:
                store._settle_lost_commit(committed, lost)
        assert down.value.outcome_unknown is True
    finally:
        store.close()


def test_the_lookup_of_a_lost_commit_is_bounded_like_a_pooled_connection(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # It runs just after a connection was lost, when the server host or its
    # network is the likeliest to fail again: without keepalives and
    # tcp_user_timeout its query would wait for the kernel to give up on TCP
    # (about 15 minutes), holding its level's actor all that time.
    store = open_store(pg_target)
    try:
        store.migrate()
        assert isinstance(store, PostgresStore)
        with store.write():
            committed = store._xid
        opened: list[dict[str, Any]] = []
        real = psycopg.connect

        def connect(conninfo: str, **kwargs: Any) -> Any:
            opened.append({**conninfo_to_dict(conninfo), **kwargs})
            return real(conninfo, **kwargs)

        with mock.patch.object(psycopg, "connect", connect):
            store._settle_lost_commit(committed, OSError("server closed the connection"))
    finally:
        store.close()
    assert len(opened) == 1
    assert {k: str(v) for k, v in opened[0].items() if k.startswith(("keepalives", "tcp_"))} == {
        "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
        "keepalives_count": "3", "tcp_user_timeout": "60000"}


def _rolled_back_xid(store: PostgresStore) -> int:
    xid = 0
    try:
        with store.write():
            xid = store._xid
            raise RuntimeError  # the block fails: the write rolls back
    except RuntimeError:
        return xid
    raise AssertionError


def _commit_another_transaction(target: str) -> int:
    with psycopg.connect(target, autocommit=True) as admin, admin.transaction():
        (xid,) = admin.execute("SELECT txid_current()").fetchall()[0]
    return int(xid)


def lose_the_next_commit_to_a_reused_id(
        monkeypatch: pytest.MonkeyPatch, target: str,
        reuse: Callable[[str], int] = _commit_another_transaction) -> None:
    """End the session of the next COMMIT before it; have its id committed by another.

    `reuse(target)` commits that other transaction and returns its id.
    """
    real_flush = PostgresStore._flush

    def flush(self: PostgresStore, *, commit: bool = False) -> None:
        if commit and self._conn is not None:
            monkeypatch.setattr(PostgresStore, "_flush", real_flush)
            with psycopg.connect(target, autocommit=True) as admin:
                pid = self._conn.info.backend_pid
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    (pid,)).fetchone() != (0,):
                    time.sleep(0.005)  # polling a condition: the session is gone
            self._xid = reuse(target)  # committed: the id the crash gave away
        real_flush(self, commit=commit)

    monkeypatch.setattr(PostgresStore, "_flush", flush)


def test_a_lost_commit_is_not_settled_by_a_transaction_that_reused_its_id(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that crashes before the COMMIT reaches its WAL forgets the
    # transaction id, and hands it out again once it is back: asked after
    # that (a client learns of a crashed host from its keepalives, 30 s or
    # more later), txid_status says "committed", of another transaction.
    # (Seen with pg_ctl stop -m immediate: the next transaction after the
    # restart got the lost one's id.) Here the session is ended before its
    # COMMIT, and the id it asks about is one another transaction committed.
    with JackpotEngine.open(pg_target) as engine:
        engine.contribute(Decimal(100), groups="minor", op_id="b1")
        lose_the_next_commit_to_a_reused_id(monkeypatch, pg_target)
        with pytest.raises(StorageError) as lost:
            engine.contribute(Decimal(100), groups="minor", op_id="b2")
        assert lost.value.outcome_unknown is True
        assert engine.pool("minor").amount == MINOR_SEED + Decimal("0.5")  # b1 only
        again = engine.contribute(Decimal(100), groups="minor", op_id="b2")
        assert again.replayed is False  # it had not committed: applied now, once
        assert engine.pool("minor").amount == MINOR_SEED + Decimal(1)
        assert engine.verify().ok


def test_a_lost_commit_is_not_settled_by_another_hosts_write_of_the_same_level_version(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As above, but the transaction that got the lost id back is another
    # host's bet on the same level: the first write of it after the restart,
    # so it wrote the very level and version the lost one would have. That
    # row, inserted under the id, is no proof that the lost bet committed.
    with JackpotEngine.open(pg_target) as engine, JackpotEngine.open(pg_target) as other:
        engine.contribute(Decimal(100), groups="minor", op_id="b1")

        def other_host_bets(target: str) -> int:
            other.contribute(Decimal(100), groups="minor", op_id="elsewhere")
            with psycopg.connect(target, autocommit=True) as conn:
                (xid,) = conn.execute(
                    "SELECT (txid_current() >> 32 << 32) + xmin::text::bigint FROM ledger "
                    "WHERE op_id = 'elsewhere'").fetchall()[0]
            return int(xid)

        lose_the_next_commit_to_a_reused_id(monkeypatch, pg_target, other_host_bets)
        with pytest.raises(StorageError) as lost:
            engine.contribute(Decimal(100), groups="minor", op_id="b2")
        assert lost.value.outcome_unknown is True
        again = engine.contribute(Decimal(100), groups="minor", op_id="b2")
        assert again.replayed is False  # it had not committed: applied now, once
        assert again.versions == {"minor": 4}
        assert engine.pool("minor").amount == MINOR_SEED + Decimal("1.5")
        assert engine.verify().ok


def test_a_lost_migration_is_not_settled_by_a_transaction_that_reused_its_id(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As above, for the transaction that creates the schema (no ledger row):
    # it said "migrated", and the open failed next on a missing table.
    store = open_store(pg_target)
    try:
        lose_the_next_commit_to_a_reused_id(monkeypatch, pg_target)
        with pytest.raises(StorageError) as lost:
            store.migrate()
        assert lost.value.outcome_unknown is True
        assert store.schema_version() == 0
        assert store.migrate() == len(POSTGRES_MIGRATIONS)
    finally:
        store.close()


# -- open(create=False) --------------------------------------------------------------------


def test_a_reader_audits_the_previous_schema_as_it_is(pg_target: str) -> None:
    # The commands that only look read an older schema without migrating it
    # (README, "Upgrading"): its version number alone is no problem for the audit.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
    previous = len(POSTGRES_MIGRATIONS) - 1
    with psycopg.connect(pg_target) as conn:
        conn.execute("UPDATE jackpot_schema SET version = %s", (previous,))
    reader = open_store(pg_target, read_only=True)
    try:
        assert reader.schema_version() == previous
        report = audit(reader)
    finally:
        reader.close()
    assert report.problems == []
    assert report.ok
    with psycopg.connect(pg_target) as conn:
        assert conn.execute("SELECT version FROM jackpot_schema").fetchall() == [(previous,)]


def test_open_with_create_false_refuses_a_database_without_a_jackpot_schema(
        pg_target: str) -> None:
    with pytest.raises(StorageError, match=r"holds no jackpot schema; nothing was created$"):
        JackpotEngine.open(pg_target, create=False)
    with psycopg.connect(pg_target) as conn:  # no table, no level was made
        assert conn.execute("SELECT to_regclass('jackpot_schema'), to_regclass('levels')"
                            ).fetchall() == [(None, None)]
    with JackpotEngine.open(pg_target) as engine:  # create=True (the default) makes it
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
    with JackpotEngine.open(pg_target, create=False) as engine:  # and it opens from then on
        assert engine.contribute(Decimal(10), groups="minor", op_id="b1").replayed


def test_a_shared_batch_whose_commit_is_unknown_never_runs_an_auto_op_id_twice(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from jackpot.requests import Requests  # noqa: PLC0415
    from jackpot.service import execute_batch  # noqa: PLC0415
    from jackpot.stats import Stats  # noqa: PLC0415

    JackpotEngine.open(pg_target).close()
    store = open_store(pg_target, create=False)
    real_flush = PostgresStore._flush
    armed = [True]

    def flush(self: PostgresStore, *, commit: bool = False) -> None:
        xid = self._xid
        real_flush(self, commit=commit)  # the COMMIT reaches the server...
        if commit and armed and armed.pop():  # ...its answer is lost, and the server too
            assert self._conn is not None
            self._conn.close()
            with monkeypatch.context() as m:
                m.setattr(self, "_url", "postgresql://nobody@127.0.0.1:1/none")
                self._settle_lost_commit(xid, OSError("server closed the connection"))

    monkeypatch.setattr(PostgresStore, "_flush", flush)
    requests = Requests(["major", "mega", "minor"])
    ops = [requests.contribute(Decimal(100), groups=("minor",), op_id=op_id)
           for op_id in (None, "bet-1", None)]
    try:
        outcomes, _ = execute_batch(store, ops, None, settings=Settings(), stats=Stats())
    finally:
        store.close()
    auto = [outcomes[0].error, outcomes[2].error]
    assert all(isinstance(e, StorageError) and e.outcome_unknown for e in auto)
    assert outcomes[1].error is None
    assert outcomes[1].result.replayed  # it committed: the retry found its record
    with JackpotEngine.open(pg_target, create=False) as engine:
        assert engine.pool("minor").amount == MINOR_SEED + Decimal("1.5")  # 3 bets, once each
        assert engine.verify().ok


# -- schemas and the search_path ---------------------------------------------------------


def test_a_jackpot_schema_further_down_the_search_path_is_not_taken_for_this_one() -> None:
    # Tables are created in the first schema of the search_path: a jackpot
    # schema in a later one is another database, not this one.
    with fresh_schema_named(PG_URL) as first, fresh_schema_named(PG_URL) as second:
        with JackpotEngine.open(with_search_path(PG_URL, second)) as engine:
            engine.contribute(Decimal(1000), groups="minor", op_id="b1")
        url = with_search_path(PG_URL, f"{first},{second}")
        reader = open_store(url, read_only=True)
        try:
            assert reader.schema_version() == 0
        finally:
            reader.close()
        with pytest.raises(StorageError, match=r"holds no jackpot schema; nothing was created$"):
            JackpotEngine.open(url, create=False)
        with psycopg.connect(PG_URL) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                                (first,)).fetchall() == [(0,)]
        with JackpotEngine.open(with_search_path(PG_URL, second), create=False) as engine:
            assert engine.pool("minor").amount == MINOR_SEED + Decimal(5)
            assert engine.verify().ok


@pytest.mark.parametrize("prefix", ["Jackpot_", "jackpot schema "])
def test_verify_works_in_a_schema_whose_name_needs_quoting(prefix: str) -> None:
    with fresh_schema_named(PG_URL, prefix) as name:
        quoted = '"' + name.replace(" ", "\\ ") + '"'  # libpq options: a backslash keeps a space
        with JackpotEngine.open(with_search_path(PG_URL, quoted)) as engine:
            engine.contribute(Decimal(10), groups="minor", op_id="b1")
            report = engine.verify()
        assert report.problems == []
        assert report.ok
        with psycopg.connect(PG_URL) as conn:  # the tables are in that schema
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                                (name,)).fetchall() == [(4,)]


# -- no connection to be had ---------------------------------------------------------------


@contextmanager
def login_role(pg_target: str) -> Iterator[tuple[str, str]]:
    """Yield (role, url): a new role that may log in, and `pg_target` as that role.

    The role and what it owns are dropped afterwards.
    """
    role = f"jackpot_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_target, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
    try:
        yield role, urlunsplit(urlsplit(pg_target)._replace(
            netloc=f"{role}@{urlsplit(pg_target).netloc.rpartition('@')[2]}"))
    finally:
        with psycopg.connect(pg_target, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE usename = %s", (role,))
            admin.execute(f"DROP OWNED BY {role}")  # the tables it made in this test's schema
            admin.execute(f"DROP ROLE {role}")


def lock_out(pg_target: str, role: str, *, out: bool = True) -> None:
    """End `role`'s sessions and refuse it new ones (to this process, the server is down).

    With `out=False`, let it in again (the server is back).
    """
    with psycopg.connect(pg_target, autocommit=True) as admin:
        if not out:
            admin.execute(f"ALTER ROLE {role} LOGIN")
            return
        admin.execute(f"ALTER ROLE {role} NOLOGIN")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (role,))


@contextmanager
def locked_out_store(pg_target: str, *, pool_max_size: int = 16
                     ) -> Iterator[tuple[str, PostgresStore]]:
    """Yield (role, store): a store of a new role whose login was then revoked.

    The jackpot schema is made by the role first; then it may not log in and
    its sessions are ended, so the store's pool can make no connection.
    """
    with login_role(pg_target) as (role, user_url):
        JackpotEngine.open(user_url).close()
        store = PostgresStore(user_url, lock_timeout_ms=300, pool_max_size=pool_max_size)
        try:
            # The pool makes its first connection in a thread of its own: one still
            # logging in as the role was locked out could be missed by the ending of
            # its sessions, and live on (a test then found its store still served).
            store._pool.wait(timeout=30)
            lock_out(pg_target, role)
            yield role, store
        finally:
            store.close()


def test_a_server_refusing_new_connections_is_not_reported_as_a_busy_pool(
        pg_target: str) -> None:
    with locked_out_store(pg_target) as (role, store):
        with pytest.raises(StorageError) as info, store.write():
            raise AssertionError("no transaction can begin")
        assert not isinstance(info.value, LockTimeoutError)
        assert "busy" not in str(info.value)
        assert f'role "{role}" is not permitted to log in' in str(info.value)
        assert str(info.value).endswith("; nothing was changed")


def test_a_pool_still_reconnecting_is_not_reported_busy(pg_target: str) -> None:
    # After an outage the pool remakes its connections; a call in that window,
    # the server reachable again, was told "every pooled connection is busy"
    # (a LockTimeoutError) by a pool that had none in use. (Measured against a
    # real network cut, with psycopg_pool's delays doubling from 1 s: 5-15 s
    # of it; now about a second.) Here the pool's own attempts keep failing (a
    # database that does not exist) while a direct connection works.
    with locked_out_store(pg_target, pool_max_size=1) as (role, store):
        with pytest.raises(StorageError):  # its connection is gone: the pool remakes it
            store.load_levels()
        given = store._pool.kwargs
        assert isinstance(given, dict)
        store._pool.kwargs = {**given, "dbname": "jackpot_no_such_database"}
        lock_out(pg_target, role, out=False)  # the server is back
        with pytest.raises(ConnectionUnavailableError) as info:
            store.load_levels()
        assert ("the pool has 0 of its 1 in use and could not make another in time, "
                "though a direct connection just worked") in str(info.value)
        assert not info.value.outcome_unknown
        store._pool.kwargs = given
        deadline = time.monotonic() + 60  # and once the pool has reconnected, calls work
        while True:
            try:
                assert len(store.load_levels()) == 3
                break
            except ConnectionUnavailableError:
                assert time.monotonic() < deadline, "the pool never reconnected"


def test_a_call_waiting_through_an_outage_is_served_when_the_server_is_back(
        pg_target: str) -> None:
    # psycopg_pool gives up on a connection after its reconnect_timeout; only a
    # new request would start new attempts, so a call already waiting would
    # wait out its whole timeout. The pool's reconnect_failed callback has it
    # try again (through check(), which grows a pool short of connections).
    with locked_out_store(pg_target, pool_max_size=1) as (role, store):
        pool = store._pool
        with pytest.raises(StorageError):  # its connection is gone: attempts begin
            store.load_levels()
        given: list[Any] = []
        waiter = threading.Thread(target=lambda: given.append(pool.getconn(timeout=60)))
        waiter.start()
        try:
            deadline = time.monotonic() + 30
            while pool.get_stats().get("connections_errors", 0) < 6:  # three, given up, three
                assert time.monotonic() < deadline, (
                    "the pool made no new attempt after giving up while a call waited: does "
                    "psycopg_pool's check() still grow a pool short of connections? (see "
                    "jackpot.storage._pg_pool.JackpotPool._try_again)")
                threading.Event().wait(0.01)
            lock_out(pg_target, role, out=False)  # the server is back
            back = time.monotonic()
        finally:
            waiter.join(60)
        served = time.monotonic()
        assert len(given) == 1  # the same call, served without asking again
        pool.putconn(given[0])
        limit = _pg_pool.RECONNECT_TIMEOUT + _pg_pool.RETRY_AFTER[1] + 2  # 5.5 s, not 60
        assert served - back < limit


OUTAGE_S = 36.0
SERVED_WITHIN_S = 8.0


def test_calls_are_served_again_soon_after_a_long_outage(
        pg_target: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # psycopg_pool retried a lost connection with a delay doubling from 1 s (at
    # 1, 3, 7, 15, 31, 63 s, give or take 10%), and a call waiting for a
    # connection started no attempt of its own: after this 36 s outage the
    # first call was served 20.7-33.3 s after the server was back (measured
    # against a stopped server: 19.4 s after a 40 s outage, 44.6 s after 90 s).
    # Now the pool tries about once a second while calls wait for a connection.
    monkeypatch.setattr(_pg_pool._LOG_FILTER._throttle, "_seen", {})  # what earlier tests logged
    with login_role(pg_target) as (role, url), \
            JackpotEngine.open(url) as engine, \
            caplog.at_level(logging.WARNING, logger="psycopg"):
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        [pool] = [p for (_, u), (p, _) in postgres._POOLS._pools.items() if u == url]
        errors = pool.get_stats().get("connections_errors", 0)
        back: list[float] = []

        def server_back() -> None:
            lock_out(pg_target, role, out=False)
            back.append(time.monotonic())

        lock_out(pg_target, role)  # the server goes away
        comes_back = threading.Timer(OUTAGE_S, server_back)
        comes_back.start()
        try:
            for n in itertools.count():  # the game keeps betting (each call waits 5 s at most)
                try:
                    engine.contribute(Decimal(10), groups="minor", op_id=f"bet-{n}")
                    break
                except ConnectionUnavailableError:
                    assert not back or time.monotonic() - back[0] < SERVED_WITHIN_S, (
                        f"not served within {SERVED_WITHIN_S} s of the server's return")
            served = time.monotonic()
        finally:
            comes_back.join()
        assert served - back[0] < SERVED_WITHIN_S
        attempts = pool.get_stats()["connections_errors"] - errors
        assert attempts <= 2 * OUTAGE_S  # about once a second: never a busy loop
        assert engine.pool("minor").amount == MINOR_SEED + Decimal("0.1")  # "before", bet-n
        assert engine.verify().ok
    # psycopg_pool warned of every failed attempt, every connection it found
    # closed and every attempt it gave up; now the first of each kind a minute.
    # (By its first three words: psycopg_pool before 3.2.8 logs f-strings.)
    said = Counter(" ".join(str(r.msg).split()[:3])
                   for r in caplog.records if r.name.startswith("psycopg"))
    assert said == {"error connecting in": 1, "discarding closed connection:": 1,
                    "reconnection attempt in": 1}


@contextmanager
def saturated_pool(pg_target: str, connect: mock.Mock) -> Iterator[PostgresStore]:
    """Yield a store whose pool's only connection another holds, `psycopg.connect` mocked."""
    JackpotEngine.open(pg_target).close()
    holder = PostgresStore(pg_target, lock_timeout_ms=300, pool_max_size=1)
    waiter = PostgresStore(pg_target, lock_timeout_ms=300, pool_max_size=1)
    try:
        with holder.write(), mock.patch.object(psycopg, "connect", connect):
            yield waiter
    finally:
        waiter.close()
        holder.close()


def _sessions_of(pg_target: str, app: str) -> int:
    """Count the server's sessions whose application_name is `app`."""
    with psycopg.connect(pg_target, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE application_name = %s", (app,)).fetchone()
    assert row is not None
    return int(row[0])


def test_pg_pool_size_bounds_the_connections_a_process_keeps(pg_target: str) -> None:
    # The pool of a URL was fixed at 16 connections a process: hosts' processes
    # could not be sized to fit a server's max_connections (100 by default).
    # Two connections for three levels' actors and the coordinator: transactions
    # wait their turn for a connection, none fails, the books balance.
    app = f"pool-{uuid.uuid4().hex[:12]}"
    url = f"{pg_target}&application_name={app}"
    levels = ("major", "mega", "minor")

    def bets(worker: int) -> list[Contribution]:
        return [engine.contribute(Decimal(10), op_id=f"w{worker}-{n}",
                                  groups=levels if n % 4 == 0 else levels[n % 3])
                for n in range(30)]

    with JackpotEngine.open(url, settings=Settings(enable_metrics=False,
                                                  pg_pool_size=2)) as engine:
        before = {name: p.amount for name, p in engine.pools().items()}
        results = run_together(*(functools.partial(bets, w) for w in range(6)))
        assert not [r for r in results if isinstance(r, Exception)]
        assert 1 <= _sessions_of(pg_target, app) <= 2
        added = Counter[str]()
        for contribution in itertools.chain.from_iterable(results):
            added.update(contribution.contributions)
        assert {name: p.amount - before[name] for name, p in engine.pools().items()} == added
        assert engine.verify().ok


def test_a_bigger_pg_pool_size_grows_the_pool_a_process_shares(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # One pool per URL and process: an engine asking for more connections than
    # the one that opened it gets them; one asking for fewer leaves it as it is.
    monkeypatch.setenv("JACKPOT_PG_POOL_SIZE", "3")
    url = f"{pg_target}&application_name=pool-{uuid.uuid4().hex[:12]}"
    with JackpotEngine.open(url, settings=Settings.from_env(enable_metrics=False)):
        [pool] = [p for (_, u), (p, _) in postgres._POOLS._pools.items() if u == url]
        assert pool.max_size == 3
        with JackpotEngine.open(url, settings=Settings(enable_metrics=False,
                                                       pg_pool_size=5)):
            assert pool.max_size == 5
            with JackpotEngine.open(url, settings=Settings(enable_metrics=False,
                                                           pg_pool_size=1)):
                assert pool.max_size == 5


def test_a_server_that_does_not_answer_holds_up_no_other_database_s_stores(
        pg_target: str) -> None:
    # A store's first connection to a URL was made under a lock of the whole
    # process: one to a server that accepts connections and then says nothing
    # (hung, or a stalled proxy) held up every store opened meanwhile, on any
    # database (an engine's, a health probe's, an actor's restarting), for as
    # long as its connect_timeout.
    order: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        hung_url = f"postgresql://jackpot@127.0.0.1:{port}/nowhere?connect_timeout=20"

        def open_hung() -> None:
            with pytest.raises(StorageError):
                PostgresStore(hung_url)
            order.append("hung")

        opening = threading.Thread(target=open_hung)
        opening.start()
        conn, _ = silent.accept()  # its first connection is under way, unanswered
        try:
            store = PostgresStore(f"{pg_target}&application_name=p-{uuid.uuid4().hex[:12]}")
            order.append("other")
            assert store.schema_version() >= 0
            store.close()
        finally:
            conn.close()  # the hung one fails now
            opening.join(60)
    assert not opening.is_alive()
    assert order == ["other", "hung"]


def _until_stores_wait(key: tuple[int, str], stores: int) -> None:
    """Return once `stores` stores hold or wait for the lock of `key`'s first connection."""
    waited = threading.Event()
    for _ in range(6000):  # a minute at most
        opening = postgres._POOLS._opening.get(key)
        if opening is not None and opening.stores == stores:
            return
        waited.wait(0.01)
    raise AssertionError(f"{stores} stores never waited for {key}")


def test_stores_that_waited_for_a_first_connection_that_failed_fail_with_it() -> None:
    # Each store opened meanwhile on a server that accepts and says nothing
    # made its own first connection after the one before it had failed: the
    # k-th waited k times the connect_timeout. The ones that waited share the
    # failure, and the server sees one connection.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"postgresql://jackpot@127.0.0.1:{port}/nowhere?connect_timeout=30"
        key = (os.getpid(), url)
        said: dict[str, str] = {}

        def open_store(name: str) -> None:
            with pytest.raises(StorageError) as e:
                PostgresStore(url)
            said[name] = str(e.value)

        first = threading.Thread(target=open_store, args=("first",))
        first.start()
        conn, _ = silent.accept()  # the first store's connection, unanswered
        second = threading.Thread(target=open_store, args=("second",))
        with conn:
            second.start()
            _until_stores_wait(key, 2)  # the second store waits for the first's lock
        # closed: the first connection fails at once
        first.join(60)
        second.join(60)
        assert not first.is_alive()
        assert not second.is_alive()
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.accept()  # the second store never connected (it waited 30 s more)
    assert said["second"] == said["first"]
    assert said["first"].startswith("cannot open database postgresql://jackpot@127.0.0.1:")
    assert key not in postgres._POOLS._opening


def test_a_store_that_waited_through_a_failure_and_a_success_tries_itself(
        pg_target: str) -> None:
    # A store that waited while one first connection failed and then another
    # store made the pool (closed again before this one's turn) shared the
    # old failure, though the server had answered since. The lock's holder
    # here stands for those two: it records a failure, then a success.
    url = f"{pg_target}&application_name=w-{uuid.uuid4().hex[:12]}"
    key = (os.getpid(), url)
    opening = postgres._Opening()
    opening.stores = 1  # the stand-in's own
    with postgres._POOLS._lock:
        postgres._POOLS._opening[key] = opening
    opened: list[PostgresStore | BaseException] = []

    def open_store() -> None:
        try:
            opened.append(PostgresStore(url))
        except BaseException as e:  # reported below
            opened.append(e)

    with opening.lock:
        waiting = threading.Thread(target=open_store)
        waiting.start()
        _until_stores_wait(key, 2)
        opening.failures, opening.failed = 1, "server closed the connection unexpectedly"
        opening.failed = None  # then another store made a pool (and closed it since)
        with postgres._POOLS._lock:
            opening.stores -= 1  # (the waiting store's leaving forgets the URL)
    waiting.join(60)
    assert not waiting.is_alive()
    [store] = opened
    assert isinstance(store, PostgresStore), store
    assert store.schema_version() >= 0
    store.close()
    assert key not in postgres._POOLS._opening


def test_a_store_that_would_wait_longer_than_the_failed_first_connection_tries_itself(
        ) -> None:
    # A first connection the URL gives no connect_timeout is bounded by its
    # store's lock timeout: one that gave up after 2 s failed a store that waited
    # for it with "connection timeout expired", where its own 30 s would have
    # reached a server slow to answer. It tries itself; one as patient as the
    # failed attempt shares the failure still.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"postgresql://jackpot@127.0.0.1:{port}/nowhere"
        key = (os.getpid(), url)
        said: dict[str, str] = {}

        def open_store(name: str, lock_timeout_ms: int) -> None:
            with pytest.raises(StorageError) as e:
                PostgresStore(url, lock_timeout_ms=lock_timeout_ms)
            said[name] = str(e.value)

        first = threading.Thread(target=open_store, args=("first", 1000))  # 2 s
        first.start()
        conn, _ = silent.accept()  # the first store's connection, unanswered
        patient = threading.Thread(target=open_store, args=("patient", 30_000))  # 30 s
        hasty = threading.Thread(target=open_store, args=("hasty", 1000))
        with conn:
            patient.start()
            hasty.start()
            _until_stores_wait(key, 3)  # both wait for the first's lock
        # closed: the first connection fails at once
        first.join(60)
        assert not first.is_alive()
        for _ in range(6000):  # until the patient store connects, or gives up unconnected
            if select.select([silent], [], [], 0.01)[0] or not patient.is_alive():
                break
        silent.setblocking(False)
        again, _ = silent.accept()  # the patient store's own first connection
        again.close()  # it fails at once
        patient.join(60)
        hasty.join(60)
        assert not patient.is_alive()
        assert not hasty.is_alive()
        with pytest.raises(BlockingIOError):
            silent.accept()  # the hasty store never connected
    assert said["patient"].startswith("cannot open database postgresql://jackpot@127.0.0.1:")
    assert said["hasty"] in (said["first"], said["patient"])
    assert key not in postgres._POOLS._opening


def test_stores_opening_and_closing_at_once_leave_no_pool_nor_lock_behind(
        pg_target: str) -> None:
    # The lock a URL's first connection is made under was forgotten once its
    # pool was made, not when that connection failed: a URL that failed (a
    # wrong password, a role not created yet) stayed listed, password and
    # all, for the life of the process, one more for each such URL.
    JackpotEngine.open(pg_target).close()
    wrong = pg_target.replace(urlsplit(pg_target).netloc,
                              f"no_role_{uuid.uuid4().hex[:8]}:secret@"
                              + urlsplit(pg_target).netloc.rpartition("@")[2], 1)
    other = f"{pg_target}&application_name=p-{uuid.uuid4().hex[:12]}"

    def opens(url: str, size: int) -> int:
        for _ in range(3):
            with contextlib.suppress(StorageError):
                store = PostgresStore(url, pool_max_size=size, existing=True)
                store.close()
        return size

    results = run_together(*(functools.partial(opens, url, size)
                             for url in (pg_target, other, wrong) for size in (1, 3)))
    assert results == [1, 3] * 3
    urls = {pg_target, other, wrong}
    assert not [key for key in postgres._POOLS._pools if key[1] in urls]
    assert not [key for key in postgres._POOLS._opening if key[1] in urls]
    with pytest.raises(StorageError, match="no_role_"):
        PostgresStore(wrong)  # (it did fail)


def test_a_pool_whose_connections_are_all_in_use_is_reported_busy(pg_target: str) -> None:
    # Saying how big the pool is and what sizes it: an operator sizing it had
    # only "every pooled connection is busy".
    busy = (r"no connection to .* became free within 300 ms \(every pooled connection is "
            r"busy: the process keeps 1 to it, JACKPOT_PG_POOL_SIZE; raise it, within the "
            r"server's max_connections, if this recurs\); nothing was changed")
    direct = mock.Mock(wraps=psycopg.connect)
    with saturated_pool(pg_target, direct) as waiter:
        for _ in range(3):
            with pytest.raises(LockTimeoutError, match=busy):
                waiter.load_levels()
    # One direct attempt said the server answers; the next timeouts reuse it:
    # no extra connection per timed-out call to a server that is busy.
    assert direct.call_count == 1


def test_a_busy_pool_whose_connection_comes_back_as_the_wait_ends_is_still_busy(
        pg_target: str) -> None:
    # Whether a pool was busy or could not make a connection was read after the
    # direct attempt that tells an unreachable server, milliseconds after the
    # wait ended: a holder giving its connection back meanwhile (or one passing
    # it to the next caller) made a busy pool of one "could not make another
    # in time ... after an outage", a ConnectionUnavailableError (about 1 % of
    # the timeouts of 30 threads' bets on a pool of one).
    JackpotEngine.open(pg_target).close()
    waiter = PostgresStore(pg_target, lock_timeout_ms=300, pool_max_size=1)
    pool = waiter._pool
    held = [pool.getconn()]

    def give_back_then_connect(*args: Any, **kwargs: Any) -> Any:
        if held:
            pool.putconn(held.pop())
        return real_connect(*args, **kwargs)

    real_connect = psycopg.connect
    try:
        with mock.patch.object(psycopg, "connect", side_effect=give_back_then_connect), \
                pytest.raises(LockTimeoutError, match="every pooled connection is busy"):
            waiter.load_levels()
        assert not held  # (given back within the direct attempt)
        assert len(waiter.load_levels()) == 3
    finally:
        for conn in held:
            pool.putconn(conn)
        waiter.close()


def test_a_pool_was_busy_if_a_connection_passed_between_callers_while_one_waited(
        pg_target: str) -> None:
    store = PostgresStore(pg_target, pool_max_size=1)
    pool = store._pool
    try:
        mark = pool.handled()
        assert pool.busy_since(mark) == (False, 0)  # none out, none moved: none to be had
        conn = pool.getconn()
        assert pool.busy_since(mark) == (True, 1)
        pool.putconn(conn)
        assert pool.busy_since(mark) == (True, 0)  # it passed to another caller and back
        mark = pool.handled()
        pool.discard(pool.getconn())
        assert pool.busy_since(mark) == (True, 0)  # given out, though given back closed
        mark = pool.handled()
        assert pool.busy_since(mark) == (False, 0)
    finally:
        store.close()


def test_health_of_an_engine_whose_pool_is_all_in_use_is_degraded_not_failing(
        pg_target: str) -> None:
    # The health probe's store shares the process's pool: with every connection
    # in use (pg_pool_size=1 here; any size under load) it waited its 250 ms for
    # one as it opened and reported the database "failing" ("cannot open the
    # database"), which has a supervisor restart a process that is merely busy.
    # A write lock held as long is "degraded"; so is this.
    settings = Settings(enable_metrics=False, pg_pool_size=1)
    with JackpotEngine.open(pg_target, settings=settings) as engine:
        holder = PostgresStore(pg_target, pool_max_size=1)
        try:
            with holder.write():
                check = engine.health().checks[0]
        finally:
            holder.close()
        assert check.status == "degraded", check.detail
        assert "every pooled connection is busy" in check.detail
        assert engine.health().ok  # the connection free again


def test_a_pool_whose_connections_are_all_stuck_on_a_silent_server_is_not_called_busy(
        pg_target: str) -> None:
    # Every pooled connection held while the server stops answering (a frozen
    # host, a network cut): the direct attempt fails, and says so, also for
    # the timeouts that reuse its verdict.
    silent = mock.Mock(side_effect=psycopg.OperationalError("connection timeout expired"))
    with saturated_pool(pg_target, silent) as waiter:
        for _ in range(2):
            with pytest.raises(ConnectionUnavailableError,
                               match=r"cannot connect to .* \(connection timeout expired\)"):
                waiter.load_levels()
    assert silent.call_count == 1


def test_a_statement_timeout_of_the_role_is_a_lock_timeout_that_changed_nothing(
        pg_target: str) -> None:
    # A statement_timeout below the engine's lock_timeout cancels the wait for a row
    # lock first: QueryCanceled, not a bare "database error".
    url = pg_target.replace("options=", "options=" + quote("-cstatement_timeout=300 "), 1)
    with JackpotEngine.open(url, settings=Settings(lock_timeout_ms=5000)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        with row_locked(pg_target, "minor"), pytest.raises(LockTimeoutError) as info:
            engine.process_win("minor", op_id="blocked")
        assert str(info.value) == (
            "PostgreSQL canceled a statement (canceling statement due to statement timeout: "
            "a statement_timeout set on the server, database or role, or pg_cancel_backend); "
            "nothing was changed")
        assert not info.value.outcome_unknown
        assert engine.pool("minor").amount == Decimal("100.05")  # nothing was paid
        assert engine.process_win("minor", op_id="blocked").amount == Decimal("100.05")
        assert engine.verify().ok


def test_a_role_that_may_only_use_the_tables_runs_an_engine(pg_target: str) -> None:
    # Migrating is the schema owner's job: opening an up-to-date schema created
    # a table "if not exists", which needs CREATE on the schema even when it exists.
    JackpotEngine.open(pg_target).close()  # the owner creates and migrates
    role = f"app_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_target, autocommit=True) as admin:
        (schema,) = admin.execute("SELECT current_schema()").fetchone() or ("",)
        admin.execute(f'CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA "{schema}" TO {role}; '
                      f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO {role}; '
                      f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')
    try:
        parts = urlsplit(pg_target)
        url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        with JackpotEngine.open(url, create=False) as engine:  # was: permission denied
            engine.contribute(Decimal(10), groups="minor", op_id="app-1")
            assert engine.verify().ok
    finally:
        with psycopg.connect(pg_target, autocommit=True) as admin:
            admin.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}; '
                          f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM {role}; '
                          f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}; DROP ROLE {role}')


def test_health_of_a_server_that_refuses_writes_is_failing(pg_target: str) -> None:
    # A demoted primary, or a server set read-only for maintenance: BEGIN, the
    # advisory lock and the reads all pass, so health said "writable".
    JackpotEngine.open(pg_target).close()
    url = pg_target.replace("options=", "options=" + quote(
        "-cdefault_transaction_read_only=on "), 1)
    with JackpotEngine.open(url, create=False) as engine:
        with pytest.raises(StorageError, match="read-only transaction"):
            engine.contribute(Decimal(10), groups="minor", op_id="refused")
        check = engine.health().checks[0]
        assert check.status == "failing"
        assert "cannot execute UPDATE in a read-only transaction" in check.detail
    with JackpotEngine.open(pg_target) as engine:
        assert engine.health().ok  # and it writes nothing
        assert engine.pool("minor").version == 1


def test_a_session_the_server_ends_for_idling_in_a_transaction_changed_nothing(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_target.replace("options=", "options=" + quote(
        "-cidle_in_transaction_session_timeout=100 "), 1)
    with JackpotEngine.open(url) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        real = PostgresStore.update_level

        def idle_until_ended(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
            assert self._conn is not None
            pid = self._conn.info.backend_pid
            monkeypatch.setattr(PostgresStore, "update_level", real)  # once
            deadline = time.monotonic() + 30
            with psycopg.connect(pg_target, autocommit=True) as admin:
                while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    (pid,)).fetchone() != (0,):
                    assert time.monotonic() < deadline, "the server did not end the session"
                    time.sleep(0.01)  # polling a condition, with a deadline
            return real(self, *args, **kwargs)

        monkeypatch.setattr(PostgresStore, "update_level", idle_until_ended)
        with pytest.raises(StorageError) as info:
            engine.contribute(Decimal(10), groups="minor", op_id="idle")
        assert "idle_in_transaction_session_timeout" in str(info.value)
        assert "nothing was changed: retry" in str(info.value)  # was: a bare "database error"
        assert not info.value.outcome_unknown
        assert engine.pool("minor").version == 2
        assert engine.contribute(Decimal(10), groups="minor", op_id="idle").versions == {
            "minor": 3}
        assert engine.verify().ok


def test_a_pipeline_that_failed_leaves_no_statement_half_prepared(
        engines: Callable[..., JackpotEngine]) -> None:
    # A twin op_id failing the batch's pipeline left psycopg counting a statement
    # as prepared that the server had skipped: later batches on that connection
    # failed with "prepared statement _pg3_3 does not exist" (from round 2 on).
    one, two = engines(), engines()
    refused: list[str] = []
    for r in range(40):
        twin = f"twin-{r}"
        twins = run_together(
            lambda t=twin: one.contribute(Decimal(3), groups="minor", op_id=t),
            lambda t=twin: two.contribute(Decimal(3), groups=("major", "mega"), op_id=t))
        refused += [type(t).__name__ for t in twins if isinstance(t, Exception)]
        for k in range(3):  # every later write on those connections goes through
            one.contribute(Decimal(3), groups=("mega", "minor"), op_id=f"one-{r}-{k}")
            two.contribute(Decimal(3), groups=("major", "minor"), op_id=f"two-{r}-{k}")
    assert refused == ["IdempotencyConflictError"] * 40  # one of each twin, as it should
    assert one.verify().ok


@pytest.mark.parametrize("answered_early", [False, True])
def test_an_op_id_clash_failing_the_pipeline_costs_no_word_from_psycopg(
        engines: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, answered_early: bool) -> None:
    # An op_id another host committed since this transaction looked it up fails
    # the pipeline that inserts the batch's rows and commits: a normal event,
    # which the engine retries (and then refuses or replays). psycopg_pool logged
    # a WARNING "discarding closed connection" each time (the engine closes that
    # connection on purpose). And when the server's error came in before the
    # COMMIT was queued (a busy client, a batch of many rows: forced here), the
    # error left the pipeline block, and psycopg logged another, "error ignored
    # terminating Pipeline ... pipeline aborted": 20 or 40 in 20 rounds. (The
    # op_id is looked up with the levels locked: only a request on other levels
    # can commit it in between.)
    one, two = engines(), engines()
    real_find, real_many = PostgresStore.find_operations, PostgresStore._exec_many
    twins: list[str] = []
    doomed: list[PostgresStore] = []  # the store of one's transaction, once two committed

    def find_operations(self: PostgresStore, op_ids: list[str]) -> Any:
        found = real_find(self, op_ids)
        if twins:  # in one's transaction: two commits the same op_id first
            two.contribute(Decimal(20), groups="major", op_id=twins.pop())
            doomed.append(self)
        return found

    def exec_many(self: PostgresStore, sql: str, rows: list[tuple[Any, ...]]) -> None:
        real_many(self, sql, rows)
        if sql == postgres._INSERT_OPERATION and self in doomed:  # wait for its error
            doomed.remove(self)
            assert self._conn is not None
            assert select.select([self._conn.fileno()], [], [], 30)[0], "no answer in 30 s"

    monkeypatch.setattr(PostgresStore, "find_operations", find_operations)
    if answered_early:
        monkeypatch.setattr(PostgresStore, "_exec_many", exec_many)
    rounds = 20
    with caplog.at_level(logging.WARNING, logger="psycopg"):
        for r in range(rounds):
            twins.append(f"twin-{r}")
            with pytest.raises(IdempotencyConflictError):
                one.contribute(Decimal(20), groups="minor", op_id=f"twin-{r}")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    assert one.stats.snapshot()["busy_incidents"] == rounds  # each one did fail its pipeline
    assert (one.pool("minor").version, one.pool("major").version) == (1, 1 + rounds)
    assert one.verify().ok


@pytest.mark.parametrize("table", ["levels", "ledger"])
def test_a_read_waits_for_a_table_lock_no_longer_than_the_lock_timeout(
        pg_target: str, table: str) -> None:
    # VACUUM FULL, ALTER TABLE, REINDEX: a read waited for them without a limit,
    # and a close() with a timeout returned with the read still waiting.
    with JackpotEngine.open(pg_target, settings=Settings(lock_timeout_ms=300)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        with psycopg.connect(pg_target) as holder:
            holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            reads = [engine.pools, engine.verify] if table == "levels" else [
                lambda: engine.history("minor"), engine.verify]
            for read in reads:
                with pytest.raises(LockTimeoutError) as info:
                    read()
                assert str(info.value).startswith("lock not acquired within 300 ms (another "
                                                  "transaction holds a row or the table: ")
                assert str(info.value).endswith("; nothing was read")
            holder.rollback()
        assert engine.pool("minor").version == 2
        assert engine.verify().ok


def test_a_statement_outside_a_transaction_replaces_a_connection_the_server_closed(
        pg_target: str) -> None:
    # A level's actor loads its level as it starts, outside a transaction: the
    # statement ran alone on a pooled connection, and one the server had closed
    # (a restart, a terminated session) failed it with "the connection ... was
    # lost" where every other statement's connection is replaced unseen.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)):
        pass
    app = f"jackpot-stale-{uuid.uuid4().hex[:12]}"
    store = PostgresStore(f"{pg_target}&application_name={app}")
    try:
        assert store.load_level("minor") is not None  # its pooled connection, now idle
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))]
            assert pids
            for pid in pids:  # (waits for the session to end: `wait_for` 5 s, then False)
                assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() \
                    == (True,)
        state = store.load_level("minor")
        assert state is not None
        assert state.version == 1
    finally:
        store.close()


def test_a_statement_outside_a_transaction_waits_for_a_table_lock_no_longer_than_the_timeout(
        pg_target: str) -> None:
    # It had no lock_timeout either: a VACUUM FULL or ALTER TABLE of levels held
    # an actor's start for as long as it ran. (Here the server's statement_timeout
    # ends that wait instead, with another message: the old code's.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)):
        pass
    options = f"{conninfo_to_dict(pg_target)['options']} -cstatement_timeout=20000"
    store = PostgresStore(f"{PG_URL}?options={quote(options)}", lock_timeout_ms=300)
    try:
        with psycopg.connect(pg_target) as holder:
            holder.execute("LOCK TABLE levels IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(LockTimeoutError) as info:
                store.load_level("minor")
            holder.rollback()
        assert str(info.value).startswith("lock not acquired within 300 ms (another "
                                          "transaction holds a row or the table: "), info.value
        assert str(info.value).endswith("; nothing was read")
        state = store.load_level("minor")
        assert state is not None
        assert state.version == 1
    finally:
        store.close()


@pytest.mark.parametrize(("sql", "problem"), WEAKENED_INDEXES)
def test_a_dropped_index_is_reported(pg_target: str, sql: str, problem: str) -> None:
    _index_problems(pg_target, sql, [problem])


LOST = "it takes values the engine never writes"


@pytest.mark.parametrize(("sql", "problems"), [
    ("ALTER TABLE levels DROP CONSTRAINT levels_amount_check",
     [f"integrity_check: table levels has lost its CHECK levels_amount_check: {LOST}"]),
    (("ALTER TABLE levels DROP CONSTRAINT levels_check1; "  # (must_hit_by > seed)
     "ALTER TABLE levels DROP CONSTRAINT levels_status_check"),
     [("integrity_check: table levels has lost its CHECK levels_status_check, levels_check1: "
       f"{LOST}")]),
    ("ALTER TABLE ledger DROP CONSTRAINT ledger_balance_after_check",
     [f"integrity_check: table ledger has lost its CHECK ledger_balance_after_check: {LOST}"]),
    # Put back NOT VALID: the rows already there were never held to it.
    (("ALTER TABLE ledger DROP CONSTRAINT ledger_reserve_after_check; "
     "ALTER TABLE ledger ADD CONSTRAINT ledger_reserve_after_check "
     "CHECK (reserve_after >= 0) NOT VALID"),
     [("integrity_check: table ledger: CHECK ledger_reserve_after_check is NOT VALID: rows "
       "from before it were never checked")]),
    # One the operator added is not the engine's business.
    ("ALTER TABLE levels ADD CONSTRAINT house_rule CHECK (amount < 10000000000000)", []),
    # The ledger's foreign key on its level.
    ("ALTER TABLE ledger DROP CONSTRAINT ledger_level_fkey",
     [("integrity_check: table ledger has lost its FOREIGN KEY (level) REFERENCES levels: it "
       "takes rows of levels that do not exist")]),
    (("ALTER TABLE ledger DROP CONSTRAINT ledger_level_fkey; "
      "ALTER TABLE ledger ADD CONSTRAINT ledger_level_fkey FOREIGN KEY (level) "
      "REFERENCES levels (name) NOT VALID"),
     [("integrity_check: table ledger: its FOREIGN KEY (level) REFERENCES levels is NOT VALID: "
       "rows from before it were never checked")]),
    # Put back under another name: it is the same key.
    (("ALTER TABLE ledger DROP CONSTRAINT ledger_level_fkey; "
      "ALTER TABLE ledger ADD CONSTRAINT level_exists FOREIGN KEY (level) "
      "REFERENCES levels (name)"), []),
    # Redefined under the engine's name: weaker, it passed as the engine's.
    (("ALTER TABLE levels DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT "
     "levels_amount_check CHECK (amount >= -1000)"),
     [("integrity_check: table levels: CHECK levels_amount_check is not the engine's: CHECK "
       "((amount >= '-1000'::integer)) (the engine's: CHECK ((amount >= 0)))")]),
    (("ALTER TABLE levels DROP CONSTRAINT levels_check1, ADD CONSTRAINT levels_check1 CHECK "
     "(must_hit_by IS NULL OR must_hit_by >= seed) NOT VALID"),
     [("integrity_check: table levels: CHECK levels_check1 is not the engine's: CHECK "
       "(((must_hit_by IS NULL) OR (must_hit_by >= seed))) NOT VALID (the engine's: CHECK "
       "(((must_hit_by IS NULL) OR (must_hit_by > seed))))")]),
    (("ALTER TABLE levels DROP CONSTRAINT levels_status_check, ADD CONSTRAINT "
     "levels_status_check CHECK (status IN ('active', 'suspended', 'retired', 'gone'))"),
     [("integrity_check: table levels: CHECK levels_status_check is not the engine's: CHECK "
       "((status = ANY (ARRAY['active'::text, 'suspended'::text, 'retired'::text, "
       "'gone'::text]))) (the engine's: CHECK ((status = ANY (ARRAY['active'::text, "
       "'suspended'::text, 'retired'::text]))))")]),
    # The column cast: 'active   ' passes as 'active' (bpchar ignores trailing spaces).
    (("ALTER TABLE levels DROP CONSTRAINT levels_status_check, ADD CONSTRAINT "
     "levels_status_check CHECK (status::bpchar IN ('active', 'suspended', 'retired'))"),
     [("integrity_check: table levels: CHECK levels_status_check is not the engine's: CHECK "
       "(((status)::bpchar = ANY (ARRAY['active'::bpchar, 'suspended'::bpchar, "
       "'retired'::bpchar]))) (the engine's: CHECK ((status = ANY (ARRAY['active'::text, "
       "'suspended'::text, 'retired'::text]))))")]),
    # Of a function whose name and argument, glued, spell the engine's column: reserve_ of
    # carry (always 0) is not reserve_carry, which then took any value (it reads another
    # column: the engine's is lost).
    (("CREATE FUNCTION reserve_(bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 0'; "
      "ALTER TABLE levels DROP CONSTRAINT levels_reserve_carry_check, ADD CONSTRAINT "
      "levels_reserve_carry_check CHECK (reserve_(carry) >= 0 AND reserve_(carry) < 1000000000)"),
     [f"integrity_check: table levels has lost its CHECK levels_reserve_carry_check: {LOST}"]),
    # Against a constant cast to a domain of the operator's, whose >= is always true: it
    # took a negative amount, and passed as the engine's.
    (("CREATE DOMAIN floor AS bigint; CREATE FUNCTION always(bigint, floor) RETURNS boolean "
      "LANGUAGE sql IMMUTABLE AS 'SELECT true'; "
      "CREATE OPERATOR >= (LEFTARG = bigint, RIGHTARG = floor, FUNCTION = always); "
      "ALTER TABLE levels DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT "
      "levels_amount_check CHECK (amount >= 0::floor)"),
     [("integrity_check: table levels: CHECK levels_amount_check is not the engine's: CHECK "
       "((amount >= (0)::floor)) (the engine's: CHECK ((amount >= 0)))")]),
    # Written otherwise, or under another name: the same CHECK.
    (("ALTER TABLE ledger DROP CONSTRAINT ledger_balance_after_check, ADD CONSTRAINT "
     'balance_kept CHECK ((("balance_after")>=0))'), []),
    # NO INHERIT: the same on the table (a table inheriting from it is told on its own).
    (("ALTER TABLE levels DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT "
      "levels_amount_check CHECK (amount >= 0) NO INHERIT"), []),
    # ... and NOT VALID besides: the rows already there were never held to it.
    (("ALTER TABLE levels DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT "
      "levels_amount_check CHECK (amount >= 0) NO INHERIT NOT VALID"),
     [("integrity_check: table levels: CHECK levels_amount_check is NOT VALID: rows from "
       "before it were never checked")]),
    # Weaker NO INHERIT is still weaker.
    (("ALTER TABLE levels DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT "
      "levels_amount_check CHECK (amount >= -1) NO INHERIT"),
     [("integrity_check: table levels: CHECK levels_amount_check is not the engine's: CHECK "
       "((amount >= '-1'::integer)) NO INHERIT (the engine's: CHECK ((amount >= 0)))")]),
])
def test_a_dropped_check_constraint_is_reported(pg_target: str, sql: str,
                                                problems: list[str]) -> None:
    # (SQLite tells a table that lost its STRICT or a NOT NULL; a CHECK the
    # table's owner dropped on PostgreSQL was not told at all.)
    _index_problems(pg_target, sql, problems)


NO_OP_ID_KEY = ("integrity_check: operations has no unique index on (op_id): an op_id could be "
                "applied twice")


@pytest.mark.parametrize(("sql", "problems"), [
    # The operations' key gone: two hosts could apply one op_id each (SQLite told it).
    ("ALTER TABLE operations DROP CONSTRAINT operations_pkey",
     [NO_OP_ID_KEY]),
    # Made again on more than op_id, or not for every row: it no longer keeps op_ids apart.
    (("ALTER TABLE operations DROP CONSTRAINT operations_pkey; "
      "CREATE UNIQUE INDEX operations_pkey ON operations (op_id, kind)"),
     [NO_OP_ID_KEY]),
    # The levels' key (the ledger's foreign key with it): two rows could be one level.
    ("ALTER TABLE levels DROP CONSTRAINT levels_pkey CASCADE",
     [("integrity_check: levels has no unique index on (name): two rows could hold one "
       "level; table ledger has lost its FOREIGN KEY (level) REFERENCES levels: it takes rows "
       "of levels that do not exist")]),
    # A unique index on the column in its place is the same key.
    (("ALTER TABLE operations DROP CONSTRAINT operations_pkey; "
      "CREATE UNIQUE INDEX op_ids ON operations (op_id)"), []),
])
def test_a_dropped_key_is_reported(pg_target: str, sql: str, problems: list[str]) -> None:
    # Only the ledger's indexes were looked at: a database without the
    # operations' primary key verified ok, while nothing kept an op_id from
    # being applied twice by two hosts.
    _index_problems(pg_target, sql, problems)


def _refusing(*indexes: tuple[str, ...], kind: str = "unique index") -> list[str]:
    """What verify() says of these (table, index, its columns[, why for an operator's column])."""
    refused = {"levels": "a new level", "operations": "a new op_id",
               "ledger": "a level's next version"}
    return ["integrity_check: " + "; ".join(
        f"table {table}: {kind} {index} on ({columns}) refuses rows the engine writes: "
        f"{refused[table]} refused as a duplicate{''.join(f' ({why})' for why in whys)}"
        for table, index, columns, *whys in indexes)]


def _one_value(column: str, default: str) -> str:
    return (f"{column} is {default}, its default, in every row the engine writes: with no "
            "default (NULL), or one that gives each row another value, they are apart")


def _nulls_equal(column: str) -> str:
    return (f"{column} is NULL in every row the engine writes, and the index takes NULLs for "
            "equal (NULLS NOT DISTINCT): without it they are apart")


@pytest.mark.parametrize(("sql", "problems"), [
    # On an expression of a key's column: op_id B1 refused after b1 (StorageError:
    # UniqueViolation), level Minor after minor; as a UNIQUE constraint on other columns.
    (("CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id)); "
      "CREATE UNIQUE INDEX levels_lower ON levels (lower(name)); "
      "CREATE UNIQUE INDEX ledger_lower ON ledger (lower(level), version_after)"),
     _refusing(("levels", "levels_lower", "an expression"),
               ("ledger", "ledger_lower", "an expression, version_after"),
               ("operations", "ops_lower", "an expression"))),
    (("ALTER TABLE ledger ADD CONSTRAINT ledger_op_level UNIQUE (op_id, level); "
      "CREATE UNIQUE INDEX one_win ON operations (kind) WHERE kind = 'win'"),
     _refusing(("ledger", "ledger_op_level", "op_id, level"),
               ("operations", "one_win", "kind"))),
    # On a whole key and more, or an expression beside it, with a WHERE or not.
    (("CREATE UNIQUE INDEX ops_kind ON operations (op_id, kind); "
      "CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id), op_id) WHERE kind = 'win'; "
      "ALTER TABLE levels ADD CONSTRAINT levels_status UNIQUE (status, name); "
      "CREATE UNIQUE INDEX ledger_kind ON ledger (kind, version_after, level) INCLUDE (who); "
      "CREATE UNIQUE INDEX ledger_seq ON ledger (op_id, seq)"), []),
    # On a column of the operator's (the engine writes none of it: its default's values),
    # as an identity or a uuid: it keeps apart what they do, and the engine's rows go in
    # (test_an_operator_s_own_unique_column_takes_the_engine_s_rows); a serial's nextval()
    # too, and a column with no default (NULL: apart in a unique index), even a domain's
    # NULL over its type's default.
    (("ALTER TABLE ledger ADD COLUMN audit_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE; "
      "ALTER TABLE operations ADD COLUMN uid uuid NOT NULL DEFAULT gen_random_uuid(); "
      "ALTER TABLE operations ADD CONSTRAINT ops_uid EXCLUDE (uid WITH =); "
      "ALTER TABLE ledger ADD COLUMN n bigserial UNIQUE; "
      "CREATE UNIQUE INDEX ledger_n_kind ON ledger (n, kind); "
      "ALTER TABLE operations ADD COLUMN ext_ref text UNIQUE; "
      "CREATE DOMAIN tagged AS text DEFAULT 'x'; "
      "ALTER TABLE operations ADD COLUMN tag tagged DEFAULT NULL UNIQUE"), []),
    # One whose default gives every row one value (a literal, a domain's, now() in one
    # transaction) is filled by the engine's rows as its own columns are (a WHERE that
    # may leave it out is not read: told); so is one with no default under NULLS NOT
    # DISTINCT.
    (("ALTER TABLE operations ADD COLUMN tag text NOT NULL DEFAULT 'x' UNIQUE; "
      "CREATE UNIQUE INDEX ops_tag_set ON operations (tag) WHERE tag <> 'x'; "
      "CREATE DOMAIN tagged AS text DEFAULT 'd'; "
      "ALTER TABLE operations ADD COLUMN dtag tagged; "
      "CREATE UNIQUE INDEX ops_dtag ON operations (dtag, kind); "
      "ALTER TABLE ledger ADD COLUMN at timestamptz DEFAULT now(); "
      "CREATE UNIQUE INDEX ledger_at ON ledger (at, kind, level); "
      "ALTER TABLE ledger ADD COLUMN ext_ref text; "
      "ALTER TABLE ledger ADD CONSTRAINT ledger_ext_ref UNIQUE NULLS NOT DISTINCT "
      "(ext_ref, kind, level)"),
     _refusing(("ledger", "ledger_at", "at, kind, level", _one_value("at", "now()")),
               ("ledger", "ledger_ext_ref", "ext_ref, kind, level", _nulls_equal("ext_ref")),
               ("operations", "operations_tag_key", "tag", _one_value("tag", "'x'::text")),
               ("operations", "ops_dtag", "dtag, kind", _one_value("dtag", "'d'::text")),
               ("operations", "ops_tag_set", "tag", _one_value("tag", "'x'::text")))),
    # A generated column is an expression of the engine's: told as one.
    (("ALTER TABLE operations ADD COLUMN lop text GENERATED ALWAYS AS (lower(op_id)) STORED; "
      "CREATE UNIQUE INDEX ops_lop ON operations (lop)"),
     _refusing(("operations", "ops_lop", "an expression"))),
])
def test_a_unique_index_that_refuses_the_engine_s_rows_is_reported(
        pg_target: str, sql: str, problems: list[str]) -> None:
    # Only the keys' own unique indexes were looked at: one of the operator's on
    # lower(op_id) refused op_id B1 after b1 (StorageError, not a replay or a
    # conflict), and verify() said ok.
    _index_problems(pg_target, sql, problems)


@pytest.mark.parametrize(("sql", "problems"), [
    # Refuses rows as a unique index does (ExclusionViolation: StorageError), on an
    # expression, on another column than a key, or comparing a key's column otherwise
    # than byte for byte.
    (("ALTER TABLE operations ADD CONSTRAINT ops_lower EXCLUDE (lower(op_id) WITH =); "
      "ALTER TABLE operations ADD CONSTRAINT ops_kind EXCLUDE USING hash (kind WITH =)"),
     ["integrity_check: " + "; ".join(
         f"table operations: exclusion constraint {n} on ({on}) refuses rows the engine "
         "writes: a new op_id refused as a duplicate" for n, on in (
             ("ops_kind", "kind"), ("ops_lower", "something not compared by =")))]),
    # (A nondeterministic collation needs ICU: skipped on a server without it.)
    ("ALTER TABLE levels ADD CONSTRAINT levels_anycase EXCLUDE (name COLLATE anycase WITH =)",
     [("integrity_check: table levels: exclusion constraint levels_anycase on (something not "
      "compared by =) refuses rows the engine writes: a new level refused as a duplicate")]),
    # By = on a whole key and more: it refuses nothing the key lets in.
    ("ALTER TABLE operations ADD CONSTRAINT ops_same EXCLUDE (op_id WITH =, kind WITH =)", []),
])
def test_an_exclusion_constraint_that_refuses_the_engine_s_rows_is_reported(
        pg_target: str, sql: str, problems: list[str]) -> None:
    # CHECK's sibling: EXCLUDE (lower(op_id) WITH =) refused op_id B1 after b1
    # (ExclusionViolation), and verify() said ok.
    if "anycase" in sql:
        with psycopg.connect(pg_target, autocommit=True) as conn:
            create_anycase_collation(conn)
    _index_problems(pg_target, sql, problems)


_ANYCASE_OPCLASS = (
    *(f"CREATE FUNCTION ci_{name}(text, text) RETURNS {returns} IMMUTABLE LANGUAGE sql "
      f"AS 'SELECT {body}'" for name, returns, body in (
          ("cmp", "int", "bttextcmp(lower($1), lower($2))"),
          *((name, "bool", f"lower($1) {op} lower($2)") for name, op in (
              ("lt", "<"), ("le", "<="), ("eq", "="), ("ge", ">="), ("gt", ">"))))),
    *(f"CREATE OPERATOR {op}~~ (LEFTARG = text, RIGHTARG = text, FUNCTION = ci_{name})"
      for name, op in (("lt", "<"), ("le", "<="), ("eq", "="), ("ge", ">="), ("gt", ">"))),
    ("CREATE OPERATOR CLASS anycase_ops FOR TYPE text USING btree AS OPERATOR 1 <~~, "
    "OPERATOR 2 <=~~, OPERATOR 3 =~~, OPERATOR 4 >=~~, OPERATOR 5 >~~, "
    "FUNCTION 1 ci_cmp(text, text)"))
"""A btree operator class of the operator's that takes text for equal whatever its case."""


def test_a_unique_index_under_an_operator_class_of_the_operator_s_is_reported(
        pg_target: str) -> None:
    # Its equality is the operator class's, not text's =: on op_id, it refused
    # op_id B1 after b1 (UniqueViolation, a StorageError) while verify() said ok.
    # (PostgreSQL's own, text_pattern_ops say, compare by = as text's does.)
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            for statement in (*_ANYCASE_OPCLASS,
                              ("CREATE UNIQUE INDEX ops_pattern ON operations "
                              "(op_id text_pattern_ops)"),
                              "CREATE UNIQUE INDEX ops_anycase ON operations (op_id anycase_ops)"):
                conn.execute(statement)
        with pytest.raises(StorageError, match='unique constraint "ops_anycase"'):
            engine.contribute(Decimal(10), groups="minor", op_id="B1")
        assert engine.verify().problems == _refusing(
            ("operations", "ops_anycase", "op_id under operator class anycase_ops"))


@pytest.mark.parametrize("index", [
    "CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id))",
    "CREATE UNIQUE INDEX ops_anycase ON operations (op_id COLLATE anycase)",
    "CREATE UNIQUE INDEX ops_anycase ON operations (op_id anycase_ops)",
])
def test_a_clash_on_an_operators_index_not_on_the_key_as_such_is_no_lost_race(
        pg_target: str, index: str) -> None:
    # op_id B1 after b1 is no twin committed first: taken for one, it would be
    # retried until retries ran out (ConcurrencyViolationError), each retry
    # finding no record of B1. It is the StorageError the duplicate is.
    settings = Settings(enable_metrics=False, retry_delay_ms=1)
    with JackpotEngine.open(pg_target, settings=settings) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            if "anycase_ops" in index:
                for statement in _ANYCASE_OPCLASS:
                    conn.execute(statement)
            elif "anycase" in index:
                create_anycase_collation(conn)
            conn.execute(index)
        with pytest.raises(StorageError, match="UniqueViolation: duplicate key value violates "
                                               'unique constraint "ops_'):
            engine.contribute(Decimal(10), groups="minor", op_id="B1")
        assert engine.stats.snapshot()["busy_incidents"] == 0
        assert engine.pool("minor").version == 2


@pytest.mark.parametrize(("sql", "index", "problems"), [
    ("ALTER TABLE operations ADD COLUMN tag text NOT NULL DEFAULT 'x' UNIQUE",
     "operations_tag_key", _refusing(
         ("operations", "operations_tag_key", "tag", _one_value("tag", "'x'::text")))),
    (("ALTER TABLE operations ADD COLUMN ext_ref text; "
      "ALTER TABLE operations ADD CONSTRAINT ops_ext_ref UNIQUE NULLS NOT DISTINCT (ext_ref)"),
     "ops_ext_ref", _refusing(("operations", "ops_ext_ref", "ext_ref", _nulls_equal("ext_ref")))),
    (("ALTER TABLE operations ADD COLUMN tag text NOT NULL DEFAULT 'x'; "
      "ALTER TABLE operations ADD CONSTRAINT ops_tag EXCLUDE (tag WITH =)"),
     "ops_tag", _refusing(("operations", "ops_tag", "tag", _one_value("tag", "'x'::text")),
                          kind="exclusion constraint")),
])
def test_an_operator_s_unique_column_of_one_value_refuses_the_engine_s_rows(
        pg_target: str, sql: str, index: str, problems: list[str]) -> None:
    # The engine writes none of the column: each of its rows takes the default, or NULL,
    # which NULLS NOT DISTINCT takes for equal; the second operation was refused
    # (UniqueViolation, ExclusionViolation: a StorageError) while verify() said ok.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            for statement in sql.split("; "):
                conn.execute(statement)
        with pytest.raises(StorageError, match=f'constraint "{index}"'):
            engine.contribute(Decimal(10), groups="minor", op_id="b2")
        assert engine.pool("minor").version == 2
        assert engine.verify().problems == problems


def test_an_operator_s_own_unique_column_takes_the_engine_s_rows(pg_target: str) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger ADD COLUMN audit_id bigint "
                         "GENERATED ALWAYS AS IDENTITY UNIQUE")
            conn.execute("ALTER TABLE operations ADD COLUMN n bigserial UNIQUE, "
                         "ADD COLUMN uid uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE, "
                         "ADD COLUMN ext_ref text UNIQUE")
        engine.contribute(Decimal(10), groups="minor", op_id="b2")
        engine.process_win("minor", op_id="w1")
        assert engine.pool("minor").version == 4
        assert engine.verify().problems == []


def test_a_unique_index_on_an_expression_refuses_a_good_op_id(pg_target: str) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            conn.execute("CREATE UNIQUE INDEX ops_lower ON operations (lower(op_id))")
        with pytest.raises(StorageError, match='unique constraint "ops_lower"'):
            engine.contribute(Decimal(10), groups="minor", op_id="B1")
        assert engine.pool("minor").version == 2
        assert engine.verify().problems == _refusing(("operations", "ops_lower", "an expression"))


def test_a_table_that_inherits_from_the_engine_s_is_reported(pg_target: str) -> None:
    # Its rows are read (and updated) as the levels', but PostgreSQL passes
    # on no key, unique index, trigger or NO INHERIT CHECK to a child: a row
    # of a level named as another, or of a negative amount under a CHECK made
    # NO INHERIT, was the levels' own; verify() said nothing of the table.
    # (The rows themselves may or may not be told: that is the audit's.)
    _index_problems(pg_target, (
        "CREATE TABLE levels_more () INHERITS (levels); "
        'CREATE SCHEMA "other place"; '
        'CREATE TABLE "other place".ledger_more () INHERITS (ledger)'), [
        ('integrity_check: table "other place".ledger_more inherits from ledger: its rows are '
         "read as rows of ledger, held to none of the keys, unique indexes or triggers of "
         "ledger; table levels_more inherits from levels: its rows are read as rows of levels, "
         "held to none of the keys, unique indexes or triggers of levels")])


_PARTITIONED_OPERATIONS = (
    "CREATE TABLE operations_p (LIKE operations INCLUDING ALL) PARTITION BY HASH (op_id); "
    "CREATE TABLE operations_p0 PARTITION OF operations_p "
    "FOR VALUES WITH (MODULUS 2, REMAINDER 0) PARTITION BY HASH (op_id); "
    "CREATE TABLE operations_p0_all PARTITION OF operations_p0 "
    "FOR VALUES WITH (MODULUS 1, REMAINDER 0); "
    "CREATE TABLE operations_p1 PARTITION OF operations_p "
    "FOR VALUES WITH (MODULUS 2, REMAINDER 1); "
    "INSERT INTO operations_p SELECT * FROM operations; DROP TABLE operations; "
    "ALTER TABLE operations_p RENAME TO operations; "
    "CREATE TRIGGER operations_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON operations "
    "FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only()")


@pytest.mark.parametrize(("sql", "problems"), [
    # The operations made a partitioned table (its key, CHECKs and trigger made again):
    # its partitions hold its rows, keys and CHECKs, but not its statement trigger, and a
    # DELETE FROM operations_p1 deleted a record (its op_id applied again); a DETACH
    # PARTITION takes rows out with no DELETE at all. Was told as a table that inherits,
    # "held to none of the keys, unique indexes or triggers of operations".
    (_PARTITIONED_OPERATIONS,
     ["integrity_check: " + "; ".join(
         f"table {p} is a partition of operations: the rows of operations it holds can be "
         "updated, deleted or truncated through it, or taken out with it (DETACH PARTITION, "
         "DROP TABLE), past the append-only trigger of operations"
         for p in ("operations_p0", "operations_p0_all", "operations_p1"))]),
    # The levels, whose rows the engine updates and which have no such trigger: a partition
    # holds its rows to its key, CHECKs and the ledger's foreign key. Not told.
    (("CREATE TABLE levels_p (LIKE levels INCLUDING ALL) PARTITION BY HASH (name); "
      "CREATE TABLE levels_p0 PARTITION OF levels_p FOR VALUES WITH (MODULUS 1, REMAINDER 0); "
      "INSERT INTO levels_p SELECT * FROM levels; DROP TABLE levels CASCADE; "
      "ALTER TABLE levels_p RENAME TO levels; "
      "ALTER TABLE ledger ADD FOREIGN KEY (level) REFERENCES levels (name)"), []),
])
def test_a_partitioned_table_of_the_engine_s_is_told_by_what_its_partitions_lose(
        pg_target: str, sql: str, problems: list[str]) -> None:
    _index_problems(pg_target, sql, problems)


def test_a_partition_lets_the_operations_be_deleted(pg_target: str) -> None:
    # What the partitions above lose: the operations' trigger refuses a DELETE of
    # the table, not of its partition.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            for statement in _PARTITIONED_OPERATIONS.split("; "):
                conn.execute(statement)
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("DELETE FROM operations")
            conn.execute("DELETE FROM operations_p0_all")
            conn.execute("DELETE FROM operations_p1")
            assert conn.execute("SELECT count(*) FROM operations").fetchone() == (0,)
        assert not engine.contribute(Decimal(10), groups="minor", op_id="b1").replayed


@pytest.mark.parametrize(("sql", "problems"), [
    ("SELECT 1", []),
    # The must_hit_by CHECK, named levels_check2 here: still told by the name
    # it has on a schema of its own.
    ("ALTER TABLE levels DROP CONSTRAINT levels_check2",
     [f"integrity_check: table levels has lost its CHECK levels_check1: {LOST}"]),
    # Redefined under its name numbered on: told under that name.
    (("ALTER TABLE levels DROP CONSTRAINT levels_check2, ADD CONSTRAINT levels_check2 CHECK "
     "(must_hit_by IS NULL OR must_hit_by >= seed)"),
     [("integrity_check: table levels: CHECK levels_check2 is not the engine's: CHECK "
       "(((must_hit_by IS NULL) OR (must_hit_by >= seed))) (the engine's: CHECK "
       "(((must_hit_by IS NULL) OR (must_hit_by > seed))))")]),
])
def test_the_engine_s_checks_numbered_past_a_name_the_schema_holds_are_still_found(
        pg_target: str, sql: str, problems: list[str]) -> None:
    # PostgreSQL names a CHECK for the first of `<table>_<column>_check` (or
    # `<table>_check`, on two columns), then `..._check1`, `..._check2`, that
    # no constraint of the schema has, on whatever table (here an archived
    # copy of the levels): a sound database was told it had lost two CHECKs,
    # and one dropped afterwards (must_hit_by's) would not have been told.
    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute("CREATE TABLE levels_2025 (amount BIGINT CONSTRAINT levels_amount_check "
                     "CHECK (amount >= 0), cap BIGINT, seed BIGINT, "
                     "CONSTRAINT levels_check CHECK (cap >= seed))")
    _index_problems(pg_target, sql, problems)


def test_the_engine_s_check_definitions_are_what_postgresql_prints_for_its_schema(
        pg_target: str) -> None:
    # The integrity check compares each CHECK's pg_get_constraintdef with the
    # text POSTGRES_CHECKS holds: on a server that printed the schema's
    # otherwise, a sound database would be told it has none of them.
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        assert engine.verify().ok
    with psycopg.connect(pg_target) as conn:
        printed = {(r[0], r[1]): r[2] for r in conn.execute(
            "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid WHERE k.contype = 'c' "
            "AND c.relnamespace = current_schema()::regnamespace")}
    assert printed == {(table, name): definition for table, checks in POSTGRES_CHECKS.items()
                       for name, (_, definition) in checks.items()}


@pytest.mark.parametrize("sql", [
    # Still what the schema's index is for: its keys, every row, unique where it must be.
    "CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after) INCLUDE (who)",
    "CREATE UNIQUE INDEX ledger_level_version ON ledger (level DESC, version_after)",
])
def test_an_index_rebuilt_to_the_same_keys_is_no_problem(pg_target: str, sql: str) -> None:
    _index_problems(pg_target, f"DROP INDEX ledger_level_version; {sql}", [])


def _index_problems(pg_target: str, sql: str, problems: list[str]) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        with psycopg.connect(pg_target, autocommit=True) as conn:
            for statement in sql.split("; "):
                conn.execute(statement)
        assert engine.verify().problems == problems


@pytest.mark.parametrize("column", ["overflow", "paid"])
def test_a_forged_amount_near_two_to_the_63_is_a_problem_not_an_overflow(
        pg_target: str, column: str) -> None:
    with JackpotEngine.open(pg_target, settings=Settings(enable_metrics=False)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="b1")
        _tamper(pg_target, "ledger", f"UPDATE ledger SET {column} = -9223372036854775807 "
                                     "WHERE op_id = 'b1'")
        report = engine.verify()  # was: StorageError ... NumericValueOutOfRange
    assert not report.ok
    meter = {"overflow": "overflow", "paid": "won"}[column]
    credited = [("operation 'b1': its stored result says minor credited 0.050000, the "
                 "ledger 9223372036854.825807")] * (column == "overflow")  # 5e4 + 2**63 - 1
    assert report.problems == [
        f"minor: meter {meter} is 0.000000, ledger says -9223372036854.775807",
        "minor: ledger row 4 (version 2) does not add up", *credited]


def test_a_batch_with_no_connection_to_be_had_fails_at_once_not_op_by_op(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A shared transaction that fails is retried op by op; one that could not
    # even get a connection was retried too, each op waiting the pool timeout
    # again: a group commit of N bets took N timeouts, and its callers, tired
    # of waiting, were told the outcome was unknown.
    from jackpot.requests import Requests  # noqa: PLC0415
    from jackpot.service import execute_batch  # noqa: PLC0415
    from jackpot.stats import Stats  # noqa: PLC0415

    asked: list[None] = []
    real = PostgresStore._no_connection

    def no_connection(self: PostgresStore, *args: Any) -> Any:
        asked.append(None)
        return real(self, *args)

    monkeypatch.setattr(PostgresStore, "_no_connection", no_connection)
    with locked_out_store(pg_target) as (role, store):
        requests = Requests(["major", "mega", "minor"])
        ops = [requests.contribute(Decimal(100), groups=("minor",), op_id=f"bet-{i}")
               for i in range(5)]
        outcomes, changed = execute_batch(store, ops, None, settings=Settings(),
                                          stats=Stats())
        assert changed == {}
        errors = [o.error for o in outcomes]
        assert all(isinstance(e, StorageError) and not e.outcome_unknown for e in errors)
        assert len({id(e) for e in errors}) == 1  # one failure, shared by the batch
        assert f'role "{role}" is not permitted to log in' in str(errors[0])
        assert len(asked) == 1  # was 6: the shared attempt, then one per op


def _pooled_parameters(url: str) -> dict[str, str]:
    """The libpq parameters a pooled connection of a new store of `url` was made with."""
    store = PostgresStore(url)
    try:
        with store._pool.connection() as conn:
            return conn.info.get_parameters()
    finally:
        store.close()


def test_pooled_connections_bound_a_wait_on_a_vanished_server(pg_target: str) -> None:
    # keepalives and tcp_user_timeout: a server host that drops off the network (no FIN)
    # ends a wait within about a minute instead of the kernel's many; the URL's own win.
    JackpotEngine.open(pg_target).close()
    for url, idle in ((pg_target, "30"), (f"{pg_target}&keepalives_idle=5", "5")):
        given = _pooled_parameters(url)
        assert (given["keepalives"], given["keepalives_idle"], given["keepalives_interval"],
                given["keepalives_count"], given["tcp_user_timeout"],
                given["connect_timeout"]) == ("1", idle, "10", "3", "60000", "10")
    assert postgres.network_defaults("postgresql://u@h/db?tcp_user_timeout=5000") == {
        "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
        "keepalives_count": "3", "connect_timeout": "10"}


def test_pgconnect_timeout_in_the_environment_is_not_undone_by_the_default(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # connect_timeout=10 was passed to every connection the URL did not give one,
    # and a keyword wins over libpq's environment: an operator's PGCONNECT_TIMEOUT
    # was silently replaced by 10 s.
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    assert "connect_timeout" not in postgres.network_defaults("postgresql://u@h/db")
    given = _pooled_parameters(f"{pg_target}&application_name=t-{uuid.uuid4().hex[:12]}")
    assert (given["connect_timeout"], given["keepalives_idle"]) == ("7", "30")


def test_a_service_s_own_settings_are_not_undone_by_the_defaults(
        pg_target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A keyword wins over libpq's service file too: a pg_service.conf's
    # connect_timeout=5 and keepalives_idle=7 were replaced by 10 s and 30 s.
    service = tmp_path / "pg_service.conf"
    service.write_text("[jp]\nconnect_timeout=5\nkeepalives_idle=7\n", encoding="utf-8")
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    given = _pooled_parameters(
        f"{pg_target}&service=jp&application_name=s-{uuid.uuid4().hex[:12]}")
    assert (given["connect_timeout"], given["keepalives_idle"],
            given["keepalives_interval"]) == ("5", "7", "10")


def test_pooled_sessions_are_ended_by_the_server_when_their_client_is_gone(
        pg_target: str) -> None:
    # A host whose network dies mid-transaction left the transaction open on
    # the server, holding its level's row lock for every other host until the
    # server's TCP gave up (two hours by default): the server now ends a
    # session idle in a transaction after a minute, and probes idle clients.
    # A value the URL (or the role, or the database) sets is kept.
    JackpotEngine.open(pg_target).close()
    own = pg_target.replace(
        "options=", "options=" + quote("-cidle_in_transaction_session_timeout=5000 "), 1)
    for url, idle_in_transaction in ((pg_target, "1min"), (own, "5s")):
        store = PostgresStore(url)
        try:
            with store._pool.connection() as conn:
                given = conn.execute(
                    "SELECT current_setting('idle_in_transaction_session_timeout'), "
                    "current_setting('tcp_keepalives_idle'), "
                    "current_setting('tcp_keepalives_interval'), "
                    "current_setting('tcp_keepalives_count')").fetchone()
        finally:
            store.close()
        assert given == (idle_in_transaction, "30", "10", "3")


def test_session_defaults_the_server_refuses_cost_nothing_but_a_warning(
        pg_target: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Raised from the pool's configure callback, any error made the pool
    # discard every connection it made: reported as a pool "reconnecting"
    # while nothing could connect (e.g. a role that may not read pg_settings).
    monkeypatch.setattr(postgres, "_SET_SESSION_DEFAULTS", "SELECT jackpot_no_such_function()")
    monkeypatch.setattr(postgres, "_configure_failed", threading.Event())
    with caplog.at_level(logging.WARNING, logger="jackpot"), \
            JackpotEngine.open(pg_target, settings=Settings(lock_timeout_ms=2000)) as engine:
        assert engine.contribute(Decimal(10), groups="minor", op_id="bet").versions == {
            "minor": 2}
        assert engine.contribute(Decimal(10), groups=None, op_id="bet-3").replayed is False
        assert engine.verify().ok
    said = [r.getMessage() for r in caplog.records
            if "could not set the server-side session defaults" in r.getMessage()]
    assert len(said) == 1, said  # once per process, not per connection
    assert "jackpot_no_such_function" in said[0]


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


def test_session_defaults_the_server_refuses_cost_no_connection_though_warning_raises(
        pg_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The warning raising escaped the pool's configure callback: the pool
    # discarded the new connection, and the caller waited for its retry.
    monkeypatch.setattr(postgres, "_SET_SESSION_DEFAULTS", "SELECT jackpot_no_such_function()")
    monkeypatch.setattr(postgres, "_configure_failed", threading.Event())
    log, raising = logging.getLogger("jackpot"), _RaisingFilter()
    with psycopg.connect(pg_target, autocommit=True) as conn:
        log.addFilter(raising)
        try:
            postgres._configure_session(conn)
        finally:
            log.removeFilter(raising)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_postgresql_store_makes_no_copy_of_itself(pg_target: str, tmp_path: Path) -> None:
    """`jackpot backup` refuses a URL first; the store says the same, and creates nothing."""
    JackpotEngine.open(pg_target).close()
    store = PostgresStore(pg_target)
    try:
        with pytest.raises(StorageError, match=r"back it up with pg_dump"):
            store.backup_to(str(tmp_path / "copy.db"))
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt(), TimeoutError("the round took too long")])
def test_a_read_interrupted_as_it_begins_gives_its_connection_back(
        pg_target: str, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """A signal's exception (Ctrl-C, a request deadline) raised as a read's BEGIN returned
    kept the pooled connection out for good, in its transaction ('idle in transaction',
    holding its snapshot): each such read took one of the pool's connections, and once
    none was left every read waited out the lock timeout and failed."""
    JackpotEngine.open(pg_target).close()  # the schema and levels
    store = PostgresStore(pg_target, lock_timeout_ms=2000, pool_max_size=2, existing=True)
    real = psycopg.Connection.execute
    begun = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def interrupted(conn: psycopg.Connection[Any], query: Any, *args: Any,
                    **kwargs: Any) -> Any:
        cursor = real(conn, query, *args, **kwargs)
        if isinstance(query, str) and query.startswith(begun):
            raise error  # as a signal's handler would, as the call returns
        return cursor

    try:
        with monkeypatch.context() as patched:
            patched.setattr(psycopg.Connection, "execute", interrupted)
            for _ in range(3):  # more than the pool holds
                with pytest.raises(type(error)), store.read():
                    pytest.fail("the read went on")
        with store.read():  # was: "no connection ... became free within 2000 ms (every ...)"
            assert sorted(store.load_levels()) == ["major", "mega", "minor"]
        with psycopg.connect(pg_target, autocommit=True) as conn:
            idle = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'").fetchone()
        assert idle == (0,)
    finally:
        store.close()
