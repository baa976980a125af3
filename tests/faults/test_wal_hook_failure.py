"""A failure in the WAL hook, which SQLite calls after a commit, does not fail that commit.

The engine's hook asks the checkpoint actor for a checkpoint; if that actor
stops between `Checkpointer.note`'s liveness check and its request, Pykka
raises `ActorDeadError`. Raised from the hook, APSW would make COMMIT raise
for a transaction that is durable, and its callers would hear "outcome
unknown" (or, without an op_id, never learn it was paid).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import pykka

from jackpot import JackpotEngine
from jackpot.actors import Checkpointer

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_a_failing_checkpoint_request_fails_no_committed_operation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Checkpointer.note
    armed = [False]

    def note(self: Checkpointer, pages: int) -> None:
        if armed[0]:
            armed[0] = False
            msg = "the checkpoint actor stopped meanwhile"
            raise pykka.ActorDeadError(msg)
        real(self, pages)

    monkeypatch.setattr(Checkpointer, "note", note)
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.contribute(Decimal(100), groups="minor", op_id="bet")
        armed[0] = True
        win = engine.process_win("minor")  # no op_id: the caller could never learn it
        assert not armed[0]  # the hook did raise
        assert (win.amount, win.version, win.replayed) == (Decimal("100.5"), 3, False)
        pool = engine.pool("minor")
        assert (pool.version, pool.meters["wins"]) == (3, 1)
        assert engine.contribute(Decimal(100), groups="minor").versions == {"minor": 4}
        assert engine.verify().ok
