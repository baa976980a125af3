"""Frozen results and snapshots returned by the engine, and their JSON form.

Results are stored as JSON with each operation's op_id, so a replay returns
exactly the first result (amounts as decimal strings, never floats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypedDict

from jackpot import money
from jackpot.domain import LevelState, pending_view

__all__ = ["AdminResult", "ConfigResult", "Contribution", "HistoryEntry", "PoolMeters",
           "PoolSnapshot", "VerifyReport", "Win"]


def _dec(d: dict[str, str]) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in d.items()}


def _str(d: dict[str, Decimal]) -> dict[str, str]:
    return {k: str(v) for k, v in d.items()}


@dataclass(frozen=True, slots=True)
class Win:
    """A payout: the amount paid, and the level's balance and version after.

    `reset` says whether the level was reset to its seed (a whole-pool win);
    `hit` says it was a must-hit-by mystery hit triggered by a bet.
    """

    op_id: str
    group: str
    amount: Decimal
    balance: Decimal
    version: int
    winner: str | None = None
    reset: bool = True
    replayed: bool = False
    hit: bool = False

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "group": self.group, "amount": str(self.amount),
                "balance": str(self.balance), "version": self.version,
                "winner": self.winner, "reset": self.reset, "hit": self.hit}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> Win:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], r["group"], Decimal(r["amount"]), Decimal(r["balance"]),
                   r["version"], r["winner"], r["reset"], replayed, r["hit"])


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one bet added: per level, the amount, the balance and version after.

    `hits` are the must-hit-by wins this bet triggered (empty when none). A
    level the bet did not qualify for (below its min_bet) shows a contribution
    of 0 and its unchanged balance and version. With groups=None, levels that
    take no bets (suspended or retired) are left out altogether (and a bet
    that no level takes is refused, never an empty result).
    """

    op_id: str
    contributions: dict[str, Decimal]
    balances: dict[str, Decimal]
    versions: dict[str, int]
    replayed: bool = False
    hits: tuple[Win, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "contributions": _str(self.contributions),
                "balances": _str(self.balances), "versions": dict(self.versions),
                "hits": [h.to_record() for h in self.hits]}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> Contribution:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], _dec(r["contributions"]), _dec(r["balances"]),
                   dict(r["versions"]), replayed,
                   tuple(Win.from_record(h, replayed=replayed) for h in r["hits"]))


@dataclass(frozen=True, slots=True)
class ConfigResult:
    """A committed config change: the version after and the fields before/after.

    `pending` lists changes that wait for the next reset (seed, must_hit_by).
    """

    op_id: str
    group: str
    version: int
    before: dict[str, str | None]
    after: dict[str, str | None]
    replayed: bool = False
    pending: dict[str, str | None] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "group": self.group, "version": self.version,
                "before": dict(self.before), "after": dict(self.after),
                "pending": dict(self.pending)}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> ConfigResult:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], r["group"], r["version"], r["before"], r["after"], replayed,
                   r["pending"])


@dataclass(frozen=True, slots=True)
class AdminResult:
    """An operator action (suspend, resume, adjust, retire): what changed.

    `balances` and `versions` are per level touched (two for a retirement).
    """

    op_id: str
    action: str
    group: str
    balances: dict[str, Decimal]
    versions: dict[str, int]
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "action": self.action, "group": self.group,
                "balances": _str(self.balances), "versions": dict(self.versions)}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> AdminResult:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], r["action"], r["group"], _dec(r["balances"]),
                   dict(r["versions"]), replayed)


class PoolMeters(TypedDict):
    """A level's running totals since it was created (`PoolSnapshot.meters`).

    bets, wins and hits are counts; the others are money. A plain dict at
    run time: `p.meters["won"]`.
    """

    bets: int
    wagered: Decimal
    contributed: Decimal
    overflow: Decimal
    reserve_in: Decimal
    house_funded: Decimal
    reserve_funded: Decimal
    won: Decimal
    wins: int
    hits: int
    adjusted: Decimal
    transferred: Decimal
    reserve_transferred: Decimal


def zero_meters() -> PoolMeters:
    """Return the meters of a level that has taken nothing yet."""
    zero = Decimal(0)
    return PoolMeters(bets=0, wagered=zero, contributed=zero, overflow=zero, reserve_in=zero,
                      house_funded=zero, reserve_funded=zero, won=zero, wins=0, hits=0,
                      adjusted=zero, transferred=zero, reserve_transferred=zero)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A level as committed: config, amount, reserve, status, version and meters.

    `last_modified_at` is milliseconds since the Unix epoch. `meters` holds
    counts (bets, wins, hits) as int and money totals as Decimal.
    `pending_changes` are config changes waiting for the next reset. The
    must-hit-by trigger is deliberately absent. `lock_holder` is the
    operation holding the level's row during a win or config change; it is
    set and cleared inside that one transaction, so a committed snapshot
    shows None.
    """

    name: str
    amount: Decimal
    seed: Decimal
    contribution_rate: Decimal
    cap: Decimal | None
    version: int
    lock_holder: str | None
    last_modified_at: int
    reserve: Decimal = Decimal(0)
    status: str = "active"
    reserve_rate: Decimal = Decimal(0)
    min_bet: Decimal | None = None
    max_contribution: Decimal | None = None
    must_hit_by: Decimal | None = None
    overflow_to: str = "meter"
    pending_changes: dict[str, str | None] = field(default_factory=dict)
    meters: PoolMeters = field(default_factory=zero_meters)

    @classmethod
    def of(cls, s: LevelState) -> PoolSnapshot:
        """Return the public snapshot of a level state."""
        c = s.config

        def dec(v: int | None) -> Decimal | None:
            return None if v is None else money.from_units(v)

        m, u = s.meters, money.from_units
        meters = PoolMeters(
            bets=m.bets, wagered=u(m.wagered), contributed=u(m.contributed),
            overflow=u(m.overflow), reserve_in=u(m.reserve_in),
            house_funded=u(m.house_funded), reserve_funded=u(m.reserve_funded),
            won=u(m.won), wins=m.wins, hits=m.hits, adjusted=u(m.adjusted),
            transferred=u(m.transferred), reserve_transferred=u(m.reserve_transferred))
        return cls(s.name, money.from_units(s.amount), money.from_units(c.seed),
                   money.rate_to_decimal(c.rate), dec(c.cap), s.version, s.lock_holder,
                   s.last_modified_at, money.from_units(s.reserve), s.status,
                   money.rate_to_decimal(c.reserve_rate), dec(c.min_bet),
                   dec(c.max_contribution), dec(c.must_hit_by), c.overflow_to,
                   pending_view(s), meters)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One past payout of a level: a win, or a must-hit-by hit (newest first in `engine.history`).

    `hit` is False for a `process_win` (whole pool or a fixed `amount`) and
    True for a mystery hit a bet triggered, whose `op_id` is that bet's and
    `winner` its `player` (None when it named none). `amount` is what was
    paid, `at_ms` when (ms since the epoch), `version` the level's version
    after the payout. Adjustments, transfers and contributions are not
    listed (the ledger has them).
    """

    at_ms: int
    amount: Decimal
    op_id: str
    winner: str | None
    hit: bool
    version: int


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The audit: `ok` when the ledger proves every level to the smallest unit."""

    ok: bool
    problems: list[str]
    levels: int
    ledger_rows: int
