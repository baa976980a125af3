"""JackpotEngine: the facade that wires settings, storage and actors.

Every public method validates its arguments first (pure, before anything is
queued), then sends the operation to the actor that owns the level (or to the
coordinator when it spans several) and waits, with a timeout, for the result.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykka

from jackpot import domain, money
from jackpot.actors import Coordinator, PoolActor, Ticket
from jackpot.audit import audit
from jackpot.domain import GroupConfig, LevelState
from jackpot.errors import (
    ConcurrencyViolationError,
    EngineClosedError,
    LockTimeoutError,
    UnknownGroupError,
    ValidationError,
)
from jackpot.results import ConfigResult, Contribution, PoolSnapshot, VerifyReport, Win
from jackpot.service import Operation, fingerprint, now_ms
from jackpot.settings import Settings
from jackpot.stats import Stats
from jackpot.storage import SQLiteStore

__all__ = ["JackpotEngine"]

logger = logging.getLogger("jackpot")

_MAX_TEXT = 256


def _check_text(value: object, name: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise ValidationError(msg)
    if not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        msg = (f"{name} must be 1-{_MAX_TEXT} printable characters, not blank, "
               f"got {value[:40]!r} ({len(value)} chars)")
        raise ValidationError(msg)
    return value


class JackpotEngine:
    """A running jackpot engine over one database. Safe to share between threads."""

    def __init__(self, path: str, settings: Settings, names: Iterable[str]) -> None:
        """Start actors for `names`; use `JackpotEngine.open` instead."""
        self._path = path
        self._settings = settings
        self.stats = Stats()
        self._closed = False
        self._inflight = 0
        self._cond = threading.Condition()
        self._reader = self._open_store()
        self._reader_lock = threading.Lock()
        self._pools = {n: PoolActor.start(n, self._open_store, settings, self.stats).proxy()
                       for n in sorted(names)}
        self._coordinator = Coordinator.start(
            self._open_store, self._pools, settings, self.stats).proxy()
        retries = settings.max_retry_attempts + 1
        self._queue_timeout = settings.lock_timeout_ms / 1000
        self._run_timeout = (settings.lock_timeout_ms * (retries + 2)
                             + settings.retry_delay_ms * 2**retries * 2) / 1000

    # -- life cycle ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        groups: Iterable[GroupConfig] | None = None,
        *,
        settings: Settings | None = None,
    ) -> JackpotEngine:
        """Open (or create) the database at `path` and start the engine.

        Levels in `groups` that the file lacks are created; levels already in
        the file are kept as they are. A new file with no `groups` gets the
        default levels minor, major and mega.

        Raises:
            ValidationError: bad settings (naming the JACKPOT_* variable) or groups.
            StorageError: the file cannot be opened as a jackpot database.

        """
        settings = settings if settings is not None else Settings.from_env()
        logger.setLevel(settings.log_level.upper())
        configs = list(groups) if groups is not None else None
        if configs is not None:
            for g in configs:
                if not isinstance(g, GroupConfig):
                    msg = f"groups must hold GroupConfig objects, not {type(g).__name__}"
                    raise ValidationError(msg)
            names = [g.name for g in configs]
            if len(set(names)) != len(names):
                msg = f"groups name a level twice: {sorted(names)}"
                raise ValidationError(msg)
        store = _store(str(path), settings)
        try:
            store.migrate()
            with store.write():
                existing = store.load_levels()
                wanted = configs if configs is not None or existing else list(domain.DEFAULT_GROUPS)
                for config in wanted or []:
                    if config.name not in existing:
                        state, entry = domain.create(config, now_ms())
                        store.insert_level(state)
                        store.append(f"create:{config.name}", [entry])
                        existing[config.name] = state
        finally:
            store.close()
        return cls(str(path), settings, existing)

    def _open_store(self) -> SQLiteStore:
        return _store(self._path, self._settings)

    def close(self, timeout: float | None = None) -> None:
        """Let in-flight operations finish, stop every actor; later calls fail.

        Idempotent. `timeout` bounds the wait for in-flight operations
        (default: the engine's longest operation time).
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.wait_for(lambda: self._inflight == 0,
                                timeout if timeout is not None else self._run_timeout)
        self._coordinator.actor_ref.stop(block=True, timeout=self._run_timeout)
        for proxy in self._pools.values():
            proxy.actor_ref.stop(block=True, timeout=self._run_timeout)
        with self._reader_lock:
            self._reader.close()

    def __enter__(self) -> Self:
        """Return the engine; `close()` on exit."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the engine."""
        self.close()

    @property
    def settings(self) -> Settings:
        """The settings this engine runs with."""
        return self._settings

    @property
    def groups(self) -> tuple[str, ...]:
        """Names of the levels this engine serves, sorted."""
        return tuple(self._pools)

    # -- operations ------------------------------------------------------------

    def contribute(
        self,
        bet: Decimal | int | str,
        *,
        groups: Iterable[str] | str | None = None,
        op_id: str | None = None,
    ) -> Contribution:
        """Add one bet's share to every named level (all levels when None), atomically.

        Returns per level the amount added, the balance and version after.
        Replaying an op_id returns the first result with `replayed=True`.
        """
        units = money.parse_amount(bet, name="bet")
        names = self._names(groups)
        op_id, explicit = self._op_id(op_id)
        request = {"kind": "contribute", "bet": units,
                   "groups": "*" if groups is None else list(names)}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[domain.Entry], Contribution]:
            new, entries = {}, []
            for name in names:
                new[name], entry = domain.contribute(states[name], units, now)
                entries.append(entry)
            result = Contribution(
                op_id,
                {e.level: money.from_units(e.delta) for e in entries},
                {n: money.from_units(s.amount) for n, s in new.items()},
                {n: s.version for n, s in new.items()})
            return new, entries, result

        op = Operation("contribute", op_id, explicit, fingerprint(request), names, apply,
                       lambda r: Contribution.from_record(r, replayed=True))
        result: Contribution = self._submit(op)
        return result

    def process_win(
        self,
        group: str,
        *,
        op_id: str | None = None,
        amount: Decimal | int | str | None = None,
        winner: str | None = None,
    ) -> Win:
        """Pay a level: the whole pool (then reset to seed), or a fixed `amount`.

        Wins are pessimistic: the level's row is locked and read fresh first.
        Simultaneous wins are served one after the other; each pays what the
        pool holds at its turn.

        Raises:
            InsufficientFundsError: `amount` exceeds the pool, or the pool is empty.

        """
        name = self._name(group)
        units = None if amount is None else money.parse_amount(amount, name="amount")
        winner = _check_text(winner, "winner")
        op_id, explicit = self._op_id(op_id)
        request = {"kind": "win", "group": name, "amount": units, "winner": winner}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[domain.Entry], Win]:
            new, entry = domain.win(states[name], units, now, winner=winner)
            result = Win(op_id, name, money.from_units(entry.paid),
                         money.from_units(new.amount), new.version, winner, units is None)
            return {name: new}, [entry], result

        op = Operation("win", op_id, explicit, fingerprint(request), (name,), apply,
                       lambda r: Win.from_record(r, replayed=True), pessimistic=True)
        result: Win = self._submit(op)
        return result

    def update_config(
        self,
        group: str,
        *,
        op_id: str | None = None,
        expected_version: int | None = None,
        who: str | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> ConfigResult:
        """Change a level's seed, contribution_rate and/or cap, atomically and audited.

        With `expected_version`, the change applies only if the level is still
        at that version; otherwise `ConcurrencyViolationError` (never a silent
        overwrite). A new seed applies at the next reset; a cap may not be set
        below the seed or the current amount.
        """
        name = self._name(group)
        if expected_version is not None and (
                isinstance(expected_version, bool) or not isinstance(expected_version, int)
                or expected_version < 1):
            msg = f"expected_version must be a positive int, got {expected_version!r}"
            raise ValidationError(msg)
        parsed = domain.parse_changes(changes)
        who, reason = _check_text(who, "who"), _check_text(reason, "reason")
        op_id, explicit = self._op_id(op_id)
        request = {"kind": "config", "group": name, "expected_version": expected_version,
                   "changes": parsed, "who": who, "reason": reason}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[domain.Entry], ConfigResult]:
            state = states[name]
            if expected_version is not None and state.version != expected_version:
                msg = (f"level {name!r} is at version {state.version}, not the expected "
                       f"{expected_version}: re-read it and decide again")
                raise ConcurrencyViolationError(
                    msg, operation="update_config", group=name,
                    conflict_details={"expected_version": expected_version,
                                      "actual_version": state.version})
            new, entry = domain.reconfigure(state, parsed, now, who=who, reason=reason)
            assert entry.detail is not None
            result = ConfigResult(op_id, name, new.version, entry.detail["before"],
                                  entry.detail["after"])
            return {name: new}, [entry], result

        op = Operation("config", op_id, explicit, fingerprint(request), (name,), apply,
                       lambda r: ConfigResult.from_record(r, replayed=True), pessimistic=True)
        result: ConfigResult = self._submit(op)
        return result

    # -- reads -------------------------------------------------------------------

    def pool(self, group: str) -> PoolSnapshot:
        """Return the committed state of one level."""
        name = self._name(group)
        return self.pools()[name]

    def pools(self) -> dict[str, PoolSnapshot]:
        """Return every level's committed state, read in one consistent snapshot."""
        self._check_open()
        with self._reader_lock, self._reader.read():
            states = self._reader.load_levels()
        return {n: PoolSnapshot.of(s) for n, s in states.items()}

    def verify(self) -> VerifyReport:
        """Recompute every level from the ledger and report any difference."""
        self._check_open()
        with self._reader_lock:
            return audit(self._reader)

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = "the engine is closed; open a new one with JackpotEngine.open()"
            raise EngineClosedError(msg)

    def _name(self, group: object) -> str:
        name = domain.validate_name(group)
        if name not in self._pools:
            msg = f"unknown level {name!r}: this engine has {', '.join(self._pools)}"
            raise UnknownGroupError(msg)
        return name

    def _names(self, groups: Iterable[str] | str | None) -> tuple[str, ...]:
        if groups is None:
            return tuple(self._pools)
        if isinstance(groups, str):
            groups = (groups,)
        if not isinstance(groups, (tuple, list, set, frozenset)):
            msg = f"groups must be a tuple or list of level names, not {type(groups).__name__}"
            raise ValidationError(msg)
        names = [self._name(g) for g in groups]
        if not names:
            msg = "groups is empty: name at least one level, or pass None for every level"
            raise ValidationError(msg)
        if len(set(names)) != len(names):
            msg = f"groups names a level twice: {names}"
            raise ValidationError(msg)
        return tuple(sorted(names))

    def _op_id(self, op_id: object) -> tuple[str, bool]:
        if op_id is None:
            return f"auto-{uuid.uuid4().hex}", False
        return _check_text(op_id, "op_id", optional=False), True  # type: ignore[return-value]

    def _submit(self, op: Operation) -> Any:
        with self._cond:
            self._check_open()
            self._inflight += 1
        try:
            ticket = Ticket()
            target = self._coordinator if len(op.names) > 1 else self._pools[op.names[0]]
            future = target.submit(ticket, op)
            try:
                return future.get(timeout=self._queue_timeout)
            except pykka.Timeout:
                if ticket.abandon():
                    self.stats.add("lock_timeouts", op.kind, ",".join(op.names))
                    msg = (f"{op.kind} {op.op_id!r} was not started within "
                           f"{self._settings.lock_timeout_ms} ms; nothing was changed")
                    raise LockTimeoutError(msg) from None
            # Claimed: it is running; its own lock waits and retries bound it.
            started = time.monotonic()
            try:
                return future.get(timeout=self._run_timeout)
            except pykka.Timeout:
                msg = (f"{op.kind} {op.op_id!r} did not finish within "
                       f"{self._run_timeout + time.monotonic() - started:.1f} s; its outcome "
                       "is unknown: retry with the same op_id to learn it")
                raise LockTimeoutError(msg) from None
        except pykka.ActorDeadError as e:
            self._check_open()
            msg = f"the actor for {', '.join(op.names)} is not running: {e}"
            raise EngineClosedError(msg) from e
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()


def _store(path: str, settings: Settings) -> SQLiteStore:
    return SQLiteStore(path, lock_timeout_ms=settings.lock_timeout_ms,
                       poll_interval_ms=settings.concurrency_check_interval_ms,
                       synchronous=settings.synchronous)
