"""WAL: checkpoints run off the writers' threads, the WAL stays bounded, WAL mode is set reliably."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pykka
import pytest

import jackpot.actors.checkpoint as checkpoint_module
import jackpot.storage.sqlite as sqlite_module
from _helpers import HANG, hearing, in_thread
from jackpot import JackpotEngine, Settings, StorageError
from jackpot._restarts import restart_dead_actors
from jackpot.storage import SQLiteStore


def _grow(store: SQLiteStore, commits: int) -> None:
    """Commit `commits` transactions of about one page each."""
    for _ in range(commits):
        with store.write():
            store._exec("INSERT INTO filler VALUES (randomblob(3000))")


@pytest.fixture
def filler_db(tmp_path: Path) -> str:
    path = str(tmp_path / "wal.db")
    store = SQLiteStore(path)
    store.migrate()  # a jackpot database (a store refuses any other file), plus a table
    with store.write():
        store._exec("CREATE TABLE filler (b BLOB)")
    store.close()
    return path


def test_a_writer_with_on_wal_reports_every_commit_and_never_checkpoints_alone(
        filler_db: str) -> None:
    pages: list[int] = []
    writer = SQLiteStore(filler_db, on_wal=pages.append, synchronous="NORMAL")
    try:
        _grow(writer, 1200)  # SQLite's automatic checkpoint would reset past 1,000 pages
        assert len(pages) == 1200
        assert pages == sorted(pages)  # the WAL only grew: no checkpoint ran in the writer
        assert pages[-1] > 1000
    finally:
        writer.close()


def test_a_checkpoint_on_another_connection_copies_the_wal_and_the_writer_starts_it_over(
        filler_db: str) -> None:
    pages: list[int] = []
    writer = SQLiteStore(filler_db, on_wal=pages.append, synchronous="NORMAL")
    other = SQLiteStore(filler_db)
    try:
        _grow(writer, 50)
        size, copied = other.checkpoint()
        assert size == copied == pages[-1]
        _grow(writer, 1)
        assert pages[-1] < 10  # everything was copied: the WAL restarted from its start
        (rows,) = other._exec("SELECT count(*) FROM filler")[0]
        assert rows == 51
    finally:
        other.close()
        writer.close()


def test_a_writer_catches_up_itself_when_the_background_checkpoint_falls_behind(
        filler_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "CATCH_UP_PAGES", 40)
    pages: list[int] = []
    writer = SQLiteStore(filler_db, on_wal=pages.append, synchronous="NORMAL")
    try:
        _grow(writer, 60)
        assert max(pages) < 50  # bounded: past 40 pages the writer checkpointed
        assert pages != sorted(pages)  # ... and the WAL started over
    finally:
        writer.close()


def test_a_checkpoint_while_another_connection_checkpoints_is_skipped_not_an_error(
        filler_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(filler_db)

    def busy(*_args: object, **_kwargs: object) -> tuple[int, int]:
        raise apsw.BusyError("database is locked")

    monkeypatch.setattr(store, "conn", _ConnWith(store.conn, wal_checkpoint=busy))
    try:
        assert store.checkpoint() == (0, 0)
    finally:
        monkeypatch.undo()
        store.close()


class _ConnWith:
    """An APSW connection with some methods replaced (APSW objects refuse setattr)."""

    def __init__(self, conn: apsw.Connection, **methods: Callable[..., object]) -> None:
        self._conn = conn
        self._methods = methods

    def __getattr__(self, name: str) -> object:
        return self._methods.get(name) or getattr(self._conn, name)


def test_the_engine_checkpoints_in_the_background_and_keeps_every_operation(
        db_path: Path, open_engine: Callable[..., JackpotEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "EVERY_PAGES", 5)
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    for i in range(60):
        engine.contribute(Decimal("2.50"), op_id=f"bet-{i}")
    assert checkpointer.runs >= 1  # requested by the writers' commits, not by us
    size, copied = checkpointer.flush(timeout=10)
    assert copied == size > 0
    assert engine.verify().ok
    engine.close()
    with JackpotEngine.open(db_path) as again:
        assert again.contribute(Decimal("2.50"), op_id="bet-0").replayed
        assert again.verify().ok


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


def test_a_failed_background_checkpoint_is_skipped_though_logging_it_raises(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure's log line is a report: the checkpoint is skipped (0, 0), never an error.

    A raising log filter there made the checkpoint's answer the filter's error.
    """
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    engine.contribute(Decimal(1), groups="minor")

    def failing(_store: SQLiteStore) -> tuple[int, int]:
        msg = "checkpoint failed"
        raise StorageError(msg)

    monkeypatch.setattr(SQLiteStore, "checkpoint", failing)
    log = logging.getLogger("jackpot")
    raising = _RaisingFilter()
    log.addFilter(raising)
    try:
        assert checkpointer.flush(timeout=10) == (0, 0)
    finally:
        log.removeFilter(raising)
        monkeypatch.undo()
    size, copied = checkpointer.flush(timeout=10)  # the same actor, taking requests
    assert copied == size > 0
    assert checkpointer.alive()


def test_the_engines_writing_connections_use_the_configured_page_cache(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine(settings=Settings(page_cache_mb=48))
    store = engine._open_store()  # what every actor gets
    try:
        assert store._exec("PRAGMA cache_size") == [(-48 * 1024,)]
    finally:
        store.close()
    assert engine._reader._exec("PRAGMA cache_size") != [(-48 * 1024,)]  # reads keep the default


def _busy_first(times: int) -> tuple[list[str], Callable[..., object]]:
    """An `_exec` that fails the WAL switch `times` times as SQLite does under a race."""
    seen: list[str] = []
    real = SQLiteStore._exec

    def _exec(self: SQLiteStore, sql: str, params: tuple[object, ...] = ()) -> object:
        if sql == "PRAGMA journal_mode = WAL":
            seen.append(sql)
            if len(seen) <= times:
                raise apsw.BusyError("database is locked")
        return real(self, sql, params)  # type: ignore[arg-type]

    return seen, _exec


def test_a_busy_switch_to_wal_when_engines_open_a_new_file_at_once_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Opening a brand-new file from several engines at once, SQLite may refuse
    # the journal-mode switch with SQLITE_BUSY without calling the busy handler.
    seen, fake = _busy_first(2)
    monkeypatch.setattr(SQLiteStore, "_exec", fake)
    store = SQLiteStore(str(tmp_path / "new.db"))
    try:
        assert len(seen) == 3
        assert store._exec("PRAGMA journal_mode") == [("wal",)]
    finally:
        store.close()


def test_a_switch_to_wal_that_stays_busy_gives_up_at_the_lock_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen, fake = _busy_first(10**9)
    monkeypatch.setattr(SQLiteStore, "_exec", fake)
    with pytest.raises(StorageError, match=r"cannot open database .*new\.db.*locked"):
        SQLiteStore(str(tmp_path / "new.db"), lock_timeout_ms=50)
    assert len(seen) > 1


def test_a_flush_leaves_the_checkpoint_the_writers_asked_for_busy_until_it_ran(
        filler_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the requested checkpoint ends the request: no second one is asked for meanwhile.

    A flush's checkpoint ending first cleared the flag of the one queued
    behind it, and the next writer's note asked for a redundant checkpoint.
    """
    started = [threading.Event() for _ in range(3)]
    release = [threading.Event() for _ in range(3)]
    calls: list[int] = []
    run = SQLiteStore.checkpoint

    def held(store: SQLiteStore) -> tuple[int, int]:
        n = len(calls)
        calls.append(n)
        if n < len(started):
            started[n].set()
            assert release[n].wait(timeout=10)
        return run(store)

    checkpointer = checkpoint_module.Checkpointer(lambda: SQLiteStore(filler_db))
    try:
        checkpointer.ready(timeout=10)
        monkeypatch.setattr(SQLiteStore, "checkpoint", held)
        flushed: list[tuple[int, int]] = []
        flush = threading.Thread(target=lambda: flushed.append(checkpointer.flush(timeout=10)))
        flush.start()
        assert started[0].wait(timeout=10)  # the flush's checkpoint runs ...
        checkpointer.note(checkpoint_module.EVERY_PAGES)  # ... and the writers' is queued
        assert checkpointer.runs == 1
        release[0].set()
        flush.join(timeout=10)
        assert flushed == [(0, 0)]  # an empty WAL
        assert started[1].wait(timeout=10)  # the writers' checkpoint runs now
        checkpointer.note(2 * checkpoint_module.EVERY_PAGES)  # due, but one is running
        assert checkpointer.runs == 1  # was 2: the flush had ended the request
        release[1].set()
        release[2].set()
        assert checkpointer.flush(timeout=10) == (0, 0)  # after the writers' one ended
        checkpointer.note(3 * checkpoint_module.EVERY_PAGES)
        assert checkpointer.runs == 2  # ended, the next one is asked for
    finally:
        for event in release:
            event.set()
        checkpointer.stop(timeout=10)


def test_stopping_a_checkpointer_that_has_stopped_already_returns(filler_db: str) -> None:
    """Before: `ActorDeadError` (its stop request went to a dead actor); Pykka's stop said so
    by returning instead, as the checkpointer did before its actor closed on a request."""
    checkpointer = checkpoint_module.Checkpointer(lambda: SQLiteStore(filler_db))
    checkpointer.ready(timeout=10)
    checkpointer.stop(timeout=10)
    assert not checkpointer.alive()
    checkpointer.stop(timeout=10)  # stopped already: nothing to do
    assert not checkpointer.alive()


def test_a_checkpointer_that_does_not_stop_in_time_is_named_as_close_names_it(
        filler_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: "ActorRef (urn:uuid:...) did not stop within 0.2 s": nothing to act on."""
    running, release = threading.Event(), threading.Event()
    run = SQLiteStore.checkpoint

    def held(store: SQLiteStore) -> tuple[int, int]:
        running.set()
        assert release.wait(timeout=60)
        return run(store)

    checkpointer = checkpoint_module.Checkpointer(lambda: SQLiteStore(filler_db))
    checkpointer.ready(timeout=10)
    monkeypatch.setattr(SQLiteStore, "checkpoint", held)
    checkpointer.note(checkpoint_module.EVERY_PAGES)
    assert running.wait(timeout=10)
    try:
        with pytest.raises(pykka.Timeout) as late:
            checkpointer.stop(timeout=0.2)
    finally:
        release.set()
    assert str(late.value) == ("checkpointer did not stop within 0.2 s: it is still running "
                               "a request, and stops when that ends")
    checkpointer.stop(timeout=10)
    assert not checkpointer.alive()


def test_a_checkpointer_that_stopped_alone_is_replaced_when_a_checkpoint_falls_due(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: only a level's or the coordinator's restart replaced it, so it stayed dead.

    The writers then did all the copying themselves, after their commits,
    every `CATCH_UP_PAGES` (the WAL stayed bounded), and nothing said so.
    """
    monkeypatch.setattr(checkpoint_module, "EVERY_PAGES", 5)
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    dead = checkpointer._actor.actor_ref
    dead.stop()  # its thread ended; every other actor lives on
    with hearing() as said:
        for i in range(60):
            engine.contribute(Decimal("2.50"), op_id=f"bet-{i}")
    assert checkpointer.alive()
    assert checkpointer._actor.actor_ref != dead
    assert checkpointer.runs >= 1  # requested by the writers' commits again
    assert [(severity, line) for severity, line, _, outcome in said
            if outcome == "actor_restart"] == [
        ("ERROR", "checkpointer had stopped; a replacement was started")]
    assert engine.stats.snapshot()["actor_restarts:actor:checkpointer"] == 1
    size, copied = checkpointer.flush(timeout=10)
    assert copied == size > 0
    assert engine.verify().ok


def test_a_checkpointer_replacement_that_cannot_start_is_tried_again_when_next_due(
        filler_db: str) -> None:
    """Not at every commit: at most once every EVERY_PAGES, as a checkpoint falls due."""
    opened: list[int] = []

    def open_store() -> SQLiteStore:
        opened.append(len(opened))
        if len(opened) == 2:
            msg = "the file is out of reach for a moment"
            raise StorageError(msg)
        return SQLiteStore(filler_db)

    replaced: list[BaseException | None] = []
    every = checkpoint_module.EVERY_PAGES
    checkpointer = checkpoint_module.Checkpointer(open_store, replaced=replaced.append)
    try:
        checkpointer.ready(timeout=10)
        checkpointer._actor.actor_ref.stop()  # its thread ended by itself
        checkpointer.note(every - 1)  # no checkpoint due: nothing is started
        assert (opened, replaced) == ([0], [])
        checkpointer.note(every)  # due: a replacement starts, and cannot open its connection
        [first] = replaced  # None: started, then stopped (its error logged); or seen stopped
        assert first is None or (
            isinstance(first, pykka.ActorDeadError)
            and str(first).endswith("stopped while starting: StorageError: the file is out "
                                    "of reach for a moment")), repr(first)
        assert checkpointer._actor.actor_ref.actor_stopped.wait(10)
        assert opened == [0, 1]
        checkpointer.note(2 * every - 1)  # not due yet: not tried again at every commit
        assert opened == [0, 1]
        checkpointer.note(2 * every)
        checkpointer.ready(timeout=10)
        assert (opened, replaced) == ([0, 1, 2], [first, None])
        assert checkpointer.flush(timeout=10) == (0, 0)  # it runs checkpoints again
    finally:
        checkpointer.stop(timeout=10)


def test_a_revival_and_a_restart_that_race_leave_one_checkpointer_stopped_by_close(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the restart path saw the dead actor, then replaced the one a commit revived.

    A writer's commit revives it (`note`, in the writer's thread) while a
    call about to be resent replaces the stopped actors (`_restarts._replace_dead`):
    both saw it stopped, so both started one, and the first was dropped,
    running: close() never stopped it (an actor of the engine registered,
    its connection open, after close()), and two restarts were told.
    """
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    checkpointer._actor.actor_ref.stop()  # its thread ended by itself
    restarting, reviver = threading.Event(), threading.get_ident()
    restarter: list[tuple[threading.Thread, list[Any]]] = []
    real_start, real_restart = checkpoint_module.start_actor, checkpointer.restart

    def start_actor(*args: Any) -> Any:
        if threading.get_ident() == reviver and not restarter:
            # The revival holds the lock: the restart starts now, sees the
            # actor stopped, and is let in once it asks to replace it.
            restarter.append(in_thread(lambda: restart_dead_actors(engine)))
            assert restarting.wait(HANG)
        return real_start(*args)

    def restart() -> Any:
        restarting.set()
        return real_restart()

    monkeypatch.setattr(checkpoint_module, "start_actor", start_actor)
    monkeypatch.setattr(checkpointer, "restart", restart)
    with hearing() as said:
        checkpointer.note(checkpoint_module.EVERY_PAGES)  # a checkpoint falls due: revived
        [(thread, out)] = restarter
        thread.join(HANG)
    assert out == [None]
    engine.close()
    assert pykka.ActorRegistry.get_by_class(checkpoint_module._CheckpointActor) == []
    assert [line for _, line, _, outcome in said if outcome == "actor_restart"] == [
        "checkpointer had stopped; a replacement was started"]
    assert engine.stats.snapshot()["actor_restarts:actor:checkpointer"] == 1
