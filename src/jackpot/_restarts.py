"""Replacing an engine's stopped actors, and telling which were replaced.

An actor may stop by itself (it crashed): a call that finds its request
withdrawn unstarted by a stopped actor has every stopped actor replaced
(`restart_dead_actors`), then sends it again
(`JackpotEngine._restart_before_resending`). A replacement reloads its
level from the database and drains the mailbox its predecessor left. A
stopped checkpointer is also replaced as a checkpoint falls due
(`Checkpointer.note`, told by `checkpointer_replaced`). Functions of the
engine, as `_closing`'s are: nothing here holds a reference to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from jackpot.actors import DRAIN
from jackpot.stats import Stats, after_the_fact

if TYPE_CHECKING:
    from jackpot.engine import JackpotEngine

__all__ = ["checkpointer_replaced", "restart_dead_actors"]

logger = logging.getLogger("jackpot")


def restart_dead_actors(engine: JackpotEngine) -> None:
    """Replace every stopped actor; each replacement reloads from the database.

    Raises `ActorDeadError` when a level's or the coordinator's
    replacement fails to start (its error is logged; the next call tries
    again), or what Pykka's `start` raised (nothing is left registered:
    `start_actor`). A checkpointer that cannot restart is only logged: the
    writers bound the WAL themselves meanwhile. What happened is logged
    and counted after the restart lock is released: a log handler or
    observer may do anything, close the engine included.
    """
    restarted: list[str] = []
    failed: list[BaseException] = []
    try:
        with engine._restart_lock:
            # Pykka logs as it starts an actor, here: a log handler's close()
            # must not wait for this lock (see `JackpotEngine.close`).
            engine._own.restarting = True
            try:
                engine._check_open()  # closed meanwhile: start nothing close() cannot stop
                _replace_dead(engine, restarted, failed)
            finally:
                engine._own.restarting = False
    finally:  # done: reporting it must not fail the operation that asked for it
        _report_restarts(engine.stats, restarted, failed)


def _replace_dead(engine: JackpotEngine, restarted: list[str], failed: list[BaseException]
                  ) -> None:
    """Start a replacement for each stopped actor (under the restart lock); note it.

    A level's or the coordinator's replacement that fails to start
    raises; the checkpointer's failure is only noted in `failed`.
    """
    for name, proxy in list(engine._pools.items()):
        if not proxy.actor_ref.is_alive():
            engine._pools[name] = engine._start_pool(name)
            restarted.append(name)
            if engine._mailboxes[name].rewake():
                engine._pools[name].actor_ref.tell(DRAIN)
    if not engine._coordinator.actor_ref.is_alive():
        engine._actors.coordinator = engine._start_coordinator()
        restarted.append("coordinator")
        if engine._mailboxes[None].rewake():
            engine._coordinator.actor_ref.tell(DRAIN)
    if engine._checkpointer is not None and not engine._checkpointer.alive():
        try:
            replaced = engine._checkpointer.restart()  # (unless a commit did: `note`)
        except Exception as e:  # noqa: BLE001 - logged below (on_start failed, or Pykka raised)
            failed.append(e)
        else:
            if replaced:
                restarted.append("checkpointer")


def checkpointer_replaced(stats: Stats, error: BaseException | None) -> None:
    """Report a checkpointer replaced as a checkpoint fell due (see `Checkpointer.note`)."""
    _report_restarts(stats, [] if error else ["checkpointer"], [error] if error else [])


def _report_restarts(stats: Stats, restarted: list[str], failed: list[BaseException]) -> None:
    """Log and count the actors `restarted`; log the checkpointer's restarts that `failed`."""
    for error in failed:
        after_the_fact(logger.error, "the checkpointer had stopped and its "
                       "replacement could not start; writers keep the WAL bounded "
                       "until the next attempt", exc_info=error,
                       extra={"outcome": "actor_restart_failed"})
    for name in restarted:
        level = {} if name in ("coordinator", "checkpointer") else {"level": name}
        after_the_fact(logger.error, "%s had stopped; a replacement was started",
                       f"actor of level {name}" if level else name,
                       extra={"outcome": "actor_restart", **level})
        after_the_fact(stats.add, "actor_restarts", "actor", name)
