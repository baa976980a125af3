"""A storage error while a level is read afresh for a multi-level write is a prompt StorageError.

The bug (fixed in d6687ec): after a single-level StorageError dropped the
level's cache, the pool actor reloaded it for the coordinator's hold outside
any error handling; the raw APSW error ended in an unread future, the
coordinator waited its whole lock_timeout_ms for a grant that never came,
counted a busy incident and retried. A failing disk ended, after
(retries + 1) x lock_timeout_ms, in LockTimeoutError instead of StorageError.
Now the coordinator reads such a level in its own transaction. What shows
it here is the outcome and the counters, not the time taken.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from jackpot import GroupConfig, JackpotEngine, Settings, StorageError
from jackpot.storage import SQLiteStore

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)
LOCK_TIMEOUT_MS = 2000


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Statements starting with failing["prefix"] raise apsw.IOError (only the first if "once")."""
    plan: dict[str, Any] = {"prefix": None, "once": False}
    run_one = SQLiteStore._exec

    def _exec(self: SQLiteStore, sql: str, *args: Any, **kwargs: Any) -> Any:
        if plan["prefix"] is not None and sql.startswith(plan["prefix"]):
            if plan["once"]:
                plan["prefix"] = None
            raise apsw.IOError(f"injected: {sql[:40]}")
        return run_one(self, sql, *args, **kwargs)

    monkeypatch.setattr(SQLiteStore, "_exec", _exec)
    return plan


@pytest.mark.parametrize("persistent", [False, True], ids=["one-read", "every-read"])
def test_a_failing_reload_for_a_multi_level_write_is_a_prompt_storage_error(
        tmp_path: Path, failing: dict[str, Any], persistent: bool) -> None:
    with JackpotEngine.open(tmp_path / "pools.db", GROUPS,
                            settings=Settings(lock_timeout_ms=LOCK_TIMEOUT_MS)) as engine:
        engine.contribute(Decimal(250), groups=None, op_id="warm-up")
        failing["prefix"] = "UPDATE levels"
        with pytest.raises(StorageError):  # drops minor's cached state
            engine.contribute(Decimal(10), groups="minor", op_id="op-1")
        failing["prefix"], failing["once"] = "SELECT name", not persistent  # the reloads
        try:
            with pytest.raises(StorageError, match="injected: SELECT name"):
                engine.contribute(Decimal(10), groups=("major", "minor"), op_id="op-2")
        finally:
            failing["prefix"] = None
        # Nothing held a lock: an I/O error is not lock contention, and it is
        # reported at once, not after lock_timeout_ms and retries.
        snapshot = engine.stats.snapshot()
        assert (snapshot["busy_incidents"], snapshot["lock_timeouts"]) == (0, 0)
        before = engine.pools()
        again = engine.contribute(Decimal(10), groups=("major", "minor"), op_id="op-2")
        assert not again.replayed  # it changed nothing the first time: applied now, once
        assert again.versions == {n: before[n].version + 1 for n in ("major", "minor")}
        assert engine.verify().ok
