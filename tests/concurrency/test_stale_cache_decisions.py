"""Decisions taken on a cached level that the batch leaves unchanged are version-checked.

Two engines on one file stand for two processes (each has its own actors,
guards and connections). The first engine's cache of a level goes stale when
the second changes it; a refusal, a bet below `min_bet` or a level that
`groups=None` skips writes no version-checked row of that level, so without a
check the stale state would decide (and an explicit op_id would record that
decision for good).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from jackpot import GroupConfig, GroupSuspendedError, JackpotEngine, Settings, StorageError
from jackpot.storage import SQLiteStore

pytestmark = pytest.mark.usefixtures("stale_detection")  # both ways (see conftest)

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.01")),
    GroupConfig("minor", Decimal(100), Decimal("0.01")),
)


def test_a_level_resumed_by_another_process_takes_bets_at_once(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db, GROUPS) as server:
        server.suspend("minor", reason="maintenance")  # the server caches "suspended"
        with JackpotEngine.open(db) as other:
            other.resume("minor", reason="done")
        one = server.contribute("10", groups="minor", op_id="bet-1")
        assert one.contributions == {"minor": Decimal("0.1")}
        assert one.versions == {"minor": 4}
        every = server.contribute("10", op_id="bet-2")  # groups=None: every active level
        assert every.contributions == {"major": Decimal("0.1"), "minor": Decimal("0.1")}
        assert every.versions == {"major": 2, "minor": 5}
        assert server.pool("minor").version == 5
        assert server.verify().ok


def test_a_min_bet_lowered_by_another_process_lets_the_bet_qualify(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db, GROUPS) as server:
        server.update_config("major", min_bet=Decimal(50), who="op", reason="raise")
        with JackpotEngine.open(db) as other:
            other.update_config("major", min_bet=Decimal(1), who="op", reason="lower")
        bet = server.contribute("10", groups="major", op_id="bet-1")
        assert bet.contributions == {"major": Decimal("0.1")}
        assert bet.versions == {"major": 4}
        again = server.contribute("10", groups="major", op_id="bet-1")
        assert again.replayed
        assert again.contributions == {"major": Decimal("0.1")}
        pool = server.pool("major")
        assert (pool.version, pool.amount) == (4, Decimal("1000.1"))
        assert server.verify().ok


def noticed(detection: str) -> tuple[int, int, int]:
    """(conflicts, retries, reloads) of a stale cache noticed once, each way it is found."""
    return (0, 0, 1) if detection == "found-on-taking-the-lock" else (1, 1, 0)


def counted(engine: JackpotEngine) -> tuple[int, int, int]:
    counts = engine.stats.snapshot()
    return counts["conflicts"], counts["retries"], counts["reloads"]


def test_a_refusal_after_a_reload_refreshes_the_cache(tmp_path: Path,
                                                     stale_detection: str) -> None:
    """The reload that a stale refusal caused is kept, so the next bet does not conflict again."""
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db, GROUPS) as server:
        server.suspend("minor", reason="maintenance")
        with JackpotEngine.open(db) as other:
            other.resume("minor", reason="done")
            other.suspend("minor", reason="again")  # suspended, two versions later
        for op_id in ("bet-1", "bet-2", "bet-3"):
            with pytest.raises(GroupSuspendedError):
                server.contribute("10", groups="minor", op_id=op_id)
        assert counted(server) == noticed(stale_detection)
        assert server.pool("minor").version == 4
        assert server.verify().ok


def test_a_replay_on_a_stale_cache_needs_no_retry(tmp_path: Path) -> None:
    """A replay reads no level: a stale cache is no conflict for it, even with no retries."""
    db = tmp_path / "pools.db"
    JackpotEngine.open(db, GROUPS).close()
    with JackpotEngine.open(db, settings=Settings(max_retry_attempts=0)) as strict:
        first = strict.contribute("10", groups="minor", op_id="a")
        with JackpotEngine.open(db) as other:
            other.contribute("10", groups="minor", op_id="b")
        again = strict.contribute("10", groups="minor", op_id="a")
        assert (again.replayed, again.versions) == (True, first.versions)
        assert counted(strict) == (0, 0, 0)


def test_several_stale_levels_need_at_most_one_retry(tmp_path: Path,
                                                     stale_detection: str) -> None:
    """However many of a batch's cached levels another process moved, one retry settles it.

    Found as the lock is taken, each moved level is a reload and no retry is
    spent; found by the version checks, they are one conflict and one retry.
    """
    db = tmp_path / "pools.db"
    levels = (*GROUPS, GroupConfig("mega", Decimal(5000), Decimal("0.01")))
    with JackpotEngine.open(db, levels, settings=Settings(max_retry_attempts=1)) as server:
        server.contribute("10", op_id="warm")  # every level cached, at version 2
        with JackpotEngine.open(db) as other:
            other.contribute("10", op_id="elsewhere")  # every level at version 3
        result = server.contribute("10", op_id="bet")
        assert result.versions == {"major": 4, "mega": 4, "minor": 4}
        lock_taken = stale_detection == "found-on-taking-the-lock"
        assert counted(server) == ((0, 0, 3) if lock_taken else (1, 1, 0))
        assert server.verify().ok


def test_a_level_left_stale_by_a_replay_is_still_found_as_the_lock_is_taken(
        tmp_path: Path, stale_detection: str) -> None:
    """A batch of replays checks no level; the next batch must still check the cache.

    Whether another connection committed is known per connection, since its
    previous write; that write, only replays, checked nothing.
    """
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db, GROUPS) as server:
        server.contribute("10", groups="minor", op_id="a")
        with JackpotEngine.open(db) as other:
            other.contribute("10", groups="minor", op_id="b")
        assert server.contribute("10", groups="minor", op_id="a").replayed
        assert server.contribute("10", groups="minor", op_id="c").versions == {"minor": 4}
        assert counted(server) == noticed(stale_detection)
        assert server.verify().ok


def test_a_level_the_previous_batch_did_not_hold_is_still_found_as_the_lock_is_taken(
        tmp_path: Path, stale_detection: str) -> None:
    """The coordinator's previous batch, on other levels, checked only those."""
    db = tmp_path / "pools.db"
    levels = (*GROUPS, GroupConfig("mega", Decimal(5000), Decimal("0.01")))
    with JackpotEngine.open(db, levels) as server:
        server.contribute("10", groups=("major", "minor"), op_id="w1")
        with JackpotEngine.open(db) as other:
            other.contribute("10", groups="major", op_id="elsewhere")
        server.contribute("10", groups=("mega", "minor"), op_id="w2")
        w3 = server.contribute("10", groups=("major", "minor"), op_id="w3")
        assert w3.versions == {"major": 4, "minor": 4}
        assert counted(server) == noticed(stale_detection)
        assert server.verify().ok


class FailOnce:
    """Make the next ledger write of any connection fail once armed (a full disk, or a bug)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.armed = threading.Event()
        self.failed = threading.Event()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        append = SQLiteStore.append_entries

        def failing(store: SQLiteStore, entries: list[Any]) -> None:
            if self.armed.is_set() and not self.failed.is_set():
                self.failed.set()
                raise self.error
            append(store, entries)

        monkeypatch.setattr(SQLiteStore, "append_entries", failing)


FULL_DISK = apsw.FullError("database or disk is full")  # reaches the caller as a StorageError
A_BUG = RuntimeError("a bug under the engine")  # reaches the caller as it is


@pytest.mark.parametrize(("groups", "error"), [
    (("minor",), FULL_DISK), (("minor",), A_BUG),
    (("major", "minor"), FULL_DISK), (("major", "minor"), A_BUG),
], ids=["one-level-storage-error", "one-level-unexpected-error",
        "two-levels-storage-error", "two-levels-unexpected-error"])
def test_a_cache_found_stale_by_a_failed_write_is_noticed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale_detection: str,
        groups: tuple[str, ...], error: BaseException) -> None:
    """A write that failed after it found the cache stale leaves no cache to be found stale again.

    The failed write re-read the moved level (a reload, or a conflict and a
    retry) and then committed nothing, so what it read is not adopted: the
    cache is dropped, and the next bet reads the level afresh instead of
    noticing the same stale row a second time. The counts pin that: one
    level (its pool actor) and two (the coordinator), a storage error (an
    outcome) and an unexpected one (raised through the batch).
    """
    db = tmp_path / "pools.db"
    fail = FailOnce(error)
    fail.install(monkeypatch)
    with JackpotEngine.open(db, GROUPS) as server:
        server.contribute("10", groups=groups, op_id="warm")  # cached at version 2
        with JackpotEngine.open(db) as other:
            other.contribute("10", groups="minor", op_id="elsewhere")  # minor at 3
        fail.armed.set()
        with pytest.raises(StorageError if error is FULL_DISK else RuntimeError) as failed:
            server.contribute("10", groups=groups, op_id="failed")
        assert fail.failed.is_set()
        assert error is FULL_DISK or failed.value is error
        assert counted(server) == noticed(stale_detection)
        bet = server.contribute("10", groups=groups, op_id="next")
        assert bet.versions == {n: 3 + (n == "minor") for n in groups}
        assert counted(server) == noticed(stale_detection)
        assert server.verify().ok
