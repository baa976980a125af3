"""The connection pool of the PostgreSQL stores: psycopg_pool's, with bounded reconnection and logs.

`JackpotPool` is the `psycopg_pool.ConnectionPool` that every `PostgresStore`
of a process shares for one URL. Beyond psycopg_pool's, it:

- counts the connections callers hold (`out`) and how often one passed to
  or from a caller (`handled`), so that a call that got none in time can
  tell a busy pool from one that cannot connect (`busy_since`);
- reconnects at a bounded pace after an outage. psycopg_pool retries a lost
  connection with a delay that doubles from 1 s (its private
  `AttemptWithBackoff`, no setting) for `reconnect_timeout`, 5 minutes by
  default, and meanwhile a caller's request starts no attempt of its own: a
  server back after a 40 s outage was served again 19.4 s later, after 90 s
  44.6 s later (now 0.3 s and 1.3 s). Here `reconnect_timeout` is
  `RECONNECT_TIMEOUT` (2 s): a lost connection is tried three times about a
  second apart (psycopg_pool's own jitter), then given up. A request that
  finds no connection starts new attempts at once (psycopg_pool grows the
  pool on demand); and when the pool gives up while callers are waiting,
  its `reconnect_failed` callback has it try again (`check()`, which grows a
  pool short of connections) after `RETRY_AFTER` seconds, drawn at random
  so that the processes of several hosts do not knock in step. So, while
  (and only while) the engine wants a connection, the server is tried about
  once a second, and served about a second after it is back, however long
  it was away. An idle engine does not try at all; its next request does.
- keeps psycopg_pool's warnings about it to the first of each kind per
  minute (`PoolLogFilter`), and none for a connection the engine closed on
  purpose (`discard`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from jackpot._throttle import Throttle

__all__ = ["LOG_EVERY", "NAME_PREFIX", "RECONNECT_TIMEOUT", "RETRY_AFTER", "JackpotPool",
           "PoolLogFilter", "install_log_filter"]

Connection = psycopg.Connection[tuple[Any, ...]]

RECONNECT_TIMEOUT = 2.0
"""Seconds psycopg_pool keeps trying to replace one lost connection before it gives up."""
RETRY_AFTER = (0.5, 1.5)
"""Seconds (drawn uniformly) before trying again after giving up, while callers wait."""
LOG_EVERY = 60.0
"""Seconds for which later warnings of one kind about a jackpot pool are counted, not logged."""
NAME_PREFIX = "jackpot "
"""Of every jackpot pool's name, hence of its threads' names (psycopg_pool names them after it)."""
POOL_LOGGER = "psycopg.pool"

_KINDS_KEPT = 1000  # distinct kinds of messages are few; more are forgotten once old

_local = threading.local()
"""`inside`: a call of a jackpot pool runs in this thread; `discarding`: `discard()` runs."""


@contextmanager
def _flagged(name: str) -> Iterator[None]:
    before = getattr(_local, name, False)
    setattr(_local, name, True)
    try:
        yield
    finally:
        setattr(_local, name, before)


class JackpotPool(ConnectionPool[Connection]):
    """psycopg_pool's pool named `NAME_PREFIX` + `where`, behaving as the module describes."""

    def __init__(self, conninfo: str, *, where: str, **kwargs: Any) -> None:
        self._lock_out = threading.Lock()  # for out, _waiting_callers, _retry
        self.out = 0
        self._handled = 0
        """Connections given to callers, and given back open by them, ever (`busy_since`)."""
        self._waiting_callers = 0
        self._retry: threading.Timer | None = None
        super().__init__(conninfo, name=f"{NAME_PREFIX}{where}",
                         reconnect_timeout=RECONNECT_TIMEOUT, reconnect_failed=_gave_up,
                         **kwargs)

    def getconn(self, timeout: float | None = None) -> Connection:
        """Return a connection (see `ConnectionPool.getconn`), counted as out."""
        with self._lock_out:
            self._waiting_callers += 1
        try:
            with _flagged("inside"):
                conn = super().getconn(timeout)
        finally:
            with self._lock_out:
                self._waiting_callers -= 1
        with self._lock_out:
            self.out += 1
            self._handled += 1
        return conn

    def putconn(self, conn: Connection) -> None:
        """Give a connection back (see `ConnectionPool.putconn`)."""
        usable = not conn.closed  # (one closed, by the engine or a lost server, is replaced)
        try:
            with _flagged("inside"):
                super().putconn(conn)
        finally:
            with self._lock_out:
                self.out -= 1
                self._handled += usable

    def handled(self) -> int:
        """Return a mark to pass to `busy_since` once a wait for a connection has failed."""
        with self._lock_out:
            return self._handled

    def busy_since(self, handled: int) -> tuple[bool, int]:
        """Say if every connection was busy while a call waited in vain, and how many are out.

        Busy: each is out now, or one passed to or from another caller since
        `handled` (given to a caller queued before, or given back open, and
        so to the next). Not busy: none moved while it waited and some are
        not out, so the pool lacks connections it could not make. `out`
        alone dips below the pool's size each time a connection passes
        from one caller to the next, and a caller timing out tends to run
        just then.
        """
        with self._lock_out:
            return self.out >= self.max_size or self._handled != handled, self.out

    def discard(self, conn: Connection) -> None:
        """Close `conn` and give it back: the pool replaces it, and is not to warn about it.

        psycopg_pool has no call for this; a closed connection given back is
        replaced, with a warning ("discarding closed connection") that is
        true of a connection found closed, not of one the engine closed.
        """
        conn.close()
        with _flagged("discarding"):
            self.putconn(conn)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool (see `ConnectionPool.close`), and forget a retry to come."""
        with self._lock_out:
            retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
        super().close(timeout)

    def _retry_later(self) -> None:
        """Have the pool try to connect again soon if callers are waiting for a connection."""
        with self._lock_out:
            if self._retry is not None or self.closed or not self._waiting_callers:
                return  # (a request that comes later starts an attempt itself)
            delay = random.uniform(*RETRY_AFTER)  # noqa: S311 - jitter, not secrets
            self._retry = threading.Timer(delay, self._try_again)
            self._retry.name, self._retry.daemon = f"{self.name}-retry", True
            self._retry.start()

    def _try_again(self) -> None:
        with self._lock_out:
            self._retry = None
            if self.closed or not self._waiting_callers:
                return
        # check(): "Test each connection [in the pool]" (none is idle while
        # callers wait) and, if the pool has fewer than it may and is making
        # none, start making one (its source says so; its documentation only
        # says "create a new one"): psycopg_pool's one public call that asks for
        # an attempt. If a release stops it, the test of a call waiting
        # through an outage in tests/backends/test_postgres.py fails, saying so.
        self.check()


def _gave_up(pool: ConnectionPool[Any]) -> None:
    """psycopg_pool's `reconnect_failed` callback (run in one of the pool's workers)."""
    if isinstance(pool, JackpotPool):
        pool._retry_later()  # noqa: SLF001 - the pool's own callback


class PoolLogFilter(logging.Filter):
    """Let through the first of each kind of psycopg_pool warning about a jackpot pool per minute.

    Attached to the `psycopg.pool` logger (psycopg_pool logs every pool's
    records there), it only looks at WARNING and above about a jackpot pool:
    logged by the pool's own threads (named after the pool) or while one of
    its calls runs in the caller's thread. Records of the application's own
    pools, and every record once the application sets that logger's level
    to INFO or lower (to debug the pool), pass untouched. Of the others, the
    first of a kind (same message, same text in its arguments) passes; the
    same kind is then counted, not logged, for `every` seconds, and the
    next one that passes says how many were left out. A connection the
    engine closed on purpose (`JackpotPool.discard`) is not warned about.
    """

    def __init__(self, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(every, kept=_KINDS_KEPT, clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        """Say whether the record is logged (adding the count of those left out before it)."""
        if record.levelno < logging.WARNING or not (
                getattr(_local, "inside", False)
                or (record.threadName or "").startswith(NAME_PREFIX)):
            return True
        if getattr(_local, "discarding", False):
            return False
        if logging.NOTSET < logging.getLogger(POOL_LOGGER).level <= logging.INFO:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        passed = self._throttle.admit((
            record.levelno, record.msg,
            *(str(a) for a in args if isinstance(a, (str, int, float, BaseException)))))
        if passed is None:
            return False
        if passed.held_back:
            # psycopg_pool before 3.2.8 formats its messages itself (no args): its
            # own % signs (in a server's error, say) are kept as text.
            msg = str(record.msg) if args else str(record.msg).replace("%", "%%")
            record.msg = f"{msg} (%d more like it in the last %.0f s were not logged)"
            record.args = (*args, passed.held_back, passed.seconds)
        return True


_LOG_FILTER = PoolLogFilter()


def install_log_filter() -> None:
    """Attach the process's `PoolLogFilter` to the `psycopg.pool` logger (once)."""
    logging.getLogger(POOL_LOGGER).addFilter(_LOG_FILTER)  # (a filter already there is kept)
