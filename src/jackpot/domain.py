"""Pure rules of a jackpot level: configuration, validation, state transitions.

No I/O here. Every transition takes a `LevelState` and returns the next state
plus the `Entry` rows the ledger must record; the caller persists both in one
transaction or neither. Amounts are integer units (see `money`). Randomness
(the must-hit-by trigger) comes in through a `draw(low, high)` callable so the
rules stay deterministic under test.

When config changes take effect: `seed` and `must_hit_by` wait for the next
reset (a player never sees the target of a running mystery jackpot move);
everything else (rates, cap, min_bet, max_contribution, overflow_to) applies
at once. Pending changes are kept on the state and shown in snapshots.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, SupportsIndex, TypedDict

from jackpot import money
from jackpot._frozen import builder
from jackpot.errors import (
    GroupRetiredError,
    GroupSuspendedError,
    InsufficientFundsError,
    ValidationError,
    shown,
)

__all__ = [
    "CONFIG_FIELDS",
    "DEFAULT_GROUPS",
    "ConfigChanges",
    "Draw",
    "Entry",
    "GroupConfig",
    "LevelConfig",
    "LevelState",
    "Meters",
    "adjust",
    "contribute",
    "create",
    "did_you_mean",
    "parse_changes",
    "reconfigure",
    "retire",
    "set_status",
    "validate_name",
    "win",
]

Draw = Callable[[int, int], int]
"""draw(low, high) returns an int uniformly in [low, high]."""

ACTIVE, SUSPENDED, RETIRED = "active", "suspended", "retired"
_OVERFLOW_TARGETS = ("meter", "reserve")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_DEFERRED = ("seed", "must_hit_by")
_CLEARABLE = ("cap", "min_bet", "max_contribution", "must_hit_by")
"""The optional settings: `None` clears them; the others always have a value."""
MAX_METER = 2**63 - 1
"""Meters are running sums stored as SQLite integers: they must stay within +-MAX_METER
(adjusted and transferred go negative: an adjustment down moves them towards -2**63)."""
MAX_HITS_PER_BET = 100
"""A bet that would trigger more mystery hits than this is refused."""

CONFIG_FIELDS = ("seed", "contribution_rate", "cap", "reserve_rate", "min_bet",
                 "max_contribution", "must_hit_by", "overflow_to")
"""Fields `update_config` may change."""


def validate_name(value: object, *, name: str = "group") -> str:
    """Return a valid level name (a plain str) or raise ValidationError naming the problem.

    A str subclass (an enum member of str, say) is taken as the text it
    holds: its own `__str__` and `__format__` may print something else
    ('Level.MINOR'), and the name goes into op_ids, messages and results.
    """
    if not isinstance(value, str):
        msg = f"{name} must be a level name (str), not {type(value).__name__}"
        raise ValidationError(msg)
    value = str.__str__(value)  # the text itself, whatever the subclass prints
    if not _NAME.fullmatch(value):
        msg = (
            f"{name} {value[:80]!r} is not a valid level name: use 1-64 ASCII "
            "letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
        raise ValidationError(msg)
    return value


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """Return " (did you mean 'minor'?)" if `name` likely mistypes one of `names`, else "".

    For the refusals of an unknown level (the engine's, the read commands').
    Names are case-sensitive, so one that differs only in case ('MINOR') is
    the likeliest slip, though difflib sees nothing alike in it; otherwise
    difflib's nearest, if close: level names are short, and at its default
    cutoff (0.6) 'minor' would pass for a slip of 'major'.
    """
    names = list(names)
    near = [known for known in names if known.casefold() == name.casefold()]
    near = near or difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


@dataclass(frozen=True, slots=True)
class LevelConfig:
    """A level's settings in storage units (amounts in units, rates in 1e-9)."""

    seed: int
    rate: int
    cap: int | None = None
    reserve_rate: int = 0
    min_bet: int | None = None
    max_contribution: int | None = None
    must_hit_by: int | None = None
    overflow_to: str = "meter"

    def check(self, *, amount: int) -> None:
        """Raise ValidationError if the settings contradict each other or `amount`."""
        if self.rate + self.reserve_rate >= money.RATE_SCALE:
            msg = (f"contribution_rate + reserve_rate must stay below 1, got "
                   f"{money.rate_to_decimal(self.rate):f} + "
                   f"{money.rate_to_decimal(self.reserve_rate):f}")
            raise ValidationError(msg)
        if self.overflow_to not in _OVERFLOW_TARGETS:
            msg = f"overflow_to must be 'meter' or 'reserve', got {self.overflow_to!r}"
            raise ValidationError(msg)
        if self.must_hit_by is not None and self.must_hit_by <= self.seed:
            msg = (f"must_hit_by {money.from_units(self.must_hit_by)} must be above the "
                   f"seed {money.from_units(self.seed)}")
            raise ValidationError(msg)
        if self.cap is None:
            return
        for what, floor in (("seed", self.seed), ("current amount", amount),
                            ("must_hit_by", self.must_hit_by or 0)):
            if self.cap < floor:
                msg = (f"cap {money.from_units(self.cap)} is below the {what} "
                       f"{money.from_units(floor)}")
                raise ValidationError(msg)


def _units(value: object, name: str, *, zero: bool = False) -> int:
    return money.parse_amount(value, name=name, allow_zero=zero)


def _maybe_units(value: object, name: str) -> int | None:
    return None if value is None else _units(value, name)


class ConfigChanges(TypedDict, total=False):
    """The settings `update_config` may change (as keyword arguments).

    Amounts and rates as Decimal, int (or an exact integer of another kind,
    numpy.int64) or decimal string; None clears an optional one. Type checkers
    then catch a misspelt setting.
    """

    seed: Decimal | int | str | SupportsIndex
    contribution_rate: Decimal | int | str | SupportsIndex
    cap: Decimal | int | str | SupportsIndex | None
    reserve_rate: Decimal | int | str | SupportsIndex
    min_bet: Decimal | int | str | SupportsIndex | None
    max_contribution: Decimal | int | str | SupportsIndex | None
    must_hit_by: Decimal | int | str | SupportsIndex | None
    overflow_to: Literal["meter", "reserve"]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """How a jackpot level is set up. Validated on construction.

    Amounts and rates are given as Decimal, int (or an exact integer of
    another kind, numpy.int64) or decimal string, never float, and kept as
    the exact Decimal they name.

    Attributes:
        name: the level's name ("minor", "major", ...).
        seed: the amount the pool starts from and resets to after a whole-pool win.
        contribution_rate: the share of each bet added to the pool, in (0, 1)
            (with `reserve_rate`, below 1 in all).
        cap: optional ceiling; a contribution stops there and the excess goes
            to the overflow meter (or the reserve, see `overflow_to`).
        reserve_rate: a hidden share of each bet that funds the next reset.
        min_bet: bets below it do not qualify for this level.
        max_contribution: a bet whose exact contribution (bet x rate) would
            exceed it is refused.
        must_hit_by: makes the level a mystery jackpot that hits at a hidden
            trigger drawn uniformly in (seed, must_hit_by] at every reset.
        overflow_to: "meter" (default) or "reserve".

    """

    name: str
    seed: Decimal
    contribution_rate: Decimal
    cap: Decimal | None = None
    reserve_rate: Decimal = Decimal(0)
    min_bet: Decimal | None = None
    max_contribution: Decimal | None = None
    must_hit_by: Decimal | None = None
    overflow_to: str = "meter"

    if TYPE_CHECKING:  # what the constructor takes: amounts and rates as Decimal, int or str
        # (an exact integer of another kind too, numpy.int64: anything with __index__)
        def __init__(  # noqa: PLR0917 - positional as the dataclass fields are
            self, name: str, seed: Decimal | int | str | SupportsIndex,
            contribution_rate: Decimal | int | str | SupportsIndex,
            cap: Decimal | int | str | SupportsIndex | None = None,
            reserve_rate: Decimal | int | str | SupportsIndex = ...,
            min_bet: Decimal | int | str | SupportsIndex | None = None,
            max_contribution: Decimal | int | str | SupportsIndex | None = None,
            must_hit_by: Decimal | int | str | SupportsIndex | None = None,
            overflow_to: str = "meter",
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", validate_name(self.name, name="GroupConfig.name"))
        units = self.to_units()
        units.check(amount=units.seed)
        # Normalise int/str inputs to exact Decimals so equality is by value.
        for key, value in config_view(units).items():
            object.__setattr__(self, key, value if key == "overflow_to" or value is None
                               else Decimal(value))

    def to_units(self) -> LevelConfig:
        """Return the settings in storage units (validating each field)."""
        return LevelConfig(
            seed=_units(self.seed, "seed", zero=True),
            rate=money.parse_rate(self.contribution_rate, name="contribution_rate"),
            cap=_maybe_units(self.cap, "cap"),
            reserve_rate=money.parse_rate(self.reserve_rate, name="reserve_rate",
                                          allow_zero=True),
            min_bet=_maybe_units(self.min_bet, "min_bet"),
            max_contribution=_maybe_units(self.max_contribution, "max_contribution"),
            must_hit_by=_maybe_units(self.must_hit_by, "must_hit_by"),
            overflow_to=_overflow_to(self.overflow_to),
        )


def _overflow_to(value: object) -> str:
    if not isinstance(value, str) or value not in _OVERFLOW_TARGETS:
        msg = f"overflow_to must be 'meter' or 'reserve', got {shown(value)}"
        raise ValidationError(msg)
    return str.__str__(value)  # the text, not what a str subclass prints (as validate_name)


def config_view(c: LevelConfig) -> dict[str, str | None]:
    """Return the settings as public names and decimal strings (for audit rows)."""
    def amount(v: int | None) -> str | None:
        return None if v is None else str(money.from_units(v))
    return {
        "seed": amount(c.seed),
        "contribution_rate": f"{money.rate_to_decimal(c.rate):f}",
        "cap": amount(c.cap),
        "reserve_rate": f"{money.rate_to_decimal(c.reserve_rate):f}",
        "min_bet": amount(c.min_bet),
        "max_contribution": amount(c.max_contribution),
        "must_hit_by": amount(c.must_hit_by),
        "overflow_to": c.overflow_to,
    }


class Meters(NamedTuple):
    """Running totals of a level, in units (counts for bets, wins and hits).

    Identities the audit checks (all from the ledger alone):
    amount = house_funded + reserve_funded + contributed - overflow - won
             + adjusted + transferred;
    reserve = reserve_in - reserve_funded + reserve_transferred.

    A NamedTuple rather than a dataclass: it is rebuilt on every change, and
    `_replace` is several times cheaper than `dataclasses.replace`.
    """

    bets: int = 0
    wagered: int = 0
    contributed: int = 0
    overflow: int = 0
    reserve_in: int = 0
    house_funded: int = 0
    reserve_funded: int = 0
    won: int = 0
    wins: int = 0
    hits: int = 0
    adjusted: int = 0
    transferred: int = 0
    reserve_transferred: int = 0


METER_FIELDS = Meters._fields
_METER_INDEX = {name: i for i, name in enumerate(METER_FIELDS)}


@dataclass(frozen=True, slots=True)
class LevelState:
    """A level's whole state, as persisted in one row.

    `trigger` is the hidden must-hit-by trigger: never shown in snapshots,
    results or logs (it is excluded from repr).
    """

    name: str
    config: LevelConfig
    amount: int
    version: int
    last_modified_at: int
    status: str = ACTIVE
    reserve: int = 0
    carry: int = 0
    reserve_carry: int = 0
    trigger: int | None = field(default=None, repr=False)
    pending: dict[str, int | None] = field(default_factory=dict)
    meters: Meters = field(default_factory=Meters)
    lock_holder: str | None = None


_STATE_FIELDS = tuple(f.name for f in fields(LevelState))
_STATE_INDEX = {name: i for i, name in enumerate(_STATE_FIELDS)}
_VERSION, _MODIFIED = _STATE_INDEX["version"], _STATE_INDEX["last_modified_at"]
_state_values = operator.attrgetter(*_STATE_FIELDS)
_STATE = builder(LevelState)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row, before the caller adds the op_id.

    `delta` / `reserve_delta` are the net changes of pool / reserve; the other
    integer fields break them down per meter (see `Meters`).
    """

    kind: str
    level: str
    delta: int
    balance_after: int
    reserve_delta: int
    reserve_after: int
    version_after: int
    at_ms: int
    contributed: int = 0
    overflow: int = 0
    reserve_in: int = 0
    house_funded: int = 0
    reserve_funded: int = 0
    paid: int = 0
    adjusted: int = 0
    transferred: int = 0
    reserve_transferred: int = 0
    who: str | None = None
    detail: dict[str, Any] | None = None


_ENTRY = builder(Entry)


def _record(before: LevelState, after: LevelState, kind: str, **parts: Any) -> Entry:
    """Return the ledger entry that takes `before` to `after`."""
    entry = _ENTRY(kind, after.name, after.amount - before.amount, after.amount,
                   after.reserve - before.reserve, after.reserve, after.version,
                   after.last_modified_at, **parts)
    entry.__class__ = Entry  # (built without the frozen __init__: see `jackpot._frozen`)
    return entry  # type: ignore[no-any-return]


def _meter(state: LevelState, **deltas: int) -> Meters:
    """Return the level's meters with `deltas` added (refusing to pass +-`MAX_METER`)."""
    values = list(state.meters)
    for name, delta in deltas.items():
        i = _METER_INDEX[name]
        values[i] += delta
        if not -MAX_METER <= values[i] <= MAX_METER:
            msg = (f"level {state.name!r}: its {name} meter would pass the storage range "
                   f"({-MAX_METER} to {MAX_METER}); retire the level and open a new one")
            raise ValidationError(msg)
    return Meters._make(values)


def _check_reserve(state: LevelState, reserve: int, what: str) -> None:
    """Refuse a reserve past `money.MAX_UNITS`, the most the engine holds in one figure.

    A pool stops at that limit by itself (the excess is overflow); the
    reserve has no such stop, and a retirement adds a whole second reserve to
    it, so without this check it could pass what a 64-bit column stores.
    """
    if reserve > money.MAX_UNITS:
        msg = (f"{what} would lift the reserve of level {state.name!r} to "
               f"{money.from_units(reserve)}, beyond the engine's range (at most "
               f"{money.from_units(money.MAX_UNITS)}); nothing was applied")
        raise ValidationError(msg)


def _step(state: LevelState, now: int, **changes: Any) -> LevelState:
    """Return `state` one version on, with `changes`.

    `dataclasses.replace` without its overhead (it rebuilds keyword arguments
    and calls the frozen `__init__`: see `jackpot._frozen`): this runs once
    per level of every bet, the engine's hottest line.
    """
    values = list(_state_values(state))  # (one C call for all fields)
    try:
        for name, value in changes.items():
            values[_STATE_INDEX[name]] = value
    except KeyError:
        msg = f"LevelState has no field(s) {', '.join(sorted(set(changes) - set(_STATE_INDEX)))}"
        raise TypeError(msg) from None
    values[_VERSION] = state.version + 1
    values[_MODIFIED] = now
    nxt = _STATE(*values)
    nxt.__class__ = LevelState
    return nxt  # type: ignore[no-any-return]


def check_open(state: LevelState, operation: str, *, allow_suspended: bool = False) -> None:
    """Raise if the level's status refuses `operation`."""
    if state.status == RETIRED:
        msg = f"level {state.name!r} is retired: it refuses {operation}"
        raise GroupRetiredError(msg)
    if state.status == SUSPENDED and not allow_suspended:
        msg = f"level {state.name!r} is suspended: it refuses {operation} until resumed"
        raise GroupSuspendedError(msg)


def _draw_trigger(config: LevelConfig, draw: Draw) -> int | None:
    if config.must_hit_by is None:
        return None
    return draw(config.seed + 1, config.must_hit_by)


def create(config: GroupConfig, now: int, draw: Draw) -> tuple[LevelState, Entry]:
    """Return a new level at its seed (version 1, house-funded) and its entry."""
    units = config.to_units()
    blank = LevelState(config.name, units, 0, 0, now)
    state = replace(blank, amount=units.seed, version=1,
                    trigger=_draw_trigger(units, draw),
                    meters=Meters(house_funded=units.seed))
    return state, _record(blank, state, "create", house_funded=units.seed,
                          detail={"config": config_view(units)})


def _reset(state: LevelState, draw: Draw) -> tuple[LevelState, int, int]:
    """Apply pending changes and refill to seed: (state, house part, reserve part)."""
    config = replace(state.config, **state.pending)  # type: ignore[arg-type]
    from_reserve = min(state.reserve, config.seed)
    house = config.seed - from_reserve
    nxt = replace(state, config=config, pending={}, amount=state.amount + config.seed,
                  reserve=state.reserve - from_reserve, trigger=_draw_trigger(config, draw),
                  meters=_meter(state, house_funded=house, reserve_funded=from_reserve))
    return nxt, house, from_reserve


def win(
    state: LevelState,
    amount: int | None,
    now: int,
    draw: Draw,
    *,
    winner: str | None = None,
    kind: str = "win",
) -> tuple[LevelState, Entry]:
    """Pay the whole pool and reset to seed, or pay a fixed part without reset."""
    check_open(state, "wins")
    if amount is None:
        if state.amount <= 0:
            msg = f"level {state.name!r} has an empty pool: nothing to pay"
            raise InsufficientFundsError(msg)
        paid = state.amount
    else:
        if amount <= 0:
            msg = f"amount must be positive, got {amount} units"
            raise ValidationError(msg)
        if amount > state.amount:
            msg = (f"amount {money.from_units(amount)} exceeds the pool of level "
                   f"{state.name!r} ({money.from_units(state.amount)})")
            raise InsufficientFundsError(msg)
        paid = amount
    nxt = _step(state, now, amount=state.amount - paid,
                meters=_meter(state, won=paid, wins=1, hits=int(kind == "hit")))
    house = from_reserve = 0
    if amount is None:
        nxt, house, from_reserve = _reset(nxt, draw)
    return nxt, _record(state, nxt, kind, paid=paid, house_funded=house,
                        reserve_funded=from_reserve, who=winner,
                        detail={"reset": amount is None})


def contribute(
    state: LevelState, bet: int, now: int, draw: Draw, *, player: str | None = None
) -> tuple[LevelState, list[Entry], list[Entry]]:
    """Add one bet's share: (state, ledger entries, the hit entries among them).

    `player`, who placed the bet, is recorded as the winner of any hit it triggers.

    A bet below `min_bet` does not qualify: no change, no entry. The pool
    stops at its cap (excess to the overflow meter or the reserve). On a
    must-hit-by level, reaching the hidden trigger pays the trigger amount,
    resets, and carries the rest of the contribution into the new pool.
    """
    check_open(state, "contributions")
    c = state.config
    if bet <= 0:
        msg = f"bet must be positive, got {bet} units"
        raise ValidationError(msg)
    if c.min_bet is not None and bet < c.min_bet:
        return state, [], []
    # The bet's own share, exactly, against the limit: not the whole units it
    # would credit, which include the fraction carried from earlier bets, so
    # that the same bet is always accepted or always refused. A share at most
    # the limit never credits more than it (the carry is under one unit).
    if c.max_contribution is not None and bet * c.rate > c.max_contribution * money.RATE_SCALE:
        msg = (f"bet {money.from_units(bet)} would contribute "
               f"{money.contribution_to_decimal(bet, c.rate):f} to level {state.name!r}, "
               f"above its max_contribution {money.from_units(c.max_contribution)}")
        raise ValidationError(msg)
    whole, carry = money.split_contribution(bet, c.rate, state.carry)
    reserve_in, reserve_carry = money.split_contribution(bet, c.reserve_rate,
                                                         state.reserve_carry)
    entries: list[Entry] = []
    hits: list[Entry] = []
    first = True
    remaining = whole
    current = state
    while first or remaining > 0:
        carries = {"carry": carry, "reserve_carry": reserve_carry} if first else {}
        nxt, entry, remaining = _add(current, remaining, now, bet if first else 0,
                                     reserve_in if first else 0, **carries)
        entries.append(entry)
        first = False
        current = nxt
        if current.trigger is not None and current.amount >= current.trigger:
            if len(hits) >= MAX_HITS_PER_BET:
                msg = (f"bet {money.from_units(bet)} would trigger more than "
                       f"{MAX_HITS_PER_BET} hits on level {state.name!r}: set a "
                       "max_contribution that fits the must-hit-by range")
                raise ValidationError(msg)
            current, hit = win(current, None, now, draw, winner=player, kind="hit")
            entries.append(hit)
            hits.append(hit)
    return current, entries, hits


def _add(state: LevelState, units: int, now: int, bet: int, reserve_in: int,
         **carries: int) -> tuple[LevelState, Entry, int]:
    """Add `units` up to the cap and the trigger; return the rest for the next pool."""
    c = state.config
    limit = money.MAX_UNITS if c.cap is None else c.cap
    if state.trigger is not None:
        limit = min(limit, max(state.trigger, state.amount))
    room = max(limit - state.amount, 0)
    added = min(units, room)
    rest = units - added
    overflow = 0
    if state.trigger is None or state.amount + added < state.trigger:
        overflow, rest = rest, 0  # no hit coming: the excess is overflow
    to_reserve = reserve_in + (overflow if c.overflow_to == "reserve" else 0)
    if to_reserve:
        _check_reserve(state, state.reserve + to_reserve,
                       f"a bet of {money.from_units(bet)}" if bet else "a bet")
    nxt = _step(state, now, amount=state.amount + added,
                reserve=state.reserve + to_reserve,
                meters=_meter(state, bets=int(bet > 0), wagered=bet,
                              contributed=added + overflow, overflow=overflow,
                              reserve_in=to_reserve), **carries)
    entry = _record(state, nxt, "contribute", contributed=added + overflow,
                    overflow=overflow, reserve_in=to_reserve,
                    detail={"bet": bet} if bet else {"carried_over": True})
    return nxt, entry, rest


def parse_changes(changes: dict[str, object]) -> dict[str, Any]:
    """Validate config changes in isolation; return them in storage units."""
    if not changes:
        msg = f"no config change given: pass one or more of {', '.join(CONFIG_FIELDS)}"
        raise ValidationError(msg)
    unknown = sorted(set(changes) - set(CONFIG_FIELDS))
    if unknown:
        msg = (f"unknown config field(s) {', '.join(map(repr, unknown))}: "
               f"allowed are {', '.join(CONFIG_FIELDS)}")
        raise ValidationError(msg)
    fixed = sorted(k for k, v in changes.items() if v is None and k not in _CLEARABLE)
    if fixed:
        msg = (f"{', '.join(fixed)} cannot be cleared (None): only "
               f"{', '.join(_CLEARABLE)} can; give a value instead")
        raise ValidationError(msg)
    parsers: dict[str, Callable[[object], Any]] = {
        "seed": lambda v: _units(v, "seed", zero=True),
        "contribution_rate": lambda v: money.parse_rate(v, name="contribution_rate"),
        "reserve_rate": lambda v: money.parse_rate(v, name="reserve_rate", allow_zero=True),
        "cap": lambda v: _maybe_units(v, "cap"),
        "min_bet": lambda v: _maybe_units(v, "min_bet"),
        "max_contribution": lambda v: _maybe_units(v, "max_contribution"),
        "must_hit_by": lambda v: _maybe_units(v, "must_hit_by"),
        "overflow_to": _overflow_to,
    }
    return {key: parsers[key](value) for key, value in changes.items()}


def reconfigure(
    state: LevelState,
    changes: dict[str, Any],
    now: int,
    *,
    who: str | None = None,
    reason: str | None = None,
) -> tuple[LevelState, Entry]:
    """Apply parsed changes (see `parse_changes`): deferred ones wait for the reset."""
    check_open(state, "config changes", allow_suspended=True)
    fields_ = {("rate" if k == "contribution_rate" else k): v for k, v in changes.items()}
    # A deferred value the level already has changes nothing at the reset: it is not
    # queued, and it takes the place of one queued before (seed=100 after seed=200,
    # on a level at 100, leaves it at 100). Queued, `must_hit_by=None` on a level with
    # none showed as a pending change in status and pools() until the next reset.
    asked = {**state.pending, **{k: v for k, v in fields_.items() if k in _DEFERRED}}
    pending = {k: v for k, v in asked.items() if v != getattr(state.config, k)}
    now_fields = {k: v for k, v in fields_.items() if k not in _DEFERRED}
    config = replace(state.config, **now_fields)
    config.check(amount=state.amount)
    replace(config, **pending).check(amount=state.amount)  # valid after the reset too
    nxt = _step(state, now, config=config, pending=pending)
    detail = {"before": config_view(state.config), "after": config_view(config),
              "pending": _pending_view(pending), "reason": reason}
    return nxt, _record(state, nxt, "config", who=who, detail=detail)


def _pending_view(pending: dict[str, int | None]) -> dict[str, str | None]:
    return {k: None if v is None else str(money.from_units(v)) for k, v in pending.items()}


def pending_view(state: LevelState) -> dict[str, str | None]:
    """Return the changes waiting for the next reset, as public decimal strings."""
    return _pending_view(state.pending)


def set_status(state: LevelState, status: str, now: int, *, who: str | None = None,
               reason: str | None = None) -> tuple[LevelState, Entry]:
    """Suspend or resume a level (retire has its own transition).

    A refusal names the transition asked for ("cannot be resumed"), not the
    status it would lead to: the caller said `resume`, and "refuses being
    active" made them translate it back.
    """
    asked = "suspended" if status == SUSPENDED else "resumed"
    if state.status == RETIRED:
        msg = f"level {state.name!r} is retired: it cannot be {asked} (retirement is final)"
        raise GroupRetiredError(msg)
    if state.status == status:
        why = ("it cannot be suspended again" if status == SUSPENDED
               else "it cannot be resumed (only a suspended level can be)")
        msg = f"level {state.name!r} is already {status}: {why}"
        raise ValidationError(msg)
    nxt = _step(state, now, status=status)
    return nxt, _record(state, nxt, "suspend" if status == SUSPENDED else "resume",
                        who=who, detail={"reason": reason})


def adjust(state: LevelState, delta: int, now: int, *, who: str | None = None,
           reason: str | None = None) -> tuple[LevelState, Entry]:
    """Change the pool by `delta` units (audited); never below zero or past a limit."""
    check_open(state, "adjustments", allow_suspended=True)
    if delta == 0:
        msg = "delta must not be zero"
        raise ValidationError(msg)
    after = state.amount + delta
    if after < 0:
        msg = (f"adjusting level {state.name!r} by {money.from_units(delta)} would take "
               f"its pool {money.from_units(state.amount)} below zero")
        raise InsufficientFundsError(msg)
    ceiling = min(x for x in (state.config.cap, state.config.must_hit_by, money.MAX_UNITS)
                  if x is not None)
    if delta > 0 and after > ceiling:
        msg = (f"adjusting level {state.name!r} by {money.from_units(delta)} would lift "
               f"its pool above {money.from_units(ceiling)}")
        raise ValidationError(msg)
    nxt = _step(state, now, amount=after, meters=_meter(state, adjusted=delta))
    return nxt, _record(state, nxt, "adjust", adjusted=delta, who=who,
                        detail={"reason": reason})


def retire(source: LevelState, target: LevelState, now: int, *, who: str | None = None,
           reason: str | None = None) -> tuple[LevelState, LevelState, list[Entry]]:
    """Retire `source`, moving its pool, reserve and carried fractions to `target`.

    The pool goes into the target's pool up to the target's cap (and
    must-hit-by); whatever does not fit goes into the target's reserve. The
    fractions of a unit the source carried (see `money.split_contribution`)
    are money players paid in: they join the target's own carried fractions,
    and where the two add up to a whole unit, that unit moves with the pool
    (or the reserve). Both rows record the moved fractions and the units they
    made under `detail["carried"]` (only when there were any), so the audit
    can account for every fraction.
    """
    if source.status == RETIRED:
        msg = (f"level {source.name!r} is retired: it cannot be retired again "
               "(retirement is final)")
        raise GroupRetiredError(msg)
    if target.status == RETIRED:
        msg = (f"level {target.name!r} is retired: it cannot take the pool of level "
               f"{source.name!r} (retirement is final); name a level that is not retired "
               "as transfer_to")
        raise GroupRetiredError(msg)
    if source.name == target.name:
        msg = "transfer_to must name another level"
        raise ValidationError(msg)
    tc = target.config
    limit = min(x for x in (tc.cap, tc.must_hit_by, money.MAX_UNITS) if x is not None)
    units, carry = divmod(target.carry + source.carry, money.RATE_SCALE)
    reserve_units, reserve_carry = divmod(target.reserve_carry + source.reserve_carry,
                                          money.RATE_SCALE)
    moved = source.amount + units
    into_pool = min(moved, max(limit - target.amount, 0))
    into_reserve = source.reserve + reserve_units + moved - into_pool
    _check_reserve(target, target.reserve + into_reserve,
                   f"retiring level {source.name!r} into it")
    src = _step(source, now, status=RETIRED, amount=0, reserve=0, carry=0, reserve_carry=0,
                meters=_meter(source, transferred=-source.amount,
                              reserve_transferred=-source.reserve))
    tgt = _step(target, now, amount=target.amount + into_pool,
                reserve=target.reserve + into_reserve, carry=carry,
                reserve_carry=reserve_carry,
                meters=_meter(target, transferred=into_pool,
                              reserve_transferred=into_reserve))
    detail: dict[str, Any] = {"reason": reason, "from": source.name, "to": target.name}
    if source.carry or source.reserve_carry:
        detail["carried"] = {"carry": source.carry, "reserve_carry": source.reserve_carry,
                             "units": units, "reserve_units": reserve_units}
    return src, tgt, [
        _record(source, src, "retire", transferred=-source.amount,
                reserve_transferred=-source.reserve, who=who, detail=detail),
        _record(target, tgt, "transfer_in", transferred=into_pool,
                reserve_transferred=into_reserve, who=who, detail=detail),
    ]


DEFAULT_GROUPS = (
    GroupConfig("minor", Decimal(100), Decimal("0.005")),
    GroupConfig("major", Decimal(1000), Decimal("0.003")),
    GroupConfig("mega", Decimal(10000), Decimal("0.001")),
)
"""Levels a new database gets when `open()` is given no groups."""
