"""LevelGuard: one level's last known state and the lock its writers take."""

from __future__ import annotations

import threading

from jackpot.domain import LevelState

__all__ = ["LevelGuard"]


class LevelGuard:
    """What the writers of one level in this process share.

    The level's pool actor and the coordinator are its only writers here; each
    takes `lock` around a whole batch (read state, one transaction, adopt the
    committed state), so they take turns and `state` is only touched under
    it. The coordinator takes the guards of several levels in one canonical
    (sorted) order; a pool actor takes only its own; so no cycle of waits can
    form. The lock is taken directly, in C, instead of asking the pool actor
    to pause: no thread wake-up and no GIL hand-off per level per batch.
    """

    __slots__ = ("lock", "name", "state")

    def __init__(self, name: str) -> None:
        """Create the guard of level `name`, with no state known yet."""
        self.name = name
        self.lock = threading.Lock()
        self.state: LevelState | None = None
        """The last committed state this process knows; None: read it afresh."""
