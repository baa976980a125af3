"""Actors: the only package that knows Pykka.

`PoolActor` owns one level; `Coordinator` runs multi-level operations;
`Ticket` lets a caller abandon a queued request safely on timeout;
`Checkpointer` keeps SQLite's WAL checkpoints off the writers' threads.
"""

from jackpot.actors._mailbox import Mailbox
from jackpot.actors._ticket import Ticket
from jackpot.actors.checkpoint import Checkpointer
from jackpot.actors.coordinator import ActorUnavailableError, Coordinator
from jackpot.actors.pool import DRAIN, HoldToken, PoolActor

__all__ = [
    "DRAIN",
    "ActorUnavailableError",
    "Checkpointer",
    "Coordinator",
    "HoldToken",
    "Mailbox",
    "PoolActor",
    "Ticket",
]
