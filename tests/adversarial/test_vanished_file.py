"""A database file removed (or emptied) under a running engine is never silently recreated.

Only `open()` creates a database; the connections the engine opens later (a
restarted actor's, the health probe's) refuse a missing or empty file, so a
restart cannot start counting pools from a fresh, empty ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jackpot import JackpotEngine, StorageError


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_restarted_actor_does_not_recreate_a_vanished_file(db_path: Path, how: str) -> None:
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("10", groups="minor", op_id="before")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        if how == "emptied":
            db_path.write_bytes(b"")
        engine._pools["minor"].actor_ref.stop()  # the level's actor must be restarted
        with pytest.raises(StorageError):
            engine.contribute("10", groups="minor", op_id="after")
        report = engine.health()
        assert not report.ok
        if how == "removed":
            assert not db_path.exists()  # neither the restart nor the probe made a new one
        else:
            assert db_path.stat().st_size == 0
    finally:
        engine.close()
