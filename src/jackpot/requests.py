"""Turn public calls into validated `Operation`s, before anything is queued.

Shared by the threaded engine and the asyncio engine, so both validate and
fingerprint requests identically. Nothing here does I/O: a refused argument
raises here and nothing is sent to an actor.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from jackpot import domain, money
from jackpot.domain import Entry, LevelState
from jackpot.errors import ConcurrencyViolationError, UnknownGroupError, ValidationError
from jackpot.results import ConfigResult, Contribution, Win
from jackpot.service import Operation, fingerprint

__all__ = ["Requests", "check_text"]

_MAX_TEXT = 256
_SHOWN = 40


def check_text(value: object, name: str, *, optional: bool = True) -> str | None:
    """Return a short printable text (op_id, winner, reason) or raise naming it."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise ValidationError(msg)
    if not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        msg = (f"{name} must be 1-{_MAX_TEXT} printable characters, not blank, "
               f"got {value[:_SHOWN]!r} ({len(value)} chars)")
        raise ValidationError(msg)
    return value


class Requests:
    """Builds operations against a fixed set of level names."""

    def __init__(self, names: Iterable[str]) -> None:
        """Bind the builder to the engine's levels."""
        self.names = tuple(sorted(names))

    def name(self, group: object) -> str:
        """Return a known level name or raise ValidationError/UnknownGroupError."""
        name = domain.validate_name(group)
        if name not in self.names:
            msg = f"unknown level {name!r}: this engine has {', '.join(self.names)}"
            raise UnknownGroupError(msg)
        return name

    def group_list(self, groups: object) -> tuple[str, ...]:
        """Return the sorted, distinct, known levels of a `groups=` argument."""
        if groups is None:
            return self.names
        if isinstance(groups, str):
            groups = (groups,)
        if not isinstance(groups, (tuple, list, set, frozenset)):
            msg = f"groups must be a tuple or list of level names, not {type(groups).__name__}"
            raise ValidationError(msg)
        names = [self.name(g) for g in groups]
        if not names:
            msg = "groups is empty: name at least one level, or pass None for every level"
            raise ValidationError(msg)
        if len(set(names)) != len(names):
            msg = f"groups names a level twice: {names}"
            raise ValidationError(msg)
        return tuple(sorted(names))

    @staticmethod
    def op_id(op_id: object) -> tuple[str, bool]:
        """Return (op_id, caller supplied it); a missing one is generated."""
        if op_id is None:
            return f"auto-{uuid.uuid4().hex}", False
        checked = check_text(op_id, "op_id", optional=False)
        assert checked is not None
        return checked, True

    def contribute(self, bet: object, *, groups: object, op_id: object) -> Operation:
        """Build a contribution of `bet` to `groups` (None: every level)."""
        units = money.parse_amount(bet, name="bet")
        names = self.group_list(groups)
        oid, explicit = self.op_id(op_id)
        request = {"kind": "contribute", "bet": units,
                   "groups": "*" if groups is None else list(names)}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], Contribution]:
            new, entries = {}, []
            for name in names:
                new[name], entry = domain.contribute(states[name], units, now)
                entries.append(entry)
            result = Contribution(
                oid,
                {e.level: money.from_units(e.delta) for e in entries},
                {n: money.from_units(s.amount) for n, s in new.items()},
                {n: s.version for n, s in new.items()})
            return new, entries, result

        return Operation("contribute", oid, explicit, fingerprint(request), names, apply,
                         lambda r: Contribution.from_record(r, replayed=True))

    def win(self, group: object, *, op_id: object, amount: object, winner: object
            ) -> Operation:
        """Build a win: the whole pool (amount None) or a fixed amount."""
        name = self.name(group)
        units = None if amount is None else money.parse_amount(amount, name="amount")
        who = check_text(winner, "winner")
        oid, explicit = self.op_id(op_id)
        request = {"kind": "win", "group": name, "amount": units, "winner": who}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], Win]:
            new, entry = domain.win(states[name], units, now, winner=who)
            result = Win(oid, name, money.from_units(entry.paid),
                         money.from_units(new.amount), new.version, who, units is None)
            return {name: new}, [entry], result

        return Operation("win", oid, explicit, fingerprint(request), (name,), apply,
                         lambda r: Win.from_record(r, replayed=True), pessimistic=True)

    def config(self, group: object, *, op_id: object, expected_version: object,
               who: object, reason: object, changes: dict[str, Any]) -> Operation:
        """Build a config change, checked against `expected_version` if given."""
        name = self.name(group)
        if expected_version is not None and (
                isinstance(expected_version, bool) or not isinstance(expected_version, int)
                or expected_version < 1):
            msg = f"expected_version must be a positive int, got {expected_version!r}"
            raise ValidationError(msg)
        parsed = domain.parse_changes(changes)
        by, why = check_text(who, "who"), check_text(reason, "reason")
        oid, explicit = self.op_id(op_id)
        request = {"kind": "config", "group": name, "expected_version": expected_version,
                   "changes": parsed, "who": by, "reason": why}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], ConfigResult]:
            state = states[name]
            if expected_version is not None and state.version != expected_version:
                msg = (f"level {name!r} is at version {state.version}, not the expected "
                       f"{expected_version}: re-read it and decide again")
                raise ConcurrencyViolationError(
                    msg, operation="update_config", group=name,
                    conflict_details={"expected_version": expected_version,
                                      "actual_version": state.version})
            new, entry = domain.reconfigure(state, parsed, now, who=by, reason=why)
            assert entry.detail is not None
            result = ConfigResult(oid, name, new.version, entry.detail["before"],
                                  entry.detail["after"])
            return {name: new}, [entry], result

        return Operation("config", oid, explicit, fingerprint(request), (name,), apply,
                         lambda r: ConfigResult.from_record(r, replayed=True),
                         pessimistic=True)
