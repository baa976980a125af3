"""The naive way: what a user would write without this library.

One APSW connection in WAL mode with `synchronous=FULL`, one `threading.Lock`
around it, and one `BEGIN IMMEDIATE ... COMMIT` per operation: read each
level's row, update it with `version + 1`, insert one ledger row per level,
insert the op_id into the operations table (its primary key makes it unique),
commit. A 3-level contribution touches three level rows and inserts three
ledger rows in that one transaction.

Its schema has the engine's semantics and the indexes its writes pay for: a
level row with a version, an append-only ledger with one row per committed
version (unique on level and version), and an operations table keyed by op_id
holding the first result for replays. No index on the ledger's op_id: the
engine dropped its own in schema v2 (a random B-tree insert per ledger row),
and the audit finds orphan op_ids by set difference, as the engine's does. It is its own schema (a user
without the library writes their own), so it does not move when the engine's
does. Money is exact integers (units of 1e-6, rates in parts of 1e9, the
sub-unit fraction carried per level), as in the engine; `verify()` proves the
books from the ledger.

Honest on purpose: no sleeps, no handicaps, statements cached by APSW, the
write lock taken up front, SQLite's own busy timeout between processes.
What it lacks is the engine's architecture: no actors, no cached state, no
group commit; every operation pays one durable commit under one lock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import apsw

__all__ = ["DEFAULT_LEVELS", "NaiveJackpot", "Replayed"]

UNIT_EXP = 6  # amounts are integers of 1e-6
RATE_EXP = 9  # rates are integers of 1e-9
RATE_SCALE = 10**RATE_EXP
MAX_UNITS = 10**17

DEFAULT_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("minor", "100", "0.005"),
    ("major", "1000", "0.003"),
    ("mega", "10000", "0.001"),
)
"""(name, seed, contribution rate): the engine's default levels."""

SCHEMA = """
CREATE TABLE levels (
    name TEXT PRIMARY KEY,
    seed INTEGER NOT NULL CHECK (seed >= 0),
    rate INTEGER NOT NULL CHECK (rate > 0 AND rate < 1000000000),
    cap INTEGER CHECK (cap IS NULL OR cap >= seed),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    carry INTEGER NOT NULL CHECK (carry >= 0 AND carry < 1000000000),
    version INTEGER NOT NULL CHECK (version >= 1),
    last_modified_at INTEGER NOT NULL,
    m_bets INTEGER NOT NULL DEFAULT 0,
    m_wagered INTEGER NOT NULL DEFAULT 0,
    m_contributed INTEGER NOT NULL DEFAULT 0,
    m_overflow INTEGER NOT NULL DEFAULT 0,
    m_seeded INTEGER NOT NULL DEFAULT 0,
    m_won INTEGER NOT NULL DEFAULT 0,
    m_wins INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL REFERENCES levels (name),
    delta INTEGER NOT NULL,
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    version_after INTEGER NOT NULL,
    paid INTEGER NOT NULL DEFAULT 0,
    funded INTEGER NOT NULL DEFAULT 0,
    overflow INTEGER NOT NULL DEFAULT 0,
    at_ms INTEGER NOT NULL,
    who TEXT,
    detail TEXT
) STRICT;
CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after);
CREATE TABLE operations (
    op_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
"""

_SELECT = ("SELECT seed, rate, cap, amount, carry, version, m_bets, m_wagered, "
           "m_contributed, m_overflow, m_seeded, m_won, m_wins FROM levels WHERE name = ?")
_INSERT_ENTRY = (
    "INSERT INTO ledger (op_id, kind, level, delta, balance_after, version_after, "
    "paid, funded, overflow, at_ms, who, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OP = ("INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
              "VALUES (?, ?, ?, ?, ?)")


class DuplicateRequestError(Exception):
    """An op_id was reused for a different request."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """The stored first result of an op_id that was seen before."""

    result: dict[str, Any]


def _exact(value: object, exp: int, what: str) -> int:
    if isinstance(value, (float, bool)) or not isinstance(value, (Decimal, int, str)):
        msg = f"{what} must be a Decimal, int or decimal string, not {type(value).__name__}"
        raise TypeError(msg)
    d = Decimal(value)
    if not d.is_finite() or d.is_signed():
        msg = f"{what} must be finite and not negative, got {d}"
        raise ValueError(msg)
    scaled = d.scaleb(exp)
    if scaled != scaled.to_integral_value():
        msg = f"{what} {d} is finer than 1E-{exp}"
        raise ValueError(msg)
    return int(scaled)


def to_units(value: object, what: str = "amount") -> int:
    """Return an exact amount in integer units of 1e-6."""
    units = _exact(value, UNIT_EXP, what)
    if units > MAX_UNITS:
        msg = f"{what} is beyond the range"
        raise ValueError(msg)
    return units


def _money(units: int) -> str:
    return str(Decimal(units).scaleb(-UNIT_EXP))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NaiveJackpot:
    """A jackpot over one SQLite file, one lock, one transaction per operation."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000,
                 cache_mb: int | None = None) -> None:
        """Open `path`; `cache_mb` sizes the page cache (None: SQLite's 2 MiB default)."""
        self._lock = threading.Lock()
        self.conn = apsw.Connection(path)
        self.conn.set_busy_timeout(busy_timeout_ms)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        if cache_mb is not None:
            self.conn.execute(f"PRAGMA cache_size = {-int(cache_mb) * 1024}")  # KiB
        self.conn.execute("PRAGMA foreign_keys = ON")
        with self._transaction():
            (version,) = self.conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                self.conn.execute(SCHEMA)
                self.conn.execute("PRAGMA user_version = 1")
            self.names = tuple(sorted(
                r[0] for r in self.conn.execute("SELECT name FROM levels")))

    @classmethod
    def open(cls, path: str | Path,
             groups: Iterable[tuple[str, str, str]] | None = None, *,
             cache_mb: int | None = None) -> NaiveJackpot:
        """Open (or create) the file; levels in `groups` that it lacks are created."""
        self = cls(str(path), cache_mb=cache_mb)
        wanted = list(groups) if groups is not None else (
            [] if self.names else list(DEFAULT_LEVELS))
        with self._transaction():
            now = _now_ms()
            for name, seed_text, rate_text in wanted:
                if name in self.names:
                    continue
                seed = to_units(seed_text, "seed")
                rate = _exact(rate_text, RATE_EXP, "rate")
                self.conn.execute(
                    "INSERT INTO levels (name, seed, rate, cap, amount, carry, version, "
                    "last_modified_at, m_seeded) VALUES (?, ?, ?, NULL, ?, 0, 1, ?, ?)",
                    (name, seed, rate, seed, now, seed))
                config = {"seed": _money(seed), "contribution_rate":
                          str(Decimal(rate).scaleb(-RATE_EXP).normalize()), "cap": None}
                self.conn.execute(_INSERT_ENTRY, (
                    f"create:{name}", "create", name, seed, seed, 1, 0, seed, 0, now, None,
                    json.dumps({"config": config}, sort_keys=True)))
            self.names = tuple(sorted(
                r[0] for r in self.conn.execute("SELECT name FROM levels")))
        return self

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Hold the lock and one BEGIN IMMEDIATE transaction; roll back on any error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _names(self, groups: Iterable[str] | str | None) -> tuple[str, ...]:
        if groups is None:
            return self.names
        names = (groups,) if isinstance(groups, str) else tuple(groups)
        unknown = set(names) - set(self.names)
        if unknown or not names or len(set(names)) != len(names):
            msg = f"bad groups {names!r}: levels are {self.names}"
            raise ValueError(msg)
        return tuple(sorted(names))

    def _run(self, op_id: str | None, kind: str, fingerprint: str,
             body: Any) -> dict[str, Any] | Replayed:
        """Run `body(now)` and record the op_id in one transaction; replay a seen op_id."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                now = _now_ms()
                result = body(now)
                if op_id is not None:
                    self.conn.execute(_INSERT_OP, (op_id, kind, fingerprint,
                                                   json.dumps(result, sort_keys=True), now))
                self.conn.execute("COMMIT")
            except apsw.ConstraintError as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if op_id is None:
                    raise
                return self._replay(op_id, kind, fingerprint, e)
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            return result

    def _replay(self, op_id: str, kind: str, fingerprint: str,
                error: apsw.ConstraintError) -> Replayed:
        """Return the first result of a seen op_id (the caller holds the lock)."""
        row = self.conn.execute(
            "SELECT kind, fingerprint, result FROM operations WHERE op_id = ?",
            (op_id,)).fetchone()
        if row is None:  # the constraint that failed was not the op_id's
            raise error
        if (row[0], row[1]) != (kind, fingerprint):
            msg = f"op_id {op_id!r} was used for a different request"
            raise DuplicateRequestError(msg)
        return Replayed(json.loads(row[2]))

    def _level(self, name: str) -> list[Any]:
        row = self.conn.execute(_SELECT, (name,)).fetchone()
        if row is None:
            msg = f"no level {name!r}"
            raise KeyError(msg)
        return list(row)

    # -- operations --------------------------------------------------------------

    def contribute(self, bet: Decimal | int | str, *, groups: Iterable[str] | str | None = None,
                   op_id: str | None = None) -> dict[str, Any] | Replayed:
        """Add bet x rate to every named level in one transaction."""
        units = to_units(bet, "bet")
        if units == 0:
            msg = "bet must be positive"
            raise ValueError(msg)
        names = self._names(groups)
        op = op_id if op_id is not None else f"auto-{uuid.uuid4().hex}"

        def body(now: int) -> dict[str, Any]:
            added_by, balances, versions = {}, {}, {}
            for name in names:
                (_seed, rate, cap, amount, carry, version, bets, wagered, contributed,
                 overflow, *_rest) = self._level(name)
                whole, carry = divmod(units * rate + carry, RATE_SCALE)
                room = (MAX_UNITS if cap is None else cap) - amount
                added = min(whole, max(room, 0))
                over = whole - added
                amount += added
                self.conn.execute(
                    "UPDATE levels SET amount = ?, carry = ?, version = version + 1, "
                    "last_modified_at = ?, m_bets = ?, m_wagered = ?, m_contributed = ?, "
                    "m_overflow = ? WHERE name = ?",
                    (amount, carry, now, bets + 1, wagered + units, contributed + whole,
                     overflow + over, name))
                self.conn.execute(_INSERT_ENTRY, (
                    op, "contribute", name, added, amount, version + 1, 0, 0, over, now,
                    None, json.dumps({"bet": units})))
                added_by[name] = _money(added)
                balances[name] = _money(amount)
                versions[name] = version + 1
            return {"op_id": op, "contributions": added_by, "balances": balances,
                    "versions": versions}

        return self._run(op_id, "contribute", f"{units}:{','.join(names)}", body)

    def process_win(self, group: str, *, op_id: str | None = None,
                    amount: Decimal | int | str | None = None,
                    winner: str | None = None) -> dict[str, Any] | Replayed:
        """Pay the whole pool and reset it to seed, or pay a fixed amount."""
        (name,) = self._names(group)
        fixed = None if amount is None else to_units(amount)
        op = op_id if op_id is not None else f"auto-{uuid.uuid4().hex}"

        def body(now: int) -> dict[str, Any]:
            (seed, _rate, _cap, pool, _carry, version, *_m, seeded, won, wins) = (
                self._level(name))
            if fixed is None:
                paid, funded = pool, seed
            else:
                if not 0 < fixed <= pool:
                    msg = f"cannot pay {fixed} units from a pool of {pool}"
                    raise ValueError(msg)
                paid, funded = fixed, 0
            if paid <= 0:
                msg = f"level {name!r} has an empty pool"
                raise ValueError(msg)
            after = pool - paid + funded
            self.conn.execute(
                "UPDATE levels SET amount = ?, version = version + 1, last_modified_at = ?, "
                "m_seeded = ?, m_won = ?, m_wins = ? WHERE name = ?",
                (after, now, seeded + funded, won + paid, wins + 1, name))
            self.conn.execute(_INSERT_ENTRY, (
                op, "win", name, funded - paid, after, version + 1, paid, funded, 0, now,
                winner, json.dumps({"reset": fixed is None})))
            return {"op_id": op, "group": name, "amount": _money(paid),
                    "balance": _money(after), "version": version + 1}

        return self._run(op_id, "win", f"{name}:{fixed}:{winner}", body)

    def update_config(self, group: str, *, op_id: str | None = None,
                      expected_version: int | None = None,
                      **changes: Decimal | int | str | None) -> dict[str, Any] | Replayed:
        """Change seed / contribution_rate / cap, checked against `expected_version`."""
        (name,) = self._names(group)
        unknown = set(changes) - {"seed", "contribution_rate", "cap"}
        if unknown or not changes:
            msg = f"bad config changes {sorted(changes)}"
            raise ValueError(msg)
        parsed: dict[str, int | None] = {}
        if "seed" in changes:
            parsed["seed"] = to_units(changes["seed"], "seed")
        if "contribution_rate" in changes:
            parsed["rate"] = _exact(changes["contribution_rate"], RATE_EXP, "rate")
            if not 0 < parsed["rate"] < RATE_SCALE:
                msg = "contribution_rate must be in (0, 1)"
                raise ValueError(msg)
        if "cap" in changes:
            cap = changes["cap"]
            parsed["cap"] = None if cap is None else to_units(cap, "cap")
        op = op_id if op_id is not None else f"auto-{uuid.uuid4().hex}"

        def body(now: int) -> dict[str, Any]:
            (seed, rate, cap, pool, _carry, version, *_m) = self._level(name)
            if expected_version is not None and version != expected_version:
                msg = f"level {name!r} is at version {version}, not {expected_version}"
                raise RuntimeError(msg)
            before = {"seed": seed, "rate": rate, "cap": cap}
            after = {"seed": seed, "rate": rate, "cap": cap, **parsed}
            new_cap = after["cap"]
            if new_cap is not None and (new_cap < (after["seed"] or 0) or new_cap < pool):
                msg = "cap below the seed or the current amount"
                raise ValueError(msg)
            self.conn.execute(
                "UPDATE levels SET seed = ?, rate = ?, cap = ?, version = version + 1, "
                "last_modified_at = ? WHERE name = ?",
                (after["seed"], after["rate"], new_cap, now, name))
            self.conn.execute(_INSERT_ENTRY, (
                op, "config", name, 0, pool, version + 1, 0, 0, 0, now, None,
                json.dumps({"before": before, "after": after}, sort_keys=True)))
            return {"op_id": op, "group": name, "version": version + 1}

        return self._run(op_id, "config", f"{name}:{expected_version}:{sorted(parsed.items())}",
                         body)

    def verify(self) -> list[str]:
        """Recompute every level from the ledger; return the differences (none: sound)."""
        problems = []
        with self._lock:
            levels = {r[0]: r[1:] for r in self.conn.execute(
                "SELECT name, amount, version, m_bets FROM levels")}
            sums = {r[0]: r[1:] for r in self.conn.execute(
                "SELECT level, SUM(delta), COUNT(*), MIN(version_after), MAX(version_after), "
                "SUM(kind = 'contribute') FROM ledger GROUP BY level")}
            orphans = self.conn.execute(
                "SELECT COUNT(*) FROM (SELECT op_id FROM operations "
                "EXCEPT SELECT op_id FROM ledger)").fetchone()[0]
        for name, (amount, version, bets) in levels.items():
            total, count, low, high, contributions = sums.get(name, (0, 0, 0, 0, 0))
            if (total, count, low, high, contributions) != (amount, version, 1, version, bets):
                problems.append(f"{name}: ledger {total} in {count} rows, versions "
                                f"{low}..{high}, {contributions} bets; level holds {amount} "
                                f"at version {version} after {bets} bets")
        if orphans:
            problems.append(f"{orphans} operations without ledger rows")
        return problems

    def pool(self, name: str) -> dict[str, Any]:
        """Return one level's committed row."""
        with self._lock:
            row = self.conn.execute(
                "SELECT amount, version, seed, rate, cap FROM levels WHERE name = ?",
                (name,)).fetchone()
        if row is None:
            msg = f"no level {name!r}"
            raise KeyError(msg)
        amount, version, seed, rate, cap = row
        return {"name": name, "amount": Decimal(amount).scaleb(-UNIT_EXP), "version": version,
                "seed": Decimal(seed).scaleb(-UNIT_EXP), "rate": rate, "cap": cap}
