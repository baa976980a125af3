"""verify(): prove from the ledger alone that every level's books balance.

Checks, per level: versions 1..N with no gap; each row's balance and reserve
equal the previous row's plus its deltas; each row's deltas equal the sum of
its parts (contributed, overflow, seed funding, payouts, adjustments,
transfers); every meter equals the sum of its ledger column (`wagered`: of the
bets the rows record, each bet row's detail one the engine writes); the pool
and the reserve satisfy the identities in `domain.Meters`; the carried
fractions are what the ledger's bets, rates and retirements leave, and each
retirement's two rows agree (see `_audit_fractions`); the settings, the changes
waiting for a reset and the status are what the create, config, reset and
status rows leave, and the must-hit-by trigger lies within the settings (see
`_audit_config`). Every recorded op_id has ledger rows of the kinds its
operation writes, and its stored result (what a replay returns) can be rebuilt
and repeats what they say (see `_audit_results`); a recorded bet without ledger
rows (it qualified for no level) is one a replay can return, showing each level
as the ledger had it; every bet, with a stored result or not, has one winner
for all of its hits; no record has an op_id the engine generates for itself
(`auto-...`, `create:<level>`), which it never records; every recorded
request's fingerprint has the shape the engine writes (see `_Fingerprints`),
and no level's row holds a lock holder (set and cleared inside one transaction,
it is never committed); every ledger row holds an integer in each integer
column the audit checks (`LEDGER_INTEGERS`: a table rebuilt without STRICT
takes anything), text or NULL in each text column (`LEDGER_TEXTS`) and no
time before 1970 (see `untyped_sql`), and every recorded operation a time the
engine writes (`_Times`). The database's own integrity check is ok. Of each
sort of problem the first `_SHOWN` are told one by one and the rest counted
("... and N more"), by the query that found them. The queries
live in the store (`Store.ledger_totals`, `Store.contributions_by_period`,
`Store.recorded_results`...), so the audit runs unchanged on every backend,
inside one read snapshot; the per-row sums, the balance chain and the bets per
rate period come from one walk of the ledger (`Store.ledger_pass`), and the
recorded operations without ledger rows are looked for only when counting those
with rows, as they stream by, shows some missing.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

from jackpot._audit_config import CONFIG_KINDS, check_config
from jackpot._audit_fractions import Fractions, check_retirements
from jackpot._audit_results import check_results, units_of, unreadable
from jackpot._plural import counted
from jackpot.domain import LevelState
from jackpot.money import RATE_SCALE, from_units
from jackpot.requests import RESERVED_OP_ID_PREFIXES
from jackpot.results import VerifyReport
from jackpot.storage import LedgerRow, LedgerTotals, RecordedResult, Store
from jackpot.storage.base import LEDGER_TEXTS

__all__ = ["audit"]

_T = TypeVar("_T")
_SHOWN = 20  # problems of one sort told one by one; the rest counted
_COUNTS = frozenset({"bets", "wins", "hits"})  # the meters that count; the others are amounts
_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)
"""A request's fingerprint as the engine writes it (`service.fingerprint`: SHA-256, hex)."""
_GENERATED = re.compile(r"auto-(?:[0-9a-f]{16}-[0-9a-f]{12}|[0-9a-f]{32})", re.ASCII)
"""The op_ids the engine generates (and never records): as now, and before d1cd417.
Callers could use other `auto-...` and `create:...` op_ids before 2ac3f92 reserved
the prefixes, and those were recorded: only the engine's own shapes are reported."""


def audit(store: Store) -> VerifyReport:
    """Recompute every level from the ledger and list every difference."""
    with store.read():
        # (PostgreSQL: a number column changed to text fails every sum with an error,
        # and a text column changed to bytea every query that reads it as text.)
        unsummable = store.unsummable_columns()
        if unsummable:
            cannot = (f"the ledger and levels cannot be summed: {'; '.join(unsummable)} (a "
                      "number column changed to a type that is no number, or a text column "
                      "to one that is no text); nothing else was checked")
            return VerifyReport(ok=False, problems=[
                f"integrity_check: {store.integrity_check()}", cannot], levels=0, ledger_rows=0)
    return _audit(store)


def _audit(store: Store) -> VerifyReport:
    problems: list[str] = []
    with store.read():
        read_levels = _unreadable(problems, "levels", None, store.load_levels)
        levels = read_levels or {}
        totals, bad_rows, periods, unread_bets, untyped = store.ledger_pass(limit=_SHOWN)
        split = store.split_hit_winners(limit=_SHOWN)
        reserved = sorted(op for op in store.operation_ids_starting(RESERVED_OP_ID_PREFIXES)
                          if _GENERATED.fullmatch(op) or (
                              op.startswith("create:") and op[len("create:"):] in levels))
        # (A row whose detail is not JSON is kept: told by the checks, once.)
        transfers = _unreadable(problems, "retirement rows", list[LedgerRow](),
                                lambda: store.ledger_of_kinds(("retire", "transfer_in"),
                                                              keep_unread=True))
        fractions = _unreadable(problems, "rate and retirement rows", None, lambda: Fractions(
            store.ledger_of_kinds(("create", "config")), transfers,
            periods))
        recorded = _Recorded(store)
        results = _unreadable(problems, "stored results", list[str](), lambda: check_results(
            itertools.chain(recorded, recorded.empty_bets()), store.recorded_hits(),
            store.recorded_details(),
            store.balances_at))
        orphans = recorded.orphans()
        # Replayed as the rows stream by: a level's wins and hits may be millions.
        forged = {name: _not_numbers(s) for name, s in levels.items()}
        configs = {name: _unreadable(problems, f"{name}: settings rows", None, functools.partial(
            _check_config, store, s)) for name, s in levels.items() if not forged[name]}
        integrity = store.integrity_check()
    rows = 0
    for name, s in levels.items():
        problems.extend(forged[name])
        problems.extend(_level_time(s))
        if s.lock_holder is not None:  # (a committed win or config change left it NULL)
            problems.append(f"{name}: its lock holder in the levels table is "
                            f"{_shown(s.lock_holder)!r}; the engine clears it in the "
                            "transaction that sets it, so a committed row holds none")
        if name not in totals:
            problems.append(f"{name}: no ledger rows")
            continue
        rows += totals[name].rows
        if forged[name]:
            continue  # its figures cannot be compared with the ledger's
        problems.extend(_check_level(s, totals[name]))
        problems.extend(configs[name] or [])
        if fractions is not None:
            problems.extend(_unreadable(problems, f"{name}: carried fractions", list[str](),
                                        functools.partial(fractions.check, s, totals[name])))
    problems.extend(f"{name}: no such level, yet {counted(totals[name].rows, 'ledger row')}"
                    for name in sorted(totals.keys() - levels.keys(), key=_order)
                    if read_levels is not None)
    problems.extend([*(f"{lvl}: ledger row {seq} (version {v}) does not add up"
                       for lvl, v, seq in bad_rows),
                     *_more(bad_rows.more, "ledger row that does not add up",
                            "ledger rows that do not add up")])
    problems.extend([*(f"{lvl}: ledger row {seq} (version {v}) holds what the engine never "
                       f"writes: {_untyped(cells)}" for lvl, v, seq, cells in untyped),
                     *_more(untyped.more, "ledger row holding what the engine never writes",
                            "ledger rows holding what the engine never writes")])
    problems.extend([*(f"{lvl}: ledger row {seq} (version {v}) cannot be read as the engine "
                       f"writes it: its detail {_shown(detail)!r} is no bet's (a damaged or "
                       "tampered database; read as no bet)"
                       for lvl, v, seq, detail in unread_bets),
                     *_more(unread_bets.more, "bet row whose detail is no bet's",
                            "bet rows whose detail is no bet's")])
    if fractions is not None:
        problems.extend(fractions.problems)
    problems.extend(_unreadable(problems, "retirement rows", list[str](),
                                lambda: check_retirements(transfers,
                                                          told=fractions is not None)))
    problems.extend(f"operation {op!r} recorded without ledger rows"
                    + (" (its stored result cannot be read)" if unreadable else "")
                    for op, unreadable in orphans[:_SHOWN])
    problems.extend(_more(len(orphans) - _SHOWN, "operation recorded without ledger rows",
                          "operations recorded without ledger rows"))
    problems.extend(results)
    problems.extend(recorded.fingerprints.problems())
    problems.extend(recorded.times.problems())
    own = ", ".join(f"{prefix}..." for prefix in RESERVED_OP_ID_PREFIXES)
    problems.extend(f"operation {op!r} recorded under an op_id the engine keeps for its own "
                    f"({own}): it never records one" for op in reserved[:_SHOWN])
    problems.extend(_more(len(reserved) - _SHOWN, "operation recorded under the engine's own "
                          "op_ids", "operations recorded under the engine's own op_ids"))
    problems.extend([*(f"operation {op!r}: its hit rows name different winners: a bet has "
                       "one player" for op in split),
                     *_more(split.more, "operation whose hit rows name different winners",
                            "operations whose hit rows name different winners")])
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    return VerifyReport(ok=not problems, problems=problems, levels=len(levels),
                        ledger_rows=rows)


def _more(count: int, one: str, many: str) -> list[str]:
    """Say how many more problems of a sort there are past those told, if any.

    `one` words one of them, `many` several: their noun comes first
    ('operation recorded without ledger rows'), so one more is told as one
    ('... and 1 more operation ...', not '1 more operations').
    """
    return [f"... and {counted(count, f'more {one}', f'more {many}')}"] if count > 0 else []


def _order(name: object) -> tuple[bool, str]:
    """Sort level names and op_ids as text, and after them what a forged row holds instead.

    A table rebuilt without STRICT holds a BLOB or a NULL where the engine
    writes text: told as such (by its repr), not a crash of the sort.
    """
    return (False, name) if isinstance(name, str) else (True, repr(name))


def _check_config(store: Store, level: LevelState) -> list[str]:
    """`check_config` on the level's settings rows, streamed (inside the audit's snapshot)."""
    rows = store.ledger_stream(level=level.name, kinds=CONFIG_KINDS, keep_unread=True)
    try:
        return check_config(level, rows)
    finally:
        rows.close()  # a row check_config refused: end the query (PostgreSQL: its cursor)


def _unreadable(problems: list[str], what: str, instead: _T, read: Callable[[], _T]) -> _T:
    """Return `read()`; data the engine never writes (a tampered file) is a problem, not a crash.

    Ledger details and stored results are JSON the engine wrote; one that is
    not (not JSON, the wrong shape) makes the check that reads it fail. That
    is reported as what it is, and `instead` stands in for what was not read.
    """
    try:
        return read()
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as e:
        problems.append(f"{what} cannot be read as the engine writes them "
                        f"({type(e).__name__}: {e})")
        return instead


def _amount(units: float) -> object:
    """Show units as an amount; a REAL's (a table rebuilt without STRICT) as about so much.

    A sum with a REAL in it is made in floating point, inexact, and a whole
    REAL as units in full can be 300 digits (1e300): shown short, and as
    what it is; the REAL itself is told against its row. Its digits are
    the REAL's own (1.5 units: about 0.0000015), in full up to 10**21 units.
    """
    if isinstance(units, int):
        return from_units(units)
    if not math.isfinite(units):
        return Decimal(units)
    shown = Decimal(repr(units)).scaleb(-6).normalize()
    return f"about {shown:f}" if abs(units) < _SHOWN_IN_FULL else f"about {shown:e}"


_SHOWN_IN_FULL = 1e21


def _untyped(cells: dict[str, object]) -> str:
    """Say what a ledger row holds in its cells instead (`Store.untyped_ledger_rows`)."""
    return "; ".join(f"its {column} is {_shown(value)!r}, not text" if column in LEDGER_TEXTS
                     else f"its {column} is {value}, a time before 1970" if type(value) is int
                     else f"its {column} is {_shown(value)!r}, not an integer"
                     for column, value in cells.items())


def _shown(value: object) -> object:
    """Return a forged value as a problem shows it: text or bytes cut short, else as is."""
    return value[:80] if isinstance(value, (str, bytes)) else value


class _Fingerprints:
    """The recorded requests' fingerprints the engine never writes: the first `_SHOWN` told.

    A retry compares its request's fingerprint with the stored one; a stored
    one of another shape never matches, so the retry is refused as a
    conflict instead of replayed. (Whether it is the digest of the very
    request cannot be told: the request is not stored, only its result.)
    """

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.wrong = 0

    def check(self, op_id: str, fingerprint: object) -> None:
        if isinstance(fingerprint, str) and _DIGEST.fullmatch(fingerprint):
            return
        self.wrong += 1
        if self.wrong <= _SHOWN:
            self.shown.append(f"operation {op_id!r}: its request fingerprint "
                              f"{_shown(fingerprint)!r} is not what the engine writes (64 "
                              "hexadecimal digits): a retry of its request would be refused "
                              "as a conflict")

    def problems(self) -> list[str]:
        return [*self.shown, *_more(self.wrong - _SHOWN,
                                    "request fingerprint the engine never writes",
                                    "request fingerprints the engine never writes")]


class _Times:
    """The recorded operations' times the engine never writes: the first `_SHOWN` told.

    The engine writes the host's clock, ms since 1970 (an integer); an
    operations table rebuilt without STRICT takes anything, and a STRICT one
    a time before 1970. Nothing else reads it: only this tells it.
    """

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.wrong = 0

    def check(self, op_id: str, at_ms: object) -> None:
        if type(at_ms) is int and at_ms >= 0:
            return
        self.wrong += 1
        if self.wrong <= _SHOWN:
            what = ("a time before 1970" if type(at_ms) is int else "not an integer")
            self.shown.append(f"operation {op_id!r}: its time in the operations table is "
                              f"{_shown(at_ms)!r}, {what}")

    def problems(self) -> list[str]:
        return [*self.shown, *_more(self.wrong - _SHOWN,
                                    "operation whose time the engine never writes",
                                    "operations whose time the engine never writes")]


class _Recorded:
    """The recorded operations with ledger rows, then those without (`_without_ledger`).

    Finding the operations without ledger rows reads every ledger row's op_id
    (a set difference); when every recorded operation came with ledger rows,
    as counting them as they stream by shows, there are none to find. Each
    one's fingerprint is checked as it goes by (see `_Fingerprints`).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen = 0  # distinct op_ids yielded (each once: they come in op_id order)
        self.done = False
        self.without: tuple[list[tuple[str, bool]], list[RecordedResult]] | None = None
        self.fingerprints = _Fingerprints()
        self.times = _Times()

    def __iter__(self) -> Iterator[RecordedResult]:
        last = None
        for record in self.store.recorded_results():
            if record.op_id != last:
                self.seen += 1
                last = record.op_id
                self.fingerprints.check(record.op_id, record.fingerprint)
                at_ms = record.at_ms
                if type(at_ms) is not int or at_ms < 0:  # (not a call per record: millions)
                    self.times.check(record.op_id, at_ms)
            yield record
        self.done = True

    def empty_bets(self) -> Iterator[RecordedResult]:
        """Yield the recorded bets without ledger rows (after the others, as they stream)."""
        yield from self._without()[1]

    def orphans(self) -> list[tuple[str, bool]]:
        """Return the other recorded operations without ledger rows (see `_without_ledger`)."""
        return self._without()[0]

    def _without(self) -> tuple[list[tuple[str, bool]], list[RecordedResult]]:
        if self.without is None:
            if self.done and self.seen == self.store.operation_count():
                self.without = [], []
            else:
                self.without = _without_ledger(self.store, self.fingerprints, self.times)
        return self.without


def _without_ledger(store: Store, fingerprints: _Fingerprints, times: _Times,
                    ) -> tuple[list[tuple[str, bool]], list[RecordedResult]]:
    """Split the recorded operations without ledger rows: problems, and empty bets.

    A problem is told with whether its stored result cannot be read (nor can
    that of a record under a NULL op_id, which a table rebuilt without NOT
    NULL holds and no lookup finds: told, not left out). An empty bet's
    result still shows each level's balance and version as it stood:
    returned as a record without ledger rows, for `check_results` to hold
    them to the ledger like any skipped level's. Each found record's
    fingerprint goes to `fingerprints`, and its time to `times`.
    """
    orphans: list[tuple[str, bool]] = []
    empty_bets: list[RecordedResult] = []
    op_ids = store.operation_ids_without_ledger()
    found = store.find_operations(op_ids)
    at_ms = store.operation_times(op_ids)
    for op in sorted(op_ids, key=_order):
        record = found.get(op)  # None: a NULL op_id (forged), which no lookup finds
        if record is not None:
            fingerprints.check(op, record.fingerprint)
            times.check(op, at_ms.get(op))
        if (record is None or record.result is None
                or unreadable(record.kind, op, record.result) is not None):
            orphans.append((op, True))
        elif _is_empty_bet(record.kind, record.result):
            empty_bets.append(RecordedResult(op, record.kind, json.dumps(record.result), {},
                                             {}, record.fingerprint))
        else:
            orphans.append((op, False))
    return orphans, empty_bets


def _is_empty_bet(kind: str, result: dict[str, Any] | None) -> bool:
    """Say whether a recorded operation is a bet that qualified for no level.

    Such a bet changes nothing (no ledger rows) but keeps its op_id, so that a
    retry replays it; any other operation without ledger rows is a problem.
    """
    if result is None:
        return False
    contributions = result.get("contributions")
    return (kind == "contribute" and not result.get("hits") and isinstance(contributions, dict)
            and all(units_of(v) == 0 for v in contributions.values()))


def _not_numbers(s: LevelState) -> list[str]:
    """List the figures of a level's row that are not integers (NULL only where it may be).

    A levels table rebuilt without STRICT can hold text, a BLOB, a REAL or a
    NULL where the engine writes an integer; the checks of the level would
    fail on it (comparing it, or showing it as an amount), or compare a REAL
    (`UPDATE levels SET amount = 1.5e6`) with the ledger as if the engine
    could have written it, so it is told instead, as a ledger cell is.
    """
    c = s.config
    figures: dict[str, tuple[object, bool]] = {
        "amount": (s.amount, False), "reserve": (s.reserve, False), "carry": (s.carry, False),
        "reserve carry": (s.reserve_carry, False), "version": (s.version, False),
        "must-hit-by trigger": (s.trigger, True), "setting seed": (c.seed, False),
        "setting rate": (c.rate, False), "setting cap": (c.cap, True),
        "setting reserve_rate": (c.reserve_rate, False), "setting min_bet": (c.min_bet, True),
        "setting max_contribution": (c.max_contribution, True),
        "setting must_hit_by": (c.must_hit_by, True),
        **{f"meter {meter}": (value, False) for meter, value in s.meters._asdict().items()}}
    return [f"{s.name}: its {what} in the levels table is {value!r}, not "
            f"{'an integer' if isinstance(value, float) else 'a number'}"
            for what, (value, nullable) in figures.items()
            if not (type(value) is int or (nullable and value is None))]


def _level_time(s: LevelState) -> list[str]:
    """Tell a level's last-modified time if the engine never writes it (see `_Times`).

    The engine writes the host's clock, ms since 1970 (an integer), with each
    change; nothing compares it with the ledger, so only this tells one that
    is not (a levels table rebuilt without STRICT takes anything, and a
    STRICT one a time before 1970). The level's figures are still checked.
    """
    at = s.last_modified_at
    if type(at) is int and at >= 0:
        return []
    what = "a time before 1970" if type(at) is int else "not an integer"
    return [f"{s.name}: its last-modified time in the levels table is {_shown(at)!r}, {what}"]


def _check_level(s: LevelState, t: LedgerTotals) -> list[str]:
    """Compare one level's row with what its ledger rows add up to.

    A total that is None is no number: SQL's sum of nothing but NULLs, or of a
    REAL infinity and its negative (a ledger rebuilt without STRICT and NOT
    NULL). Its rows are told, as ones that do not add up; it is not compared.
    """
    name, m = s.name, s.meters
    problems = []
    if (t.min_version, t.max_version, t.rows) != (1, s.version, s.version):
        problems.append(f"{name}: ledger versions {t.min_version}..{t.max_version} in "
                        f"{counted(t.rows, 'row')}, "
                        f"level is at version {s.version} (expected 1..{s.version})")
    if t.delta is not None and t.delta != s.amount:
        problems.append(f"{name}: ledger sums to {_amount(t.delta)}, "
                        f"level holds {_amount(s.amount)}")
    if t.reserve_delta is not None and t.reserve_delta != s.reserve:
        problems.append(f"{name}: ledger reserve sums to {_amount(t.reserve_delta)}, "
                        f"level holds {_amount(s.reserve)}")
    if any(isinstance(v, (int, float)) and v < 0  # (a MIN of text: no number, told by its row)
           for v in (t.min_balance, t.min_reserve, s.amount, s.reserve)):
        problems.append(f"{name}: a balance went negative")
    if not (0 <= s.carry < RATE_SCALE and 0 <= s.reserve_carry < RATE_SCALE):
        problems.append(f"{name}: a carried fraction is out of range")
    for meter, value in t.meters.items():
        if value is not None and getattr(m, meter) != value:
            shown = str if meter in _COUNTS else _amount  # counts, else amounts
            problems.append(f"{name}: meter {meter} is {shown(getattr(m, meter))}, "
                            f"ledger says {shown(value)}")
    pool = (m.house_funded + m.reserve_funded + m.contributed - m.overflow - m.won
            + m.adjusted + m.transferred)
    if pool != s.amount:
        problems.append(f"{name}: opening + contributions + seed funding + adjustments "
                        f"- wins - overflow = {_amount(pool)}, pool holds "
                        f"{_amount(s.amount)}")
    if m.reserve_in - m.reserve_funded + m.reserve_transferred != s.reserve:
        problems.append(f"{name}: reserve meters do not add up to the reserve")
    return problems
