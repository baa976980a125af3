"""The error family: every failure the engine reports is a `JackpotError`.

Each message says what was wrong and, where it helps, what to do. Driver
errors are translated once, at the storage boundary, so callers never see an
APSW (or any other driver) exception.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, SupportsIndex

__all__ = [
    "ConcurrencyViolationError",
    "EngineClosedError",
    "GroupRetiredError",
    "GroupSuspendedError",
    "IdempotencyConflictError",
    "InsufficientFundsError",
    "JackpotError",
    "LockTimeoutError",
    "StorageError",
    "UnknownGroupError",
    "ValidationError",
    "exact_int",
    "shown",
]

_SHOWN = 64
_SHOWN_BITS = 200  # ~60 digits: a longer int is shown by its size


def shown(value: object) -> str:
    """Return `repr(value)` for an error message: shortened, and never raising.

    A refusal must name its argument whatever it was given: `repr` of an int
    past 4300 digits raises ValueError (Python's limit on int-to-str), and a
    caller's object may have a `__repr__` that raises. Neither may turn the
    `ValidationError` into another exception.
    """
    if isinstance(value, int) and not isinstance(value, bool) and (
            value.bit_length() > _SHOWN_BITS):
        return f"<an int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - the caller's repr: whatever it raises, say so
        return f"<a {type(value).__name__} whose repr() failed>"
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} chars)"


def exact_int(value: object) -> int | None:
    """Return `value` as a plain int if it is an exact integer, else None (refuse it).

    An int, or any type that declares itself an integer through `__index__`
    (numpy.int64, an integer from another library): `operator.index` reads
    it losslessly, as a list index does. Floats, numpy's included, and
    Decimal have no `__index__`, so they never pass here. bool never does
    either: True would silently mean 1.

    An object that cannot say (its `__index__`, or its `__getattr__` asked
    for `__index__`, raises anything) is no exact integer either: refused by
    the caller's ValidationError, as before `__index__` was read, never
    raised to the caller as its own error.
    """
    if type(value) is int:
        return value
    try:
        if isinstance(value, bool) or not isinstance(value, SupportsIndex):
            return None
        return operator.index(value)  # a plain int, even of an int subclass
    except Exception:  # noqa: BLE001 - numpy.bool_ (TypeError), or a broken __index__: refused
        return None


class JackpotError(Exception):
    """Root of every error the engine raises on purpose."""


class ValidationError(JackpotError, ValueError):
    """An argument was refused; nothing was changed."""


class UnknownGroupError(JackpotError, KeyError):
    """The named jackpot level does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better without quotes.
        return str(self.args[0]) if self.args else ""


class InsufficientFundsError(JackpotError):
    """A pool cannot pay or give up that much; nothing was changed.

    A win asks for more than the pool holds (or the pool is empty), or an
    adjustment would take the pool below zero.
    """


class ConcurrencyViolationError(JackpotError):
    """A write lost a version race that retries could not resolve.

    `operation` is the kind of operation as logs and metrics name it
    (`contribute`, `win`, `config`, `adjust`...; kinds that shared the lost
    transaction are joined by commas), `group` the level (or levels) it
    concerned and `conflict_details` what was expected and found.
    """

    def __init__(
        self,
        msg: str,
        *,
        operation: str,
        group: str | None,
        conflict_details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg)
        self.operation = operation
        self.group = group
        self.conflict_details = dict(conflict_details or {})

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild with the keyword-only arguments, which `cls(*args)` would lack.

        pickle (an error a multiprocessing or concurrent.futures worker
        raises travels so) and copy rebuild an exception as `cls(*self.args)`:
        without its keywords that raised TypeError in the parent, whose
        ProcessPoolExecutor then broke ("terminated abruptly") and whose
        multiprocessing.Pool result thread died, leaving `get()` waiting.
        """
        rebuild = functools.partial(type(self), operation=self.operation, group=self.group)
        return (rebuild, self.args, self.__dict__)


class LockTimeoutError(JackpotError):
    """A lock (database write lock or level actor) was not had in time.

    Usually nothing was changed: the operation was not applied
    (`outcome_unknown` is False). One case differs: an operation that
    started but did not finish within the engine's longest operation time
    has an unknown outcome (`outcome_unknown` is True, and the message says
    so); resend it with the same op_id to learn it.
    """

    def __init__(self, msg: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(msg)
        self.outcome_unknown = outcome_unknown


class IdempotencyConflictError(JackpotError):
    """An op_id was reused for a different request."""


class EngineClosedError(JackpotError):
    """The engine was closed, or an actor stopped in the middle of the operation.

    `outcome_unknown` is False when the operation was refused before it
    started (nothing was changed), True when the actor serving it stopped
    after taking it: it may have been applied, and resending it with the same
    op_id (on a new engine if this one is closed) tells which.
    """

    def __init__(self, msg: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(msg)
        self.outcome_unknown = outcome_unknown


class StorageError(JackpotError):
    """The database failed (I/O error, disk full, corruption).

    `outcome_unknown` is False when the transaction was rolled back: nothing
    was changed. It is True when the failure came while committing (say, the
    sync of the write-ahead log failed): the transaction may still be in the
    file after a crash, so resend the operation with the same op_id to learn
    whether it was applied.
    """

    def __init__(self, msg: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(msg)
        self.outcome_unknown = outcome_unknown


class GroupSuspendedError(JackpotError):
    """The level is suspended: it refuses contributions and wins until resumed."""


class GroupRetiredError(JackpotError):
    """The level is retired: it refuses every operation."""
