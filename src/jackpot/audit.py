"""verify(): prove from the ledger alone that every level's books balance."""

from __future__ import annotations

from jackpot.domain import LevelState
from jackpot.money import RATE_SCALE, from_units
from jackpot.results import VerifyReport
from jackpot.storage import SQLiteStore

__all__ = ["audit"]

_PER_LEVEL = """
SELECT level, COUNT(*), MIN(version_after), MAX(version_after), SUM(delta),
       SUM(paid), SUM(funded), SUM(overflow),
       SUM(CASE WHEN kind = 'contribute' THEN delta + overflow ELSE 0 END),
       SUM(kind = 'contribute'), SUM(kind = 'win'), MIN(balance_after)
FROM ledger GROUP BY level
"""

# A row whose balance is not the previous balance plus its delta.
_BROKEN_CHAIN = """
SELECT level, version_after, balance_after, prev FROM (
    SELECT level, version_after, balance_after, delta,
           LAG(balance_after, 1, 0) OVER (PARTITION BY level ORDER BY version_after) AS prev
    FROM ledger)
WHERE balance_after != prev + delta LIMIT 20
"""


def audit(store: SQLiteStore) -> VerifyReport:
    """Recompute every level from the ledger and list every difference."""
    problems: list[str] = []
    with store.read():
        levels = store.load_levels()
        sums = {row[0]: row[1:] for row in store._exec(_PER_LEVEL)}  # noqa: SLF001
        broken = store._exec(_BROKEN_CHAIN)  # noqa: SLF001
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
    problems.extend(f"{lvl}: version {v} balance {from_units(b)} is not "
                    f"{from_units(p)} + its delta" for lvl, v, b, p in broken)
    problems.extend(f"operation {op!r} recorded without ledger rows" for op in orphans)
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    return VerifyReport(ok=not problems, problems=problems, levels=len(levels),
                        ledger_rows=rows)


def _check_level(s: LevelState, sums: tuple[int, ...]) -> list[str]:
    """Compare one level's row with what its ledger rows add up to."""
    (count, vmin, vmax, total, paid, funded, overflow, contributed, bets, wins, low) = sums
    name = s.name
    problems = []
    if (vmin, vmax, count) != (1, s.version, s.version):
        problems.append(f"{name}: ledger versions {vmin}..{vmax} in {count} rows, "
                        f"level is at version {s.version} (expected 1..{s.version})")
    if total != s.amount:
        problems.append(f"{name}: ledger sums to {from_units(total)}, "
                        f"level holds {from_units(s.amount)}")
    if low < 0 or s.amount < 0:
        problems.append(f"{name}: a balance went negative")
    if not 0 <= s.carry < RATE_SCALE:
        problems.append(f"{name}: carried fraction {s.carry} out of range")
    m = s.meters
    expected = {"seeded": funded, "won": paid, "overflow": overflow,
                "contributed": contributed, "bets": bets, "wins": wins}
    for meter, value in expected.items():
        if getattr(m, meter) != value:
            problems.append(f"{name}: meter {meter} is {getattr(m, meter)}, "
                            f"ledger says {value}")
    if m.seeded + m.contributed - m.overflow - m.won != s.amount:
        problems.append(f"{name}: seeded + contributed - overflow - won != amount")
    return problems
