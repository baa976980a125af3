"""Frozen results and snapshots returned by the engine, and their JSON form.

Results are stored as JSON with each operation's op_id, so a replay returns
exactly the first result (amounts as decimal strings, never floats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jackpot import money
from jackpot.domain import LevelState

__all__ = ["ConfigResult", "Contribution", "PoolSnapshot", "VerifyReport", "Win"]


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one bet added: per level, the amount, the balance and version after."""

    op_id: str
    contributions: dict[str, Decimal]
    balances: dict[str, Decimal]
    versions: dict[str, int]
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id,
                "contributions": {k: str(v) for k, v in self.contributions.items()},
                "balances": {k: str(v) for k, v in self.balances.items()},
                "versions": dict(self.versions)}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> Contribution:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], {k: Decimal(v) for k, v in r["contributions"].items()},
                   {k: Decimal(v) for k, v in r["balances"].items()},
                   dict(r["versions"]), replayed)


@dataclass(frozen=True, slots=True)
class Win:
    """A payout: the amount paid, and the level's balance and version after."""

    op_id: str
    group: str
    amount: Decimal
    balance: Decimal
    version: int
    winner: str | None = None
    reset: bool = True
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "group": self.group, "amount": str(self.amount),
                "balance": str(self.balance), "version": self.version,
                "winner": self.winner, "reset": self.reset}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> Win:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], r["group"], Decimal(r["amount"]), Decimal(r["balance"]),
                   r["version"], r["winner"], r["reset"], replayed)


@dataclass(frozen=True, slots=True)
class ConfigResult:
    """A committed config change: the version after and the fields before/after."""

    op_id: str
    group: str
    version: int
    before: dict[str, str | None]
    after: dict[str, str | None]
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-safe form stored for replays."""
        return {"op_id": self.op_id, "group": self.group, "version": self.version,
                "before": dict(self.before), "after": dict(self.after)}

    @classmethod
    def from_record(cls, r: dict[str, Any], *, replayed: bool) -> ConfigResult:
        """Rebuild a result from its stored form."""
        return cls(r["op_id"], r["group"], r["version"], r["before"], r["after"], replayed)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A level as committed: config, amount, version and meters.

    `last_modified_at` is milliseconds since the Unix epoch. `meters` holds
    counts (`bets`, `wins`) as int and money totals as Decimal.
    """

    name: str
    amount: Decimal
    seed: Decimal
    contribution_rate: Decimal
    cap: Decimal | None
    version: int
    lock_holder: str | None
    last_modified_at: int
    meters: dict[str, Decimal | int] = field(default_factory=dict)

    @classmethod
    def of(cls, s: LevelState) -> PoolSnapshot:
        """Return the public snapshot of a level state."""
        m = s.meters
        meters: dict[str, Decimal | int] = {
            "bets": m.bets, "wagered": money.from_units(m.wagered),
            "contributed": money.from_units(m.contributed),
            "overflow": money.from_units(m.overflow), "seeded": money.from_units(m.seeded),
            "won": money.from_units(m.won), "wins": m.wins,
        }
        return cls(s.name, money.from_units(s.amount), money.from_units(s.seed),
                   money.rate_to_decimal(s.rate),
                   None if s.cap is None else money.from_units(s.cap), s.version,
                   s.lock_holder, s.last_modified_at, meters)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The audit: `ok` when the ledger proves every level to the smallest unit."""

    ok: bool
    problems: list[str]
    levels: int
    ledger_rows: int
