"""Writers of one SQLite file take turns (jackpot.storage._turns).

The turn is an `flock` on `<database>-lock`, taken before `BEGIN IMMEDIATE`.
These tests hold it from another process (a real one, which the kernel
releases however it ends) or another `WriterTurns`, and check the promises:
a turn that does not come within the lock timeout is a `LockTimeoutError`
that changed nothing, a turn given up on is released when it comes, closing
never hangs, and a lock file that cannot be opened only costs the turns.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _helpers import in_thread
from jackpot import JackpotEngine, LockTimeoutError, Settings
from jackpot.actors._mailbox import Mailbox
from jackpot.actors._ticket import Ticket
from jackpot.storage import _turns as turns_module
from jackpot.storage import open_store
from jackpot.storage._turns import LOCK_SUFFIX, WriterTurns

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


@contextmanager
def held_by_another_process(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Hold the writers' lock of `database` in a child process until the block ends."""
    with subprocess.Popen([sys.executable, "-c", _HOLDER, f"{database}{LOCK_SUFFIX}"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "held\n"
            yield child
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(30)


Turns = Callable[[int], list[WriterTurns]]


@pytest.fixture
def writer_turns(tmp_path: Path) -> Iterator[Turns]:
    """Make `n` WriterTurns of one database file (as writers of it); close them all after."""
    made: list[WriterTurns] = []

    def make(n: int) -> list[WriterTurns]:
        made.extend(WriterTurns(str(tmp_path / "pools.db")) for _ in range(n))
        return made[-n:]

    yield make
    for turns in made:
        turns.close()


def test_a_writer_waits_for_its_turn_no_longer_than_the_lock_timeout(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db, settings=Settings(lock_timeout_ms=200)) as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="before")
        before = engine.pools()
        with held_by_another_process(db):
            with pytest.raises(LockTimeoutError, match="nothing was changed"):
                engine.contribute(Decimal(10), groups="minor", op_id="held-out")
            assert engine.pools() == before
        # The holder has gone: the same request is applied now, once.
        result = engine.contribute(Decimal(10), groups="minor", op_id="held-out")
        assert not result.replayed
        assert engine.verify().ok


def test_a_killed_holder_frees_the_turn(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "pools.db"
    wants = threading.Event()
    start_helper = WriterTurns._start_helper

    def noting_start(self: WriterTurns) -> None:
        wants.set()  # the turn was taken: this writer waits for it
        start_helper(self)

    monkeypatch.setattr(WriterTurns, "_start_helper", noting_start)
    with JackpotEngine.open(db) as engine:  # lock timeout 5 s: the kill comes first
        with held_by_another_process(db) as holder:
            done = threading.Event()
            results = []

            def bet() -> None:
                results.append(engine.contribute(Decimal(3), groups="minor", op_id="waiting"))
                done.set()

            waiter = threading.Thread(target=bet)
            waiter.start()
            assert wants.wait(30), "the bet did not wait for the turn the child holds"
            assert not done.is_set()  # (nor can it end before the kill)
            holder.send_signal(signal.SIGKILL)
            waiter.join(30)
            assert done.is_set()
        assert results[0].versions == {"minor": 2}
        assert engine.verify().ok


_FORKING_HOLDER = """
import os, sys
from jackpot.storage import SQLiteStore
store = SQLiteStore(sys.argv[1], create=False)
with store.write():
    pass  # the lock file is open now
child = os.fork()
if child == 0:  # unrelated work in a forked child (multiprocessing's fork, a pre-fork server)
    sys.stdin.read()
    os._exit(0)
print(child, flush=True)
with store.write():  # the parent dies while it holds its turn
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_killed_holder_frees_the_turn_though_it_forked(tmp_path: Path) -> None:
    """A forked child shares its parent's open lock file, and with it the lock:
    it must not keep the turn of a parent that died holding it."""
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    with subprocess.Popen([sys.executable, "-c", _FORKING_HOLDER, str(db)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        try:
            assert holder.stdout.readline() == "held\n"
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
            with JackpotEngine.open(db, settings=Settings(lock_timeout_ms=2000)) as engine:
                assert engine.contribute(Decimal(1), groups="minor").versions == {"minor": 2}
        finally:
            os.kill(child, signal.SIGKILL)  # its stdin is the dead holder's pipe: it would wait


def test_a_turn_given_up_on_is_released_when_it_comes(writer_turns: Turns) -> None:
    holder, quitter, third = writer_turns(3)
    assert holder.acquire(1)
    assert not quitter.acquire(0.05)  # its helper still waits in flock
    holder.release()
    # The quitter's helper gets the lock and, the turn abandoned, releases
    # it: a third writer then gets it (were it kept, this would time out).
    # Only once the helper has had it: else the third may take it first.
    wait_until(lambda: not quitter._wanted)
    assert third.acquire(10)
    third.release()


def test_a_turn_given_up_on_and_asked_for_again_is_handed_over(writer_turns: Turns) -> None:
    holder, writer = writer_turns(2)
    assert holder.acquire(1)
    assert not writer.acquire(0.05)
    asking, got = in_thread(lambda: writer.acquire(10))
    holder.release()
    asking.join(30)
    assert got == [True]
    assert not holder.acquire(0.05)  # the writer holds it now
    writer.release()
    assert holder.acquire(10)
    holder.release()


def test_closing_while_the_helper_waits_does_not_hang(writer_turns: Turns) -> None:
    holder, writer = writer_turns(2)
    assert holder.acquire(1)
    assert not writer.acquire(0.05)
    helper = writer._helper  # the thread under test
    assert helper is not None
    writer.close()  # returns at once: the helper still waits in flock
    assert helper.is_alive()
    holder.release()
    helper.join(30)  # it got the lock, closed the file (which released it) and ended
    assert not helper.is_alive()
    assert holder.acquire(10)
    holder.release()
    assert writer.acquire(0)  # closed: no turns any more, never a wait


def test_a_lock_file_that_cannot_be_opened_only_costs_the_turns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "pools.db"
    Path(f"{db}{LOCK_SUFFIX}").mkdir()  # a directory where the lock file should be
    with caplog.at_level(logging.WARNING, logger="jackpot"), JackpotEngine.open(db) as engine:
        result = engine.contribute(Decimal(10), groups="minor", op_id="bet")
        assert result.versions == {"minor": 2}
        assert engine.verify().ok
    assert any("cannot open the writers' lock file" in r.getMessage() for r in caplog.records)


def test_the_lock_file_gets_the_database_files_permissions(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    db.chmod(0o660)
    Path(f"{db}{LOCK_SUFFIX}").unlink()
    with JackpotEngine.open(db) as engine:
        engine.contribute(Decimal(1), groups="minor")
    umask = os.umask(0o022)  # reading it means setting it: put it back at once
    os.umask(umask)
    assert Path(f"{db}{LOCK_SUFFIX}").stat().st_mode & 0o777 == 0o660 & ~umask


def test_the_health_command_takes_its_turn_and_makes_no_lock_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its probe waits for a turn held elsewhere, as a writer does; with no lock file, it
    makes none (a look must leave nothing beside the database) and says nothing of it."""
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    health = [sys.executable, "-m", "jackpot.cli", "health", "--json", "--db", str(db)]
    with held_by_another_process(db):
        done = subprocess.run(health, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["checks"]["database"] == {
        "status": "degraded", "detail": ("write lock not had within 250 ms: another "
                                         "connection holds it, writes are waiting")}
    Path(f"{db}{LOCK_SUFFIX}").unlink()
    with caplog.at_level(logging.DEBUG, logger="jackpot"):
        probe = WriterTurns(str(db), create=False)
        try:
            assert probe.acquire(0)  # no turn to wait for: nobody takes turns
            probe.release()
        finally:
            probe.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pools.db"]
    assert caplog.records == []


# -- what queues while a batch waits for its turn joins it ---------------------------


def database_lock_waits(engine: JackpotEngine) -> float:
    """How many transactions the engine began (one lock-wait sample each)."""
    return sum(s.value for family in text_string_to_metric_families(engine.metrics_text())
               for s in family.samples
               if s.name == "jackpot_lock_wait_seconds_count" and s.labels["lock"] == "database")


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.001)


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")], ids=["one-level", "two-levels"])
def test_requests_that_queue_while_a_batch_waits_for_its_turn_join_it(
        tmp_path: Path, groups: str | tuple[str, ...]) -> None:
    db = tmp_path / "pools.db"
    n = 8
    with JackpotEngine.open(db) as engine:
        first = engine.contribute(Decimal(1), groups=groups, op_id="warm")
        mailbox = engine._mailboxes["minor" if isinstance(groups, str) else None]
        put, all_put = mailbox.put, threading.Event()
        puts = []

        def counting_put(*args: Any) -> bool:
            puts.append(1)
            if len(puts) == n:
                all_put.set()
            return put(*args)

        mailbox.put = counting_put  # type: ignore[method-assign]
        before = database_lock_waits(engine)
        results: list[Any] = []
        bets = [threading.Thread(target=lambda i=i: results.append(
            engine.contribute(Decimal(2), groups=groups, op_id=f"bet-{i}"))) for i in range(n)]
        with held_by_another_process(db):
            bets[0].start()
            wait_until(lambda: len(puts) == 1 and not mailbox._items)  # claimed: it waits
            for t in bets[1:]:
                t.start()
            assert all_put.wait(30)  # the other seven queue behind it
        for t in bets:
            t.join(30)
        assert len(results) == n
        assert database_lock_waits(engine) - before == 1  # one transaction for all eight
        start = first.versions["minor"]
        assert sorted(r.versions["minor"] for r in results) == list(range(start + 1,
                                                                          start + n + 1))
        assert engine.verify().ok


def test_a_request_on_a_level_the_waiting_batch_does_not_hold_waits_for_its_own_batch(
        tmp_path: Path) -> None:
    """Only requests on the levels the coordinator holds join its waiting batch.

    "other" names mega, whose guard the waiting batch does not hold: joining,
    it would write mega behind the back of mega's actor, whose cached state
    then goes stale (found again only as a reload). It gets a transaction of
    its own. Kills the coordinator's top-up taking any queued request
    (tests/model/MUTATION.md, the hand-made run).
    """
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db) as engine:
        engine.contribute(Decimal(1), groups=("major", "minor"), op_id="warm")
        mailbox = engine._mailboxes[None]
        put, puts = mailbox.put, []

        def counting_put(*args: Any) -> bool:
            puts.append(1)
            return put(*args)

        mailbox.put = counting_put  # type: ignore[method-assign]
        before = database_lock_waits(engine)
        results: dict[str, Any] = {}

        def bet(op_id: str, groups: tuple[str, ...]) -> None:
            results[op_id] = engine.contribute(Decimal(2), groups=groups, op_id=op_id)

        held = threading.Thread(target=bet, args=("held", ("major", "minor")))
        other = threading.Thread(target=bet, args=("other", ("mega", "minor")))
        with held_by_another_process(db):
            held.start()
            wait_until(lambda: len(puts) == 1 and not mailbox._items)  # claimed: it waits
            other.start()
            wait_until(lambda: len(puts) == 2)  # queued while the first batch waits
        held.join(30)
        other.join(30)
        assert database_lock_waits(engine) - before == 2  # a transaction each
        assert results["held"].versions == {"major": 3, "minor": 3}
        assert results["other"].versions == {"mega": 2, "minor": 4}
        assert engine.contribute(Decimal(2), groups="mega", op_id="mega-only").versions == {
            "mega": 3}
        assert engine.stats.snapshot().get("reloads", 0) == 0  # mega's actor knew version 2
        assert engine.verify().ok


def test_claim_more_takes_what_fits_and_keeps_the_rest_in_order() -> None:
    mailbox = Mailbox(max_batch=3)
    ops = [SimpleNamespace(names=names) for names in
           (("a",), ("b",), ("a",), ("a",), ("a", "b"), ("a",))]
    tickets = [Ticket() for _ in ops]
    for ticket, op in zip(tickets, ops, strict=True):
        mailbox.put(ticket, op)  # type: ignore[arg-type]
    assert tickets[2].abandon()  # its caller gave up: skipped, not claimed
    owner: Any = object()  # an actor's ref, as the ticket records it
    taken = mailbox.claim_more(lambda op: set(op.names) <= {"a"}, room=3, owner=owner)
    assert [op for _, op in taken] == [ops[0], ops[3]]  # the room counts the abandoned one
    assert not tickets[3].abandon()  # claimed: its caller waits for the outcome
    assert [t.owner for t, _ in taken] == [owner, owner]
    assert tickets[2].owner is None
    rest, more = mailbox.take()
    assert [op for _, op in rest] == [ops[1], ops[4], ops[5]]
    assert not more
    assert mailbox.claim_more(lambda op: True, room=3, owner=owner) == []


def test_a_wait_for_the_turn_interrupted_gives_the_turn_up(
        writer_turns: Turns, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (any BaseException) in the wait: the turn, when it comes, is released."""
    holder, writer, third = writer_turns(3)
    assert holder.acquire(1)

    wait_for, me = writer._cond.wait_for, threading.current_thread()

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        if threading.current_thread() is me:  # not the helper's wait
            raise KeyboardInterrupt
        return wait_for(*args, **kwargs)

    monkeypatch.setattr(writer._cond, "wait_for", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.acquire(10)
    monkeypatch.undo()
    holder.release()
    wait_until(lambda: not writer._wanted)  # its helper has had the lock
    assert third.acquire(10)  # were the turn kept for the interrupted writer: a timeout
    third.release()


def test_no_thread_to_wait_with_costs_the_turn_not_the_write(
        writer_turns: Turns, monkeypatch: pytest.MonkeyPatch) -> None:
    holder, writer = writer_turns(2)
    assert holder.acquire(1)
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        if self.name == "jackpot-writer-turns":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert writer.acquire(10)  # at once: this write waits on SQLite's lock alone
    writer.release()
    monkeypatch.undo()
    assert not writer.acquire(0.05)  # a helper now: it takes turns again
    holder.release()
    assert writer.acquire(10)
    writer.release()


def test_a_closed_writer_whose_helper_still_waits_is_not_kept_waiting(
        writer_turns: Turns) -> None:
    holder, writer = writer_turns(2)
    assert holder.acquire(1)
    assert not writer.acquire(0.05)  # its helper now waits in flock
    writer.close()
    # No more turns once closed (its connection fails the write itself):
    # this waited for a turn that could only come with the holder's release.
    assert writer.acquire(10)


def _as_acquire_returns(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    turns = store._turns
    acquire = turns.acquire

    def interrupted_after(timeout: float) -> bool:
        assert acquire(timeout)
        raise KeyboardInterrupt

    monkeypatch.setattr(turns, "acquire", interrupted_after)


def _as_flock_returns(_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = turns_module.fcntl

    class InterruptedAfterFlock:  # signals are handled right after a builtin returns
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            real.flock(fd, operation)
            if operation & real.LOCK_NB:
                raise KeyboardInterrupt

    monkeypatch.setattr(turns_module, "fcntl", InterruptedAfterFlock())


@pytest.mark.parametrize("interrupt", [_as_acquire_returns, _as_flock_returns],
                         ids=["as-acquire-returns", "as-flock-returns"])
def test_an_interrupt_as_the_turn_is_taken_gives_it_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        interrupt: Callable[[Any, pytest.MonkeyPatch], None]) -> None:
    """Ctrl-C landing as the turn is taken, before the transaction began."""
    db = str(tmp_path / "pools.db")
    store, other = open_store(db), WriterTurns(db)
    try:
        with store.write():
            pass  # the store's turns exist from its first write
        interrupt(store, monkeypatch)
        with pytest.raises(KeyboardInterrupt), store.write():
            pytest.fail("the block ran")
        monkeypatch.undo()
        assert other.acquire(0.05)  # were the turn kept, this would wait for the next write
        other.release()
        with store.write():
            pass
    finally:
        store.close()
        other.close()


# -- a raising log filter costs no write ----------------------------------------------


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


@contextmanager
def raising_log_filter() -> Iterator[None]:
    """Have every record of the `jackpot` logger fail in a filter while the block runs."""
    log, raising = logging.getLogger("jackpot"), _RaisingFilter()
    log.addFilter(raising)
    try:
        yield
    finally:
        log.removeFilter(raising)


def test_a_lock_file_that_cannot_be_opened_costs_no_write_though_logging_it_raises(
        tmp_path: Path) -> None:
    # The warning escaped the first write, which made the turns: that write
    # failed, and the next, and every write of the connection after.
    db = tmp_path / "pools.db"
    Path(f"{db}{LOCK_SUFFIX}").mkdir()
    with raising_log_filter(), JackpotEngine.open(db) as engine:
        assert engine.contribute(Decimal(10), groups="minor").versions == {"minor": 2}
        assert engine.contribute(Decimal(10), groups="minor").versions == {"minor": 3}
        assert engine.verify().ok


def _no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        if self.name == "jackpot-writer-turns":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", no_thread)


def _flock_failing(*, blocking: bool) -> Callable[[pytest.MonkeyPatch], None]:
    """Make the connection's `flock` (the helper's if `blocking`) fail with an OSError."""
    def sabotage(monkeypatch: pytest.MonkeyPatch) -> None:
        real = turns_module.fcntl

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            @staticmethod
            def flock(fd: int, operation: int) -> None:
                if operation != real.LOCK_UN and bool(operation & real.LOCK_NB) != blocking:
                    raise OSError(37, "No locks available")
                real.flock(fd, operation)

        monkeypatch.setattr(turns_module, "fcntl", Failing())
    return sabotage


@pytest.mark.parametrize(("sabotage", "turns_after"), [
    (_no_thread, True), (_flock_failing(blocking=False), False),
    (_flock_failing(blocking=True), False)], ids=["no-thread", "flock", "helpers-flock"])
def test_a_turn_that_cannot_be_waited_for_costs_no_write_though_logging_it_raises(
        writer_turns: Turns, monkeypatch: pytest.MonkeyPatch,
        sabotage: Callable[[pytest.MonkeyPatch], None], turns_after: bool) -> None:
    # Each failure is logged, then the write goes on without its turn. The
    # log line raising failed that write (no thread, flock), or ended the
    # helper with the turn still wanted: this write, and every later one
    # of the connection, waited the whole lock timeout and gave up.
    holder, writer = writer_turns(2)
    assert holder.acquire(1)
    sabotage(monkeypatch)
    with raising_log_filter():
        assert writer.acquire(10)  # at once: this write waits on SQLite's lock alone
        writer.release()
    monkeypatch.undo()
    assert writer.acquire(0.05) is not turns_after  # a turn (held) again, or none at all
    writer.release()
