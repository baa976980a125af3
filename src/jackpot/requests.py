"""Turn public calls into validated `Operation`s, before anything is queued.

Shared by the threaded engine and the asyncio engine, so both validate and
fingerprint requests identically. Nothing here does I/O: a refused argument
raises here and nothing is sent to an actor.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any, cast

from jackpot import domain, money
from jackpot._frozen import builder
from jackpot._plural import counted
from jackpot.domain import Entry, LevelState
from jackpot.errors import (
    ConcurrencyViolationError,
    GroupSuspendedError,
    UnknownGroupError,
    ValidationError,
    exact_int,
    shown,
)
from jackpot.results import AdminResult, ConfigResult, Contribution, Win
from jackpot.service import Operation, fingerprint

__all__ = ["Requests", "bet_fingerprint", "check_text", "draw"]

# Bets are built without the frozen __init__'s cost (see `jackpot._frozen`);
# the rarer operations are built as usual.
_OPERATION = builder(Operation)
_CONTRIBUTION = builder(Contribution)

_MAX_TEXT = 256
_SHOWN = 40


def check_text(value: object, name: str, *, optional: bool = True) -> str | None:
    """Return a short printable text (op_id, winner, reason) or raise naming it.

    A plain str: a str subclass is taken as the text it holds (see
    `domain.validate_name`), so results equal their replays in type too.
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise ValidationError(msg)
    value = str.__str__(value)  # checked as the text it is, whatever a subclass overrides
    if not value.strip() or len(value) > _MAX_TEXT or not value.isprintable():
        msg = (f"{name} must be 1-{_MAX_TEXT} printable characters, not blank, "
               f"got {value[:_SHOWN]!r} ({counted(len(value), 'char')})")
        raise ValidationError(msg)
    return value


def _check_who(value: object, action: str) -> str:
    """Return the `who` an action that can lower a pool must record, or raise naming it.

    Such an action is audited with who and why (DESIGN: a pool goes down only
    through a win or an adjustment that records both), so None is refused
    here, before anything is queued, as a ValidationError rather than stored
    as NULL.
    """
    if value is None:
        msg = (f"who is required for {action}: name the person or system making it "
               f"(1-{_MAX_TEXT} printable characters, not blank)")
        raise ValidationError(msg)
    checked = check_text(value, "who", optional=False)
    assert checked is not None  # (optional=False)
    return checked


RESERVED_OP_ID_PREFIXES = ("auto-", "create:")
"""The engine's own op_ids: generated ones (`auto-...`) and each level's creation
(`create:<level>`). A caller's op_id may not look like one: its ledger rows would
be mistaken for theirs."""


def _refuse_every_level_closed(states: Mapping[str, LevelState]) -> None:
    """Refuse a bet on "every level" when none takes bets, rather than succeed empty.

    Recorded as applied with nothing contributed, its op_id would be used up
    and replay that empty result after the levels reopen. (Some level is
    always suspended then: a retirement needs a level to move its pool to.)
    """
    suspended = sorted(n for n, s in states.items() if s.status == domain.SUSPENDED)
    retired = sorted(n for n, s in states.items() if s.status == domain.RETIRED)
    msg = "a bet on every level, but no level takes bets: " + "; ".join(
        f"{what} {', '.join(names)}" for what, names in (("suspended", suspended),
                                                         ("retired", retired)) if names)
    msg += (" (resume a suspended level first)" if suspended else
            " (a retired level never takes bets again: open the engine with a new level)")
    raise GroupSuspendedError(msg)


class Requests:
    """Builds operations against a fixed set of level names."""

    def __init__(self, names: Iterable[str]) -> None:
        """Bind the builder to the engine's levels."""
        self.names = tuple(sorted(names))
        self._known = frozenset(self.names)

    def name(self, group: object) -> str:
        """Return a known level name or raise ValidationError/UnknownGroupError."""
        name = domain.validate_name(group)
        if name not in self.names:
            # "did you mean" first, for the common case, a typo; the hint stays, as a
            # name near a known one may be a level added since ('minor2' after 'minor')
            maybe = domain.did_you_mean(name, self.names)
            msg = (f"unknown level {name!r}{maybe}: this engine has {', '.join(self.names)} "
                   "(a level added to the database after this engine opened needs it opened "
                   "again)")
            raise UnknownGroupError(msg)
        return name

    def group_list(self, groups: object) -> tuple[str, ...]:
        """Return the sorted, distinct, known levels of a `groups=` argument."""
        if groups is None:
            return self.names
        if isinstance(groups, str):
            groups = (groups,)
        if type(groups) not in (list, tuple) and (  # (those two: no ABC checks to run)
                isinstance(groups, (bytes, Mapping)) or not isinstance(groups, Iterable)):
            msg = f"groups must be an iterable of level names, not {type(groups).__name__}"
            raise ValidationError(msg)
        # A plain str naming a level is one already: no pattern to match it against.
        names = [g if type(g) is str and g in self._known else self.name(g)
                 for g in cast("Iterable[object]", groups)]
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
            # Time-ordered, so generated ids append to the ledger's op_id index
            # instead of dirtying a random page of it on every insert.
            return f"auto-{time.time_ns():016x}-{secrets.token_hex(6)}", False
        checked = check_text(op_id, "op_id", optional=False)
        assert checked is not None
        if checked.startswith(RESERVED_OP_ID_PREFIXES):
            msg = (f"op_id must not start with {' or '.join(map(repr, RESERVED_OP_ID_PREFIXES))}"
                   f" (the engine's own op_ids), got {checked[:_SHOWN]!r}")
            raise ValidationError(msg)
        return checked, True

    def contribute(self, bet: object, *, groups: object, op_id: object,
                   player: object = None) -> Operation:
        """Build a contribution of `bet` to `groups` (None: every active level)."""
        units = money.parse_amount(bet, name="bet")
        names = self.group_list(groups)
        every = groups is None
        who = check_text(player, "player")
        oid, explicit = self.op_id(op_id)

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], Contribution]:
            new: dict[str, LevelState] = {}
            entries: list[Entry] = []
            hits: list[Win] = []
            added: dict[str, Decimal] = {}
            balances: dict[str, Decimal] = {}
            versions: dict[str, int] = {}
            for name in names:
                state = states[name]
                if every and state.status != domain.ACTIVE:
                    continue  # "every level" means every level that takes bets
                after, rows, level_hits = domain.contribute(state, units, now, draw, player=who)
                if rows:
                    new[name] = after
                    entries.extend(rows)
                # (`after` is `state` itself when the bet does not qualify: no rows)
                added[name] = money.from_units(sum(e.contributed - e.overflow for e in rows))
                balances[name] = money.from_units(after.amount)
                versions[name] = after.version
                if level_hits:
                    hits.extend(Win(oid, h.level, money.from_units(h.paid),
                                    money.from_units(h.balance_after), h.version_after,
                                    winner=who, reset=True, hit=True) for h in level_hits)
            if every and not added:
                _refuse_every_level_closed(states)
            result = _CONTRIBUTION(oid, added, balances, versions, hits=tuple(hits))
            result.__class__ = Contribution
            return new, entries, result

        op = _OPERATION("contribute", oid, explicit,
                        bet_fingerprint(units, None if every else names, who), names, apply,
                        lambda r: Contribution.from_record(r, replayed=True))
        op.__class__ = Operation
        return op  # type: ignore[no-any-return]

    def win(self, group: object, *, op_id: object, amount: object, winner: object,
            expected_version: object = None, expected_amount: object = None) -> Operation:
        """Build a win: the whole pool (amount None) or a fixed amount.

        With `expected_version` or `expected_amount` (what the player was
        shown) the win is refused if the pool moved on.
        """
        name = self.name(group)
        units = None if amount is None else money.parse_amount(amount, name="amount")
        who = check_text(winner, "winner")
        version = _check_version(expected_version)
        shown = None if expected_amount is None else money.parse_amount(
            expected_amount, name="expected_amount", allow_zero=True)
        oid, explicit = self.op_id(op_id)
        request = {"kind": "win", "group": name, "amount": units, "winner": who,
                   "expected_version": version, "expected_amount": shown}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], Win]:
            state = states[name]
            _expect(state, "win", version, shown)
            new, entry = domain.win(state, units, now, draw, winner=who)
            result = Win(oid, name, money.from_units(entry.paid),
                         money.from_units(new.amount), new.version, who, units is None)
            return {name: new}, [entry], result

        return Operation("win", oid, explicit, fingerprint(request), (name,), apply,
                         lambda r: Win.from_record(r, replayed=True), pessimistic=True)

    def config(self, group: object, *, op_id: object, expected_version: object,
               who: object, reason: object, changes: dict[str, Any]) -> Operation:
        """Build a config change, checked against `expected_version` if given."""
        name = self.name(group)
        version = _check_version(expected_version)
        parsed = domain.parse_changes(changes)
        by, why = check_text(who, "who"), check_text(reason, "reason")
        oid, explicit = self.op_id(op_id)
        request = {"kind": "config", "group": name, "expected_version": version,
                   "changes": parsed, "who": by, "reason": why}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], ConfigResult]:
            state = states[name]
            _expect(state, "config", version, None)
            new, entry = domain.reconfigure(state, parsed, now, who=by, reason=why)
            assert entry.detail is not None
            result = ConfigResult(oid, name, new.version, entry.detail["before"],
                                  entry.detail["after"], pending=entry.detail["pending"])
            return {name: new}, [entry], result

        return Operation("config", oid, explicit, fingerprint(request), (name,), apply,
                         lambda r: ConfigResult.from_record(r, replayed=True),
                         pessimistic=True)

    def status(self, action: str, group: object, *, op_id: object, who: object,
               reason: object) -> Operation:
        """Build a suspend or resume."""
        name = self.name(group)
        by = check_text(who, "who")
        why = check_text(reason, "reason", optional=action == "resume")
        status = domain.SUSPENDED if action == "suspend" else domain.ACTIVE

        def change(states: Mapping[str, LevelState], now: int
                   ) -> tuple[dict[str, LevelState], list[Entry]]:
            new, entry = domain.set_status(states[name], status, now, who=by, reason=why)
            return {name: new}, [entry]

        return self._admin(action, name, (name,), op_id,
                           {"who": by, "reason": why}, change=change)

    def adjust(self, group: object, delta: object, *, op_id: object, who: object,
               reason: object) -> Operation:
        """Build an audited adjustment of a pool by a signed `delta`."""
        name = self.name(group)
        units = money.parse_signed_amount(delta, name="delta")
        by = _check_who(who, "an adjustment")
        why = check_text(reason, "reason", optional=False)

        def change(states: Mapping[str, LevelState], now: int
                   ) -> tuple[dict[str, LevelState], list[Entry]]:
            new, entry = domain.adjust(states[name], units, now, who=by, reason=why)
            return {name: new}, [entry]

        return self._admin("adjust", name, (name,), op_id,
                           {"delta": units, "who": by, "reason": why}, change=change)

    def retire(self, group: object, *, transfer_to: object, op_id: object, who: object,
               reason: object) -> Operation:
        """Build a retirement moving pool and reserve to `transfer_to`."""
        name = self.name(group)
        target = self.name(transfer_to)
        if target == name:
            msg = f"transfer_to must name another level than {name!r}"
            raise ValidationError(msg)
        by = _check_who(who, "a retirement")
        why = check_text(reason, "reason", optional=False)

        def change(states: Mapping[str, LevelState], now: int
                   ) -> tuple[dict[str, LevelState], list[Entry]]:
            src, tgt, entries = domain.retire(states[name], states[target], now,
                                              who=by, reason=why)
            return {name: src, target: tgt}, entries

        return self._admin("retire", name, tuple(sorted((name, target))), op_id,
                           {"transfer_to": target, "who": by, "reason": why},
                           change=change)

    def _admin(self, action: str, name: str, names: tuple[str, ...], op_id: object,
               args: dict[str, Any], *,
               change: Callable[[Mapping[str, LevelState], int],
                                tuple[dict[str, LevelState], list[Entry]]]) -> Operation:
        oid, explicit = self.op_id(op_id)
        request = {"kind": action, "group": name, **args}

        def apply(states: Mapping[str, LevelState], now: int
                  ) -> tuple[dict[str, LevelState], list[Entry], AdminResult]:
            new, entries = change(states, now)
            result = AdminResult(oid, action, name,
                                 {n: money.from_units(s.amount) for n, s in new.items()},
                                 {n: s.version for n, s in new.items()})
            return new, entries, result

        return Operation(action, oid, explicit, fingerprint(request), names, apply,
                         lambda r: AdminResult.from_record(r, replayed=True),
                         pessimistic=True)


def bet_fingerprint(units: int, names: tuple[str, ...] | None, player: str | None) -> str:
    """Return the `fingerprint` of a bet's request, its JSON text written directly.

    The request is {"kind": "contribute", "bet": units, "groups": "*" (None:
    every level) or the list of names, "player": player (absent when None:
    bets recorded before it keep their fingerprint)}. Its canonical text (keys
    sorted, no spaces) is written here as the encoder writes it, for a fifth
    of its instructions: level names need no escaping (letters, digits, '_',
    '.' and '-' only), the player is escaped by the encoder's own function.
    `tests/unit/test_requests.py` holds it to `fingerprint` of the dict.
    """
    groups = '"*"' if names is None else '["' + '","'.join(names) + '"]'
    text = f'{{"bet":{units:d},"groups":{groups},"kind":"contribute"'
    if player is not None:
        text += ',"player":' + encode_basestring_ascii(player)
    return hashlib.sha256((text + "}").encode()).hexdigest()


def draw(low: int, high: int) -> int:
    """Return a cryptographically random int in [low, high] (must-hit-by triggers)."""
    return low + secrets.randbelow(high - low + 1)


MAX_VERSION = 2**63 - 1
"""No level's version passes what a SQLite (or PostgreSQL bigint) column holds."""


def _check_version(value: object) -> int | None:
    """Return a version a level can be at (or None); anything else is refused by name.

    Bounded so the request's fingerprint (JSON) and messages can always show it:
    an int past 4300 digits cannot even be turned into text.
    """
    if value is None:
        return None
    version = exact_int(value)
    if version is None or version < 1:
        msg = f"expected_version must be a positive int, got {shown(value)}"
        raise ValidationError(msg)
    if version > MAX_VERSION:
        msg = (f"expected_version {shown(version)} is beyond any level's version "
               f"(at most {MAX_VERSION})")
        raise ValidationError(msg)
    return version


def _expect(state: LevelState, operation: str, version: int | None, shown: int | None
            ) -> None:
    """Refuse with ConcurrencyViolationError if the level moved past what the caller saw."""
    if version is not None and state.version != version:
        msg = (f"level {state.name!r} is at version {state.version}, not the expected "
               f"{version}: re-read it and decide again")
        raise ConcurrencyViolationError(
            msg, operation=operation, group=state.name,
            conflict_details={"expected_version": version, "actual_version": state.version})
    if shown is not None and state.amount != shown:
        msg = (f"level {state.name!r} holds {money.from_units(state.amount)}, not the "
               f"{money.from_units(shown)} the caller expected")
        raise ConcurrencyViolationError(
            msg, operation=operation, group=state.name,
            conflict_details={"expected_amount": str(money.from_units(shown)),
                              "actual_amount": str(money.from_units(state.amount))})
