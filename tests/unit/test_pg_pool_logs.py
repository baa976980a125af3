"""The filter on psycopg_pool's logger: a minute's warnings of one kind about a jackpot pool, once.

During an outage psycopg_pool warns on every failed connection attempt and
every connection it finds closed: hundreds of lines a disruption, all saying
what the engine's own errors, metrics and health already say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from jackpot.storage import _pg_pool
from jackpot.storage._pg_pool import PoolLogFilter

OURS = "jackpot postgresql://app@db:5432/jackpots-worker-0"
CONNECT = "error connecting in %r: %s"
NAME = "jackpot postgresql://app@db:5432/jackpots"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str = CONNECT, args: tuple[object, ...] = (NAME, OSError("refused")), *,
           thread: str = OURS, level: int = logging.WARNING) -> logging.LogRecord:
    rec = logging.LogRecord("psycopg.pool", level, __file__, 1, msg, args, None)
    rec.threadName = thread
    return rec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quiet(clock: Clock) -> PoolLogFilter:
    return PoolLogFilter(every=60, clock=clock)


@pytest.fixture(autouse=True)
def pool_logger_level() -> Iterator[None]:
    pool_logger = logging.getLogger("psycopg.pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.NOTSET)
    yield
    pool_logger.setLevel(level)


def test_the_first_of_a_kind_passes_the_rest_of_the_minute_are_counted(
        quiet: PoolLogFilter, clock: Clock) -> None:
    assert quiet.filter(record())
    for _ in range(250):
        clock.now += 0.2
        assert not quiet.filter(record())
    clock.now += 10.0  # 60 s after the first
    said = record()
    assert quiet.filter(said)
    assert said.getMessage() == (
        f"error connecting in '{NAME}': refused "
        "(250 more like it in the last 60 s were not logged)")
    clock.now += 1
    assert not quiet.filter(record())  # a new minute has begun


def test_a_message_the_pool_formatted_itself_is_counted_too(
        quiet: PoolLogFilter, clock: Clock) -> None:
    # psycopg_pool before 3.2.8 logs f-strings: no args, the server's words (a
    # % sign among them) in the message. Its count of the held back was lost.
    text = f"error connecting in '{NAME}': FATAL:  100% of connection slots are taken"
    assert quiet.filter(record(text, ()))
    for _ in range(3):
        clock.now += 1
        assert not quiet.filter(record(text, ()))
    clock.now += 57  # 60 s after the first
    said = record(text, ())
    assert quiet.filter(said)
    assert said.getMessage() == f"{text} (3 more like it in the last 60 s were not logged)"


def test_kinds_are_told_apart_by_message_and_the_text_of_its_arguments(
        quiet: PoolLogFilter) -> None:
    assert quiet.filter(record())
    assert quiet.filter(record(args=(NAME, OSError("password authentication failed"))))
    assert quiet.filter(record(args=("jackpot postgresql://app@db2:5432/jackpots",
                                     OSError("refused"))))
    # A connection's repr holds its address: not part of the kind.
    assert quiet.filter(record("discarding closed connection: %s", (object(),)))
    assert not quiet.filter(record("discarding closed connection: %s", (object(),)))


def test_records_about_other_pools_and_below_warning_pass_untouched(
        quiet: PoolLogFilter) -> None:
    for _ in range(3):
        theirs = record(thread="app-pool-worker-0")
        assert quiet.filter(theirs)
        assert quiet.filter(record(level=logging.INFO))
    assert theirs.getMessage() == f"error connecting in '{NAME}': refused"


def test_a_call_of_a_jackpot_pool_in_the_callers_thread_is_ours(quiet: PoolLogFilter) -> None:
    msg, args = "discarding closed connection: %s", (object(),)
    with _pg_pool._flagged("inside"):
        assert quiet.filter(record(msg, args, thread="MainThread"))
        assert not quiet.filter(record(msg, args, thread="MainThread"))
    assert quiet.filter(record(msg, args, thread="MainThread"))  # (not ours: passes)


def test_a_connection_the_engine_closed_on_purpose_is_not_warned_about(
        quiet: PoolLogFilter) -> None:
    with _pg_pool._flagged("inside"), _pg_pool._flagged("discarding"):
        assert not quiet.filter(record("discarding closed connection: %s", (object(),)))


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_whoever_debugs_the_pool_sees_every_record(quiet: PoolLogFilter, level: int) -> None:
    logging.getLogger("psycopg.pool").setLevel(level)
    for _ in range(3):
        assert quiet.filter(record())


def test_the_filter_is_attached_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pool_logger = logging.getLogger("psycopg.pool")
    monkeypatch.setattr(pool_logger, "filters", [])
    _pg_pool.install_log_filter()
    _pg_pool.install_log_filter()
    assert pool_logger.filters == [_pg_pool._LOG_FILTER]
