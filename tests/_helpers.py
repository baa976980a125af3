"""Scaffolding several test files share: a call run in a thread, worker processes.

A plain module, not fixtures: tests/ is on sys.path (tests/conftest.py puts it
there), so any test file imports it as `_helpers`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import apsw
import pykka

from jackpot.actors import Mailbox, Ticket

if TYPE_CHECKING:
    import pytest

HANG = 30  # seconds: only a hang waits this long


def left_running(before: set[pykka.ActorRef[Any]]) -> set[pykka.ActorRef[Any]]:
    """Return the actors registered now but not in `before` (a snapshot).

    What a test asserts empty: it left nothing running (Pykka unregisters an
    actor as it stops, so one left registered, even stopped, counts). Not the
    registry equal to the snapshot: an actor of another test, in the
    snapshot, may stop meanwhile, and that says nothing of this one.
    """
    return {ref for ref in pykka.ActorRegistry.get_all() if ref not in before}


def skip_outside_ci(why: str) -> NoReturn:
    """Skip the calling test, but fail it in CI (CI=true), where no test may be skipped.

    A skip there hides a test that never ran behind a green run: what it needs
    must be installed (as tests/backends/pg.py does for PostgreSQL).
    """
    import pytest  # noqa: PLC0415 - a plain module: pytest only where a test calls this

    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{why}: CI must run this test, so it must not be skipped", pytrace=False)
    pytest.skip(why)


def track_stores(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """Record every SQLiteStore opened and every close() called, from now on: (opened, closed)."""
    from jackpot.storage import SQLiteStore  # noqa: PLC0415 - as the tests import it

    opened: list[Any] = []
    closed: list[Any] = []
    init, close = SQLiteStore.__init__, SQLiteStore.close

    def tracked_init(self: SQLiteStore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        opened.append(self)

    def tracked_close(self: SQLiteStore) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(SQLiteStore, "__init__", tracked_init)
    monkeypatch.setattr(SQLiteStore, "close", tracked_close)
    return opened, closed


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a started thread; its result or error lands in the list.

    The caller joins the thread (with a bound) and asserts on the list: one
    entry once the thread has ended, the value returned or the exception raised.
    """
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


class _CrashingGuardLock:
    """A level's guard lock whose acquire waits for `go`, then fails (a crash in `on_receive`)."""

    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def acquire(self, timeout: float = -1) -> bool:
        assert self.go.wait(60)
        msg = "the actor crashed while serving a claimed batch"
        raise RuntimeError(msg)

    def locked(self) -> bool:
        return False

    def release(self) -> None:  # pragma: no cover - never acquired
        raise AssertionError


def crash_once_claimed(monkeypatch: pytest.MonkeyPatch, guard: Any) -> None:
    """Make the actor behind `guard` crash serving its next request, once that is claimed.

    Claimed: the caller's queue wait ended and its ticket could not be
    withdrawn (it is running), so the caller now waits in the run phase. The
    guard's lock then fails as a crash in the actor would. `monkeypatch.undo()`
    puts the lock and `Ticket.abandon` back.
    """
    in_run_phase = threading.Event()
    abandon = Ticket.abandon

    def watched_abandon(self: Ticket) -> bool:
        withdrawn = abandon(self)
        if not withdrawn:  # claimed: the caller waits for it to run
            in_run_phase.set()
        return withdrawn

    monkeypatch.setattr(Ticket, "abandon", watched_abandon)
    monkeypatch.setattr(guard, "lock", _CrashingGuardLock(in_run_phase))


def crash_after_claiming(monkeypatch: pytest.MonkeyPatch, op_id: str,
                         go: threading.Event) -> None:
    """Make the actor that claims `op_id`'s request crash right after, once `go` is set.

    Claimed, the request can no longer be withdrawn by its caller, and the
    crashed actor never answers it: its outcome is unknown.
    """
    claim_batch = Mailbox.claim_batch

    def crashing(self: Mailbox, *args: Any, **kwargs: Any) -> list[Any]:
        live = claim_batch(self, *args, **kwargs)
        if any(op.op_id == op_id for _, op in live):
            assert go.wait(60)
            msg = "the actor crashed with a claimed request"
            raise RuntimeError(msg)
        return live

    monkeypatch.setattr(Mailbox, "claim_batch", crashing)


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released by one barrier; return results or exceptions.

    In the calls' order; an Exception a call raised stands in its place, for
    the caller to assert on.
    """
    barrier = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(30)
        try:
            out[i] = calls[i]()
        except Exception as e:  # collected, asserted by the caller
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a call did not finish in 120 s"
    return out


def read_only(path: Path | str) -> apsw.Connection:
    """Open `path` read-only, for a test to look at what is committed.

    APSW, never the stdlib sqlite3: two SQLite libraries in one process do not
    see each other's POSIX locks, and one closing the file can unmap the WAL
    index under the other (SIGBUS) or checkpoint under its feet.

    It waits (up to `HANG`) for a lock another connection holds for a moment:
    after a `close(timeout=...)` that gave the actors no time to stop, their
    connections close on their own, and the last one checkpoints the WAL
    under an exclusive lock, which made a read there fail with "database is
    locked" now and then. A later `close()` waits for them now (a test that
    reads after one needs no wait: 0 failures in 900 runs without it, 9 in
    900 before), but some tests read right after the `close(timeout)` alone
    (the coordinator left running in tests/aio/test_aio_edges.py).
    """
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(HANG * 1000)
    return conn


def read_ledger(path: Path | str, level: str | None = None) -> list[dict[str, Any]]:
    """Return the file's ledger rows as dicts in seq order, optionally of one level."""
    conn = read_only(path)
    try:
        cursor = conn.execute("SELECT * FROM ledger ORDER BY seq")
        cols = [d[0] for d in cursor.getdescription()]
        rows = [dict(zip(cols, r, strict=True)) for r in cursor]
    finally:
        conn.close()
    return [r for r in rows if level is None or r["level"] == level]


def table_rows(conn: apsw.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Return every table's rows, sorted, in one read snapshot of `conn`.

    Equal dumps mean equal committed content (sqlite_stat* are the query
    planner's statistics, not content).
    """
    with conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_stat%' ORDER BY name")]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
                for n in names}


def table_dump(path: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Return `table_rows` of the file, through a read-only connection of its own."""
    conn = read_only(path)
    try:
        return table_rows(conn)
    finally:
        conn.close()


def read_line(stream: Any, deadline: float, what: str = "line") -> bytes:
    """Read one line from a child's unbuffered pipe; b"" if it ended first.

    Fails (naming `what` it waited for) once the deadline passes.
    """
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what} in time (got {buf!r})"
            assert sel.select(remaining), f"no {what} in time (got {buf!r})"
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                return b""
            buf += chunk
    return buf.strip()


def run_workers(tmp_path: Path, worker: Path, plans: list[dict[str, Any]],
                timeout: float = 240) -> list[dict[str, Any]]:
    """Run `worker` once per plan, all released at once; return their reports.

    Each worker gets its plan (written as JSON) and a result path, prints
    "ready" once it can start, waits for a line on stdin (sent to all of them
    together), then writes its report to the result path and exits 0.
    """
    procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for k, plan in enumerate(plans):
            plan_file, result, err = (tmp_path / f"plan-{k}.json", tmp_path / f"result-{k}.json",
                                      tmp_path / f"worker-{k}.stderr")
            plan_file.write_text(json.dumps(plan))
            with err.open("wb") as err_file:
                proc = subprocess.Popen(
                    [sys.executable, str(worker), str(plan_file), str(result)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, bufsize=0)
            procs.append((proc, result, err))
        deadline = time.monotonic() + timeout
        for proc, _, err in procs:
            assert proc.stdout is not None
            line = read_line(proc.stdout, deadline)
            assert line == b"ready", f"worker did not start: {err.read_text()[-3000:]}"
        for proc, _, _ in procs:  # release them together
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        for proc, _, err in procs:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, f"worker failed ({rc}): {err.read_text()[-3000:]}"
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return [json.loads(result.read_text()) for _, result, _ in procs]


def run_python(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `script` in a new Python process (`python -c script *args`); return what it did.

    For what needs a process of its own (a fork, an exit, a crash): the
    caller asserts on the return code and the captured stdout and stderr
    (text). `timeout` bounds a hang; it raises subprocess.TimeoutExpired.
    """
    return subprocess.run([sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def fork_with_threads() -> int:
    """Fork this process while it has other threads (an engine's actors); return os.fork()'s pid.

    For a test whose subject is such a fork (a pre-fork server's worker): Python
    3.12 and later warn at it (DeprecationWarning "This process ... is
    multi-threaded", gh-100228), which is what the test means to do; only that
    warning is ignored, only here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
                                r"fork\(\) may lead to deadlocks in the child\.", DeprecationWarning)
        return os.fork()


class _RaisingOn(logging.Filter):
    """A filter that raises on the records whose message starts with one of `starts`."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.starts):
            msg = "log filter failed"
            raise RuntimeError(msg)
        return True


@contextmanager
def pykka_debug_raising_on(*starts: str) -> Iterator[None]:
    """Put the `pykka` logger at DEBUG, with a filter that raises on the lines `starts`."""
    log = logging.getLogger("pykka")
    level, raising = log.level, _RaisingOn(*starts)
    log.setLevel(logging.DEBUG)
    log.addFilter(raising)
    try:
        yield
    finally:
        log.removeFilter(raising)
        log.setLevel(level)


@contextmanager
def hearing() -> Iterator[list[tuple[str, str, object, object]]]:
    """Collect the `jackpot` logger's records: (severity, message, op_id, outcome)."""
    said: list[tuple[str, str, object, object]] = []

    class Heard(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append((record.levelname, record.getMessage(), getattr(record, "op_id", None),
                         getattr(record, "outcome", None)))

    heard = Heard()
    log = logging.getLogger("jackpot")
    level = log.level
    log.addHandler(heard)
    log.setLevel(logging.INFO)
    try:
        yield said
    finally:
        log.removeHandler(heard)
        log.setLevel(level)


def hold(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, *, times: int | None = None
         ) -> tuple[threading.Event, threading.Event]:
    """Hold each call of `owner.name` (the first `times` only, if given) as it starts.

    Returns (entered, go): `entered` is set as a call is held; set `go` to let them on.
    """
    entered, go = threading.Event(), threading.Event()
    real = getattr(owner, name)
    calls = itertools.count()  # (next() on it is atomic across threads)

    def held(*args: Any, **kwargs: Any) -> Any:
        if times is None or next(calls) < times:
            entered.set()
            assert go.wait(HANG)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return entered, go


def hold_claims(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold every actor as it claims a request it took: (taken, go), set `go` to let it on."""
    return hold(monkeypatch, Ticket, "claim")


class InterruptOnce(logging.Filter):
    """A `jackpot` logger filter: Ctrl-C lands as the first record of `op_id` is handled
    (or each of the first `times`: a line, then its retelling)."""

    def __init__(self, op_id: str, times: int = 1) -> None:
        super().__init__()
        self.op_id, self.left = op_id, times

    @property
    def armed(self) -> bool:
        return self.left > 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.left and getattr(record, "op_id", None) == self.op_id:
            self.left -= 1
            raise KeyboardInterrupt
        return True


def interrupting_once(call: Callable[..., Any]) -> tuple[Callable[..., Any], list[bool]]:
    """Return `call` wrapped to raise KeyboardInterrupt at its first call (Ctrl-C landing as
    it starts), and `armed`, emptied once it has."""
    armed = [True]

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if armed:
            armed.pop()
            raise KeyboardInterrupt
        return call(*args, **kwargs)

    return interrupted, armed


class Gate:
    """A level guard's lock that says when someone starts waiting for it."""

    def __init__(self) -> None:
        self.real = threading.Lock()
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.waiting.set()
        return self.real.acquire(blocking, timeout)

    def release(self) -> None:
        self.real.release()


DEADLINE = "the round took too long"


def raise_deadline(*_: object) -> None:
    """A request deadline's SIGALRM handler: raise TimeoutError(DEADLINE)."""
    raise TimeoutError(DEADLINE)


@contextmanager
def deadline_in(where: str, handler: Callable[..., Any] = raise_deadline) -> Iterator[list[bool]]:
    """SIGALRM's `handler` runs as the first call of C code in a function named `where` returns.

    Yields `armed`, emptied once the signal was raised (only this thread is profiled).
    """
    armed = [True]

    def alarm(frame: Any, event: str, _arg: object) -> None:
        if armed and event == "c_return" and frame.f_code.co_name == where:
            armed.pop()
            signal.raise_signal(signal.SIGALRM)  # (its handler runs here, in this thread)

    before = signal.signal(signal.SIGALRM, handler)
    sys.setprofile(alarm)
    try:
        yield armed
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGALRM, before)
