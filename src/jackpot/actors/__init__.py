"""Actors: the only package that knows Pykka.

`PoolActor` owns one level; `Coordinator` runs multi-level operations;
`Ticket` lets a caller abandon a queued request safely on timeout.
"""

from jackpot.actors._ticket import Ticket
from jackpot.actors.coordinator import ActorUnavailableError, Coordinator
from jackpot.actors.pool import HoldToken, PoolActor

__all__ = ["ActorUnavailableError", "Coordinator", "HoldToken", "PoolActor", "Ticket"]
