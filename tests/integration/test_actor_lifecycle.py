"""Actors never outlive a failed open, a raising observer or a stopped checkpointer."""

from __future__ import annotations

import gc
import logging
import math
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pykka
import pytest
from prometheus_client import generate_latest

import jackpot._closing
import jackpot.engine
from _helpers import (
    HANG,
    crash_after_claiming,
    crash_once_claimed,
    hearing,
    in_thread,
    left_running,
    pykka_debug_raising_on,
    read_ledger,
    run_python,
    track_stores,
)
from jackpot import (
    EngineClosedError,
    GroupConfig,
    InsufficientFundsError,
    JackpotEngine,
    JackpotError,
    LockTimeoutError,
    Settings,
    StorageError,
)
from jackpot._restarts import restart_dead_actors
from jackpot.actors import (
    Coordinator,
    LevelGuard,
    Mailbox,
    PoolActor,
    Ticket,
    wait_ready,
    wait_stopped,
)
from jackpot.actors.checkpoint import _CheckpointActor
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore


def test_left_running_names_an_actor_left_running_not_one_that_stopped_meanwhile() -> None:
    """The check these tests end with: an actor started since the snapshot and alive.

    (It was the registry equal to the snapshot: another test's actor
    stopping meanwhile failed it.)
    """
    earlier = pykka.ThreadingActor.start()  # (another test's, still running)
    before = set(pykka.ActorRegistry.get_all())
    leaked = pykka.ThreadingActor.start()
    try:
        earlier.stop()
        assert left_running(before) == {leaked}
    finally:
        leaked.stop()
    assert left_running(before) == set()


def test_a_failed_open_stops_every_actor_it_started(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    JackpotEngine.open(db_path).close()  # the file and its levels exist
    before = set(pykka.ActorRegistry.get_all())

    def broken(self: PoolActor) -> None:
        msg = "cannot open the level's connection"
        raise StorageError(msg)

    monkeypatch.setattr(PoolActor, "on_start", broken)
    with pytest.raises(StorageError):
        JackpotEngine.open(db_path)
    assert left_running(before) == set()  # no thread left behind


class _RaisingPykkaFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


@contextmanager
def _pykka_logging_raises() -> Iterator[None]:
    log = logging.getLogger("pykka")
    raising = _RaisingPykkaFilter()
    log.addFilter(raising)
    try:
        yield
    finally:
        log.removeFilter(raising)


@pytest.mark.parametrize("raising", [_pykka_logging_raises,
                                     lambda: pykka_debug_raising_on("Unregistered")],
                         ids=["any line", "the Unregistered line at DEBUG"])
def test_an_actor_that_cannot_start_is_told_though_logging_on_pykka_raises(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        raising: Callable[[], AbstractContextManager[None]]) -> None:
    """A failed `on_start` stops its actor without Pykka's log line.

    Raised to Pykka, the error was logged on the `pykka` logger before the
    actor was marked stopped: a raising filter there ended its thread with
    the actor still registered and alive. open() then waited out its
    timeouts, told "did not open their connections" instead of why, and
    left the actors registered for ever. And the actor was marked stopped
    after Pykka's "Unregistered" line, without a `finally`: with that line
    raising, the same.
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())

    def broken(self: SQLiteStore, name: str) -> None:
        msg = "cannot load the level"
        raise StorageError(msg)

    monkeypatch.setattr(SQLiteStore, "load_level", broken)
    with raising(), pytest.raises(
            StorageError, match=r"^the engine's actors could not start \(their error is logged\): "
                                r"PoolActor \(urn:uuid:[-0-9a-f]+\) stopped while starting: "
                                r"StorageError: cannot load the level$"):
        JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=100, max_retry_attempts=0,
                                                      retry_delay_ms=1))
    assert left_running(before) == set()  # no actor left registered


@pytest.mark.parametrize("line", ["Registered {} (", "Starting {} ("])
@pytest.mark.parametrize("actor", ["PoolActor", "Coordinator", "_CheckpointActor"])
def test_an_actor_whose_start_raises_on_pykkas_log_line_is_left_registered_by_none(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str, line: str) -> None:
    """Pykka logs these (DEBUG) after it registered the actor, before it starts its thread.

    A filter raising there left an actor registered that no thread ran:
    `ActorRegistry.stop_all()` (as every Pykka program's teardown calls it)
    then waited for it for ever.
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    opened, closed = track_stores(monkeypatch)
    with pykka_debug_raising_on(line.format(actor)), pytest.raises(
            RuntimeError, match=r"^log filter failed$"):
        JackpotEngine.open(db_path)
    assert left_running(before) == set()  # stop_all() has nothing to wait for
    assert opened  # (the reader at least)
    assert [s for s in opened if s not in closed] == []


class _StartsAnotherThenRaises(logging.Filter):
    """On the first "Starting PoolActor" line, open and close an engine on `other`, then raise."""

    def __init__(self, other: Path) -> None:
        super().__init__()
        self.other = other
        self.done = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.done and record.getMessage().startswith("Starting PoolActor ("):
            self.done = True
            JackpotEngine.open(self.other).close()  # starts (and stops) actors of its own
            msg = "log filter failed"
            raise RuntimeError(msg)
        return True


def test_an_actor_whose_start_raises_after_another_start_in_its_thread_is_left_by_none(
        db_path: Path, tmp_path: Path) -> None:
    """A start nested in another (from a log filter) must not make the outer forget its actor.

    The inner `start_actor` cleared the thread's note of the actor being
    built as it returned: the outer start, raising then, left its actor
    registered with no thread to run it, and `ActorRegistry.stop_all()`
    waited for it for ever.
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    log = logging.getLogger("pykka")
    level, nested = log.level, _StartsAnotherThenRaises(tmp_path / "other.db")
    log.setLevel(logging.DEBUG)
    log.addFilter(nested)
    try:
        with pytest.raises(RuntimeError, match=r"^log filter failed$"):
            JackpotEngine.open(db_path)
    finally:
        log.removeFilter(nested)
        log.setLevel(level)
    assert nested.done
    assert left_running(before) == set()  # stop_all() has nothing to wait for


@pytest.mark.parametrize("at_its_proxy", [False, True], ids=["thread started", "proxy"])
@pytest.mark.parametrize("actor", ["PoolActor", "Coordinator", "_CheckpointActor"])
def test_an_actor_whose_start_is_interrupted_once_its_thread_runs_stops_and_closes(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str, at_its_proxy: bool) -> None:
    """Ctrl-C in Pykka's `start` just after it started the actor's thread, or as its proxy is built.

    Nobody held the actor's ref: it ran on, registered, its connection
    open, until the process ended.
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    opened, closed = track_stores(monkeypatch)
    started: list[threading.Thread] = []
    real_start, real_proxy = threading.Thread.start, pykka.ActorRef.proxy

    def start_then_interrupted(thread: threading.Thread) -> None:
        real_start(thread)
        if thread.name.startswith(f"{actor}-") and not started:  # (Pykka's thread names)
            started.append(thread)
            if not at_its_proxy:
                raise KeyboardInterrupt

    def interrupted_proxy(ref: pykka.ActorRef[Any]) -> Any:
        if ref.actor_class.__name__ == actor:
            raise KeyboardInterrupt
        return real_proxy(ref)

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)
    if at_its_proxy:
        monkeypatch.setattr(pykka.ActorRef, "proxy", interrupted_proxy)
    with pytest.raises(KeyboardInterrupt):
        JackpotEngine.open(db_path)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    monkeypatch.setattr(pykka.ActorRef, "proxy", real_proxy)
    assert left_running(before) == set()
    (thread,) = started
    thread.join(HANG)  # it stops once its on_start has run
    assert not thread.is_alive()
    assert opened  # (the reader, and that actor's at least)
    assert [s for s in opened if s not in closed] == []


class _StillRegistered(logging.Handler):
    """Note each "could not start" record, and whether its actor was still registered then."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "outcome", None) == "actor_start_failed":
            actor = record.args[0]  # type: ignore[index]
            self.seen.append((record.getMessage(), pykka.ActorRegistry.get_by_urn(
                actor.actor_urn) is not None))


def test_open_refused_as_actors_could_not_start_has_logged_their_error_by_then(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open() says "their error is logged": it is, before the actor counts as stopped.

    The log line was written after the actor was marked stopped, so open()
    could raise (and the caller read the log) before it was there.
    """
    JackpotEngine.open(db_path).close()

    def broken(self: SQLiteStore, name: str) -> None:
        msg = "cannot load the level"
        raise StorageError(msg)

    monkeypatch.setattr(SQLiteStore, "load_level", broken)
    handler = _StillRegistered()
    log = logging.getLogger("jackpot")
    log.addHandler(handler)
    try:
        with pytest.raises(StorageError, match="could not start"):
            JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=100,
                                                          max_retry_attempts=0, retry_delay_ms=1))
    finally:
        log.removeHandler(handler)
    assert handler.seen  # (one per level whose actor had started by then)
    for message, registered in handler.seen:
        assert re.fullmatch(r"PoolActor \(urn:uuid:[-0-9a-f]+\) could not start", message)
        assert registered


def test_open_refused_as_an_actor_could_not_start_says_why_though_its_log_line_is_held(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log handler that blocks on the "could not start" line (a slow or stuck sink).

    Before: the actor, logging, still counted as alive: open() waited out
    its timeout and said "did not open their connections within 0.3 s".
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    real = SQLiteStore.load_level

    def broken(self: SQLiteStore, name: str) -> Any:
        if name == "minor":
            msg = "cannot load the level"
            raise StorageError(msg)
        return real(self, name)

    held, release = threading.Event(), threading.Event()

    class Holding(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:  # (not under the handler's lock)
            if getattr(record, "outcome", None) == "actor_start_failed":
                held.set()
                release.wait(HANG)
            return True

    monkeypatch.setattr(SQLiteStore, "load_level", broken)
    log = logging.getLogger("jackpot")
    handler = Holding()
    log.addHandler(handler)
    try:
        with pytest.raises(StorageError, match=(
                r"^the engine's actors could not start \(their error is logged\): PoolActor "
                r"\(urn:uuid:[-0-9a-f]+\) could not start: StorageError: cannot load the level "
                r"\(a log handler held its error's line back: it stops once the line is "
                r"written\)$")):
            JackpotEngine.open(db_path, settings=Settings(
                lock_timeout_ms=100, max_retry_attempts=0, retry_delay_ms=1))
        assert held.is_set()
    finally:
        release.set()
        log.removeHandler(handler)
    for ref in set(pykka.ActorRegistry.get_all()) - before:  # it stops once its line is out
        assert ref.actor_stopped.wait(HANG)
    assert left_running(before) == set()


def test_open_says_why_its_first_actor_failed_though_many_more_failed_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every level's actor fails to start, the first (the one open() waits for) first.

    Seen in CI as 100 levels ran out of file descriptors: the reasons were
    kept for the last 64 failures only, so open() said the first actor
    "stopped while starting" and not why.
    """
    path = tmp_path / "many.db"
    count = 80
    levels = [GroupConfig(f"l{i:02d}", seed=10, contribution_rate="0.01") for i in range(count)]
    JackpotEngine.open(path, levels).close()
    entered, lock, go = [0], threading.Lock(), threading.Event()
    first_told, others_told = threading.Event(), threading.Event()
    told: list[str] = []

    def broken(self: SQLiteStore, name: str) -> None:
        with lock:  # none fails before every actor has started (else open() stops starting)
            entered[0] += 1
            if entered[0] == count:
                go.set()
        go.wait(HANG)
        if name != "l00":  # the first one fails first
            first_told.wait(HANG)
        msg = f"cannot load {name}"
        raise StorageError(msg)

    class HoldingTheFirst(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:  # (not under the handler's lock)
            if getattr(record, "outcome", None) != "actor_start_failed":
                return True
            actor = record.args[0] if isinstance(record.args, tuple) else None
            if not isinstance(actor, PoolActor):
                return True
            if actor.name == "l00":  # stopped only once every other one has failed
                first_told.set()
                others_told.wait(HANG)
                return True
            with lock:
                told.append(actor.name)
                if len(told) == count - 1:
                    others_told.set()
            return True

    monkeypatch.setattr(SQLiteStore, "load_level", broken)
    log = logging.getLogger("jackpot")
    handler = HoldingTheFirst()
    log.addHandler(handler)
    try:
        with pytest.raises(StorageError) as raised:
            JackpotEngine.open(path, levels)
    finally:
        go.set()
        first_told.set()
        others_told.set()
        log.removeHandler(handler)
    assert str(raised.value).endswith(": StorageError: cannot load l00"), raised.value
    assert len(told) == count - 1


# Re-raised on purpose once the actor is stopped: it ends the thread, as Pykka lets it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize(("actor", "where", "error"), [
    ("PoolActor", "__init__", SystemExit), ("PoolActor", "load_level", KeyboardInterrupt),
    ("Coordinator", "__init__", KeyboardInterrupt), ("_CheckpointActor", "__init__", SystemExit),
])
def test_an_actor_whose_start_raises_a_base_exception_is_stopped_and_told(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str, where: str,
        error: type[BaseException]) -> None:
    """A KeyboardInterrupt or SystemExit out of `on_start` still stops the actor.

    Pykka lets it end the thread without marking the actor stopped: open()
    waited out its timeouts ("did not open their connections") and left the
    dead actors registered and alive for ever.
    """
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    real = getattr(SQLiteStore, where)
    dying: list[threading.Thread] = []

    def raising(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith(f"{actor}-"):  # (Pykka's thread names)
            dying.append(threading.current_thread())
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteStore, where, raising)
    with pytest.raises(StorageError, match=r"^the engine's actors could not start \(their error "
                       rf"is logged\): {actor} \(urn:uuid:[-0-9a-f]+\) stopped while starting: "
                       rf"{error.__name__}: $"):
        JackpotEngine.open(db_path, settings=Settings(lock_timeout_ms=100, max_retry_attempts=0,
                                                      retry_delay_ms=1))
    assert left_running(before) == set()  # no actor left registered
    # open() gives up once the error is told; the thread then ends with it
    # (the warning filtered above). Waited for here: ended later, it was
    # reported as the next test's unhandled thread exception.
    assert dying
    for thread in dying:
        thread.join(HANG)
        assert not thread.is_alive()


def test_a_checkpointer_that_cannot_restart_stops_though_logging_on_pykka_raises(
        open_engine: Callable[..., JackpotEngine]) -> None:
    # Its thread ended while it still counted as alive: never replaced again.
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    checkpointer.stop(timeout=10)

    def failing() -> SQLiteStore:
        msg = "cannot open the checkpoint connection"
        raise StorageError(msg)

    checkpointer._open_store = failing
    with _pykka_logging_raises():
        restart_dead_actors(engine)
        assert checkpointer._actor.actor_ref.actor_stopped.wait(10)
    assert not checkpointer.alive()  # the next call tries again


def test_a_failure_once_the_levels_are_held_never_leaves_one_held(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    from jackpot.actors import coordinator  # noqa: PLC0415 - its batch, made to fail

    engine = open_engine()

    def failing(*_args: object, **_kwargs: object) -> None:
        msg = "batch failed"
        raise RuntimeError(msg)

    monkeypatch.setattr(coordinator, "execute_batch", failing)
    with pytest.raises(RuntimeError, match="batch failed"):
        engine.contribute(Decimal(10), groups=("major", "minor"), op_id="multi")
    assert not any(g.lock.locked() for g in engine._guards.values())
    monkeypatch.undo()
    assert engine.contribute(Decimal(10), groups="minor", op_id="single").versions == {
        "minor": 2}  # the multi-level batch failed before writing anything
    assert engine.contribute(Decimal(10), groups=("major", "minor"), op_id="multi").versions == {
        "major": 2, "minor": 3}
    assert engine.verify().ok


def test_a_stopped_checkpointer_is_restarted_and_takes_requests_again(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    checkpointer.stop(timeout=10)
    checkpointer.note(5_000)  # ignored while it is stopped: nothing gets stuck
    assert not checkpointer.alive()
    assert checkpointer.runs == 0
    restart_dead_actors(engine)
    assert checkpointer.alive()
    assert engine.stats.snapshot()["actor_restarts:actor:checkpointer"] == 1
    engine.contribute(Decimal(10), groups="minor", op_id="after")
    size, copied = checkpointer.flush(timeout=10)
    assert copied == size
    checkpointer.note(50_000)
    assert checkpointer.runs == 1  # requested again, not stuck behind the old actor
    assert engine.verify().ok


def test_a_replaced_checkpointer_stopping_late_leaves_its_successors_request_busy(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """An old checkpoint actor whose `on_stop` ends late clears no flag but its own.

    Pykka counts an actor stopped before its `on_stop` runs, so the engine may
    already have replaced it. Its `on_stop` used to clear the "busy" flag the
    replacement's request had set: the next commit asked for a second
    checkpoint while the first still ran.
    """
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    old = checkpointer._actor.actor_ref.actor_urn
    stopping, let_stop, stopped = threading.Event(), threading.Event(), threading.Event()
    running, let_run = threading.Event(), threading.Event()
    on_stop, checkpoint = _CheckpointActor.on_stop, SQLiteStore.checkpoint

    def late_on_stop(self: _CheckpointActor) -> None:
        if self.actor_urn != old:
            on_stop(self)
            return
        stopping.set()
        try:
            if let_stop.wait(60):
                on_stop(self)
        finally:
            stopped.set()

    def held_checkpoint(self: SQLiteStore) -> tuple[int, int]:
        running.set()
        assert let_run.wait(60)
        return checkpoint(self)

    monkeypatch.setattr(_CheckpointActor, "on_stop", late_on_stop)
    monkeypatch.setattr(SQLiteStore, "checkpoint", held_checkpoint)
    checkpointer.stop_soon()
    try:
        assert stopping.wait(60)  # stopped for Pykka; its on_stop has not run yet
        assert not checkpointer.alive()
        restart_dead_actors(engine)
        assert checkpointer.alive()
        checkpointer.note(50_000)
        assert running.wait(60)  # the replacement runs the checkpoint asked for
        let_stop.set()
        assert stopped.wait(60)  # the old actor's on_stop has ended
        checkpointer.note(100_000)
        assert checkpointer.runs == 1  # still busy with the first: no second request
    finally:
        let_stop.set()
        let_run.set()
    size, copied = checkpointer.flush(timeout=10)  # the replacement serves requests
    assert copied == size


def test_a_held_guard_times_out_a_single_level_batch_with_nothing_changed(
        open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine(settings=Settings(lock_timeout_ms=100, max_retry_attempts=0,
                                           retry_delay_ms=1))
    guard = engine._guards["minor"]
    guard.lock.acquire()  # as a multi-level batch that never ends would
    try:
        with pytest.raises(LockTimeoutError, match="held by a multi-level operation"):
            engine.contribute(Decimal(10), groups="minor", op_id="stuck")
    finally:
        guard.lock.release()
    assert engine.pool("minor").version == 1
    assert engine.contribute(Decimal(10), groups="minor", op_id="stuck").versions == {
        "minor": 2}  # not a replay: the first attempt changed nothing


def _dead_on_arrival(monkeypatch: pytest.MonkeyPatch, actor: type[pykka.ThreadingActor]) -> None:
    """Make `actor` fail in on_start, and be dead before its starter asks for a proxy.

    That is the race a failing connection produces at random: the actor's
    thread fails before the starting thread builds its proxy, which Pykka
    then refuses with ActorDeadError. Here it always happens.
    """
    start = actor.start

    def broken(self: pykka.ThreadingActor) -> None:
        msg = "cannot open the connection"
        raise StorageError(msg)

    def start_and_die(*args: object, **kwargs: object) -> pykka.ActorRef[pykka.Actor]:
        ref = start(*args, **kwargs)
        assert ref.actor_stopped.wait(10)
        return ref

    monkeypatch.setattr(actor, "on_start", broken)
    monkeypatch.setattr(actor, "start", start_and_die)


def test_a_checkpointer_that_dies_while_the_engine_opens_is_a_storage_error(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    _dead_on_arrival(monkeypatch, _CheckpointActor)
    gc.collect()
    gc.disable()  # a leaked connection (the reader's) must not be hidden by a collection
    try:
        connections = {id(c) for c in apsw.connections()}
        with pytest.raises(StorageError, match="could not start"):
            JackpotEngine.open(db_path)
        leaked = [c for c in apsw.connections() if id(c) not in connections]
    finally:
        gc.enable()
    assert leaked == []
    assert left_running(before) == set()  # no thread left behind


def test_a_replacement_actor_that_cannot_start_is_a_storage_error_then_recovers(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine()
    engine.contribute(Decimal(10), groups="minor", op_id="before")
    engine._pools["minor"].actor_ref.stop(block=True, timeout=10)
    with monkeypatch.context() as patch:
        _dead_on_arrival(patch, PoolActor)
        with pytest.raises(StorageError, match="could not be restarted"):
            engine.contribute(Decimal(10), groups="minor", op_id="during")
    # The database is fine again: the next call starts a replacement and is served.
    assert engine.contribute(Decimal(10), groups="minor", op_id="during").versions == {
        "minor": 3}
    assert engine.verify().ok


def test_a_checkpointer_that_cannot_restart_never_fails_an_operation(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_engine()
    checkpointer = engine._checkpointer
    assert checkpointer is not None
    checkpointer.stop(timeout=10)
    engine._pools["minor"].actor_ref.stop(block=True, timeout=10)  # forces a restart pass
    with monkeypatch.context() as patch:
        _dead_on_arrival(patch, _CheckpointActor)
        # The level's actor is replaced; the checkpointer's replacement dies
        # (logged): the writers' own WAL catch-up bounds the WAL meanwhile.
        assert engine.contribute(Decimal(10), groups="minor", op_id="x").versions == {
            "minor": 2}
        assert not checkpointer.alive()
    restart_dead_actors(engine)
    assert checkpointer.alive()
    assert engine.verify().ok


def test_a_replacement_that_fails_at_any_moment_of_its_start_is_a_storage_error(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before or after its proxy exists, before or after the resend: always StorageError."""
    engine = open_engine()
    engine._pools["minor"].actor_ref.stop(block=True, timeout=10)

    def broken(self: PoolActor) -> None:
        msg = "cannot open the connection"
        raise StorageError(msg)

    with monkeypatch.context() as patch:
        patch.setattr(PoolActor, "on_start", broken)
        for n in range(5):  # the start races the resend differently each time
            with pytest.raises(StorageError, match="could not be restarted"):
                engine.contribute(Decimal(10), groups="minor", op_id=f"during-{n}")
    assert engine.contribute(Decimal(10), groups="minor", op_id="after").versions == {
        "minor": 2}
    assert engine.verify().ok


@pytest.mark.parametrize("actor", ["PoolActor", "Coordinator"])
def test_a_replacement_whose_pykka_start_raises_is_a_storage_error(
        db_path: Path, actor: str) -> None:
    """A filter on Pykka's logger raising on its "Starting" line (as a replacement starts).

    Before: the filter's RuntimeError reached the caller, who was promised a
    JackpotError; now StorageError ("could not be restarted", nothing changed),
    the error logged, nothing left registered, and the next call restarts it.
    """
    with JackpotEngine.open(db_path) as engine:
        old = (engine._pools["minor"] if actor == "PoolActor" else engine._coordinator)
        old.actor_ref.stop(block=True, timeout=HANG)
        before = set(pykka.ActorRegistry.get_all())
        groups = "minor" if actor == "PoolActor" else ["minor", "major"]
        with hearing() as said, pykka_debug_raising_on(f"Starting {actor} ("), pytest.raises(
                StorageError, match="could not be restarted") as raised:
            engine.contribute("10", groups=groups, op_id="during")
        assert isinstance(raised.value.__cause__, RuntimeError)
        assert ("ERROR", "a stopped actor's replacement could not start", None,
                "actor_restart_failed") in said
        assert left_running(before) == set()
        assert engine.contribute("10", groups=groups, op_id="after").replayed is False
        assert "during" not in [r["op_id"] for r in read_ledger(db_path, "minor")]
        assert engine.verify().ok


def test_a_checkpointer_whose_pykka_start_raises_fails_no_operation(db_path: Path) -> None:
    """The checkpointer's replacement failing is only logged (the writers bound the WAL):
    before, a raising filter on Pykka's "Starting" line failed the operation that asked for
    the restart with its RuntimeError."""
    with JackpotEngine.open(db_path) as engine:
        assert engine._checkpointer is not None
        engine._checkpointer._actor.actor_ref.stop(block=True, timeout=HANG)
        engine._pools["minor"].actor_ref.stop(block=True, timeout=HANG)  # (so a restart runs)
        with hearing() as said, pykka_debug_raising_on("Starting _CheckpointActor ("):
            result = engine.contribute("10", groups="minor", op_id="during")
        assert result.versions == {"minor": 2}
        assert [s[3] for s in said if s[0] == "ERROR"] == [
            "actor_restart_failed", "actor_restart"]
        assert not engine._checkpointer.alive()
        engine._pools["minor"].actor_ref.stop(block=True, timeout=HANG)
        engine.contribute("10", groups="minor", op_id="after")  # the next restart starts it
        assert engine._checkpointer.alive()
        assert engine.verify().ok


class _Silent:
    """A proxy whose actor never answers `ready()`; `alive` says whether it still runs."""

    def __init__(self, *, alive: bool) -> None:
        self.alive = alive
        self.actor_ref = self

    def is_alive(self) -> bool:
        return self.alive

    def ready(self) -> pykka.Future[bool]:
        return pykka.ThreadingFuture()  # never set: the request was lost with the actor


def test_waiting_for_a_stopped_actor_that_never_answers_ends_as_actor_dead() -> None:
    with pytest.raises(pykka.ActorDeadError, match="stopped while starting"):
        wait_ready(_Silent(alive=False), timeout=30)  # type: ignore[arg-type]


def test_waiting_for_a_live_actor_that_never_answers_times_out() -> None:
    with pytest.raises(pykka.Timeout):
        wait_ready(_Silent(alive=True), timeout=0.2)  # type: ignore[arg-type]


def test_an_actor_that_does_not_start_in_time_is_a_storage_error(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    JackpotEngine.open(db_path).close()
    release = threading.Event()
    start = PoolActor.on_start

    def slow(self: PoolActor) -> None:
        release.wait(30)
        start(self)

    monkeypatch.setattr(PoolActor, "on_start", slow)
    settings = Settings(lock_timeout_ms=20, max_retry_attempts=0, retry_delay_ms=1)
    try:
        with pytest.raises(StorageError, match="did not open their connections within"):
            JackpotEngine.open(db_path, settings=settings)
    finally:
        release.set()
    for ref in pykka.ActorRegistry.get_by_class(PoolActor):
        ref.stop(block=True, timeout=10)


def test_a_level_actor_that_fails_after_opening_its_connection_closes_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    JackpotEngine.open(db_path).close()
    load = SQLiteStore.load_level

    def broken(self: SQLiteStore, name: str) -> Any:
        if name == "mega":
            msg = "cannot read the level"
            raise StorageError(msg)
        return load(self, name)

    monkeypatch.setattr(SQLiteStore, "load_level", broken)
    gc.collect()
    gc.disable()  # a leaked connection must not be hidden by a collection
    try:
        before = {id(c) for c in apsw.connections()}
        with pytest.raises(StorageError):
            JackpotEngine.open(db_path)
        leaked = [c for c in apsw.connections() if id(c) not in before]
    finally:
        gc.enable()
    assert leaked == []



def _attributes_set_by_on_start(actor: pykka.Actor) -> set[str]:
    """Run `actor`'s on_start, then on_stop, in a thread of their own; return what on_start added."""
    before = set(vars(actor))
    added: list[set[str]] = []

    def life() -> None:
        actor.on_start()
        added.append(set(vars(actor)) - before)
        actor.on_stop()

    thread = threading.Thread(target=life)
    thread.start()
    thread.join()
    assert added, "on_start or on_stop raised (see the thread's traceback)"
    return added[0]


def test_no_actor_adds_an_attribute_to_itself_as_it_starts(db_path: Path) -> None:
    """on_start only rebinds attributes that __init__ made: it adds none.

    Pykka builds an actor's proxy in the caller's thread, copying the actor's
    `__dict__` (`dir(actor)`) while the actor's thread already runs
    `on_start`. On CPython 3.11, copying an instance dict allocates, which may
    run a garbage collection, whose finalizers may let another thread run: a
    key added by `on_start` just then can turn the dict into another layout
    and free the memory the copy goes on to read: a segmentation fault. Only
    rebinding an existing key leaves that memory in place.
    """
    JackpotEngine.open(db_path).close()  # the file and its levels exist
    settings = Settings()

    def open_store() -> SQLiteStore:
        return SQLiteStore(str(db_path), create=False)

    guards = {"minor": LevelGuard("minor")}
    actors: list[pykka.Actor] = [
        PoolActor(guards["minor"], open_store, settings, Stats(), Mailbox()),
        Coordinator(open_store, guards, settings, Stats(), Mailbox()),
        _CheckpointActor(open_store, lambda _urn: None, object()),
    ]
    for actor in actors:
        assert _attributes_set_by_on_start(actor) == set(), type(actor).__name__


_FORGETFUL = """
import sys
from decimal import Decimal
from jackpot import JackpotEngine
engine = JackpotEngine.open(sys.argv[1])
engine.contribute(Decimal(10), groups="minor", op_id="before-the-crash")
raise RuntimeError("the game server crashed without closing the engine")
"""


def test_a_program_that_never_closes_its_engine_still_exits_and_keeps_its_bets(
        db_path: Path) -> None:
    """Actor threads must not keep a crashed program alive; the exit closes the engine."""
    JackpotEngine.open(db_path).close()
    done = run_python(_FORGETFUL, str(db_path), timeout=120)
    assert done.returncode == 1, done.stderr
    assert "the game server crashed" in done.stderr
    assert "closing an engine left open at exit failed" not in done.stderr
    with JackpotEngine.open(db_path) as engine:
        replay = engine.contribute(Decimal(10), groups="minor", op_id="before-the-crash")
        assert (replay.replayed, replay.versions) == (True, {"minor": 2})
        assert engine.verify().ok


_FAILING_AT_EXIT = """
import atexit, logging, sys
from jackpot import JackpotEngine

class Raising(logging.Filter):
    def filter(self, record):
        raise RuntimeError("log filter failed")

def after():  # registered before the first open: runs after the engines are closed
    print("second stopped", not any(p.actor_ref.is_alive() for p in second._pools.values()),
          flush=True)

atexit.register(after)
first, second = JackpotEngine.open(sys.argv[1]), JackpotEngine.open(sys.argv[2])

def failing(timeout=None):
    raise RuntimeError("closing failed")

first.close = failing
logging.getLogger("jackpot").addFilter(Raising())
"""


def test_the_exit_closes_every_engine_though_reporting_a_failed_close_raises(
        tmp_path: Path) -> None:
    # The exit hook logs an engine it could not close and goes on with the
    # next: a raising log filter there ended it, the other engines unclosed
    # (their actors abandoned mid-batch, as in a crash).
    done = run_python(_FAILING_AT_EXIT, str(tmp_path / "a.db"), str(tmp_path / "b.db"),
                      timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["second stopped True"], done.stderr


_STUCK = """
import logging, sys, threading
logging.basicConfig(level=logging.WARNING)
from decimal import Decimal
import jackpot.actors.pool as pool
from jackpot import JackpotEngine
engine = JackpotEngine.open(sys.argv[1])
engine.contribute(Decimal(10), groups="minor", op_id="acknowledged")
entered, never = threading.Event(), threading.Event()
run = pool.execute_batch
def stuck(*args, **kwargs):
    entered.set()
    never.wait()  # the level's actor hangs in the middle of a batch
    return run(*args, **kwargs)
pool.execute_batch = stuck
threading.Thread(target=engine.contribute, args=(Decimal(10),),
                 kwargs={"groups": "minor", "op_id": "stuck"}, daemon=True).start()
assert entered.wait(30)
raise RuntimeError("the game server crashed with a level's actor stuck")
"""


def test_a_stuck_actor_delays_the_exit_only_by_the_exit_bound(db_path: Path) -> None:
    """The exit hook gives up on a stuck actor (its transaction rolls back, as in a crash).

    Unbounded, the exit would wait for the in-flight call and then for each
    actor, the engine's whole run timeout each (over a minute by default):
    past this test's subprocess timeout.
    """
    JackpotEngine.open(db_path).close()
    done = run_python(_STUCK, str(db_path), timeout=45)
    assert done.returncode == 1, done.stderr
    assert "the game server crashed" in done.stderr
    # The stuck call, logged and abandoned; no actor (idle ones included) is called late:
    # the wait for that call used up the exit's bound, leaving them no time to stop.
    assert "close() timed out with 1 call still in flight" in done.stderr
    assert "did not stop in time" not in done.stderr
    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal(10), groups="minor",
                                 op_id="acknowledged").replayed
        assert engine.pool("minor").version == 2  # the stuck bet never committed
        assert engine.verify().ok


class _Ref:
    """An actor reference whose thread has (or has not) stopped."""

    def __init__(self, *, stopped: bool) -> None:
        self.actor_stopped = threading.Event()
        if stopped:
            self.actor_stopped.set()


def test_a_stop_request_answered_counts_as_stopped() -> None:
    answered: pykka.ThreadingFuture[bool] = pykka.ThreadingFuture()
    answered.set(True)
    assert wait_stopped(_Ref(stopped=True), answered, time.monotonic() + 30)  # type: ignore[arg-type]


def test_an_actor_that_stopped_by_itself_is_not_waited_for_until_the_deadline() -> None:
    """Its stop request was lost with it: after a grace it counts as stopped, not timed out."""
    lost: pykka.ThreadingFuture[bool] = pykka.ThreadingFuture()  # never answered
    assert wait_stopped(_Ref(stopped=True), lost, time.monotonic() + 60)  # type: ignore[arg-type]


def test_a_live_actor_that_does_not_stop_in_time_is_reported() -> None:
    lost: pykka.ThreadingFuture[bool] = pykka.ThreadingFuture()
    assert not wait_stopped(_Ref(stopped=False), lost,  # type: ignore[arg-type]
                            time.monotonic() + 0.2)


def _assert_kept(db_path: Path) -> None:
    """The bet "kept" committed before the engine was lost: it replays, the books balance."""
    with JackpotEngine.open(db_path) as engine:
        assert engine.contribute(Decimal(10), groups="minor", op_id="kept").replayed
        assert engine.verify().ok


class _Heard(logging.Handler):
    """Sets `heard` when the "jackpot" logger says `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.heard = threading.Event()
        self.times = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.times += 1
            self.heard.set()


@contextmanager
def _listening(text: str) -> Iterator[_Heard]:
    heard = _Heard(text)
    logging.getLogger("jackpot").addHandler(heard)
    try:
        yield heard
    finally:
        logging.getLogger("jackpot").removeHandler(heard)


def test_an_engine_dropped_without_close_is_collected_closed_and_warned_about(
        db_path: Path) -> None:
    """A program that loses an engine leaks no threads or connections until its exit."""
    engine = JackpotEngine.open(db_path)
    engine.contribute(Decimal(10), groups="minor", op_id="kept")
    assert engine._checkpointer is not None
    refs = [engine._coordinator.actor_ref, engine._checkpointer._actor.actor_ref,
            *(p.actor_ref for p in engine._pools.values())]
    reader = engine._reader.conn
    assert engine._metrics is not None
    registry = engine._metrics.registry
    lost = weakref.ref(engine)
    with _listening("dropped without close()") as said, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del engine  # the last reference: no cycle keeps it for the collector
        assert lost() is None  # the actors and the metrics no longer keep it alive
        assert said.heard.wait(30)
    expected = (f"JackpotEngine({str(db_path)!r}) was never closed; it is closed now "
                "(call close(), or open it in a with block)")
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == [expected]
    for ref in refs:
        assert ref.actor_stopped.wait(30), ref  # stopped, each closing its connection
    with pytest.raises(apsw.ConnectionClosedError):
        reader.execute("SELECT 1")
    scraped = generate_latest(registry).decode()  # a scrape after the loss still works
    assert "jackpot_operations_total" in scraped
    assert "jackpot_level_amount{" not in scraped
    _assert_kept(db_path)


def test_a_dropped_engine_is_closed_even_when_its_warning_is_an_error(
        db_path: Path) -> None:
    """Under -W error the warning raises: the actors are stopped all the same."""
    engine = JackpotEngine.open(db_path)
    engine.contribute(Decimal(10), groups="minor", op_id="kept")
    refs = [engine._coordinator.actor_ref, *(p.actor_ref for p in engine._pools.values())]
    reader = engine._reader.conn
    with _listening("dropped without close()") as said, warnings.catch_warnings():
        warnings.simplefilter("error")
        del engine
        assert said.heard.wait(30)
    for ref in refs:
        assert ref.actor_stopped.wait(30), ref
    with pytest.raises(apsw.ConnectionClosedError):
        reader.execute("SELECT 1")


def test_the_reaper_outlives_a_warning_hook_that_raises(tmp_path: Path) -> None:
    """Warnings sent to logging (captureWarnings), where a filter raises: the reaper lives on.

    The warning's failure ended the reaper: that engine's loss was never
    logged, and no engine dropped after it was closed.
    """
    raising, warned = _RaisingLogFilter(), logging.getLogger("py.warnings")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)
        warned.addFilter(raising)
        try:
            for name in ("a.db", "b.db"):
                engine = JackpotEngine.open(tmp_path / name)
                refs = [p.actor_ref for p in engine._pools.values()]
                with _listening("dropped without close()") as said:
                    del engine
                    assert said.heard.wait(30), name
                for ref in refs:
                    assert ref.actor_stopped.wait(30), ref
        finally:
            warned.removeFilter(raising)
            logging.captureWarnings(False)


def test_an_engine_dropped_after_a_refused_operation_is_closed_by_the_collector(
        db_path: Path) -> None:
    """A refused call leaves a cycle (error, traceback, frame): the collector frees it."""
    # Not at INFO: pytest keeps the log records of a test, and a refusal's
    # record holds the error (and so its traceback's frames) until the end.
    engine = JackpotEngine.open(db_path, settings=Settings(log_level="warning"))
    with pytest.raises(InsufficientFundsError):
        engine.process_win("minor", amount=Decimal(10**6))
    refs = [p.actor_ref for p in engine._pools.values()]
    with _listening("dropped without close()") as said:
        del engine
        gc.collect()
        assert said.heard.wait(30)
    for ref in refs:
        assert ref.actor_stopped.wait(30), ref


_FORKED = """
import logging, os, sys, threading
from decimal import Decimal
from jackpot import JackpotEngine
logging.basicConfig(level=logging.WARNING, format="%(process)d %(message)s")
engine = JackpotEngine.open(sys.argv[1])
engine.contribute(Decimal(10), groups="minor", op_id="before-the-fork")
child = os.fork()
if child == 0:  # a pre-fork worker drops the engine it inherited, then loses its own
    reported = threading.Event()
    class Reported(logging.Handler):
        def emit(self, record):
            if "dropped without close()" in record.getMessage():
                reported.set()
    # On the root logger, after basicConfig's stream handler: set only once
    # the line is on stderr (os._exit below does not wait for the reaper).
    logging.getLogger().addHandler(Reported())
    engine = None
    own = JackpotEngine.open(sys.argv[2])
    own = None
    os._exit(0 if reported.wait(30) else 3)
_, status = os.waitpid(child, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
print("parent", engine.contribute(Decimal(10), groups="minor", op_id="after").versions,
      engine.verify().ok, flush=True)
engine.close()
"""


def test_an_engine_a_forked_child_drops_is_left_to_its_parent(tmp_path: Path) -> None:
    """The child must not close (or warn about) what belongs to the parent's threads."""
    done = run_python(_FORKED, str(tmp_path / "a.db"), str(tmp_path / "b.db"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child 0", "parent {'minor': 3} True"], done.stderr
    assert str(tmp_path / "b.db") in done.stderr  # the child's own engine: reported
    assert str(tmp_path / "a.db") not in done.stderr  # the parent's: left alone


_FORKED_FAILING = """
import os, signal, sys, threading
from jackpot import JackpotEngine, JackpotError, logs, stats
from jackpot.actors import _start
parent = JackpotEngine.open(sys.argv[1])
lock = {"traceback": logs._TRACEBACKS._lock, "observer": stats._OBSERVER_FAILURES._lock,
        "start": _start._errors_lock}[sys.argv[3]]
held, forked = threading.Event(), threading.Event()

def hold():  # the parent reporting a failure of its own as the process forks
    with lock:
        held.set()
        forked.wait()

threading.Thread(target=hold).start()
held.wait()
child = os.fork()
if child == 0:  # a worker opens its own engine, which fails and reports it
    signal.alarm(int(sys.argv[4]))  # a hung child ends, and says nothing
    own = JackpotEngine.open(sys.argv[2])

    class Failing:
        def on_event(self, *args): pass
        def on_lock_wait(self, *args): pass
        def on_operation(self, *args): raise RuntimeError("observer down")

    if sys.argv[3] == "observer":  # its failure is logged (throttled)
        own.stats.observers.append(Failing())
        said = own.contribute("1", groups="minor").versions
    else:  # a failed write's traceback is logged (throttled); a replacement fails to start
        own._pools["minor"].actor_ref.stop()
        os.remove(sys.argv[2])
        try:
            own.contribute("1", groups="minor")
        except JackpotError as e:
            said = type(e).__name__
    own.close()
    print("child", said, flush=True)
    os._exit(0)
forked.set()
os.waitpid(child, 0)
parent.close()
"""


@pytest.mark.parametrize(("lock", "said"), [
    ("traceback", "StorageError"), ("observer", "{'minor': 2}"), ("start", "StorageError")])
def test_a_forked_childs_own_engine_reports_its_failures(tmp_path: Path, lock: str,
                                                         said: str) -> None:
    # The locks of the failure reports (throttled tracebacks, observer
    # failures, why an actor could not start) are module-wide: one the
    # parent held as it forked stayed held in the child, whose first such
    # report hung the call making it.
    hang = 30  # seconds: only a hang waits this long
    done = run_python(_FORKED_FAILING, str(tmp_path / "a.db"), str(tmp_path / "b.db"), lock,
                      str(hang), timeout=hang * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"child {said}"], done.stderr


_FORKED_REGISTRY = """
import os, signal, sys, threading
from pykka import ActorRegistry
from jackpot import JackpotEngine
parent = JackpotEngine.open(sys.argv[1])
held, forked = threading.Event(), threading.Event()

def hold():  # an actor of the parent registering or leaving as the process forks
    with ActorRegistry._actor_refs_lock:
        held.set()
        forked.wait()

threading.Thread(target=hold).start()
held.wait()
child = os.fork()
if child == 0:  # a worker opens its own engine, as the README says to
    signal.alarm(int(sys.argv[3]))  # a hung child ends, and says nothing
    with JackpotEngine.open(sys.argv[2]) as own:
        print("child", own.contribute("1", groups="minor").versions, flush=True)
    os._exit(0)
forked.set()
os.waitpid(child, 0)
parent.close()
"""


def test_a_forked_childs_own_engine_starts_though_pykkas_registry_was_held(
        tmp_path: Path) -> None:
    # Every actor start and stop goes through Pykka's registry, under a lock
    # of the whole process: one the parent held as it forked (an actor of its
    # engine starting or stopping) stayed held in the child, whose own
    # engine then hung starting its first actor.
    hang = 30  # seconds: only a hang waits this long
    done = run_python(_FORKED_REGISTRY, str(tmp_path / "a.db"), str(tmp_path / "b.db"),
                      str(hang), timeout=hang * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child {'minor': 2}"], done.stderr


class _RaisingFilter(logging.Filter):
    """A log filter that fails (as one reading an unset context variable would)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "dropped without close()" in record.getMessage():
            msg = "no request id in this thread"
            raise LookupError(msg)
        return True


def test_the_reaper_outlives_a_log_filter_that_raises(tmp_path: Path) -> None:
    failing = _RaisingFilter()
    logging.getLogger("jackpot").addFilter(failing)
    try:
        first = JackpotEngine.open(tmp_path / "a.db")
        refs = [p.actor_ref for p in first._pools.values()]
        del first  # its report fails in the filter
        for ref in refs:
            assert ref.actor_stopped.wait(30), ref
    finally:
        logging.getLogger("jackpot").removeFilter(failing)
    second = JackpotEngine.open(tmp_path / "b.db")
    refs = [p.actor_ref for p in second._pools.values()]
    with _listening("dropped without close()") as said:
        del second
        assert said.heard.wait(30)  # the same reaper, still serving
    for ref in refs:
        assert ref.actor_stopped.wait(30), ref


def test_an_open_that_cannot_start_the_reaper_starts_nothing(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jackpot._lifecycle  # noqa: PLC0415 - its reaper is replaced for this test

    JackpotEngine.open(db_path).close()
    start = threading.Thread.start

    def refuse_the_reaper(thread: threading.Thread) -> None:
        if thread.name == "jackpot-reaper":
            msg = "can't start new thread"
            raise RuntimeError(msg)
        start(thread)

    monkeypatch.setattr(jackpot._lifecycle, "_REAPER", None)  # as if it had died
    monkeypatch.setattr(threading.Thread, "start", refuse_the_reaper)
    before = set(pykka.ActorRegistry.get_all())
    with pytest.raises(RuntimeError, match="can't start new thread"):
        JackpotEngine.open(db_path)
    assert left_running(before) == set()


_DROPPED_AT_EXIT = """
import logging, sys
from decimal import Decimal
from jackpot import JackpotEngine
logging.basicConfig(level=logging.WARNING)
def main():
    engine = JackpotEngine.open(sys.argv[1])
    engine.contribute(Decimal(10), groups="minor", op_id="kept")
main()  # returns without close(): the engine is dropped as the program ends
"""


def test_an_engine_dropped_just_before_exit_is_closed_and_reported(db_path: Path) -> None:
    done = run_python(_DROPPED_AT_EXIT, str(db_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "was dropped without close(); it is closed now" in done.stderr
    _assert_kept(db_path)


def test_a_dropped_engine_that_fails_to_close_is_reported_with_its_error(
        db_path: Path) -> None:
    engine = JackpotEngine.open(db_path)
    reader = engine._reader
    close = reader.close

    def failing() -> None:
        close()
        msg = "the disk went away"
        raise OSError(msg)

    reader.close = failing  # type: ignore[method-assign]
    with _listening("closing a dropped engine on") as failed, \
            _listening("dropped without close(); closing it failed") as said, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del engine
        assert said.heard.wait(30)
    assert failed.times == 1
    assert any("was never closed; closing it failed" in str(w.message) for w in caught)


_STUCK_AT_EXIT = """
import logging, sys, threading
logging.basicConfig(level=logging.WARNING, format="%(message)s")
import jackpot.actors.pool as pool
import jackpot._lifecycle
from jackpot import JackpotEngine
jackpot._lifecycle.EXIT_SECONDS = 1.0  # the budget per engine, shortened for the test
never = threading.Event()
pool.PoolActor.hang = lambda self: never.wait()  # a level's actor that never finishes
first_done = threading.Event()
class FirstDone(logging.Handler):
    def emit(self, record):
        if "dropped without close()" in record.getMessage():
            first_done.set()
logging.getLogger("jackpot").addHandler(FirstDone())
engines = [JackpotEngine.open(f"{sys.argv[1]}/{n}.db") for n in ("a", "b", "c")]
for engine in engines:
    engine._pools["minor"].hang()
del engine
engines.clear()  # all three dropped, each with a stuck actor
assert first_done.wait(30)  # the exit begins with the reaper busy on the second
"""


def test_at_exit_every_dropped_engine_gets_its_own_budget(tmp_path: Path) -> None:
    done = run_python(_STUCK_AT_EXIT, str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    for name in "abc":
        assert f"{tmp_path / name}.db was dropped without close()" in done.stderr, done.stderr
    assert done.stderr.count("did not stop in time") == 3, done.stderr


def test_a_close_interrupted_while_waiting_is_finished_by_the_next_close(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = JackpotEngine.open(db_path)
    refs = [engine._coordinator.actor_ref, *(p.actor_ref for p in engine._pools.values())]

    def interrupted(*_args: Any, **_kwargs: Any) -> bool:
        raise KeyboardInterrupt  # Ctrl-C while close() waits for calls in flight

    with monkeypatch.context() as patch:
        patch.setattr(engine._cond, "wait_for", interrupted)
        with pytest.raises(KeyboardInterrupt):
            engine.close()
    assert all(ref.is_alive() for ref in refs)  # interrupted before it stopped anything
    with pytest.raises(EngineClosedError):
        engine.contribute(Decimal(10), groups="minor")
    engine.close()  # finishes the interrupted close
    assert not any(ref.is_alive() for ref in refs)


class _WatchedLock:
    """A lock that reports when a thread other than its current holder asks for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: int | None = None
        self.contended = threading.Event()

    def __enter__(self) -> None:
        if self.holder is not None and self.holder != threading.get_ident():
            self.contended.set()
        self._lock.acquire()
        self.holder = threading.get_ident()

    def __exit__(self, *_exc: object) -> None:
        self.holder = None
        self._lock.release()


def test_an_actor_restart_racing_close_leaves_no_actor_running(db_path: Path) -> None:
    """close() stops the replacement a restart in progress starts (or the restart starts none)."""
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())
    engine = JackpotEngine.open(db_path)
    engine._restart_lock = _WatchedLock()  # type: ignore[assignment]
    entered, release = threading.Event(), threading.Event()
    start_pool = engine._start_pool

    def slow_start(name: str) -> Any:
        entered.set()
        assert release.wait(30)  # a slow reconnect, with the restart lock held
        return start_pool(name)

    engine._start_pool = slow_start  # type: ignore[method-assign]
    engine._pools["minor"].actor_ref.stop()  # the level's actor crashed
    better, outcome = in_thread(
        lambda: engine.contribute(Decimal(10), groups="minor", op_id="racing"))
    assert entered.wait(30)
    closer = threading.Thread(target=engine.close, kwargs={"timeout": 0.1})
    closer.start()  # its wait for the call in flight times out; then it stops the actors
    assert engine._restart_lock.contended.wait(30)  # close() waits for the restart
    release.set()
    closer.join(60)
    better.join(60)
    assert not closer.is_alive()
    assert not better.is_alive()
    # close(timeout=0.1) may return with the actors asked to stop, not yet stopped
    # (was: under load, the registry still held them here, 1 run in 30).
    left = set(pykka.ActorRegistry.get_all()) - before
    assert all(ref.actor_stopped.wait(30) for ref in left)  # (unregistered before it is set)
    assert left_running(before) == set()  # the replacement was stopped too
    [result] = outcome  # applied, or refused with a JackpotError: nothing else
    assert not isinstance(result, BaseException) or isinstance(result, JackpotError), result
    with JackpotEngine.open(db_path) as again:
        assert again.verify().ok


def test_a_second_close_keeps_to_its_own_timeout(db_path: Path) -> None:
    """While one close() is held up stopping the actors, another close(timeout) returns."""
    engine = JackpotEngine.open(db_path)
    held = _WatchedLock()
    engine._restart_lock = held  # type: ignore[assignment]
    with held:  # an actor restart in progress holds the first close() up
        first = threading.Thread(target=engine.close)
        first.start()
        assert held.contended.wait(30)  # the first close() now waits, holding the close lock
        engine.close(timeout=0.2)  # gives up waiting for the first one after 0.2 s
        assert first.is_alive()  # so it returned while the first was still held up
    first.join(60)
    assert not first.is_alive()
    assert not any(p.actor_ref.is_alive() for p in engine._pools.values())


def test_a_close_without_limit_waits_for_another_one_in_progress(db_path: Path) -> None:
    """close(timeout=inf) waits for a close() in progress (no OverflowError), then returns."""
    engine = JackpotEngine.open(db_path)
    held = _WatchedLock()
    engine._restart_lock = held  # type: ignore[assignment]
    with held:
        first = threading.Thread(target=engine.close)
        first.start()
        assert held.contended.wait(30)
        second, outcome = in_thread(lambda: engine.close(timeout=math.inf))
    first.join(60)
    second.join(60)
    assert not second.is_alive()
    assert outcome == [None]  # returned, raised nothing
    assert not any(p.actor_ref.is_alive() for p in engine._pools.values())


class _TimingOutGuard:
    """A level guard whose every acquire waits for the test, then times out."""

    def __init__(self) -> None:
        self.entered, self.time_out = threading.Event(), threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.entered.set()
        assert self.time_out.wait(30)
        return False

    def release(self) -> None:
        raise AssertionError("never held")


def test_a_batch_that_cannot_hold_its_levels_names_no_other_callers_op_id(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The coordinator's "could not hold levels" error is shared by its batch;
    # it named the first op_id, so every other caller's error (and log line)
    # named someone else's operation.
    settings = Settings(max_retry_attempts=0)
    with JackpotEngine.open(db_path, settings=settings) as engine:
        gate = _TimingOutGuard()
        engine._guards["minor"].lock = gate  # type: ignore[assignment]
        errors: dict[str, BaseException] = {}

        def bet(op_id: str) -> None:
            try:
                engine.contribute("10", groups=("major", "minor"), op_id=op_id)
            except LockTimeoutError as e:
                errors[op_id] = e

        threads = [threading.Thread(target=bet, args=("blocker",))]
        threads[0].start()
        assert gate.entered.wait(30)  # the coordinator is busy with "blocker"
        threads += [threading.Thread(target=bet, args=(op_id,)) for op_id in ("a", "b")]
        for t in threads[1:]:
            t.start()
        box = engine._mailboxes[None]
        deadline = time.monotonic() + 30
        while len(box._items) < 2:  # "a" and "b" queue: the coordinator's next batch
            assert time.monotonic() < deadline, "the bets did not queue"
            threading.Event().wait(0.001)
        gate.time_out.set()
        for t in threads:
            t.join(30)
        assert sorted(errors) == ["a", "b", "blocker"]
        assert str(errors["blocker"]).startswith("contribute 'blocker': could not hold levels")
        for op_id in ("a", "b"):
            assert str(errors[op_id]).startswith(
                "contribute (a batch of 2): could not hold levels major, minor")
        assert engine.pools()["minor"].version == 1  # nothing was changed
    said = [(r.getMessage(), getattr(r, "op_id", "-")) for r in caplog.records
            if "could not hold levels" in r.getMessage() and r.levelno == logging.WARNING
            and r.name == "jackpot" and "failed" not in r.getMessage()]
    assert said == [
        ("contribute 'blocker': could not hold levels major,minor in time; released all",
         "blocker"),
        ("contribute (a batch of 2): could not hold levels major,minor in time; released all",
         None)]


@pytest.mark.parametrize("before_its_proxy", [False, True])
@pytest.mark.parametrize("actor", ["PoolActor", "Coordinator", "_CheckpointActor"])
def test_an_actor_that_cannot_open_its_connection_at_open_names_the_reason(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str, before_its_proxy: bool
        ) -> None:
    # Was only "PoolActor (urn:uuid:...) not found": the cause went to Pykka's log.
    JackpotEngine.open(db_path).close()
    if before_its_proxy:  # the actor dies before the engine builds its proxy
        cls = {"PoolActor": PoolActor, "Coordinator": Coordinator,
               "_CheckpointActor": _CheckpointActor}[actor]
        start = cls.start

        def start_and_die(*args: object, **kwargs: object) -> pykka.ActorRef[pykka.Actor]:
            ref = start(*args, **kwargs)
            assert ref.actor_stopped.wait(10)
            return ref

        monkeypatch.setattr(cls, "start", start_and_die)
    for opener in ("_store", "_sqlite"):  # (the checkpointer's)
        real = getattr(jackpot.engine, opener)

        def refused(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if threading.current_thread().name.startswith(f"{actor}-"):
                msg = "out of file descriptors (as the test says)"
                raise StorageError(msg)
            return _real(*args, **kwargs)

        monkeypatch.setattr(jackpot.engine, opener, refused)
    with pytest.raises(StorageError, match=(
            rf"^the engine's actors could not start \(their error is logged\): {actor} "
            r"\(urn:uuid:[-0-9a-f]+\) stopped while starting: StorageError: out of file "
            r"descriptors \(as the test says\)$")):
        JackpotEngine.open(db_path)


def test_an_os_error_while_the_engine_starts_is_a_storage_error_and_leaves_nothing_running(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Out of file descriptors, opentelemetry's lazy import raised a bare OSError after
    # the actors had started, and they ran on until garbage collection.
    JackpotEngine.open(db_path).close()
    before = set(pykka.ActorRegistry.get_all())

    def no_descriptors() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(jackpot.engine.tracing, "observer", no_descriptors)
    with pytest.raises(StorageError, match=r"^the engine could not start: OSError: \[Errno 24\] "
                                           r"Too many open files$"):
        JackpotEngine.open(db_path)
    assert left_running(before) == set()


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")], ids=["level", "coordinator"])
def test_an_actor_that_crashes_on_a_message_closes_its_connection(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch,
        groups: str | tuple[str, ...]) -> None:
    """An exception out of `on_receive` stops the actor; Pykka then calls no `on_stop`.

    Its connection must be closed all the same: left open, it holds the file
    in this process for ever (an I/O error's latch, say, is lifted only once
    every connection to the file is closed), one more for every crash.
    """
    opened, closed = track_stores(monkeypatch)
    engine = open_engine()
    engine.contribute(Decimal(10), groups=groups, op_id="before")
    take = Mailbox.take
    crashed = threading.Event()

    def crash_once(self: Mailbox) -> tuple[list[Any], bool]:
        if not crashed.is_set():
            crashed.set()
            msg = "a bug in the actor"
            raise RuntimeError(msg)
        return take(self)

    with monkeypatch.context() as patch:
        patch.setattr(Mailbox, "take", crash_once)
        # The actor crashes on the request's wake-up, before taking it: the
        # caller withdraws it, restarts the actor and sends it again.
        again = engine.contribute(Decimal(10), groups=groups, op_id="after")
    assert crashed.is_set()
    assert not again.replayed
    assert engine.stats.snapshot()["actor_restarts"] == 1
    engine.close()
    assert [s for s in opened if s not in closed] == []


def test_a_caller_whose_claimed_request_dies_with_its_actor_is_told_at_once(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the queue timeout a claimed request's caller still watches the actor.

    The actor took the request, then crashed before answering: nobody ever
    will. The caller hears so (the actor stopped; outcome unknown, it was
    taken) rather than waiting out the run timeout on a dead actor and then
    hearing only that it took too long.
    """
    engine = open_engine(settings=Settings(lock_timeout_ms=100, max_retry_attempts=2,
                                           retry_delay_ms=1000))
    assert engine._run_timeout > 10 * engine._queue_timeout
    engine.contribute(Decimal(10), groups="minor", op_id="before")
    crash_once_claimed(monkeypatch, engine._guards["minor"])
    caller, outcome = in_thread(
        lambda: engine.contribute(Decimal(10), groups="minor", op_id="claimed"))
    caller.join(60)  # (a hang guard; the run timeout is far shorter)
    assert not caller.is_alive()
    monkeypatch.undo()  # the guard's own lock again
    [error] = outcome
    assert isinstance(error, EngineClosedError), error  # was: LockTimeoutError, much later
    assert "stopped while running" in str(error)
    assert error.outcome_unknown
    # Nothing was applied: the same op_id is applied now, once.
    assert not engine.contribute(Decimal(10), groups="minor", op_id="claimed").replayed
    assert engine.verify().ok


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")], ids=["level", "coordinator"])
def test_a_claimed_request_whose_actor_was_replaced_is_told_at_once(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch,
        groups: str | tuple[str, ...]) -> None:
    """The caller watches the actor that took its request, not the level's current one.

    The actor took the request and crashed; before its caller looked again,
    another caller's operation restarted the level. The caller saw the live
    replacement, which will never answer a request it did not take, and
    waited out the whole run timeout (here over a minute) to hear only that
    the outcome is unknown.
    """
    engine = open_engine(settings=Settings(lock_timeout_ms=100, max_retry_attempts=2,
                                           retry_delay_ms=4000))
    assert engine._run_timeout > 60  # the wait below is a sixth of it
    engine.contribute(Decimal(10), groups=groups, op_id="before")
    in_run_phase = threading.Event()  # the caller knows its request was taken
    restarted = threading.Event()  # another caller's operation replaced the actor
    abandon, wait = Ticket.abandon, Ticket.wait
    caller_thread: list[threading.Thread] = []

    def watched_abandon(self: Ticket) -> bool:
        withdrawn = abandon(self)
        if not withdrawn:  # claimed: the caller waits for it to run
            in_run_phase.set()
        return withdrawn

    def late_wait(self: Ticket, timeout: float) -> bool:
        if threading.current_thread() in caller_thread and in_run_phase.is_set():
            assert restarted.wait(60)  # the caller looks again only after the restart
        return wait(self, timeout)

    monkeypatch.setattr(Ticket, "abandon", watched_abandon)
    monkeypatch.setattr(Ticket, "wait", late_wait)
    crash_after_claiming(monkeypatch, "claimed", in_run_phase)
    first = (engine._pools[groups] if isinstance(groups, str) else engine._coordinator).actor_ref
    outcome: list[BaseException | None] = []
    told = threading.Event()

    def bet() -> None:
        try:
            engine.contribute(Decimal(10), groups=groups, op_id="claimed")
        except Exception as e:
            outcome.append(e)
        else:
            outcome.append(None)
        told.set()

    caller = threading.Thread(target=bet, daemon=True)
    caller_thread.append(caller)
    caller.start()
    assert first.actor_stopped.wait(60)  # crashed, the request taken and unanswered
    # Another caller finds the actor dead and restarts it.
    assert not engine.contribute(Decimal(10), groups=groups, op_id="other").replayed
    assert engine.stats.snapshot()["actor_restarts"] == 1
    restarted.set()
    assert told.wait(10)  # was: only after the run timeout
    caller.join(10)
    [error] = outcome
    assert isinstance(error, EngineClosedError), error  # was: LockTimeoutError
    assert "stopped while running contribute 'claimed'" in str(error)
    assert error.outcome_unknown
    monkeypatch.undo()
    # Nothing was applied: the same op_id is applied now, once.
    assert not engine.contribute(Decimal(10), groups=groups, op_id="claimed").replayed
    assert engine.verify().ok


class _RaisingLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


@pytest.mark.parametrize("groups", ["minor", ("major", "minor")], ids=["level", "coordinator"])
def test_a_held_level_times_out_with_nothing_changed_though_logging_it_raises(
        open_engine: Callable[..., JackpotEngine], groups: str | tuple[str, ...]) -> None:
    """The lock-timeout log line is a report: a log filter that raises changes no outcome.

    It crashed the level's actor, the requests it had taken unanswered (their
    callers told they might have been applied), or replaced the coordinator's
    LockTimeoutError with the filter's error.
    """
    engine = open_engine(settings=Settings(lock_timeout_ms=100, max_retry_attempts=0,
                                           retry_delay_ms=1))
    guard = engine._guards["minor"]
    log = logging.getLogger("jackpot")
    raising = _RaisingLogFilter()
    guard.lock.acquire()  # as a multi-level batch that never ends would
    log.addFilter(raising)
    try:
        with pytest.raises(LockTimeoutError, match="nothing was changed"):
            engine.contribute(Decimal(10), groups=groups, op_id="stuck")
    finally:
        log.removeFilter(raising)
        guard.lock.release()
    assert engine.pool("minor").version == 1
    assert engine.stats.snapshot()["actor_restarts"] == 0  # no actor crashed
    assert not engine.contribute(Decimal(10), groups=groups, op_id="stuck").replayed
    assert engine.verify().ok


def test_a_resend_whose_engine_closes_before_its_restart_is_told_closed(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The level's actor had stopped; the withdrawn request's restart begins just as a
    close() does (after the call's own check that the engine is open). The restart starts
    nothing, and the call is told the engine closed. Before: the refusal was taken for a
    replacement that could not start: an ERROR and a StorageError."""
    engine = JackpotEngine.open(db_path)
    closing, restarting = threading.Event(), threading.Event()
    await_inflight = jackpot._closing._await_inflight

    def seen_closed(engine: JackpotEngine, wait_limit: float) -> int:  # (after `_closed` is set)
        closing.set()
        return await_inflight(engine, wait_limit)

    def held_restart(engine: JackpotEngine) -> None:
        restarting.set()
        assert closing.wait(HANG)
        restart_dead_actors(engine)

    monkeypatch.setattr(jackpot._closing, "_await_inflight", seen_closed)
    monkeypatch.setattr(jackpot.engine, "restart_dead_actors", held_restart)
    engine._pools["minor"].actor_ref.stop()
    with hearing() as said:
        caller, outcome = in_thread(
            lambda: engine.contribute(Decimal(10), groups="minor", op_id="late"))
        assert restarting.wait(HANG)
        engine.close()
        caller.join(HANG)
    assert not caller.is_alive()
    [result] = outcome
    assert isinstance(result, EngineClosedError), repr(result)
    assert [s for s in said if s[0] == "ERROR"] == []
