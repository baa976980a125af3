"""A commit whose WAL fsync fails: the caller must not be told "nothing changed".

SQLite has written the transaction's frames (the last marked as the commit)
when the sync fails. The writing process no longer sees the transaction, but
if it dies before its next write reuses that part of the WAL, the next opener
recovers the frames and the transaction is in the file. The worker
(_fsync_worker.py) gets an fsync failure injected at one commit, reports what
it was told, and is killed with SIGKILL; the parent reopens the file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from jackpot import JackpotEngine

WORKER = Path(__file__).with_name("_fsync_worker.py")


def test_a_failed_fsync_at_commit_is_reported_as_outcome_unknown(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    with JackpotEngine.open(db):
        pass
    with subprocess.Popen([sys.executable, str(WORKER), str(db)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as worker:  # (closes its pipes)
        try:
            assert worker.stdout is not None
            told = json.loads(worker.stdout.readline())
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)

    assert told["error"] == "StorageError", told
    assert told["outcome_unknown"] is True, told
    assert "same op_id" in told["message"], told

    # What it was warned of: the "failed" bet is in the file after the crash.
    # Resending it with its op_id (as the error says) replays it: once, exactly.
    with JackpotEngine.open(db) as engine:
        again = engine.contribute(Decimal(10), groups="minor", op_id="failing")
        assert again.replayed
        assert again.versions == {"minor": 3}  # create, "before", "failing"
        assert engine.pool("minor").version == 3
        assert engine.verify().ok
