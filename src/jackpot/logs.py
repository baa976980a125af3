"""Structured logs: the fields every operation record carries, and a JSON-lines formatter.

The library logs under the `jackpot` logger, which has only a `NullHandler`:
the host application decides where records go. Records about an operation
carry the structured fields op_id, operation, level, attempt and outcome (as
`extra`, so any handler can read them; `attempt` is None where the count is
not known, e.g. on the engine's final record of an operation).

`log_success` / `log_failure` are called by the engine once per operation:
wins, config changes and operator actions are logged at INFO, business
refusals at INFO, conflicts and timeouts at WARNING, unexpected errors at
ERROR. Plain contributions are not logged (they are the hot path) unless they
triggered a must-hit-by win.

`configure_logging()` attaches a stream handler with `JSONFormatter` (or a
text format showing the same fields) for operators who want it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, cast

from jackpot._throttle import Throttle
from jackpot.domain import validate_name
from jackpot.errors import ValidationError, shown
from jackpot.results import AdminResult, ConfigResult, Contribution, Win
from jackpot.service import Operation
from jackpot.settings import LOG_LEVELS

__all__ = ["FIELDS", "JSONFormatter", "OperationFields", "configure_logging", "log_failure",
           "log_refusal", "log_success", "log_unfollowed", "log_withdrawn"]

logger = logging.getLogger("jackpot")

FIELDS = ("op_id", "operation", "level", "attempt", "outcome")
"""The structured fields of a record about an operation."""

TEXT_FORMAT = ("%(asctime)s %(levelname)s %(name)s %(message)s "
               "[op_id=%(op_id)s operation=%(operation)s level=%(level)s "
               "attempt=%(attempt)s outcome=%(outcome)s]")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, severity, logger, message, the fields, extras.

    `severity` is the logging level name (`level` is the jackpot level). The
    five FIELDS are always present (null when a record lacks one); any other
    `extra` value is added under its own key (non-JSON values as strings; a
    float NaN or infinity as "NaN", "Infinity" or "-Infinity", which bare are
    no JSON and fail a strict reader's whole line; a dict key JSON has no
    type for, a tuple, as its string; a structure that holds itself as
    "<circular reference>" where it does): a record is never lost to its
    extras. A traceback is under
    `exception`, a stack asked for (`stack_info=True`) under `stack`.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            out[name] = getattr(record, name, None)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:  # asked for (stack_info=True): a text format shows it too
            out["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(out, default=_text, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError):
            # A NaN or an infinity, a dict key json takes no key of (a tuple), or
            # a structure that holds itself: rare, so the walk runs only then.
            # Raising here would lose the record ("--- Logging error ---").
            return json.dumps(_jsonable(out, set()), default=_text, separators=(",", ":"))


def _text(value: object) -> str:
    """Return `str(value)` for a value JSON has no type for; never raises (it is the caller's)."""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - the value's own __str__: whatever it raises, say so
        return f"<a {type(value).__name__} whose str() failed>"


def _jsonable(value: object, path: set[int]) -> object:
    """Return `value` as strict JSON takes it: NaN and infinities, odd keys, cycles as text.

    A float NaN or infinity becomes "NaN", "Infinity" or "-Infinity"; a dict
    key that is no str, int, float, bool or None its `str()`; a dict, list or
    tuple already on `path` (the containers above it) "<circular reference>".
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if not isinstance(value, (dict, list, tuple)):
        return value
    if id(value) in path:
        return "<circular reference>"
    path.add(id(value))
    try:
        if isinstance(value, dict):
            return {_key(k): _jsonable(v, path) for k, v in value.items()}
        return [_jsonable(v, path) for v in value]
    finally:
        path.discard(id(value))


def _key(key: object) -> object:
    """Return a dict key as json.dumps takes one (a float NaN key as text too)."""
    if key is None or isinstance(key, (str, int, bool)):
        return key
    if isinstance(key, float):
        return _jsonable(key, set())
    return _text(key)


class OperationFields(logging.Filter):
    """Give every record the five FIELDS (None when absent), for text formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the missing fields; never drop a record."""
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


def configure_logging(
    *,
    level: str | None = None,
    stream: IO[str] | None = None,
    json_lines: bool = True,
) -> logging.Handler:
    """Send the `jackpot` logger's records to `stream` (stderr), one JSON object per line.

    `level` (debug, info, ...) sets the logger's level; None keeps it (an
    engine's `open()` changes it only when JACKPOT_LOG_LEVEL or
    `Settings.log_level` is given, or to info when no level is set). With
    `json_lines=False` records are text with the fields in brackets. Called
    again, it replaces the handler it added before (records are never
    written twice); handlers of your own are left alone. Records still
    propagate to the root logger, so an application with a handler there
    (`logging.basicConfig`) gets each twice unless it sets the `jackpot`
    logger's `propagate` to False. Returns the handler, so the caller can
    remove it.

    Raises:
        ValidationError: `level` is not a level name, `stream` is no text
            stream (it has no write(), or takes bytes), or `json_lines` is not
            True or False; nothing is changed.

    """
    global _configured  # noqa: PLW0603 - the one handler this function manages
    if level is not None and (not isinstance(level, str) or level.lower() not in LOG_LEVELS):
        msg = f"level must be one of {', '.join(LOG_LEVELS)} or None, not {shown(level)}"
        raise ValidationError(msg)  # before anything is changed
    _check_stream(stream)
    if not isinstance(json_lines, bool):  # "no" is truthy: it would have meant JSON
        msg = f"json_lines must be True or False, not {shown(json_lines)}"
        raise ValidationError(msg)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(OperationFields())
    with _configure_lock:
        if _configured is not None:
            logger.removeHandler(_configured)
        # Named before it is added: a process forked in between then finds no
        # handler of ours attached that it does not know of (never two).
        _configured = handler
        logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level.upper())
    return handler


def _check_stream(stream: object) -> None:
    """Refuse, at the call, a stream that records could not be written to.

    logging would take it and fail only at the first record, and then only
    as a "--- Logging error ---" on stderr: the records would be lost.
    """
    if stream is None:
        return
    try:  # an object whose __getattr__ raises has no write() to use either
        write = getattr(stream, "write", None)
    except Exception:  # noqa: BLE001 - refused below, by name, not raised through
        write = None
    if not callable(write):
        msg = (f"stream must be a text stream with a write() method (sys.stderr, a file "
               f"opened for text, io.StringIO) or None, not {type(stream).__name__}")
        raise ValidationError(msg)
    if isinstance(stream, (io.RawIOBase, io.BufferedIOBase)):
        msg = (f"stream must be a text stream, not the binary {type(stream).__name__}: "
               "records are text (wrap it in io.TextIOWrapper)")
        raise ValidationError(msg)


_configured: logging.Handler | None = None
"""The handler `configure_logging` added last (replaced by its next call)."""
_configure_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """Renew the lock: another thread of the parent may have held it at the fork."""
    global _configure_lock  # noqa: PLW0603 - a lock the parent may have held at the fork
    _configure_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _fields(op: Operation, outcome: str, level: str | None = None) -> dict[str, Any]:
    return {"op_id": op.op_id, "operation": op.kind,
            "level": ",".join(op.names) if level is None else level,
            "attempt": None, "outcome": outcome}


def log_success(op: Operation, outcome: str, result: object) -> None:
    """Log a finished operation (ok or replayed) that operators need to see.

    Never raises for an unexpected result type: a committed operation must
    not be reported as failed because its log line could not be built.
    """
    if isinstance(result, Contribution):
        for hit in result.hits:
            logger.info("mystery jackpot hit on %s: paid %s%s (op %s)", hit.group,
                        hit.amount, _to(hit.winner), op.op_id,
                        extra={**_fields(op, outcome, hit.group), "amount": str(hit.amount),
                               "version": hit.version, "winner": hit.winner})
    elif isinstance(result, Win):
        logger.info("win on %s: paid %s%s (op %s, %s)", result.group, result.amount,
                    _to(result.winner), op.op_id, outcome,
                    extra={**_fields(op, outcome), "amount": str(result.amount),
                           "balance": str(result.balance), "version": result.version,
                           "winner": result.winner, "reset": result.reset})
    elif isinstance(result, ConfigResult):
        logger.info("config of %s changed at version %d (op %s, %s): %s", result.group,
                    result.version, op.op_id, outcome, result.after,
                    extra={**_fields(op, outcome), "version": result.version,
                           "before": result.before, "after": result.after,
                           "pending": result.pending})
    elif isinstance(result, AdminResult):
        logger.info("%s of %s done (op %s, %s)", result.action, result.group, op.op_id,
                    outcome, extra={**_fields(op, outcome),
                                    "balances": {k: str(v) for k, v in result.balances.items()},
                                    "versions": dict(result.versions)})
    else:
        logger.info("%s done (op %s, %s)", op.kind, op.op_id, outcome,
                    extra=_fields(op, outcome))


def _to(winner: str | None) -> str:
    """Say who was paid; " to None" read as a player of that name."""
    return f" to {winner}" if winner is not None else ", no winner named"


def log_failure(op: Operation, outcome: str, error: BaseException) -> None:
    """Log a failed operation: refusals at INFO, conflicts and timeouts at WARNING.

    Errors at ERROR, with their traceback the first time in a minute that the
    same error (type and message, whatever the op_id) is logged: a failing disk fails every
    operation alike, and a traceback each (about 40 lines) would bury the
    log, often on that same disk.
    """
    severity = {"rejected": logging.INFO, "conflict": logging.WARNING,
                "timeout": logging.WARNING}.get(outcome, logging.ERROR)
    traced = severity == logging.ERROR and _first_in_a_while(
        f"{type(error).__name__}: {str(error).replace(repr(op.op_id), '<op_id>')}")
    logger.log(severity, "%s %s failed (%s): %s%s", op.kind, op.op_id, outcome, error,
               "" if traced or severity != logging.ERROR else
               " (traceback logged once a minute for this error)",
               exc_info=traced, extra={**_fields(op, outcome), "error": type(error).__name__})


def log_withdrawn(op: Operation) -> None:
    """Log a request withdrawn unsent because its caller was interrupted (Ctrl-C) as it sent it.

    At INFO, like a refusal: it changed nothing, and the engine did not fail
    it (no timeout, no error: it is not counted as an operation either).
    """
    logger.info("%s %s withdrawn: its caller was interrupted before the request was queued; "
                "nothing was changed", op.kind, op.op_id, extra=_fields(op, "interrupted"))


def log_unfollowed(op: Operation) -> None:
    """Log a request that goes on with neither its interrupted caller nor a thread to follow it.

    At WARNING, its outcome `unknown`: it may still be applied, and no one
    will report it; resending it with the same op_id tells.
    """
    logger.warning("%s %r on %s: its caller was interrupted while the request was queued or "
                   "running, and nothing could follow it to its end: it may still be applied; "
                   "resend it with the same op_id to learn its outcome", op.kind, op.op_id,
                   ", ".join(op.names), extra=_fields(op, "unknown"))


_TRACE_EVERY = 60.0  # seconds between two tracebacks of the same error
_TRACEBACKS = Throttle(_TRACE_EVERY, kept=256)


def _first_in_a_while(error: str) -> bool:
    """Say whether this error's traceback is due (none logged for it in `_TRACE_EVERY`).

    `error` is its type and message, the op_id masked: the same failure of
    another operation is the same error.
    """
    return _TRACEBACKS.admit(error[:300]) is not None


_MAX_OP_ID = 256  # as jackpot.requests accepts
_SHOWN = 40
_MAX_NAMED = 64  # the most level names a refusal's record reads (`_named_levels`)


def log_refusal(kind: str, op_id: object, error: BaseException, named: object = None) -> None:
    """Log a request refused before it was built (bad arguments): at INFO, like any refusal.

    The op_id may be what was refused: one that is not short printable text
    is shown cut and quoted, never raw (no forged or giant log lines).
    `named` is the call's level argument (`group`, `groups`, or both levels
    of a retire): its valid names are the record's `level` (see `_named_levels`).
    """
    shown: str | None = None
    if isinstance(op_id, str):
        op_id = str.__str__(op_id)  # the text itself, as an accepted op_id is (a str subclass)
        ok = len(op_id) <= _MAX_OP_ID and op_id.isprintable()
        shown = op_id if ok else f"{op_id[:_SHOWN]!r}... ({len(op_id)} chars)"
    logger.info("%s %s refused: %s", kind, shown if shown is not None else "(no op_id)", error,
                extra={"op_id": shown, "operation": kind, "level": _named_levels(named),
                       "attempt": None,
                       "outcome": "rejected", "error": type(error).__name__})


def _named_levels(named: object) -> str | None:
    """Return the valid level names a refused call named, as the record's `level` (or None).

    Joined and sorted as an applied operation's are, so a refused win on
    "minor" is found with the others on "minor". Only a str or a plain
    list, tuple or set is read: a generator was consumed (or not) by the
    refused builder, and read now it would yield what comes next, not what
    was named; a subclass's own iteration could raise. Names that are not
    valid are left out: they may be what was refused (never raw in a log).
    A collection of more than `_MAX_NAMED` names is not read at all (level
    None): each valid name, known to the engine or not, would go into the
    one record (200,000 names: a 1.5 MB line and most of a second, for a
    call refused at its first unknown name).
    """
    try:
        return _valid_names(named)
    except Exception:  # noqa: BLE001 - the refusal is logged all the same, without a level
        return None


def _valid_names(named: object) -> str | None:
    """`_named_levels`, letting what an argument raises when looked at through.

    Such an argument (a `__class__` property, a metaclass `__hash__` that
    raises) made the record's `after_the_fact` log "reporting failed" in
    place of the refusal itself.
    """
    if isinstance(named, str):
        values: Iterable[object] = (named,)
    elif any(type(named) is kind for kind in (list, tuple, set, frozenset)):  # (never its hash)
        values = cast("list[object]", named)
        if len(values) > _MAX_NAMED:
            return None
    else:
        return None
    valid = set()
    for value in values:
        with contextlib.suppress(ValidationError):
            valid.add(validate_name(value))
    return ",".join(sorted(valid)) or None
