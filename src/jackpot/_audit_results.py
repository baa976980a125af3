"""The audit of stored first results: a replay must repeat what the ledger says.

A retried op_id gets its stored result back, not a fresh one, so a stored
result that differs from the ledger would be paid out or shown as if true.
For each recorded operation with ledger rows, its result must name exactly
the levels its rows changed (a bet may also name levels it did not qualify
for, with a contribution of 0), and repeat, per level, the version and
balance after its last row there, what it credited (bets) or paid (wins,
and each must-hit-by hit of a bet); a win's winner and reset, and a config
change's fields before, after and pending, as its ledger row records them;
an operator action's own action and the level it acted on; and for a level
a bet skipped (below its min_bet), the balance the ledger had at the version
the result shows. A bet names the same levels in its contributions,
balances and versions. Its rows must be of the kinds an operation of its
recorded kind writes, and the result must name its own op_id and be
readable as a replay reads it. A bet that qualified for no level (no ledger
rows) comes here as a record without levels: all of it is skipped levels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jackpot._plural import counted
from jackpot.domain import validate_name
from jackpot.errors import ValidationError
from jackpot.money import SCALE, from_units, parse_amount
from jackpot.results import AdminResult, ConfigResult, Contribution, Win
from jackpot.storage import LedgerFigures, RecordedDetail, RecordedResult

__all__ = ["check_results", "units_of", "unreadable"]

_SHOWN = 20
_SKIPPED_CHUNK = 5000  # skipped levels' views looked up per batch of queries
_STORED = re.compile(r"([0-9]{1,12})\.([0-9]{6})", re.ASCII)  # as `from_units` writes them
_ADMIN = ("suspend", "resume", "adjust", "retire")
_MAX_VERSION = 2**63 - 1  # a version is a 64-bit integer in both backends
_WRITES = {"contribute": frozenset({"contribute", "hit"}), "win": frozenset({"win"}),
           "config": frozenset({"config"}), "suspend": frozenset({"suspend"}),
           "resume": frozenset({"resume"}), "adjust": frozenset({"adjust"}),
           "retire": frozenset({"retire", "transfer_in"})}
"""The kinds of ledger rows an operation of each recorded kind writes."""
_REPLAY: dict[str, Callable[[dict[str, Any]], object]] = {
    "contribute": lambda r: Contribution.from_record(r, replayed=True),
    "win": lambda r: Win.from_record(r, replayed=True),
    "config": lambda r: ConfigResult.from_record(r, replayed=True),
    **dict.fromkeys(_ADMIN, lambda r: AdminResult.from_record(r, replayed=True))}
"""How a replay of each kind reads its stored result (as `requests` builds them)."""
Hit = tuple[str, int | None, int | None, int | None, str | None]
"""A must-hit-by hit as the ledger has it: (level, version, paid, balance after, winner).

None: no number there (see `LedgerFigures`), which a stored result is not compared with."""
Hits = Mapping[str, list[Hit]]
BalancesAt = Callable[[list[tuple[str, int]]], dict[tuple[str, int], int | None]]
"""`Store.balances_at`: the balance after each (level, version); None: a NULL (not compared)."""


def units_of(text: object) -> int | None:
    """Return a stored amount ('12.500000') in units, or None if it is not one."""
    if not isinstance(text, str):
        return None
    if (m := _STORED.fullmatch(text)) is not None:  # how results store them: fast
        return int(m[1]) * SCALE + int(m[2])
    try:
        return parse_amount(text, name="stored amount", allow_zero=True)
    except ValidationError:
        return None


def check_results(records: Iterable[RecordedResult], hits: Hits,
                  details: Mapping[str, RecordedDetail],
                  balances_at: BalancesAt,
                  ) -> list[str]:
    """Return a problem per stored result that the ledger contradicts (the first 20).

    `balances_at` looks up the balance at (level, version) pairs: what a bet
    shows for a level it skipped (below min_bet, no ledger row of its own)
    must be that level as the ledger had it at the version shown. Those are
    checked in chunks, so memory stays bounded on any ledger.
    """
    found = _Found()
    skipped: list[Skipped] = []
    for record in records:
        problem = _check(record, hits.get(record.op_id, []), details.get(record.op_id),
                         skipped)
        if problem is not None:
            found.add(record.op_id, problem)
        if len(skipped) >= _SKIPPED_CHUNK:
            _check_skipped(skipped, balances_at, found)
    _check_skipped(skipped, balances_at, found)
    return found.problems()


Skipped = tuple[str, str, int, int | None, str]
"""A bet's view of a level it skipped: (op_id, level, version, balance in units, as shown)."""


class _Found:
    """The problems found, the first `_SHOWN` of them told, the rest counted."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.wrong = 0

    def add(self, op_id: str, problem: str) -> None:
        self.wrong += 1
        if self.wrong <= _SHOWN:
            self.shown.append(f"operation {op_id!r}: {problem}")

    def problems(self) -> list[str]:
        if self.wrong > _SHOWN:
            more = counted(self.wrong - _SHOWN, "more stored result", "more stored results")
            return [*self.shown, f"... and {more} the ledger contradicts"]
        return self.shown


def _check_skipped(skipped: list[Skipped],
                   balances_at: BalancesAt,
                   found: _Found) -> None:
    held = balances_at(sorted({(level, version) for _, level, version, _, _ in skipped}))
    for op_id, level, version, balance, shown in skipped:
        if (level, version) not in held:
            found.add(op_id, f"its stored result shows {level} at version {version}, "
                             "which the ledger never had")
            continue
        at = held[level, version]
        if at is not None and balance != at:  # (None: a NULL, told by its row)
            found.add(op_id, f"its stored result says {level} balance {shown} at version "
                             f"{version}, the ledger {from_units(at)}")
    skipped.clear()


def unreadable(kind: str, op_id: str, r: dict[str, Any]) -> str | None:
    """Say why a replay could not return `r` as the first result of `op_id`, or None.

    A replay rebuilds the result from its stored form; one it cannot rebuild,
    or one that names another op_id (its own or a hit's), is not what the
    engine wrote.
    """
    replay = _REPLAY.get(kind)
    if replay is None:
        return f"its stored result is of an unknown kind {kind!r}"
    try:
        replay(r)
    except Exception as e:  # noqa: BLE001 - whatever stops a replay, told as what it is
        return f"its stored result cannot be read as a replay reads it ({type(e).__name__}: {e})"
    named = [r["op_id"], *(h["op_id"] for h in r["hits"])] if kind == "contribute" else [
        r["op_id"]]
    if any(n != op_id for n in named):
        return f"its stored result names op_id {next(n for n in named if n != op_id)!r}"
    return None


def _check(record: RecordedResult, hits: list[Hit],
           detail: RecordedDetail | None, skipped: list[Skipped]) -> str | None:
    try:
        r = json.loads(record.result)
        if not isinstance(r, dict):
            return "its stored result is unreadable"
        return unreadable(record.kind, record.op_id, r) or _kinds(record) or _repeats(
            record, r, hits, detail, skipped)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return "its stored result is unreadable"


def _repeats(record: RecordedResult, r: dict[str, Any], hits: list[Hit],
             detail: RecordedDetail | None, skipped: list[Skipped]) -> str | None:
    """Compare what a readable stored result says with what the ledger says."""
    if record.kind == "win":
        return _same_levels(record, {r["group"]}) or _figures(
            record.levels[r["group"]], r["group"], version=r["version"],
            balance=r["balance"], paid=r["amount"]) or _win_detail(r, detail)
    if record.kind == "config":
        return _same_levels(record, {r["group"]}) or _figures(
            record.levels[r["group"]], r["group"], version=r["version"]) or _said(
            r, detail, "config", ("before", "after", "pending"))
    if record.kind in _ADMIN:
        return _same_levels(record, set(r["versions"]) | set(r["balances"])) or next(
            (p for level, f in record.levels.items()
             if (p := _figures(f, level, version=r["versions"][level],
                               balance=r["balances"][level])) is not None), None) or _acted(
            record, r)
    return _check_bet(record, r, hits, skipped)  # (`unreadable` refused any other kind)


def _acted(record: RecordedResult, r: dict[str, Any]) -> str | None:
    """Hold an operator action's result to its own action and the level it acted on.

    That level is its only one; a retirement's is the one with the 'retire' row
    (the other has the 'transfer_in').
    """
    if r["action"] != record.kind:
        return f"its stored result says action {r['action']!r}, the operation is {record.kind!r}"
    acted = sorted(level for level, kinds in record.level_kinds.items()
                   if record.kind in kinds)
    if acted != [r["group"]]:
        return (f"its stored result says it acted on {r['group']!r}, its {record.kind} "
                f"row is of {', '.join(acted) or 'no level'}")
    return None


def _check_bet(record: RecordedResult, r: dict[str, Any],
               hits: list[Hit], skipped: list[Skipped]) -> str | None:
    contributions = r["contributions"]
    if not contributions:  # (one the engine would refuse: no level takes bets)
        return "its stored result names no level: a bet no level takes is refused"
    if not record.levels.keys() <= contributions.keys():
        return _same_levels(record, set(contributions))
    seen: list[Skipped] = []
    for level, given in contributions.items():
        if (p := _bet_level(record, r, level, given, seen)) is not None:
            return p
    if not contributions.keys() == r["balances"].keys() == r["versions"].keys():
        return (f"its stored result names levels {', '.join(sorted(contributions))} in "
                f"contributions, {', '.join(sorted(r['balances']))} in balances and "
                f"{', '.join(sorted(r['versions']))} in versions: a bet shows each level "
                "it names in all three")
    if (p := _check_hits(r["hits"], hits)) is not None:
        return p
    skipped.extend(seen)
    return None


def _bet_level(record: RecordedResult, r: dict[str, Any], level: str, given: object,
               seen: list[Skipped]) -> str | None:
    """Check what a bet's result says of one level; a skipped one is kept in `seen`."""
    f = record.levels.get(level)
    if f is not None:
        return _figures(f, level, version=r["versions"][level], balance=r["balances"][level],
                        credited=given)
    if units_of(given) != 0:
        return f"its stored result says {level} got {given}, the ledger has no row of it there"
    if not _is_name(level):  # (not looked up: it could not even bind on PostgreSQL)
        return f"its stored result names {level[:80]!r}, which is no level name"
    # Skipped: checked against the ledger later, in a chunk.
    version, shown = _version(r["versions"][level]), r["balances"][level]
    seen.append((record.op_id, level, version, units_of(shown), str(shown)))
    return None


def _check_hits(given: list[dict[str, Any]], hits: list[Hit]) -> str | None:
    """Compare a bet's stored hits with the ledger's: the same hits, one winner."""
    winners = [h["winner"] for h in given]
    if any(w != winners[0] for w in winners):  # (a list: forged winners may be unhashable)
        return (f"its stored result gives its hits different winners {winners!r}: "
                "a bet has one player")
    for h in given:
        if (h["reset"], h["hit"]) != (True, True):
            return (f"its stored result lists a hit of {h['group']} with reset "
                    f"{h['reset']!r}, hit {h['hit']!r}: a must-hit-by hit resets the "
                    "level and is a hit")
    # In order: a replay must return them as the first call did, in the ledger's order.
    stored = [(h["group"], _version(h["version"]), units_of(h["amount"]),
               units_of(h["balance"]), h["winner"]) for h in given]
    if len(stored) != len(hits) or not all(_same_hit(s, h)
                                           for s, h in zip(stored, hits, strict=True)):
        return f"its stored result lists hits {_hits(stored)}, the ledger has {_hits(hits)}"
    return None


def _same_hit(stored: tuple[object, ...], hit: Hit) -> bool:
    """Whether a stored hit is the ledger's; no number there (None) is not compared."""
    return all((held is None and i in (1, 2, 3)) or given == held
               for i, (given, held) in enumerate(zip(stored, hit, strict=True)))


def _win_detail(r: dict[str, Any], detail: RecordedDetail | None) -> str | None:
    if detail is None or detail.kind != "win":
        return "its ledger has no win row for it"
    if r["winner"] != detail.who:
        return (f"its stored result says the winner is {r['winner']!r}, "
                f"the ledger {detail.who!r}")
    if r["hit"] is not False:
        return f"its stored result says hit {r['hit']!r}: a win asked for is not a hit"
    return _said(r, detail, "win", ("reset",))


def _said(r: dict[str, Any], detail: RecordedDetail | None, kind: str,
          keys: tuple[str, ...]) -> str | None:
    """Compare the result's `keys` with the ledger row's detail of the same names."""
    if detail is None or detail.kind != kind:
        return f"its ledger has no {kind} row for it"
    held = json.loads(detail.detail or "null")
    for key in keys:
        if r[key] != held[key]:
            return (f"its stored result says {key} {r[key]!r}, "
                    f"the ledger {held[key]!r}")
    return None


def _is_name(level: str) -> bool:
    try:
        validate_name(level)
    except ValidationError:
        return False
    return True


def _version(value: object) -> int:
    if type(value) is not int:  # not bool, not a string of digits: not what the engine writes
        msg = f"a version must be an integer, not {value!r}"
        raise TypeError(msg)
    if not 1 <= value <= _MAX_VERSION:  # (it is looked up in the ledger: it must bind)
        msg = f"a version must be between 1 and {_MAX_VERSION}, not {value}"
        raise ValueError(msg)
    return value


def _kinds(record: RecordedResult) -> str | None:
    """Hold the record's ledger rows to the kinds an operation of its kind writes."""
    writes = _WRITES[record.kind]
    if record.kinds <= writes:
        return None
    return (f"its ledger rows are of kinds {', '.join(sorted(record.kinds))}; "
            f"{record.kind!r} operations write {', '.join(sorted(writes))}")


def _same_levels(record: RecordedResult, named: set[str]) -> str | None:
    if named == record.levels.keys():
        return None
    # A row's level may be a NULL or a BLOB (a ledger rebuilt without NOT NULL or
    # STRICT): shown as such, not failing the sort among the names.
    held = sorted("NULL" if level is None else str(level) for level in record.levels)
    return (f"its stored result names levels {', '.join(sorted(named))}, its ledger rows "
            f"are of {', '.join(held)}")


def _figures(f: LedgerFigures, level: str, *, version: object, **amounts: object
             ) -> str | None:
    """Compare a result's figures for one level with the ledger's; describe the first miss."""
    # 3.0 and True are not versions; None: no number in the ledger (told by the level)
    if type(version) is not int or (f.version is not None and version != f.version):
        return f"its stored result says {level} is at version {version!r}, the ledger {f.version}"
    for what, given in amounts.items():
        held = getattr(f, what)
        if held is not None and units_of(given) != held:  # (None: a NULL, told by its row)
            return (f"its stored result says {level} {what} {given}, "
                    f"the ledger {from_units(held)}")
    return None


def _hits(hits: Sequence[tuple[str, int | None, int | None, int | None, str | None]]) -> str:
    return "[" + ", ".join(
        f"{level} v{'?' if v is None else v} {'?' if paid is None else from_units(paid)}"
        f"{'' if winner is None else f' to {winner}'}"
        for level, v, paid, _, winner in hits) + "]"
