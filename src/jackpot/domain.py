"""Pure rules of a jackpot level: configuration, validation, state transitions.

No I/O here. Every transition takes a `LevelState` and returns the next state
plus the `Entry` that the ledger must record for it; the caller persists both
in one transaction or neither. Amounts are integer units (see `money`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from jackpot import money
from jackpot.errors import InsufficientFundsError, ValidationError

__all__ = [
    "CONFIG_FIELDS",
    "DEFAULT_GROUPS",
    "Entry",
    "GroupConfig",
    "LevelState",
    "Meters",
    "contribute",
    "create",
    "parse_changes",
    "reconfigure",
    "validate_name",
    "win",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)

CONFIG_FIELDS = ("seed", "contribution_rate", "cap")
"""Fields `update_config` may change."""


def validate_name(value: object, *, name: str = "group") -> str:
    """Return a valid level name or raise ValidationError naming the problem."""
    if not isinstance(value, str):
        msg = f"{name} must be a level name (str), not {type(value).__name__}"
        raise ValidationError(msg)
    if not _NAME.fullmatch(value):
        msg = (
            f"{name} {value[:80]!r} is not a valid level name: use 1-64 ASCII "
            "letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
        raise ValidationError(msg)
    return value


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """How a jackpot level is set up. Validated on construction.

    Attributes:
        name: the level's name ("minor", "major", ...).
        seed: the amount the pool starts from and resets to after a win.
        contribution_rate: the share of each bet added to the pool, in (0, 1).
        cap: optional ceiling; contributions stop there (the excess is metered
            as overflow). Must not be below the seed.

    """

    name: str
    seed: Decimal
    contribution_rate: Decimal
    cap: Decimal | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, name="GroupConfig.name")
        seed = money.parse_amount(self.seed, name="seed", allow_zero=True)
        rate = money.parse_rate(self.contribution_rate, name="contribution_rate")
        cap = None if self.cap is None else money.parse_amount(self.cap, name="cap")
        _check_cap(cap, seed=seed, amount=seed)
        # Normalise int/str inputs to exact Decimals so equality is by value.
        object.__setattr__(self, "seed", money.from_units(seed))
        object.__setattr__(self, "contribution_rate", money.rate_to_decimal(rate))
        object.__setattr__(self, "cap", None if cap is None else money.from_units(cap))


@dataclass(frozen=True, slots=True)
class Meters:
    """Running totals of a level, in units (counts for `bets` and `wins`)."""

    bets: int = 0
    wagered: int = 0
    contributed: int = 0
    overflow: int = 0
    seeded: int = 0
    won: int = 0
    wins: int = 0


@dataclass(frozen=True, slots=True)
class LevelState:
    """A level's whole state, as persisted in one row."""

    name: str
    seed: int
    rate: int
    cap: int | None
    amount: int
    carry: int
    version: int
    last_modified_at: int
    meters: Meters = field(default_factory=Meters)
    lock_holder: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row, before the caller adds the op_id.

    `delta` is the net change of the pool; `paid`, `funded` (seed paid in by
    the house at a reset) and `overflow` (contribution beyond the cap, not in
    the pool) break it down so the ledger alone can rebuild every meter.
    """

    kind: str
    level: str
    delta: int
    balance_after: int
    version_after: int
    at_ms: int
    paid: int = 0
    funded: int = 0
    overflow: int = 0
    who: str | None = None
    detail: dict[str, Any] | None = None


def _check_cap(cap: int | None, *, seed: int, amount: int) -> None:
    if cap is None:
        return
    if cap < seed:
        msg = f"cap {money.from_units(cap)} is below the seed {money.from_units(seed)}"
        raise ValidationError(msg)
    if cap < amount:
        msg = (
            f"cap {money.from_units(cap)} is below the current amount "
            f"{money.from_units(amount)}"
        )
        raise ValidationError(msg)


def _bump(state: LevelState, now: int, **changes: Any) -> LevelState:
    return replace(state, version=state.version + 1, last_modified_at=now, **changes)


def create(config: GroupConfig, now: int) -> tuple[LevelState, Entry]:
    """Return a new level at its seed (version 1) and its creation entry."""
    seed = money.parse_amount(config.seed, name="seed", allow_zero=True)
    state = LevelState(
        name=config.name,
        seed=seed,
        rate=money.parse_rate(config.contribution_rate, name="contribution_rate"),
        cap=None if config.cap is None else money.parse_amount(config.cap, name="cap"),
        amount=seed,
        carry=0,
        version=1,
        last_modified_at=now,
        meters=Meters(seeded=seed),
    )
    entry = Entry("create", config.name, seed, seed, 1, now, funded=seed,
                  detail={"config": _config_view(state)})
    return state, entry


def contribute(state: LevelState, bet: int, now: int) -> tuple[LevelState, Entry]:
    """Add bet x rate (plus the carried fraction) to the pool, up to the cap."""
    if bet <= 0:
        msg = f"bet must be positive, got {bet} units"
        raise ValidationError(msg)
    whole, carry = money.split_contribution(bet, state.rate, state.carry)
    room = money.MAX_UNITS - state.amount if state.cap is None else state.cap - state.amount
    added = min(whole, max(room, 0))
    overflow = whole - added
    m = state.meters
    meters = replace(m, bets=m.bets + 1, wagered=m.wagered + bet,
                     contributed=m.contributed + whole, overflow=m.overflow + overflow)
    nxt = _bump(state, now, amount=state.amount + added, carry=carry, meters=meters)
    entry = Entry("contribute", state.name, added, nxt.amount, nxt.version, now,
                  overflow=overflow, detail={"bet": bet})
    return nxt, entry


def win(
    state: LevelState, amount: int | None, now: int, *, winner: str | None = None
) -> tuple[LevelState, Entry]:
    """Pay the whole pool and reset to seed, or pay a fixed part without reset."""
    if amount is None:
        if state.amount <= 0:
            msg = f"level {state.name!r} has an empty pool: nothing to pay"
            raise InsufficientFundsError(msg)
        paid, funded = state.amount, state.seed
    else:
        if amount <= 0:
            msg = f"amount must be positive, got {amount} units"
            raise ValidationError(msg)
        if amount > state.amount:
            msg = (
                f"amount {money.from_units(amount)} exceeds the pool of level "
                f"{state.name!r} ({money.from_units(state.amount)})"
            )
            raise InsufficientFundsError(msg)
        paid, funded = amount, 0
    m = state.meters
    meters = replace(m, won=m.won + paid, wins=m.wins + 1, seeded=m.seeded + funded)
    nxt = _bump(state, now, amount=state.amount - paid + funded, meters=meters)
    entry = Entry("win", state.name, funded - paid, nxt.amount, nxt.version, now,
                  paid=paid, funded=funded, who=winner,
                  detail={"reset": amount is None})
    return nxt, entry


def parse_changes(changes: dict[str, object]) -> dict[str, int | None]:
    """Validate config changes in isolation; return them in storage units."""
    if not changes:
        msg = f"no config change given: pass one or more of {', '.join(CONFIG_FIELDS)}"
        raise ValidationError(msg)
    unknown = sorted(set(changes) - set(CONFIG_FIELDS))
    if unknown:
        msg = (
            f"unknown config field(s) {', '.join(map(repr, unknown))}: "
            f"allowed are {', '.join(CONFIG_FIELDS)}"
        )
        raise ValidationError(msg)
    parsed: dict[str, int | None] = {}
    if "seed" in changes:
        parsed["seed"] = money.parse_amount(changes["seed"], name="seed", allow_zero=True)
    if "contribution_rate" in changes:
        parsed["contribution_rate"] = money.parse_rate(
            changes["contribution_rate"], name="contribution_rate")
    if "cap" in changes:
        cap = changes["cap"]
        parsed["cap"] = None if cap is None else money.parse_amount(cap, name="cap")
    return parsed


def reconfigure(
    state: LevelState,
    changes: dict[str, int | None],
    now: int,
    *,
    who: str | None = None,
    reason: str | None = None,
) -> tuple[LevelState, Entry]:
    """Apply parsed config changes (see `parse_changes`) against the state."""
    seed = changes.get("seed", state.seed)
    rate = changes.get("contribution_rate", state.rate)
    cap = changes.get("cap", state.cap)
    assert seed is not None
    assert rate is not None
    _check_cap(cap, seed=seed, amount=state.amount)
    nxt = _bump(state, now, seed=seed, rate=rate, cap=cap)
    entry = Entry("config", state.name, 0, nxt.amount, nxt.version, now, who=who,
                  detail={"before": _config_view(state), "after": _config_view(nxt),
                          "reason": reason})
    return nxt, entry


def _config_view(state: LevelState) -> dict[str, str | None]:
    return {
        "seed": str(money.from_units(state.seed)),
        "contribution_rate": str(money.rate_to_decimal(state.rate)),
        "cap": None if state.cap is None else str(money.from_units(state.cap)),
    }


DEFAULT_GROUPS = (
    GroupConfig("minor", Decimal(100), Decimal("0.005")),
    GroupConfig("major", Decimal(1000), Decimal("0.003")),
    GroupConfig("mega", Decimal(10000), Decimal("0.001")),
)
"""Levels a new database gets when `open()` is given no groups."""
