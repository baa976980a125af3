"""The storage contract: what the engine needs from a backend, and what they share.

`Store` is the narrow interface the actors, the service and the audit use.
Each backend (`sqlite.SQLiteStore`, `postgres.PostgresStore`) implements it
in its own module and translates its driver's errors into the `JackpotError`
family once, at the transaction boundary. The contract every backend keeps
(exercised by tests/backends/contract.py against each of them):

- `write()` is one transaction: everything inside commits together or, on
  any exception, nothing does. `update_level` is version-checked: it writes
  only if the row is still at `expected_version` and says whether it did.
- A level row read with `load_level` inside `write()` cannot be changed by
  another writer until the transaction ends (SQLite: the database write
  lock; PostgreSQL: the row lock).
- Waiting for a lock is bounded by the lock timeout (`LockTimeoutError`).
  A transaction the database aborts to break a deadlock or a lost race
  raises `BusyIncidentError` (retry it); `SerializationFailureError` marks
  the lost races, which the service reports as a `ConcurrencyViolationError`
  once its retries run out.
- `read()` is one consistent snapshot. The ledger and operations tables are
  append-only, enforced by the database itself.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple, TypeVar

from jackpot._json import sorted_encoder
from jackpot.domain import Entry, LevelConfig, LevelState, Meters
from jackpot.errors import StorageError, ValidationError, exact_int, shown
from jackpot.money import MAX_UNITS
from jackpot.storage.schema import LEDGER_PARTS, METERS

__all__ = [
    "BusyIncidentError",
    "ConnectionUnavailableError",
    "LedgerFigures",
    "LedgerPass",
    "LedgerRow",
    "LedgerTotals",
    "RecordedDetail",
    "RecordedResult",
    "SerializationFailureError",
    "Shown",
    "Store",
    "StoredOperation",
    "UnreadDetail",
    "UnreadableRowError",
]

STATE_COLUMNS = ("name", "status", "amount", "reserve", "carry", "reserve_carry", "trigger",
                 "pending", "version", "lock_holder", "last_modified_at")
CONFIG_COLUMNS = tuple(f.name for f in fields(LevelConfig))
LEVEL_COLUMNS = (*STATE_COLUMNS, *CONFIG_COLUMNS, *(f"m_{m}" for m in METERS))
ENTRY_COLUMNS = ("kind", "level", "delta", "balance_after", "reserve_delta",
                 "reserve_after", "version_after", *LEDGER_PARTS, "at_ms", "who", "detail")
TABLE_COLUMNS = {"levels": LEVEL_COLUMNS, "ledger": ("seq", "op_id", *ENTRY_COLUMNS),
                 "operations": ("op_id", "kind", "fingerprint", "result", "at_ms")}
"""The columns the engine's tables have in every schema this library knows (1 to latest).

Only these are the engine's: a column an operator added is none of its business."""


class BusyIncidentError(StorageError):
    """The database refused to wait (a would-be deadlock): roll back and retry."""


class SerializationFailureError(BusyIncidentError):
    """The transaction lost a race (deadlock, serialization failure, twin op_id): retry."""


class ConnectionUnavailableError(StorageError):
    """No connection to the database could be had (the server cannot be reached).

    Nothing ran, and no operation of the batch is at fault: running each
    operation alone (as after an error inside a shared transaction) would
    only wait for a connection once per operation.
    """


@dataclass(frozen=True, slots=True)
class StoredOperation:
    """An idempotency record: the first result of an op_id."""

    op_id: str
    kind: str
    fingerprint: str
    result: dict[str, Any] | None
    """The result as stored; None where its text is not a JSON object (see `stored_result`)."""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One committed ledger row (amounts in units; see `domain.Entry`)."""

    seq: int
    op_id: str
    kind: str
    level: str
    delta: int
    balance_after: int
    reserve_delta: int
    reserve_after: int
    version_after: int
    contributed: int
    overflow: int
    reserve_in: int
    house_funded: int
    reserve_funded: int
    paid: int
    adjusted: int
    transferred: int
    reserve_transferred: int
    at_ms: int
    who: str | None
    detail: dict[str, Any] | None
    """As written (JSON); for the audit, where asked, an `UnreadDetail` (see `ledger_row`)."""


class LedgerFigures(NamedTuple):
    """What one operation's ledger rows of one level say (for the audit).

    None: a NULL there, or another value of no number (text, a BLOB, a REAL
    infinity) a ledger rebuilt without NOT NULL or STRICT holds; its row is
    told (as one that does not add up, or by its level's versions), and a
    stored result is not compared with it.
    """

    version: int | None
    balance: int | None
    credited: int | None
    paid: int | None


class RecordedDetail(NamedTuple):
    """A win's or config change's ledger row: who made it and its detail (JSON text)."""

    level: str
    kind: str
    who: str | None
    detail: str | None


class RecordedResult(NamedTuple):
    """A stored first result, raw, and its operation's ledger figures per level.

    (A tuple: the audit makes one per recorded operation, millions on a big ledger.)
    """

    op_id: str
    kind: str
    result: str
    levels: dict[str, LedgerFigures]
    level_kinds: dict[str, frozenset[str]]
    """Per level, the kinds of its ledger rows there."""
    fingerprint: str
    """Its request's fingerprint, raw (what a retry's must equal)."""
    at_ms: object = 0
    """Its record's time, raw (the engine writes ms since 1970, an integer)."""

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of its ledger rows."""
        return frozenset().union(*self.level_kinds.values())


_R = TypeVar("_R")


class Shown(list[_R]):
    """The first rows a capped query found (at most its `limit`), and how many more (`more`).

    The audit tells each row, then "... and N more": an operator with 5,000
    bad rows must not read 20 and think that is all. Counted by the query
    that found them (a window's COUNT, or the audit's one pass), never by a
    second scan of the ledger. A list, equal to one of the same rows.
    """

    __slots__ = ("more",)

    def __init__(self, rows: Iterable[_R] = (), more: int = 0) -> None:
        super().__init__(rows)
        self.more = more


class LedgerPass(NamedTuple):
    """What the audit reads of every ledger row (see `Store.ledger_pass`)."""

    totals: dict[str, LedgerTotals]
    """As `Store.ledger_totals`."""
    broken: Shown[tuple[str, int, int]]
    """As `Store.broken_ledger_rows`."""
    periods: dict[str, dict[int, tuple[int, int]]]
    """As `Store.contributions_by_period`."""
    unread_bets: Shown[tuple[str, int, int, object]]
    """As `Store.unreadable_bets`."""
    untyped: Shown[tuple[str, int, int, dict[str, object]]]
    """As `Store.untyped_ledger_rows`."""


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """What one level's ledger rows add up to (for the audit)."""

    rows: int
    min_version: int
    max_version: int
    delta: int
    reserve_delta: int
    min_balance: int
    min_reserve: int
    meters: dict[str, int]


# The bet of a ledger row: only a bet's first row records it, as detail
# '{"bet": <units>}' (written by `to_json`, so always in exactly that form: 1
# to 18 digits, the first not 0, at most `money.MAX_UNITS`, the largest bet
# `parse_amount` takes); 0 for any other row. Read with substr and CAST, the
# same text on every backend, and only in that form: anything else (another
# key after it, text after the digits, spaces, a leading 0, a bet past
# MAX_UNITS) is no bet the engine wrote. Only digits are cast (PostgreSQL
# raises on anything else, which would stop the whole audit), and no substr is
# given a length that may be negative (PostgreSQL raises on that too, whatever
# order it tests the conditions in): a tampered bet detail adds 0, and the
# wagered meter's check reports the difference, as `UNREAD_BET` reports the
# row. (MAX_UNITS is a power of 10: every other number of as many digits is
# past it, so a detail of that length is a bet only if it is MAX_UNITS's.)
_MAX_BET = f'{{"bet": {MAX_UNITS}}}'
_BET_READ = (f"length(detail) BETWEEN 10 AND {len(_MAX_BET)} "
             "AND substr(detail, 1, 8) = '{\"bet\": ' "
             "AND substr(detail, 9, 1) != '0' AND ltrim(substr(detail, 9), '0123456789') = '}' "
             f"AND (length(detail) < {len(_MAX_BET)} OR detail = '{_MAX_BET}')")
LEDGER_BET = (f"CASE WHEN kind = 'contribute' AND {_BET_READ} "
              "THEN CAST(substr(detail, 9, length(detail) - 9) AS BIGINT) ELSE 0 END")
_NOT_CARRIED = "(detail IS NULL OR detail != '{\"carried_over\": true}')"
UNREAD_BET = f"kind = 'contribute' AND ({LEDGER_BET}) = 0 AND {_NOT_CARRIED}"
"""A bet row whose detail is neither a bet `LEDGER_BET` reads (the engine writes
none of 0) nor the part of one carried over from the level before
(`domain._add`): read as no bet, and told."""

# meter -> SQL aggregate over a level's ledger rows (the same text on every backend).
# The bets are the rows `LEDGER_BET` reads as bets, those whose bets `wagered`
# sums: a row whose detail only starts like a bet's is none (told by `UNREAD_BET`).
AUDIT_METER_SUMS = {
    "bets": f"SUM(CASE WHEN ({LEDGER_BET}) != 0 THEN 1 ELSE 0 END)",
    "wagered": f"SUM({LEDGER_BET})",
    "contributed": "SUM(contributed)",
    "overflow": "SUM(overflow)",
    "reserve_in": "SUM(reserve_in)",
    "house_funded": "SUM(house_funded)",
    "reserve_funded": "SUM(reserve_funded)",
    "won": "SUM(paid)",
    "wins": "SUM(CASE WHEN kind IN ('win', 'hit') THEN 1 ELSE 0 END)",
    "hits": "SUM(CASE WHEN kind = 'hit' THEN 1 ELSE 0 END)",
    "adjusted": "SUM(adjusted)",
    "transferred": "SUM(transferred)",
    "reserve_transferred": "SUM(reserve_transferred)",
}

_LEDGER_TOTALS = f"""
SELECT level, COUNT(*), MIN(version_after), MAX(version_after), SUM(delta),
       SUM(reserve_delta), MIN(balance_after), MIN(reserve_after),
       {", ".join(AUDIT_METER_SUMS.values())}
FROM ledger GROUP BY level
"""

# What each row's figures must equal: the previous row's balance and reserve
# plus its deltas, and the sum of its parts. `{n}` casts each amount
# (PostgreSQL: to NUMERIC, so that a forged amount near 2**63 is a row that
# does not add up, not a BIGINT overflow that stops the audit); `{prev_balance}`
# and `{prev_reserve}` are the previous row's.
_ROW_SUMS = {
    "balance_after{n}": "{prev_balance} + delta{n}",
    "reserve_after{n}": "{prev_reserve} + reserve_delta{n}",
    "delta{n}": ("contributed{n} - overflow{n} + house_funded{n} + reserve_funded{n} - paid{n} "
                 "+ adjusted{n} + transferred{n}"),
    "reserve_delta{n}": "reserve_in{n} - reserve_funded{n} + reserve_transferred{n}",
}


def row_checks(cast: str, inexact: str | None, prev_balance: str, prev_reserve: str,
               ) -> tuple[str, str]:
    """Return SQL for "a row does not add up" and for "its arithmetic left the integers".

    `inexact` is the backend's test of one sum (`Store._INEXACT`); None: its
    arithmetic is exact, and the second is FALSE.
    """
    def fill(text: str) -> str:
        return (text.replace("{n}", cast).replace("{prev_balance}", prev_balance)
                .replace("{prev_reserve}", prev_reserve))
    # IS NOT FALSE: a NULL amount (a ledger rebuilt without NOT NULL) makes a
    # comparison NULL, never true, and the row would pass; the engine writes
    # an integer in each, so such a row does not add up (nor the row after
    # it, whose previous balance is NULL).
    wrong = " OR ".join(f"{fill(figure)} != {fill(s)}" for figure, s in _ROW_SUMS.items())
    wrong = f"({wrong}) IS NOT FALSE"
    if inexact is None:
        return f"({wrong})", "(1 = 0)"
    return f"({wrong})", f"({' OR '.join(inexact.format(fill(s)) for s in _ROW_SUMS.values())})"


ROW_FIGURES = ("delta", "reserve_delta", "balance_after", "reserve_after", *LEDGER_PARTS)

# Rows that break the balance chain or whose deltas are not the sum of their parts,
# or whose arithmetic was not exact (`{unsure}`: checked again in Python), with
# their figures and the previous row's balance and reserve.
_BROKEN_ROWS = f"""
SELECT level, version_after, seq, {{unsure}}, {", ".join(ROW_FIGURES)},
       prev_balance, prev_reserve{{count}} FROM (
    SELECT level, version_after, seq, {", ".join(f"{c}{{n}} AS {c}" for c in ROW_FIGURES)},
        LAG(balance_after{{n}}, 1, 0) OVER w AS prev_balance,
        LAG(reserve_after{{n}}, 1, 0) OVER w AS prev_reserve
    FROM ledger WINDOW w AS (PARTITION BY level ORDER BY version_after)) AS chained
WHERE {{wrong}} OR {{unsure}}
ORDER BY level, version_after
"""
"""Rows that do not add up, or may not (see `Store.broken_ledger_rows`)."""

# Per level and per rate period, what its contributions add up to: a period
# starts at each create or config row (the only rows that change a rate or
# overflow_to), so every bet in it was shared out at that row's rates.
CONTRIBUTION_ROWS = f"""
SELECT level, period, bet, overflow FROM (
    SELECT level, kind, overflow, {LEDGER_BET} AS bet,
        SUM(CASE WHEN kind IN ('create', 'config') THEN 1 ELSE 0 END) OVER (
            PARTITION BY level ORDER BY version_after
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS period
    FROM ledger) AS numbered
WHERE kind = 'contribute'
"""
"""Each bet row's level, rate period, bet and overflow (what `contributions_by_period` sums)."""
_CONTRIBUTIONS_BY_PERIOD = f"""
SELECT level, period, {{total}}(bet), {{total}}(overflow) FROM ({CONTRIBUTION_ROWS}) AS bets
GROUP BY level, period
"""
"""`{total}`: the aggregate that sums (not the window's SUM, which only counts periods)."""

LEDGER_INTEGERS = (*ROW_FIGURES, "version_after", "at_ms")
"""The ledger's integer columns (its key aside) each of whose cells the audit holds to being one.

Text there reads as 0 in SQL's arithmetic (`'abc'` where the engine wrote a
0): only this check tells it. (Text that reads as an integer, `'0'`, is
stored as one by the INTEGER column of a table rebuilt without STRICT.)"""


LEDGER_TEXTS = ("op_id", "kind", "level", "who", "detail")
"""The ledger's text columns, whose cells the audit holds to being text (or NULL, told elsewhere).

A table rebuilt without STRICT takes a BLOB or a number there, which no
other check reads as what it is (a level of 5, an op_id of x'00')."""


ROW_TOLD_NULLS = ("op_id",)
"""The ledger's text columns where a NULL (the engine writes none) is told against its row:
nothing else reads a row's op_id alone (a NULL level or kind changes what the checks of its
level find, and is told there)."""


def untyped_sql(not_integer: str, columns: Iterable[str], not_text: str = "",
                texts: Iterable[str] = (), nulls: Iterable[str] = ()) -> str:
    """Return SQL true where a ledger row holds what the engine never writes in an integer column.

    `not_integer` is the backend's test of one cell (`Store._NOT_INTEGER`),
    made on `columns`, those of `LEDGER_INTEGERS` whose type or NOT NULL the
    database no longer keeps itself (`Store._unkept_integers`): a table
    rebuilt without STRICT or NOT NULL takes text, a BLOB, a REAL or a NULL
    there. On a sound table that is none, and this costs nothing per row
    (17 tests of each of millions of rows would). Nor is a time (`at_ms`:
    the host's clock, in ms since 1970) ever negative. Such a cell may
    change no figure the other checks sum (a time, or text that SQL's
    arithmetic reads as 0): told against its row (`Store.untyped_ledger_rows`).
    So is a cell of `texts` (those of `LEDGER_TEXTS` whose type the database
    no longer keeps) that `not_text` finds holding neither text nor NULL, and
    a NULL in `nulls` (those of `ROW_TOLD_NULLS` whose NOT NULL is gone).
    """
    tests = [*(not_integer.format(c) for c in columns), *(not_text.format(c) for c in texts),
             *(f"{c} IS NULL" for c in nulls)]
    return f"({' OR '.join([*tests, 'at_ms < 0'])})"


def untyped_cells(cells: dict[str, object]) -> dict[str, object]:
    """Return those of a ledger row's cells (`LEDGER_CELLS`) that are not what the engine writes.

    (A NULL text cell is one in `ROW_TOLD_NULLS` only: NULL is the engine's
    in `who` and `detail`, and elsewhere told by the checks that read it.)
    """
    return {c: v for c, v in cells.items()
            if ((not isinstance(v, str) and (v is not None or c in ROW_TOLD_NULLS))
                if c in LEDGER_TEXTS
                else (type(v) is not int or (c == "at_ms" and v < 0)))}


LEDGER_CELLS = (*LEDGER_INTEGERS, *LEDGER_TEXTS)
"""The ledger's cells `untyped_cells` holds to the engine's types."""


# `_LEDGER_TOTALS`, `_BROKEN_ROWS` (counted) and `_CONTRIBUTIONS_BY_PERIOD` in
# one walk of the ledger in (level, version) order, grouped by level and rate
# period (`Store.ledger_pass`): each row is read once, not three times. Each
# row's test is `_BROKEN_ROWS`' own (a row whose arithmetic was not exact
# counts as broken: `_BROKEN_ROWS` checks it again); `dup` marks a row whose version repeats
# the previous one's (a file without its unique index), where the order of
# the two, and so what LAG and the period count see, is the database's choice;
# `untyped` counts the rows `untyped_sql` finds (listed only if there are any).
_LEDGER_PASS = f"""
SELECT level, period, COUNT(*), MIN(version_after), MAX(version_after), SUM(delta),
       SUM(reserve_delta), MIN(balance_after), MIN(reserve_after),
       {", ".join(AUDIT_METER_SUMS.values()).replace(LEDGER_BET, "bet")},
       SUM(CASE WHEN kind = 'contribute' THEN 1 ELSE 0 END),
       SUM(CASE WHEN kind = 'contribute' THEN overflow ELSE 0 END),
       SUM(CASE WHEN kind = 'contribute' AND bet = 0 AND {_NOT_CARRIED} THEN 1 ELSE 0 END),
       SUM(broken), SUM(dup), SUM(untyped)
FROM (SELECT level, kind, version_after, delta, reserve_delta, balance_after, reserve_after,
             detail, {", ".join(LEDGER_PARTS)}, {LEDGER_BET} AS bet,
             CASE WHEN {{wrong}} OR {{unsure}} THEN 1 ELSE 0 END AS broken,
             CASE WHEN {{untyped}} THEN 1 ELSE 0 END AS untyped,
             CASE WHEN version_after = LAG(version_after) OVER w THEN 1 ELSE 0 END AS dup,
             SUM(CASE WHEN kind IN ('create', 'config') THEN 1 ELSE 0 END) OVER w AS period
      FROM ledger
      WINDOW w AS (PARTITION BY level ORDER BY version_after
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS passed
GROUP BY level, period
"""

# Per recorded operation and level: what its ledger rows say, the figures its
# stored result must repeat (the version and balance after its last row there,
# what it credited, what it paid) and the kinds of its rows (for the audit to
# hold them to what an operation of the recorded kind writes; a forged kind
# with a comma in it keeps its own name, with a ';'), and the request's
# fingerprint and the record's time (read with the record anyway). `{n}` casts amounts as in
# _ROW_SUMS; the backend completes the rest (`RecordedSQL`). What a bet
# credited (contributed - overflow) is subtracted in Python: SQLite turns a
# subtraction that overflows (forged amounts) into an inexact REAL, where an
# overflowing SUM raises and is summed again exactly (`SQLiteStore`).
_RECORDED_RESULTS = """
SELECT g.op_id, o.kind, o.result, o.fingerprint, g.level, g.kinds, g.version, {balance},
       g.contributed, g.overflow, g.paid, o.at_ms
FROM (SELECT l.op_id, l.level, MAX(l.version_after) AS version,{last_balance}
             SUM(l.contributed{n}) AS contributed, SUM(l.overflow{n}) AS overflow,
             SUM(l.paid) AS paid,
             {kinds} AS kinds
      FROM ledger AS l{recorded}
      GROUP BY l.op_id, l.level) AS g
JOIN operations AS o ON o.op_id = g.op_id
{join}ORDER BY g.op_id, g.level
"""


class RecordedSQL(NamedTuple):
    """How a backend completes `_RECORDED_RESULTS`."""

    balance: str
    """The balance after the operation's last row on the level."""
    last_balance: str
    """Columns the grouping adds for `balance`."""
    kinds: str
    """The distinct kinds of its rows there, joined by commas."""
    recorded: str
    """Joined to the ledger before grouping: only recorded operations' rows."""
    join: str
    """Joined to the groups: whatever `balance` reads."""


PORTABLE_RECORDED = RecordedSQL(
    "b.balance_after", "", "string_agg(DISTINCT replace(l.kind, ',', ';'), ',')",
    " JOIN operations AS k ON k.op_id = l.op_id",
    "JOIN ledger AS b ON b.level = g.level AND b.version_after = g.version\n")
"""Standard SQL: the ledger has no op_id index (schema V2), so the inner join
reads it once and looks each op_id up in the operations table's key; the
balance is read back by the (level, version_after) key. (PostgreSQL, 1 million
rows, 500,000 of them recorded: 18 s, as the query this replaced.)"""

# Every level that has ledger rows, found by seeking the (level, version_after)
# index from one level to the next: the audit's queries of a few kinds (hits,
# wins, config changes, retirements) look each level's rows of those kinds up
# in the (level, kind, seq) index through it, instead of reading the whole
# ledger for each (a database without statistics would not use the index for
# a kind alone). Every level of the ledger, so no row is missed: not only
# those of the levels table.
_EACH_LEVEL = """WITH RECURSIVE each_level (level) AS (
    SELECT MIN(level) FROM ledger
    UNION ALL
    SELECT (SELECT MIN(level) FROM ledger WHERE level > each_level.level) FROM each_level
    WHERE each_level.level IS NOT NULL)
"""
_OF_KINDS = "each_level CROSS JOIN ledger AS l"
"""The ledger's rows (`l`) through `_EACH_LEVEL`; the query adds `l.level = each_level.level`."""
_AT_EACH_LEVEL = "l.level = each_level.level AND "

# A row whose level is NULL is at none of `_EACH_LEVEL`'s levels. The schema
# forbids one, but a forged database need not keep that constraint: where
# one is there, the queries of a few kinds read the whole ledger as before.
# (One index probe; SQLite, knowing the column NOT NULL, reads nothing.)
_ANY_ROW_WITHOUT_LEVEL = "SELECT 1 FROM ledger WHERE level IS NULL LIMIT 1"

# The must-hit-by hits of recorded operations (a bet's result lists each).
_RECORDED_HITS = f"""{_EACH_LEVEL}
SELECT l.op_id, l.level, l.version_after, l.paid, l.balance_after, l.who
FROM {_OF_KINDS} JOIN operations AS o ON o.op_id = l.op_id
WHERE {_AT_EACH_LEVEL}l.kind = 'hit'
ORDER BY l.seq
"""

# Who won and whether the level reset (wins), the fields before and after
# (config changes): what their stored results repeat. In the ledger's order:
# of an op_id with several such rows (a forged ledger), the last one is held.
_RECORDED_DETAILS = f"""{_EACH_LEVEL}
SELECT l.op_id, l.level, l.kind, l.who, l.detail
FROM {_OF_KINDS} JOIN operations AS o ON o.op_id = l.op_id
WHERE {_AT_EACH_LEVEL}l.kind IN ('win', 'config')
ORDER BY l.seq
"""

_WAGERED = 7 + list(AUDIT_METER_SUMS).index("wagered")
"""Where a `_LEDGER_PASS` row's sum of bets is: after its 7 totals, the wagered meter."""

_BALANCES_CHUNK = 500  # (level, version) pairs per query of `balances_at`

# Every bet's hits, with a stored result or not (bets without a caller's op_id
# store none): what the ledger alone says holds either way: one bet, one
# player, one winner. (Not limited to op_ids without a record: a record
# inserted for an op_id, of whatever kind, must not hide its rows from this.)
_SPLIT_HIT_WINNERS = f"""{_EACH_LEVEL}
SELECT l.op_id{{count}} FROM {_OF_KINDS}
WHERE {_AT_EACH_LEVEL}l.kind = 'hit'
GROUP BY l.op_id
HAVING COUNT(DISTINCT l.who) + MAX(CASE WHEN l.who IS NULL THEN 1 ELSE 0 END) > 1
ORDER BY l.op_id
"""

OPERATIONS_WITHOUT_LEDGER = (
    "SELECT op_id FROM operations EXCEPT SELECT op_id FROM ledger ORDER BY op_id")


def row_limit(limit: object) -> int:
    """Return `limit`, how many rows a read returns at most, as an int.

    Raises:
        ValidationError: `limit` is not an int of 0 or more. In a `LIMIT`
            SQLite reads a negative one as none at all (every row), and
            PostgreSQL refuses it; a capped read (`Shown`) would show
            `rows[:limit]` of the rows it read. 1.5 or True is no count.

    """
    count = exact_int(limit)
    if count is None or count < 0:
        msg = f"limit must be an int of 0 or more, got {shown(limit)}"
        raise ValidationError(msg)
    return count


to_json = sorted_encoder()
"""`json.dumps(value, sort_keys=True)`, without building an encoder per call."""


class UnreadableRowError(StorageError, ValueError):
    """A row holds JSON the engine never writes (a damaged or tampered file).

    A `StorageError` (one line from the `jackpot` command) and a
    `ValueError` (a problem the audit reports, not a crash).
    """


def stored_result(text: str) -> dict[str, Any] | None:
    """Return a stored first result, or None where it is not the JSON object the engine writes.

    A damaged record must fail its own replay (and show in the audit), not
    the lookup of every op_id of the batch it was found in.
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON; nested deeper than the parser goes
        return None
    return value if isinstance(value, dict) else None


def _pending(name: object, text: str) -> dict[str, int | None]:
    try:
        pending = json.loads(text)
    except (ValueError, TypeError, RecursionError):  # TypeError: NULL (no NOT NULL, forged)
        pending = None
    if not (isinstance(pending, dict) and all(
            isinstance(k, str) and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
            for k, v in pending.items())):
        shown = text[:80] if isinstance(text, (str, bytes)) else text
        msg = (f"level {name!r}: its pending changes {shown!r} are not what the engine "
               "writes (a damaged or tampered database)")
        raise UnreadableRowError(msg)
    return pending


def level_from_row(row: tuple[Any, ...]) -> LevelState:
    """Rebuild a level from a row of `LEVEL_COLUMNS`.

    Raises:
        UnreadableRowError: its pending changes are not what the engine writes.

    """
    n_state, n_config = len(STATE_COLUMNS), len(CONFIG_COLUMNS)
    state = dict(zip(STATE_COLUMNS, row[:n_state], strict=True))
    state["pending"] = _pending(state["name"], state["pending"])
    config = LevelConfig(*row[n_state:n_state + n_config])
    return LevelState(**state, config=config, meters=Meters(*row[n_state + n_config:]))


_PENDING = STATE_COLUMNS.index("pending")
_state_before = operator.attrgetter(*STATE_COLUMNS[:_PENDING])  # one C call each
_state_after = operator.attrgetter(*STATE_COLUMNS[_PENDING + 1:])
_config_fields = operator.attrgetter(*CONFIG_COLUMNS)
_meter_fields = operator.attrgetter(*METERS)


def level_values(s: LevelState) -> tuple[Any, ...]:
    """Return a level's values in `LEVEL_COLUMNS` order."""
    return (*_state_before(s), to_json(s.pending), *_state_after(s),
            *_config_fields(s.config), *_meter_fields(s.meters))


_entry_fields = operator.attrgetter(*ENTRY_COLUMNS[:-1])  # one C call per row


def entry_values(op_id: str, e: Entry) -> tuple[Any, ...]:
    """Return a ledger row's values: op_id, then `ENTRY_COLUMNS` order."""
    return (op_id, *_entry_fields(e),
            None if e.detail is None else to_json(e.detail))


def _whole(value: Any) -> Any:
    """Return a number the ledger's SQL gave as an int (PostgreSQL sums BIGINT as NUMERIC).

    Anything else (text, a BLOB, NULL: a version in a ledger rebuilt without
    STRICT, and so its MIN or MAX; a REAL there, or a sum with a REAL in it)
    is returned as it is, for the audit to show as what it is rather than
    fail on (int() of an infinity), cut short (a version of 1.5 is none, not
    1) or show as exact: a REAL's sum is made in floating point (1e19 plus
    100 units is 1e19 again), and a whole one can be 300 digits long (1e300).
    Only SQLite has REALs, and only in a cell the engine never wrote, which
    the audit tells against its row (`Store.untyped_ledger_rows`).
    """
    return int(value) if isinstance(value, (int, Decimal)) else value


def _figure(value: Any) -> int | None:
    """Return a figure of a recorded operation's ledger rows as an int; None if it is no number.

    None: a NULL, or what a table rebuilt without STRICT holds instead of an
    integer (text, a BLOB, a REAL: an infinity, 1.5, 1e300, or a sum with
    one in it, inexact): nothing a stored result can be compared with; its
    row is told (`Store.untyped_ledger_rows`).
    """
    if type(value) is int:  # (what the engine writes: first)
        return value
    return int(value) if isinstance(value, Decimal) else None


_NOT_SUMS = frozenset({0, 1, 2, 5, 6})
"""The figures of a `_LEDGER_TOTALS` row (after its level) that are no sum: COUNT, MIN, MAX."""


def _summed(value: Any) -> Any:
    """Return a sum the ledger's SQL gave as `_whole` does; text is a whole sum's digits.

    (An exact sum past 2**63 is no SQL integer: `SQLiteStore`'s comes as text.)
    """
    return int(value) if isinstance(value, str) else _whole(value)


def _adds_up_exactly(figures: list[Any]) -> bool:
    """Say whether a row's figures (`ROW_FIGURES`, then the previous balance and reserve) add up.

    Exactly, as rationals: a REAL (a table rebuilt without STRICT) counts as
    the number it is. Anything that is no finite number does not add up.
    """
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in figures):
        return False
    f = dict(zip((*ROW_FIGURES, "prev_balance", "prev_reserve"), map(Fraction, figures),
                 strict=True))
    return (f["balance_after"] == f["prev_balance"] + f["delta"]
            and f["reserve_after"] == f["prev_reserve"] + f["reserve_delta"]
            and f["delta"] == (f["contributed"] - f["overflow"] + f["house_funded"]
                               + f["reserve_funded"] - f["paid"] + f["adjusted"]
                               + f["transferred"])
            and f["reserve_delta"] == (f["reserve_in"] - f["reserve_funded"]
                                       + f["reserve_transferred"]))


class UnreadDetail(str):
    """A ledger row's detail that is not JSON, kept as its text (`ledger_row(keep_unread=True)`).

    For the audit: a check that reads the detail tells it (raising `error`,
    or as a detail of no shape it reads); one that needs only the row's kind
    goes on.
    """

    __slots__ = ("error",)
    error: UnreadableRowError


def ledger_row(row: tuple[Any, ...], *, keep_unread: bool = False) -> LedgerRow:
    """Rebuild a ledger row from the columns of `LedgerRow`, in order.

    Raises:
        UnreadableRowError: its detail is not JSON (unless `keep_unread`: then
            its detail is an `UnreadDetail`).

    """
    values = dict(zip(LedgerRow.__dataclass_fields__, row, strict=True))
    if values["detail"] is not None:
        try:
            values["detail"] = json.loads(values["detail"])
        except (ValueError, RecursionError):
            msg = (f"ledger row {values['seq']}: its detail {values['detail'][:80]!r} is not "
                   "what the engine writes (a damaged or tampered database)")
            if not keep_unread:
                raise UnreadableRowError(msg) from None
            unread = UnreadDetail(values["detail"])
            unread.error = UnreadableRowError(msg)
            values["detail"] = unread
    return LedgerRow(**values)


class Store(ABC):
    """One connection's worth of the engine's queries, used by one thread at a time."""

    lock_wait_seconds: float = 0.0
    """How long the last `write()` waited to begin (for the lock-wait metric)."""
    seen_versions: dict[str, int] | None = None
    """Levels' versions this connection has seen committed (read under its
    write lock, or committed by it) since another connection last committed:
    a cached level at one of these versions is current. Emptied by `write()`
    when another connection has committed since this connection's previous
    write (SQLite's `data_version`); kept by the caller (`jackpot.service`). None: the
    backend cannot tell (PostgreSQL), so no cached level is known current.

    Per connection, not per level: a cache may come from another connection,
    or from a level this connection's last batch did not check, so "nobody
    else committed since my last write" alone cannot say that a cached level
    is current."""

    backup_made: os.stat_result | None = None
    """The file a `backup_to` of this store made (its `os.stat` as made), from before it
    was named its target: a file at that target is this backup's only if it is that one
    (a caller stopped after `backup_to` returned removes it so, and never another's)."""

    _PARAM = "?"
    """The backend's parameter placeholder (for the few queries written here)."""
    _AMOUNT_CAST = ""
    """Appended to each amount in the audit's arithmetic (see `_BROKEN_ROWS`)."""
    _LEVEL_ORDER = "seq"
    """How `ledger_stream` orders one level's rows, oldest first. SQLite: by seq, which
    one writer at a time hands out in the order of commits (see `PostgresStore`'s)."""
    _INEXACT: ClassVar[str | None] = None
    """SQL that is true where a sum (`{}`) of the audit's arithmetic was not exact; None:
    the backend's arithmetic is (see `broken_ledger_rows`)."""
    _RECORDED: ClassVar[RecordedSQL] = PORTABLE_RECORDED
    """How the backend completes the recorded-results query."""
    _NOT_INTEGER: ClassVar[str] = "{} IS NULL"
    """SQL that is true where a ledger cell (`{}`) of an integer column holds no integer
    (see `untyped_sql`): of a BIGINT column, only a NULL (its NOT NULL dropped)."""
    _NOT_TEXT: ClassVar[str] = ""
    """SQL that is true where a ledger cell (`{}`) of a text column holds neither text nor
    NULL; used only on `_unkept_texts` (none here)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    @abstractmethod
    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    def _stream(self, sql: str, params: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
        """Run one statement and yield its rows; a backend that can streams them."""
        return self._exec(sql, params)

    # -- transactions ----------------------------------------------------------

    @abstractmethod
    def write(self) -> AbstractContextManager[None]:
        """Run the block in one write transaction; roll back on any error."""

    @abstractmethod
    def read(self) -> AbstractContextManager[None]:
        """Run the block in one read-only, consistent snapshot."""

    def backup_to(self, target: str) -> None:
        """Copy the database, one consistent snapshot of it, into the new file `target`.

        Raises:
            StorageError: this backend makes no such copy (PostgreSQL: its
                own tools do), `target` exists, or the copy failed.

        """
        msg = f"{type(self).__name__} makes no copy of itself (to {target!r})"
        raise StorageError(msg)

    @abstractmethod
    def schema_version(self) -> int:
        """Return the database's schema version (0: no jackpot schema yet).

        Raises:
            StorageError: the database is not a jackpot database, or has a
                schema newer than this library knows (nothing is changed).

        """

    @abstractmethod
    def migrate(self) -> int:
        """Bring the schema to the latest version; return that version.

        Raises:
            StorageError: the schema is newer than this library knows; the
                database is left as it was.

        """

    # -- levels ------------------------------------------------------------------

    @abstractmethod
    def load_level(self, name: str) -> LevelState | None:
        """Return the committed state of one level (locked inside `write()`), or None."""

    @abstractmethod
    def load_levels(self) -> dict[str, LevelState]:
        """Return every level, by name, in name order."""

    @abstractmethod
    def level_version(self, name: str) -> int | None:
        """Return the committed version of one level (None: no such level), locking nothing."""

    def level_versions(self, names: list[str]) -> dict[str, int]:
        """Return the committed versions of those levels of `names` that exist, locking nothing."""
        marks = ", ".join([self._PARAM] * len(names))
        rows = self._exec(f"SELECT name, version FROM levels WHERE name IN ({marks})",
                          tuple(names))
        return {str(name): int(version) for name, version in rows}

    def probe_writable(self) -> None:
        """Inside `write()`: raise if this transaction may not write, writing nothing.

        SQLite's `BEGIN IMMEDIATE` has proved it already (a read-only file
        refuses it).
        """
        return

    def write_refusal(self) -> str | None:
        """Say why writes are refused whatever they are (SQLite: a moved file, a failed disk)."""
        return None

    def lock_levels(self, names: list[str]) -> dict[str, LevelState] | None:
        """Inside `write()`: lock those levels' rows, in name order, and return them as committed.

        None (the default): this backend's write transaction already keeps
        every other writer out (SQLite's `BEGIN IMMEDIATE`), so a cached level
        is checked against `seen_versions` instead of read again.
        """
        del names  # (unused here)
        return None

    @abstractmethod
    def insert_level(self, state: LevelState) -> None:
        """Insert a new level row."""

    @abstractmethod
    def update_level(self, state: LevelState, *, expected_version: int) -> bool:
        """Write `state` if the row is still at `expected_version`; say if it was."""

    @abstractmethod
    def claim_lock(self, name: str, holder: str | None) -> None:
        """Record `holder` (None: release) as the level's lock holder in this transaction."""

    # -- ledger and operations -------------------------------------------------

    def append(self, op_id: str, entries: list[Entry]) -> None:
        """Append ledger rows for `entries` under `op_id`."""
        self.append_entries([(op_id, e) for e in entries])

    @abstractmethod
    def append_entries(self, entries: list[tuple[str, Entry]]) -> None:
        """Append one ledger row per (op_id, entry), in order."""

    def find_operation(self, op_id: str) -> StoredOperation | None:
        """Return the stored first result of `op_id`, or None."""
        return self.find_operations([op_id]).get(op_id)

    @abstractmethod
    def find_operations(self, op_ids: list[str]) -> dict[str, StoredOperation]:
        """Return the stored first results of those `op_ids` that have one."""

    @abstractmethod
    def record_operations(self, records: list[StoredOperation], at_ms: int) -> None:
        """Store the first results of op_ids (inside the operations' transaction)."""

    @abstractmethod
    def ledger(self, *, level: str | None = None, limit: int | None = None,
               kinds: tuple[str, ...] | None = None, newest_first: bool = False
               ) -> list[LedgerRow]:
        """Return ledger rows, optionally of one level and kinds, oldest first.

        Raises:
            ValidationError: `limit` is not None nor an int of 0 or more (`row_limit`).

        """

    # -- audit -------------------------------------------------------------------

    def ledger_stream(self, *, level: str, kinds: tuple[str, ...], keep_unread: bool = False,
                      ) -> Generator[LedgerRow, None, None]:
        """Yield the level's ledger rows of `kinds`, oldest first, streamed where the backend can.

        For the audit: a level's wins and hits may number millions, and
        `ledger()` would hold them all at once. `keep_unread`: as `ledger_row`'s.
        """
        p = self._PARAM
        sql = (f"SELECT {', '.join(LedgerRow.__dataclass_fields__)} FROM ledger "
               f"WHERE level = {p} AND kind IN ({', '.join([p] * len(kinds))}) "
               f"ORDER BY {self._LEVEL_ORDER}")
        for row in self._stream(sql, (level, *kinds)):
            yield ledger_row(row, keep_unread=keep_unread)

    def ledger_of_kinds(self, kinds: tuple[str, ...], *, keep_unread: bool = False,
                        ) -> list[LedgerRow]:
        """Return every level's ledger rows of `kinds`, oldest first (as `ledger(kinds=...)`).

        For the audit: the few rows of those kinds are looked up level by level
        in the (level, kind, seq) index (`_EACH_LEVEL`), not found by reading
        the whole ledger. `keep_unread`: as `ledger_row`'s.
        """
        p = self._PARAM
        columns = ", ".join(f"l.{c}" for c in LedgerRow.__dataclass_fields__)
        sql = (f"{_EACH_LEVEL}SELECT {columns} FROM {_OF_KINDS} "
               f"WHERE {_AT_EACH_LEVEL}l.kind IN ({', '.join([p] * len(kinds))}) "
               "ORDER BY l.seq")
        return [ledger_row(row, keep_unread=keep_unread)
                for row in self._exec(self._of_kinds(sql), kinds)]

    def _of_kinds(self, sql: str) -> str:
        """Return `sql`, a query through `_EACH_LEVEL`; its whole-ledger form if a row has no level.

        The rows are the same, those without a level included
        (`_ANY_ROW_WITHOUT_LEVEL`).
        """
        if not self._exec(_ANY_ROW_WITHOUT_LEVEL):
            return sql
        return (sql.replace(_EACH_LEVEL, "").replace(_OF_KINDS, "ledger AS l")
                .replace(_AT_EACH_LEVEL, ""))

    def ledger_totals(self) -> dict[str, LedgerTotals]:
        """Return, per level that has ledger rows, what its rows add up to."""
        return self._ledger_totals("SUM")

    def _ledger_totals(self, total: str) -> dict[str, LedgerTotals]:
        """`ledger_totals`, its sums made by the aggregate function `total` (see `_summed`)."""
        out: dict[str, LedgerTotals] = {}
        for level, *values in self._exec(_LEDGER_TOTALS.replace("SUM(", f"{total}(")):
            n = [_whole(v) if i in _NOT_SUMS else _summed(v) for i, v in enumerate(values)]
            rows, vmin, vmax, delta, reserve_delta, low, low_reserve = n[:7]
            out[level] = LedgerTotals(rows, vmin, vmax, delta, reserve_delta, low, low_reserve,
                                      dict(zip(AUDIT_METER_SUMS, n[7:], strict=True)))
        return out

    def ledger_pass(self, limit: int = 20) -> LedgerPass:
        """Return `ledger_totals`, `broken_ledger_rows(limit)` and `contributions_by_period`.

        One walk of the ledger instead of three (the audit's biggest reads).
        Where a row does not add up, a level's versions repeat (their order
        is then the database's choice), or a sum is not whole, the three
        queries run as they are instead, so what the audit reports of a
        damaged ledger is theirs.
        """
        limit = row_limit(limit)
        wrong, unsure = row_checks(self._AMOUNT_CAST, self._INEXACT,
                                   f"LAG(balance_after{self._AMOUNT_CAST}, 1, 0) OVER w",
                                   f"LAG(reserve_after{self._AMOUNT_CAST}, 1, 0) OVER w")
        # (not format: the bet's braces)
        sql = (_LEDGER_PASS.replace("{wrong}", wrong).replace("{unsure}", unsure)
               .replace("{untyped}", self._untyped()))
        sums: dict[str, list[int]] = {}
        periods: dict[str, dict[int, tuple[int, int]]] = {}
        unread_bets = untyped = 0
        for level, period, *values in self._exec(sql):
            n = [_whole(v) for v in values]
            *totals, contributions, overflow, unread, broken, dup, untyped_here = n
            # A sum that is not whole (REAL amounts in a ledger rebuilt without
            # STRICT) must not lose its fraction period by period, as int()
            # here would: the queries apart sum each level whole first. Nor can
            # a version that is not a number be taken the min or max of here.
            if broken or dup or n != values or not all(type(v) is int for v in n):
                return self._ledger_apart(limit)
            unread_bets += unread
            untyped += untyped_here
            if contributions:  # (a period of no bets is none of `contributions_by_period`)
                periods.setdefault(level, {})[int(period)] = (totals[_WAGERED], overflow)
            a = sums.get(level)
            if a is None:
                sums[level] = totals
                continue
            a[0] += totals[0]
            a[1], a[2] = min(a[1], totals[1]), max(a[2], totals[2])
            a[3] += totals[3]
            a[4] += totals[4]
            a[5], a[6] = min(a[5], totals[5]), min(a[6], totals[6])
            for i in range(7, len(a)):
                a[i] += totals[i]
        return LedgerPass({level: LedgerTotals(a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                               dict(zip(AUDIT_METER_SUMS, a[7:], strict=True)))
                           for level, a in sums.items()}, Shown(), periods,
                          self.unreadable_bets(limit, found=unread_bets) if unread_bets
                          else Shown(),
                          self.untyped_ledger_rows(limit, found=untyped) if untyped else Shown())

    def _ledger_apart(self, limit: int) -> LedgerPass:
        """Return what `ledger_pass` does from its three queries, each run as it is."""
        return LedgerPass(self.ledger_totals(), self.broken_ledger_rows(limit),
                          self.contributions_by_period(), self.unreadable_bets(limit),
                          self.untyped_ledger_rows(limit))

    def untyped_ledger_rows(self, limit: int = 20, *, found: int | None = None,
                            ) -> Shown[tuple[str, int, int, dict[str, object]]]:
        """Return (level, version_after, seq, cells) of rows holding what the engine never writes.

        At most `limit`, in (level, version) order, and how many more there
        are (`found`: how many in all, where the caller counted them already;
        else the query counts them, `_capped`); `cells`: each integer column
        of the row that holds no integer the engine writes, and what it holds
        (see `untyped_sql`).
        """
        sql = (f"SELECT level, version_after, seq, {', '.join(LEDGER_CELLS)}{{count}} "
               f"FROM ledger WHERE {self._untyped()} ORDER BY level, version_after, seq")
        return self._capped(sql, limit, found, lambda r: (
            r[0], _whole(r[1]), int(r[2]),
            untyped_cells(dict(zip(LEDGER_CELLS, r[3:], strict=True)))))

    def _capped(self, sql: str, limit: int, found: int | None,
                row: Callable[[tuple[Any, ...]], _R]) -> Shown[_R]:
        """Run `sql` for its first `limit` rows (`{count}`: where a column may count them all).

        `found`: how many rows there are in all, counted already; None: the
        query counts them itself, in the same scan (a window's COUNT, taken
        before the LIMIT), as its last column. With a `limit` of 0 that
        column comes in one row, read and not shown: `LIMIT 0` returns none
        to carry it, and every row was once counted as none.
        """
        limit = row_limit(limit)
        if found is not None:
            rows = self._exec(f"{sql.replace('{count}', '')} LIMIT {limit}")
            return Shown(map(row, rows), found - len(rows))
        rows = self._exec(f"{sql.replace('{count}', ', COUNT(*) OVER ()')} LIMIT {max(limit, 1)}")
        shown = rows[:limit]
        return Shown((row(r[:-1]) for r in shown), int(rows[0][-1]) - len(shown) if rows else 0)

    def _untyped(self) -> str:
        """Return `untyped_sql` for this database (see `_unkept_integers`, `_unkept_texts`)."""
        return untyped_sql(self._NOT_INTEGER, self._unkept_integers(), self._NOT_TEXT,
                           self._unkept_texts(), self._unkept_not_nulls())

    def _unkept_texts(self) -> tuple[str, ...]:
        """Return the columns of `LEDGER_TEXTS` the database no longer holds to text.

        This default: none (a backend whose columns keep their type: PostgreSQL's
        `text`, and a changed type is told by `type_problems`).
        """
        return ()

    def _unkept_not_nulls(self) -> tuple[str, ...]:
        """Return the columns of `ROW_TOLD_NULLS` whose NOT NULL the database no longer keeps.

        This default: all of them (each cell tested, as a backend that cannot tell must).
        """
        return ROW_TOLD_NULLS

    def _unkept_integers(self) -> tuple[str, ...]:
        """Return the columns of `LEDGER_INTEGERS` the database no longer holds to integers.

        Those whose type it does not enforce, or whose NOT NULL is gone.
        This default: all of them (each cell tested, as a backend that cannot tell must).
        """
        return LEDGER_INTEGERS

    def unreadable_bets(self, limit: int = 20, *, found: int | None = None,
                        ) -> Shown[tuple[str, int, int, object]]:
        """Return (level, version_after, seq, detail) of bet rows whose detail is no bet's.

        At most `limit`, in (level, version) order (see `UNREAD_BET`), and
        how many more (`found`: as `untyped_ledger_rows`').
        """
        sql = (f"SELECT level, version_after, seq, detail{{count}} FROM ledger "
               f"WHERE {UNREAD_BET} ORDER BY level, version_after")
        return self._capped(sql, limit, found, lambda r: (r[0], _whole(r[1]), int(r[2]), r[3]))

    def broken_ledger_rows(self, limit: int = 20) -> Shown[tuple[str, int, int]]:
        """Return (level, version_after, seq) of rows that do not add up: `limit`, the rest counted.

        A row whose arithmetic in SQL was not exact (SQLite turns an integer
        sum past 2**63 into a REAL: only forged amounts make one) is checked
        again exactly here, and told only if it does not add up then: in
        floating point a forged row could seem to add up, or a sound one not.
        So there the rows past `limit` are counted as they stream by (only a
        damaged ledger has any); where the arithmetic is exact, by the query.
        """
        limit = row_limit(limit)
        wrong, unsure = row_checks(self._AMOUNT_CAST, self._INEXACT, "prev_balance",
                                   "prev_reserve")
        sql = _BROKEN_ROWS.format(n=self._AMOUNT_CAST, wrong=wrong, unsure=unsure,
                                  count="{count}")
        if self._INEXACT is None:  # (every row found is one to tell: SQL counts them)
            return self._capped(sql, limit, None,
                                lambda r: (r[0], _whole(r[1]), int(r[2])))
        sql = sql.replace("{count}", "")
        out: Shown[tuple[str, int, int]] = Shown()
        for level, version, seq, inexact, *figures in self._stream(sql):
            if not inexact or not _adds_up_exactly(figures):
                if len(out) < limit:
                    out.append((level, _whole(version), int(seq)))
                else:
                    out.more += 1
        return out

    def contributions_by_period(self) -> dict[str, dict[int, tuple[int, int]]]:
        """Return, per level and rate period, (sum of bets, sum of overflow) of its bets.

        Period n runs from the level's n-th create or config row (by version)
        to the next; the rates of each are in that row's detail.
        """
        return self._contributions_by_period("SUM")

    def _contributions_by_period(self, total: str) -> dict[str, dict[int, tuple[int, int]]]:
        """`contributions_by_period`, its sums made by the aggregate function `total`."""
        out: dict[str, dict[int, tuple[int, int]]] = {}
        for level, period, bets, overflow in self._exec(
                _CONTRIBUTIONS_BY_PERIOD.replace("{total}", total)):
            # (NULL: every bet of the period has a NULL overflow, a ledger rebuilt
            # without NOT NULL: as SUM leaves out a NULL, and its rows are told.)
            out.setdefault(level, {})[int(period)] = (int(bets), _whole(overflow or 0))
        return out

    def recorded_results(self) -> Iterator[RecordedResult]:
        """Yield each recorded operation that has ledger rows, with what they say.

        Streamed where the backend can (there is one per caller-supplied op_id).
        """
        return self._recorded_results("SUM")

    def _recorded_results(self, total: str) -> Iterator[RecordedResult]:
        """`recorded_results`, its sums made by the aggregate function `total`."""
        sql = _RECORDED_RESULTS.format(n=self._AMOUNT_CAST, **self._RECORDED._asdict())
        rows = self._stream(sql.replace("SUM(", f"{total}("))
        for op_id, group in itertools.groupby(rows, key=operator.itemgetter(0)):
            levels: dict[str, LedgerFigures] = {}
            kinds: dict[str, frozenset[str]] = {}
            for r in group:
                version, balance, contributed, overflow, paid = map(_figure, r[6:11])
                credited = None if contributed is None or overflow is None else (
                    contributed - overflow)
                levels[r[4]] = LedgerFigures(version, balance, credited, paid)
                # NULL: every row of the group has a NULL kind (a ledger rebuilt
                # without NOT NULL), told as such by the audit.
                kinds[r[4]] = frozenset(("NULL",) if r[5] is None else r[5].split(","))
            yield RecordedResult(op_id, r[1], r[2], levels, kinds, r[3], r[11])

    def recorded_hits(self,
                      ) -> dict[str, list[tuple[str, int | None, int | None, int | None,
                                                str | None]]]:
        """Return, per recorded op_id, its hits: (level, version, paid, balance after, winner).

        In the ledger's order, which is the order of the bet's result. None: no
        number there (as in `LedgerFigures`).
        """
        out: dict[str, list[tuple[str, int | None, int | None, int | None, str | None]]] = {}
        rows = self._exec(self._of_kinds(_RECORDED_HITS))
        for op_id, level, version, paid, balance, who in rows:
            out.setdefault(op_id, []).append(
                (level, _figure(version), _figure(paid), _figure(balance), who))
        return out

    def recorded_details(self) -> dict[str, RecordedDetail]:
        """Return, per recorded win or config change, its ledger row's who and detail."""
        rows = self._exec(self._of_kinds(_RECORDED_DETAILS))
        return {op_id: RecordedDetail(level, kind, who, detail)
                for op_id, level, kind, who, detail in rows}

    def balances_at(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """Return the balance after each (level, version) that has a ledger row.

        None: no number there (as in `LedgerFigures`).
        """
        out: dict[tuple[str, int], int | None] = {}
        p = self._PARAM
        for start in range(0, len(keys), _BALANCES_CHUNK):
            chunk = keys[start:start + _BALANCES_CHUNK]
            values = ", ".join([f"({p}, {p})"] * len(chunk))
            sql = ("SELECT l.level, l.version_after, l.balance_after FROM ledger AS l "
                   f"JOIN (VALUES {values}) AS k ON l.level = k.column1 "
                   "AND l.version_after = k.column2")
            params = tuple(v for key in chunk for v in key)
            out.update(((level, int(v)), _figure(b))
                       for level, v, b in self._exec(sql, params))
        return out

    def split_hit_winners(self, limit: int = 20) -> Shown[str]:
        """Return op_ids whose hit rows name several winners (a bet has one player).

        At most `limit`, in op_id order, and how many more (counted by the same query).
        """
        return self._capped(self._of_kinds(_SPLIT_HIT_WINNERS), limit, None,
                            operator.itemgetter(0))

    def operation_ids_starting(self, prefixes: Iterable[str]) -> Iterator[str]:
        """Yield the recorded op_ids that start with one of `prefixes`, in no order.

        (Unordered: PostgreSQL would otherwise walk the whole primary key in
        order, filtering, instead of one scan.)
        """
        prefixes = list(prefixes)
        if not prefixes:
            return
        p = self._PARAM
        where = " OR ".join([f"substr(op_id, 1, {len(x)}) = {p}" for x in prefixes])
        for (op_id,) in self._stream(f"SELECT op_id FROM operations WHERE {where}",
                                     tuple(prefixes)):
            yield op_id

    def operation_times(self, op_ids: list[str]) -> dict[str, object]:
        """Return the recorded time of those `op_ids` that have a record, raw (for the audit)."""
        out: dict[str, object] = {}
        p = self._PARAM
        for start in range(0, len(op_ids), _BALANCES_CHUNK):
            chunk = op_ids[start:start + _BALANCES_CHUNK]
            out.update(self._exec(f"SELECT op_id, at_ms FROM operations WHERE op_id IN "
                                  f"({', '.join([p] * len(chunk))})", tuple(chunk)))
        return out

    def operation_count(self) -> int:
        """Return how many operations are recorded (rows of the operations table)."""
        return int(self._exec("SELECT COUNT(*) FROM operations")[0][0])

    def operation_ids_without_ledger(self) -> list[str]:
        """Return op_ids recorded as applied that have no ledger row."""
        return [r[0] for r in self._exec(OPERATIONS_WITHOUT_LEDGER)]

    @abstractmethod
    def integrity_check(self) -> str:
        """Return the database's own consistency verdict ('ok' when sound)."""

    def unsummable_columns(self) -> list[str]:
        """Return the engine's columns the database cannot read as the audit does ("t.c is type").

        None on SQLite, whose SUM reads anything (text as 0; each such cell is
        told against its row). On PostgreSQL a number column whose type was
        changed to text (or another that is no number) makes every sum of the
        audit an error, and a text column changed to bytea (or another that is
        no text) every query that reads it as text: it is told instead of them.
        """
        return []

