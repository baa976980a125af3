"""Waiting for an actor to start or stop without trusting it to answer."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka

__all__ = ["in_actor_thread", "mark_actor_thread", "wait_ready", "wait_stopped"]

_POLL = 0.05  # seconds between checks that the actor still lives
_GRACE = 1.0  # how long a stopped actor's on_stop may take to answer

_THREAD = threading.local()


def mark_actor_thread(owner: object) -> None:
    """Mark the calling thread as an actor's of `owner` (called from each actor's `on_start`).

    The engine passes its `Stats` as `owner`: an object its actors hold anyway.
    """
    _THREAD.owner = owner


def in_actor_thread(owner: object) -> bool:
    """Whether the calling thread is one of `owner`'s actors (a log handler may run there)."""
    return owner is not None and getattr(_THREAD, "owner", None) is owner


def _answered(future: pykka.Future[Any], deadline: float) -> bool:
    """Wait one slice (never past `deadline`) for `future`; True once it has an answer.

    An answer that is an error is raised here.
    """
    try:
        future.get(timeout=max(0.0, min(_POLL, deadline - time.monotonic())))
    except pykka.Timeout:
        return False
    return True


def wait_ready(proxy: pykka.ActorProxy[Any], timeout: float) -> None:
    """Return once the actor's `ready()` has answered (its `on_start` has run).

    An actor whose `on_start` fails may stop after the `ready()` request
    passed Pykka's liveness check but before it reached the inbox; nobody
    would ever answer it. So the wait is cut in short slices, and a stopped
    actor ends it at once.

    Raises:
        pykka.ActorDeadError: the actor stopped (its error is logged by Pykka).
        pykka.Timeout: the actor still lives but did not answer within `timeout`.

    """
    answer = proxy.ready()
    deadline = time.monotonic() + timeout
    while not _answered(answer, deadline):
        if not proxy.actor_ref.is_alive():
            msg = f"{proxy.actor_ref} stopped while starting"
            raise pykka.ActorDeadError(msg)
        if time.monotonic() >= deadline:
            msg = f"{proxy.actor_ref} did not start within {timeout:.1f} s"
            raise pykka.Timeout(msg)


def wait_stopped(ref: pykka.ActorRef[Any], stopped: pykka.Future[bool], deadline: float) -> bool:
    """Wait until `deadline` (monotonic) for `stopped`, from `ref.stop(block=False)`.

    True once the actor has stopped. An actor that stopped by itself just as
    the stop request was sent never answers it: once its thread says it has
    stopped, its `on_stop` gets `_GRACE` seconds, then it counts as stopped.
    """
    while not _answered(stopped, deadline):
        if ref.actor_stopped.is_set():
            deadline = min(deadline, time.monotonic() + _GRACE)
        if time.monotonic() >= deadline:
            return ref.actor_stopped.is_set()
    return True
