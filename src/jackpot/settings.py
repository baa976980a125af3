"""Engine settings, from code or from JACKPOT_* environment variables."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, SupportsIndex

from jackpot.errors import ValidationError, exact_int, shown

__all__ = ["LOG_LEVELS", "Settings", "near_misses"]

logger = logging.getLogger("jackpot")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
"""The `jackpot` logger levels a setting accepts (`configure_logging` takes them in any case)."""
_SYNC_MODES = ("FULL", "EXTRA", "NORMAL")
_MAX_DIGITS = 18
_MAX_BACKOFF_MS = 3_600_000
"""Longest single backoff delay (retry_delay_ms doubled per retry) a setting may ask for."""
_INT_RANGES = {
    "max_retry_attempts": (0, 100),
    "retry_delay_ms": (0, 60_000),
    "lock_timeout_ms": (1, 3_600_000),
    "concurrency_check_interval_ms": (1, 60_000),
    "page_cache_mb": (1, 65_536),
    "pg_pool_size": (1, 10_000),
    "health_probe_timeout_ms": (1, 60_000),
    "health_min_operations": (1, 1000),
    "health_min_lock_success_pct": (0, 100),
    "health_failing_lock_success_pct": (0, 100),
    "health_max_conflict_pct": (0, 10_000),
    "health_min_free_mb": (0, 1 << 30),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Tunables of one engine. Every field has a safe default.

    The whole numbers may be given as any exact integer (numpy.int64: anything
    with `__index__`), and are kept as int; a bool or a float is refused.

    Attributes:
        max_retry_attempts: retries after a version conflict or busy database
            (with `retry_delay_ms`, the last backoff may not pass one hour).
        retry_delay_ms: first backoff delay; doubles each retry, with jitter.
        lock_timeout_ms: longest wait for a database or level-actor lock, or
            for the read before a read (reads take turns).
        concurrency_check_interval_ms: longest poll interval while waiting
            for SQLite's write lock (polls start finer and back off). The
            engine's own writers take turns without polling; this is the
            wait for a lock held by something else (the `sqlite3` shell).
        enable_metrics: collect metrics.
        log_level: level `open()` gives the `jackpot` logger. None (the
            default, JACKPOT_LOG_LEVEL unset) keeps a level the application
            set on that logger, and sets info where it set none.
        synchronous: SQLite `synchronous` pragma; FULL makes every commit
            durable before its result is returned.
        page_cache_mb: SQLite page cache of each writing connection (one per
            level and one for multi-level operations), in MiB. Random op_ids
            land all over the idempotency index; with the index's inner pages
            cached, an insert reads one page from the OS instead of three
            (the 5-million-row benchmark: 0.69 -> 0.80 of an empty file's
            throughput at 32 MiB). Memory, not a leak: each cache stops
            growing at this size. SQLite's own default is 2 MiB.
        pg_pool_size: PostgreSQL only: most connections this process keeps
            to one database URL (one pool per URL, shared by every engine,
            reader and health probe of the process on it; an engine in the
            process that asks for more grows it). Each of an engine's actors
            holds one only for the length of a transaction; with more actors
            busy at once than this, a transaction waits for a connection, up
            to `lock_timeout_ms`. Size it against the server's
            `max_connections` divided among the processes of every host.
        health_probe_timeout_ms: longest wait of the health check's database
            probe for the write lock (it takes the lock and rolls back).
        health_min_operations: fewest recent operations before the health
            check judges the lock, conflict and error rates (fewer: those checks pass).
        health_min_lock_success_pct: share of recent operations (in percent)
            that must get their locks in time (and, apart, not fail with an
            unexpected error); below it health is "degraded".
        health_failing_lock_success_pct: below this share (percent) health is
            "failing".
        health_max_conflict_pct: version conflicts per 100 recent operations
            above which health is "degraded".
        health_min_free_mb: free space (MiB, for this user) on the database
            file's filesystem below which health is "degraded" (0: not checked).

    """

    max_retry_attempts: int = 3
    retry_delay_ms: int = 100
    lock_timeout_ms: int = 5000
    concurrency_check_interval_ms: int = 50
    enable_metrics: bool = True
    log_level: str | None = None
    synchronous: str = "FULL"
    page_cache_mb: int = 32
    pg_pool_size: int = 16
    health_probe_timeout_ms: int = 250
    health_min_operations: int = 20
    health_min_lock_success_pct: int = 99
    health_failing_lock_success_pct: int = 90
    health_max_conflict_pct: int = 10
    health_min_free_mb: int = 100

    if TYPE_CHECKING:  # what the constructor takes: each int as an exact integer of any kind
        # (numpy.int64: anything with __index__), kept as the int it is
        def __init__(
            self, *, max_retry_attempts: SupportsIndex = ..., retry_delay_ms: SupportsIndex = ...,
            lock_timeout_ms: SupportsIndex = ...,
            concurrency_check_interval_ms: SupportsIndex = ..., enable_metrics: bool = ...,
            log_level: str | None = ..., synchronous: str = ...,
            page_cache_mb: SupportsIndex = ..., pg_pool_size: SupportsIndex = ...,
            health_probe_timeout_ms: SupportsIndex = ...,
            health_min_operations: SupportsIndex = ...,
            health_min_lock_success_pct: SupportsIndex = ...,
            health_failing_lock_success_pct: SupportsIndex = ...,
            health_max_conflict_pct: SupportsIndex = ..., health_min_free_mb: SupportsIndex = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # In any case, as JACKPOT_LOG_LEVEL, JACKPOT_SYNCHRONOUS and configure_logging take them.
        if isinstance(self.log_level, str):
            object.__setattr__(self, "log_level", self.log_level.lower())
        if isinstance(self.synchronous, str):
            object.__setattr__(self, "synchronous", self.synchronous.upper())
        for f in fields(self):
            # An exact integer of another kind (numpy.int64) is kept as the int it is.
            object.__setattr__(self, f.name, _check_field(f.name, getattr(self, f.name)))
        _check_retry_budget(self.max_retry_attempts, self.retry_delay_ms)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from JACKPOT_* variables; `overrides` win over them.

        Raises:
            ValidationError: a variable's value is invalid (the message names
                it), or an override names no setting.

        """
        env = os.environ if environ is None else environ
        _check_environ(env)
        unknown = sorted(overrides.keys() - {f.name for f in fields(cls)})
        if unknown:
            msg = f"no such setting: {', '.join(unknown)}"
            raise ValidationError(msg)
        values: dict[str, object] = {}
        _warn_of_near_misses(env, cls)
        for f in fields(cls):
            var = f"JACKPOT_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or not raw.strip():  # set but empty, as container templates do: unset
                continue
            try:
                values[f.name] = _parse(f.name, raw.strip())
                _check_field(f.name, values[f.name])
            except ValidationError as e:
                msg = f"environment variable {var}={raw!r} is invalid: {e}"
                raise ValidationError(msg) from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _check_environ(env: object) -> None:
    """Refuse an `environ` that is not str -> str (for our variables), by name.

    `from_env(environ)` is how code passes its own environment (a container's,
    a test's): an int where a string belongs is named here, not an
    AttributeError from deep inside the parsing.
    """
    if not isinstance(env, Mapping):
        msg = ("environ must be a mapping of variable names to values (as os.environ), "
               f"not {type(env).__name__}")
        raise ValidationError(msg)
    for var, raw in env.items():
        if not isinstance(var, str):
            msg = (f"environ must map variable names (str) to values, not "
                   f"{type(var).__name__} to {type(raw).__name__}")
            raise ValidationError(msg)
        if var.startswith("JACKPOT_") and not isinstance(raw, str):
            msg = f"environment variable {var} must be a str, not {type(raw).__name__}"
            raise ValidationError(msg)


_NEAR_MISS = ("environment variable %s is not a jackpot setting and is ignored: "
              "did you mean %s?")


def near_misses(env: Mapping[str, str]) -> list[str]:
    """Say of each JACKPOT_* variable that is no setting but nearly spells one that it is ignored.

    The `jackpot` command prints these: it shows no log, where `open()` warns.
    """
    return [_NEAR_MISS % pair for pair in _near_misses(env, Settings)]


def _near_misses(env: Mapping[str, str], cls: type[Settings]) -> list[tuple[str, str]]:
    """Return (variable, the setting it nearly spells) for each JACKPOT_* variable that is none."""
    known = [f"JACKPOT_{f.name.upper()}" for f in fields(cls)]
    found = []
    for var in env:
        if var.startswith("JACKPOT_") and var not in known:
            near = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if near:
                found.append((var, near[0]))
    return found


def _warn_of_near_misses(env: Mapping[str, str], cls: type[Settings]) -> None:
    """Log a JACKPOT_* variable that is no setting but nearly spells one (a typo is ignored)."""
    for var, near in _near_misses(env, cls):
        # Ignored it is: a raising log filter must not fail the settings (or open()).
        with contextlib.suppress(Exception):
            logger.warning(_NEAR_MISS, var, near, extra={"outcome": "unknown_setting"})


def _parse(name: str, raw: str) -> object:
    if name == "enable_metrics":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        msg = "expected true or false (or 1/0, yes/no, on/off)"
        raise ValidationError(msg)
    if name == "log_level":
        if raw.lower() not in LOG_LEVELS:  # (None is for code: unset, the variable is absent)
            msg = f"expected one of {', '.join(LOG_LEVELS)}"
            raise ValidationError(msg)
        return raw.lower()
    if name == "synchronous":
        return raw.upper()
    # The range the setting takes, as _check_int says it: "a non-negative integer"
    # was said of -5 for a setting that takes 1-3600000 (and of 0 it said the range).
    low, high = _INT_RANGES[name]
    if not raw.isascii() or not raw.isdigit():
        msg = f"expected an integer in [{low}, {high}] (ASCII digits only)"
        raise ValidationError(msg)
    digits = raw.lstrip("0") or "0"  # int() refuses more than 4300 digits, zeros included
    if len(digits) > _MAX_DIGITS:  # (beyond every range)
        msg = f"expected an integer in [{low}, {high}], got one of {len(digits)} digits"
        raise ValidationError(msg)
    return int(digits)


def _check_field(name: str, value: object) -> object:
    """Return one setting's value (an integer as int); raise ValidationError if it is invalid."""
    if name in _INT_RANGES:
        return _check_int(name, value, *_INT_RANGES[name])
    if name == "enable_metrics" and not isinstance(value, bool):
        msg = f"enable_metrics must be a bool, got {shown(value)}"
        raise ValidationError(msg)
    if name == "log_level" and value is not None and value not in LOG_LEVELS:
        msg = f"log_level must be one of {', '.join(LOG_LEVELS)} or None, got {shown(value)}"
        raise ValidationError(msg)
    if name == "synchronous" and value not in _SYNC_MODES:
        msg = f"synchronous must be one of {', '.join(_SYNC_MODES)}, got {shown(value)}"
        raise ValidationError(msg)
    return value


def _check_retry_budget(attempts: int, delay_ms: int) -> None:
    """Refuse retries whose backoff, doubling each time, outgrows `_MAX_BACKOFF_MS`.

    The engine sizes its waits (for an actor, a level's guard, an operation)
    on the longest run of backoffs, so an unbounded one cannot even start
    its actors (a wait past what the platform's clock holds).
    """
    if attempts > 0 and delay_ms * 2 ** (attempts - 1) > _MAX_BACKOFF_MS:
        msg = (f"max_retry_attempts {attempts} with retry_delay_ms {delay_ms} "
               f"(JACKPOT_MAX_RETRY_ATTEMPTS, JACKPOT_RETRY_DELAY_MS): the last retry would "
               f"wait {delay_ms * 2 ** (attempts - 1)} ms, more than {_MAX_BACKOFF_MS} ms "
               "(retry_delay_ms x 2**(max_retry_attempts - 1)); lower either")
        raise ValidationError(msg)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    whole = exact_int(value)
    if whole is None or not low <= whole <= high:
        msg = f"{name} must be an integer in [{low}, {high}], got {shown(value)}"
        raise ValidationError(msg)
    return whole
