"""Reporting an outcome (observers, log lines) never changes that outcome.

An observer in `engine.stats.observers` runs after the operation has
committed or failed: if it raises, the caller must still get the committed
result (a caller told "failed" may send it again without an op_id and pay
twice) or the original error.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from jackpot import InsufficientFundsError, JackpotEngine
from jackpot.results import Contribution


class _Raising:
    """Raises on the events named in `on`, once armed."""

    def __init__(self, *on: str) -> None:
        self.on = set(on)
        self.armed = True

    def _maybe(self, what: str) -> None:
        if self.armed and what in self.on:
            msg = f"observer failed on {what}"
            raise RuntimeError(msg)

    def on_event(self, event: str, operation: str, level: str, n: int) -> None:
        self._maybe(event)

    def on_operation(self, operation: str, outcome: str, seconds: float) -> None:
        self._maybe(f"operation:{outcome}")

    def on_lock_wait(self, lock: str, operation: str, seconds: float) -> None:
        pass


def test_a_committed_win_is_returned_though_its_observer_raises(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.contribute(Decimal(100), groups="minor", op_id="bet")
        engine.stats.observers.append(_Raising("operation:ok"))
        win = engine.process_win("minor")  # no op_id: a resend would be a second win
        assert (win.amount, win.version, win.replayed) == (Decimal("100.5"), 3, False)
        pool = engine.pool("minor")
        assert (pool.version, pool.meters["wins"]) == (3, 1)
        assert engine.verify().ok


def test_a_refusal_keeps_its_error_though_its_observer_raises(tmp_path: Path) -> None:
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.stats.observers.append(_Raising("operation:rejected"))
        with pytest.raises(InsufficientFundsError):
            engine.process_win("minor", amount=Decimal(1000))
        assert engine.pool("minor").version == 1


def test_a_replay_event_that_raises_fails_no_operation_of_the_committed_batch(
        tmp_path: Path, one_batch: Callable[..., dict[str, Any]]) -> None:
    """A replay and a new bet share one batch; the 'replays' report comes after the commit."""
    with JackpotEngine.open(tmp_path / "p.db") as engine:
        engine.contribute(Decimal(10), groups="minor", op_id="spin-1")
        engine.stats.observers.append(_Raising("replays"))
        results = one_batch(engine, "minor", {"replay": "spin-1", "new": None})
        replay, new = results["replay"], results["new"]
        assert isinstance(replay, Contribution)
        assert isinstance(new, Contribution)
        assert (replay.replayed, replay.versions) == (True, {"minor": 2})
        assert (new.replayed, new.versions) == (False, {"minor": 4})
        assert engine.pool("minor").version == 4
        assert engine.verify().ok
