"""Waiting for an actor to start or stop without trusting it to answer."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from typing import Any, TypeVar

import pykka
from pykka.messages import ProxyCall

from jackpot.stats import after_the_fact

__all__ = ["in_actor_thread", "mark_actor_thread", "note_built", "proxy_of", "start_actor",
           "start_failed", "stop_and_close", "wait_ready", "wait_stopped"]

_POLL = 0.05  # seconds between checks that the actor still lives
_GRACE = 1.0  # how long a stopped actor's on_stop may take to answer

logger = logging.getLogger("jackpot")
_THREAD = threading.local()
A = TypeVar("A", bound=pykka.Actor)
_START_ERRORS: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
"""Why an actor's `on_start` failed, by its ref, until `wait_ready` reports it.

Kept as long as its ref lives (whoever waits holds it), however many fail:
a count bound (64) forgot the reason of the first level an open() waited
for when more actors failed after it, all out of file descriptors at once.
"""
_errors_lock = threading.Lock()
_CLOSING: weakref.WeakSet[pykka.ActorRef[Any]] = weakref.WeakSet()
"""Actors running their close request (`stop_and_close`): stopped, and answering once done."""
_BUILT = threading.local()  # .actor: the actor this thread's `start_actor` is starting


def _after_fork_in_child() -> None:
    """Start a forked child with no start failures (the parent's actors are not here).

    Pykka's registry gets a new lock too; its refs (the application's too) stay.
    """
    global _errors_lock  # noqa: PLW0603 - a lock the parent may have held at the fork
    _errors_lock = threading.Lock()
    _START_ERRORS.clear()
    _CLOSING.clear()
    # Every actor start and stop takes Pykka's registry lock: an actor of the
    # parent starting or stopping as it forked left it held for ever here.
    pykka.ActorRegistry._actor_refs_lock = threading.RLock()  # noqa: SLF001


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


def note_built(actor: pykka.Actor) -> None:
    """Note `actor` as the one the calling thread starts (called from each actor's `__init__`).

    Pykka's `start` builds the actor in the caller's thread, then registers
    it and starts its thread: `start_actor` learns it here, to undo that
    when the start raises.
    """
    _BUILT.actor = actor


def start_actor(actor_class: type[A], *args: Any) -> pykka.ActorProxy[A]:
    """Start an actor of `actor_class` (built with `args`); return its proxy (see `proxy_of`).

    Pykka's `start` registers the actor, logs "Registered" and "Starting"
    (DEBUG, `pykka` logger), then starts its thread, without a `finally`:
    a log filter or handler that raised there (or a thread that could not
    start) left registered an actor no thread runs, and nobody held its ref
    to stop it: `ActorRegistry.stop_all()` then waited for it for ever.
    Its error is raised on, the actor left behind by no one (`_abandon`);
    so is an interrupt (Ctrl-C) once its thread started, or as its proxy
    is built. The note of the actor being built is put back as it returns:
    a start nested in this one (a log filter on Pykka's lines that opens an
    engine, say) must not make this one forget its actor.
    """
    outer: pykka.Actor | None = getattr(_BUILT, "actor", None)
    _BUILT.actor = None
    try:
        return proxy_of(actor_class.start(*args))
    except pykka.ActorDeadError:  # it stopped by itself (its on_start failed): told by proxy_of
        raise
    except BaseException:
        built: pykka.Actor | None = getattr(_BUILT, "actor", None)
        if built is not None:
            _abandon(built)
        raise
    finally:
        _BUILT.actor = outer


def _abandon(actor: pykka.Actor) -> None:
    """Unregister `actor`, whose start raised, and ask it to stop, should its thread run.

    Its thread never started when Pykka's log lines raised; it does run
    after an interrupt that came once it started: then it closes what its
    `on_start` opened, in a request of its own (a thread that never started
    never reads it). Not marked stopped here: a running thread would then
    end without running that request (nor `on_stop`).
    """
    ref = actor.actor_ref
    try:
        with contextlib.suppress(pykka.ActorDeadError):  # stopped already: its on_start failed
            ref.tell(ProxyCall(attr_path=("close_and_stop",), args=(), kwargs={}))
    finally:
        _unregister(actor)


def start_failed(actor: pykka.Actor, error: BaseException) -> None:
    """Stop an actor whose `on_start` failed (called there, which then returns).

    The caller waiting for the actor to start only sees that it stopped:
    the error is kept for `wait_ready` to tell, and logged before the actor
    counts as stopped. Not raised to Pykka: it logs on its own logger before
    it marks the actor stopped, without a `finally`, so a log filter or
    handler that raises there ended the thread with the actor still
    registered and alive for everyone, never answering (nor replaced).
    Marked stopped here as Pykka would, its inbox is answered with
    `ActorDeadError` when `on_start` returns.

    A KeyboardInterrupt or SystemExit is told here too, then re-raised by
    `on_start`: Pykka lets it end the thread without marking the actor
    stopped, so it stayed registered and alive, never answering. open()
    waited out its timeouts and left it registered; a restart found the
    level's actor "alive" and never replaced it.
    """
    with _errors_lock:
        _START_ERRORS[actor.actor_ref] = f"{type(error).__name__}: {error}"
    try:  # logged first: whoever sees it stopped ("their error is logged") finds the line
        after_the_fact(logger.error, "%s could not start", actor, exc_info=error,
                       extra={"outcome": "actor_start_failed"})
    finally:  # whatever the logging raised
        _mark_stopped(actor)


def stop_and_close(actor: pykka.Actor) -> None:
    """Mark `actor` stopped, then run its `on_stop` (close its connection), as Pykka's stop.

    Each actor's `close_and_stop` (the request close() sends) runs this in
    the actor's thread, as an ordinary message: after every request queued
    before it; Pykka's loop ends once it returns. Not Pykka's own stop: that
    logs on the `pykka` logger (at DEBUG, "Unregistered" then "Stopped")
    before it calls `on_stop`, without a `finally`. With that logger at
    DEBUG, a log filter or handler that raised there ended the thread, or
    answered the stop with its error (raised out of close()), before
    `on_stop` ran: close() waited out its timeout or failed, and the
    connections were left open for ever.

    Noted as closing meanwhile: stopped, it will still answer (`wait_stopped`).
    """
    ref = actor.actor_ref
    _CLOSING.add(ref)  # before it is seen stopped
    try:
        _mark_stopped(actor)
        try:
            actor.on_stop()
        except Exception as e:  # noqa: BLE001 - reported, as Pykka does; stopped all the same
            after_the_fact(logger.error, "%s could not close its connection", actor, exc_info=e,
                           extra={"outcome": "close_failed"})
    finally:
        _CLOSING.discard(ref)


def _mark_stopped(actor: pykka.Actor) -> None:
    """Unregister `actor` and mark it stopped, as Pykka does, whatever logging raises.

    Pykka's `unregister` logs "Unregistered" (DEBUG, `pykka` logger) after
    it removed the actor: a failure of that line is only reported, as what
    it is (not as an operation's report: no operation is involved).
    """
    try:
        _unregister(actor)
    finally:
        actor.actor_stopped.set()


def _unregister(actor: pykka.Actor) -> None:
    """Unregister `actor`; a failure of Pykka's log line on it is only reported."""
    try:
        pykka.ActorRegistry.unregister(actor.actor_ref)
    except Exception:  # reported (its traceback too); the actor is unregistered already
        with contextlib.suppress(Exception):  # (whatever our own logging raises too)
            logger.exception("Pykka's log line on unregistering %s failed; the actor is "
                             "stopped all the same", actor, extra={"outcome": "report_failed"})


def _why(ref: pykka.ActorRef[Any]) -> str:
    with _errors_lock:
        error = _START_ERRORS.pop(ref, None)
    return "" if error is None else f": {error}"


def _start_failed_yet(ref: pykka.ActorRef[Any]) -> bool:
    """Whether `ref`'s `on_start` has failed (`start_failed` keeps why before it logs it)."""
    with _errors_lock:
        return ref in _START_ERRORS


class _StillTellingError(pykka.ActorDeadError):
    """Its start failed, and it is still logging why (a log handler that blocks)."""


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


def proxy_of(ref: pykka.ActorRef[A]) -> pykka.ActorProxy[A]:
    """Return `ref`'s proxy; an actor already stopped (its `on_start` failed) says why.

    Pykka builds the proxy here, in the caller's thread, from `dir(actor)`,
    while the actor's thread may already run `on_start`. So `on_start` must
    add no attribute to the actor, only rebind those its `__init__` made: on
    CPython 3.11 the copy of the instance dict that `dir()` makes allocates,
    which may run a garbage collection, whose finalizers may let the actor's
    thread run; a key added just then can turn the (split) instance dict
    into a combined one and free the values the copy goes on to read: a
    segmentation fault (seen once in CI; reproduced with frequent
    collections).
    """
    try:
        return ref.proxy()
    except pykka.ActorDeadError as e:
        msg = f"{ref} stopped while starting{_why(ref)}"
        raise pykka.ActorDeadError(msg) from e


def wait_ready(proxy: pykka.ActorProxy[Any], timeout: float) -> None:
    """Return once the actor's `ready()` has answered (its `on_start` has run).

    An actor whose `on_start` fails may stop after the `ready()` request
    passed Pykka's liveness check but before it reached the inbox; nobody
    would ever answer it. So the wait is cut in short slices, and a stopped
    actor ends it at once.

    Raises:
        pykka.ActorDeadError: the actor stopped (its error is logged), or its
            start failed and a log handler holds the line telling it back.
        pykka.Timeout: the actor still lives but did not answer within `timeout`.

    """
    ref = proxy.actor_ref
    try:
        _wait_answer(proxy.ready(), ref, timeout)
    except _StillTellingError as e:
        msg = (f"{ref} could not start{_why(ref)} (a log handler held its error's line "
               "back: it stops once the line is written)")
        raise pykka.ActorDeadError(msg) from e
    except pykka.ActorDeadError as e:  # (also: stopped before ready() was even sent)
        msg = f"{ref} stopped while starting{_why(ref)}"
        raise pykka.ActorDeadError(msg) from e


def _wait_answer(answer: pykka.Future[Any], ref: pykka.ActorRef[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    failed = False
    while not _answered(answer, deadline):
        if not ref.is_alive():
            raise pykka.ActorDeadError(str(ref))
        if not failed and _start_failed_yet(ref):
            # It logs why, then stops: a moment for the line to be written
            # first, no more. A log handler that blocks (a slow sink) turned
            # the start error into "did not start within" the whole timeout.
            failed = True
            deadline = min(deadline, time.monotonic() + _GRACE)
        if time.monotonic() >= deadline:
            if failed:
                raise _StillTellingError(str(ref))
            msg = f"{ref} did not start within {timeout:.1f} s"
            raise pykka.Timeout(msg)


def wait_stopped(ref: pykka.ActorRef[Any], stopped: pykka.Future[Any], deadline: float) -> bool:
    """Wait until `deadline` (monotonic) for `stopped`, the answer to a stop request.

    The request is an actor's `close_and_stop` (or `ref.stop(block=False)`).
    True once the actor has stopped. An actor that stopped by itself before
    it took the request answers `ActorDeadError`: stopped. One that stopped
    just as the request was sent never answers it: once its thread says it
    has stopped, its `on_stop` gets `_GRACE` seconds, then it counts as
    stopped. Not one that took the request and is closing its connection
    (marked stopped first, as Pykka does): it answers once closed, and is
    waited for until `deadline` (and not counted stopped if still closing
    then). It was counted stopped after the grace, and close() returned
    with a connection still closing if that close took longer (the last
    one folds the WAL into the file and syncs it, under an exclusive lock:
    on a stalled disk or a starved machine, a second is not much).
    """
    try:
        while not _answered(stopped, deadline):
            # Stopped, then no longer closing (in that order: it is noted
            # closing before it is marked stopped): its answer is due now.
            if ref.actor_stopped.is_set() and ref not in _CLOSING:
                deadline = min(deadline, time.monotonic() + _GRACE)
            if time.monotonic() >= deadline:
                return ref.actor_stopped.is_set() and ref not in _CLOSING
    except pykka.ActorDeadError:
        return True
    return True
