"""verify(): prove from the ledger alone that every level's books balance.

Checks, per level: versions 1..N with no gap; each row's balance and reserve
equal the previous row's plus its deltas; each row's deltas equal the sum of
its parts (contributed, overflow, seed funding, payouts, adjustments,
transfers); every meter equals the sum of its ledger column; the pool and the
reserve satisfy the identities in `domain.Meters`; every recorded op_id has
ledger rows; SQLite's integrity_check is ok.
"""

from __future__ import annotations

from jackpot.domain import LevelState
from jackpot.money import RATE_SCALE, from_units
from jackpot.results import VerifyReport
from jackpot.storage import SQLiteStore

__all__ = ["audit"]

# meter -> SQL aggregate over a level's ledger rows
_METER_SUMS = {
    "bets": "SUM(kind = 'contribute' AND detail LIKE '{\"bet\":%')",
    "contributed": "SUM(contributed)",
    "overflow": "SUM(overflow)",
    "reserve_in": "SUM(reserve_in)",
    "house_funded": "SUM(house_funded)",
    "reserve_funded": "SUM(reserve_funded)",
    "won": "SUM(paid)",
    "wins": "SUM(kind IN ('win', 'hit'))",
    "hits": "SUM(kind = 'hit')",
    "adjusted": "SUM(adjusted)",
    "transferred": "SUM(transferred)",
    "reserve_transferred": "SUM(reserve_transferred)",
}

_PER_LEVEL = f"""
SELECT level, COUNT(*), MIN(version_after), MAX(version_after), SUM(delta),
       SUM(reserve_delta), MIN(balance_after), MIN(reserve_after),
       {", ".join(_METER_SUMS.values())}
FROM ledger GROUP BY level
"""

# Rows that break the balance chain or whose deltas are not the sum of their parts.
_BAD_ROWS = """
SELECT level, version_after, seq FROM (
    SELECT *,
        LAG(balance_after, 1, 0) OVER w AS prev_balance,
        LAG(reserve_after, 1, 0) OVER w AS prev_reserve
    FROM ledger WINDOW w AS (PARTITION BY level ORDER BY version_after))
WHERE balance_after != prev_balance + delta
   OR reserve_after != prev_reserve + reserve_delta
   OR delta != contributed - overflow + house_funded + reserve_funded - paid
               + adjusted + transferred
   OR reserve_delta != reserve_in - reserve_funded + reserve_transferred
LIMIT 20
"""


def audit(store: SQLiteStore) -> VerifyReport:
    """Recompute every level from the ledger and list every difference."""
    problems: list[str] = []
    with store.read():
        levels = store.load_levels()
        sums = {row[0]: row[1:] for row in store._exec(_PER_LEVEL)}  # noqa: SLF001
        bad_rows = store._exec(_BAD_ROWS)  # noqa: SLF001
        orphans = store.operation_ids_without_ledger()
        integrity = store.integrity_check()
    rows = 0
    for name, s in levels.items():
        if name not in sums:
            problems.append(f"{name}: no ledger rows")
            continue
        rows += sums[name][0]
        problems.extend(_check_level(s, sums[name]))
    problems.extend(f"{name}: no such level, yet {sums[name][0]} ledger rows"
                    for name in sums.keys() - levels.keys())
    problems.extend(f"{lvl}: ledger row {seq} (version {v}) does not add up"
                    for lvl, v, seq in bad_rows)
    problems.extend(f"operation {op!r} recorded without ledger rows" for op in orphans)
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    return VerifyReport(ok=not problems, problems=problems, levels=len(levels),
                        ledger_rows=rows)


def _check_level(s: LevelState, sums: tuple[int, ...]) -> list[str]:
    """Compare one level's row with what its ledger rows add up to."""
    count, vmin, vmax, total, reserve, low, low_reserve, *meter_sums = sums
    name, m = s.name, s.meters
    problems = []
    if (vmin, vmax, count) != (1, s.version, s.version):
        problems.append(f"{name}: ledger versions {vmin}..{vmax} in {count} rows, "
                        f"level is at version {s.version} (expected 1..{s.version})")
    if total != s.amount:
        problems.append(f"{name}: ledger sums to {from_units(total)}, "
                        f"level holds {from_units(s.amount)}")
    if reserve != s.reserve:
        problems.append(f"{name}: ledger reserve sums to {from_units(reserve)}, "
                        f"level holds {from_units(s.reserve)}")
    if min(low, low_reserve, s.amount, s.reserve) < 0:
        problems.append(f"{name}: a balance went negative")
    if not (0 <= s.carry < RATE_SCALE and 0 <= s.reserve_carry < RATE_SCALE):
        problems.append(f"{name}: a carried fraction is out of range")
    for meter, value in zip(_METER_SUMS, meter_sums, strict=True):
        if getattr(m, meter) != value:
            problems.append(f"{name}: meter {meter} is {getattr(m, meter)}, "
                            f"ledger says {value}")
    pool = (m.house_funded + m.reserve_funded + m.contributed - m.overflow - m.won
            + m.adjusted + m.transferred)
    if pool != s.amount:
        problems.append(f"{name}: opening + contributions + seed funding + adjustments "
                        f"- wins - overflow = {from_units(pool)}, pool holds "
                        f"{from_units(s.amount)}")
    if m.reserve_in - m.reserve_funded + m.reserve_transferred != s.reserve:
        problems.append(f"{name}: reserve meters do not add up to the reserve")
    return problems
