"""Actors: the only package that knows Pykka.

`PoolActor` owns one level; `Coordinator` runs multi-level operations,
taking the levels' `LevelGuard`s in canonical order;
`Ticket` lets a caller abandon a queued request safely on timeout;
`Checkpointer` keeps SQLite's WAL checkpoints off the writers' threads.

The few Pykka names the engine handles (an actor's stopped error, its
start's timeout, the proxy, ref and future types) are re-exported here, so
that no module outside this package imports Pykka.
"""

from pykka import ActorDeadError, ActorProxy, ActorRef, Future
from pykka import Timeout as ActorTimeoutError

from jackpot.actors._guard import LevelGuard
from jackpot.actors._mailbox import Mailbox
from jackpot.actors._start import (
    in_actor_thread,
    mark_actor_thread,
    start_actor,
    wait_ready,
    wait_stopped,
)
from jackpot.actors._ticket import Ticket
from jackpot.actors.checkpoint import Checkpointer
from jackpot.actors.coordinator import Coordinator
from jackpot.actors.pool import DRAIN, PoolActor

__all__ = [
    "DRAIN",
    "ActorDeadError",
    "ActorProxy",
    "ActorRef",
    "ActorTimeoutError",
    "Checkpointer",
    "Coordinator",
    "Future",
    "LevelGuard",
    "Mailbox",
    "PoolActor",
    "Ticket",
    "in_actor_thread",
    "mark_actor_thread",
    "start_actor",
    "wait_ready",
    "wait_stopped",
]
