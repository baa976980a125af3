"""Quickstart: open a database, play a few hundred bets, pay a win, audit.

Run: python examples/quickstart.py [--bets N] [--quick] [--db PATH]

--db keeps the database in a new file (an existing one is refused: the spins'
op_ids are the same on every run, so a second run would only replay them).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from decimal import Decimal
from pathlib import Path

from _script import opening_db, run_script  # (examples/_script.py: how every example ends)

from jackpot import JackpotEngine


def _n(count: int, noun: str) -> str:
    """Return the count and its noun, plural unless one: '1 bet', '2 bets' (not '1 bets')."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _count(text: str) -> int:
    """Argparse type: a whole number of at least 1 (with none there is nothing to show)."""
    try:
        value = int(text)
    except ValueError:  # argparse would say "invalid _count value", naming this function
        msg = f"must be a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bets", type=_count, default=None,
                        help="number of bets to play (default: 500, or 50 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 50 bets, unless --bets is given")
    parser.add_argument("--db", type=Path, default=None,
                        help="a new database file to keep (default: a temporary one)")
    args = parser.parse_args()
    # (os.path.exists: Path.exists raises on a name too long for its directory before
    # Python 3.13; the engine's open refuses that name, saying why.)
    if args.db is not None and os.path.exists(args.db):  # noqa: PTH110 - see above
        parser.error(f"--db {args.db}: the file exists; give a new path")
    if args.db is not None and not args.db.parent.is_dir():
        parser.error(f"--db {args.db}: no directory {args.db.parent}; create it first")
    # --quick gives short defaults; a count given as well is played as given
    # (--quick replaced it: `--quick --bets 1000` played 50 bets).
    bets = args.bets if args.bets is not None else 50 if args.quick else 500
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "pools.db"
        ok = run(path, bets, kept=args.db is not None)
    raise SystemExit(0 if ok else 1)  # a script that runs it learns the audit's verdict


def run(path: Path, bets: int, *, kept: bool) -> bool:
    """Play `bets` bets and a win, print the pools and the audit; return whether it passed."""
    rng = random.Random(42)
    stakes = [Decimal("0.20"), Decimal("1.00"), Decimal("2.50"), Decimal(10)]
    with opening_db(path, given=kept):  # (the engine refuses a --db: one line, status 2)
        engine = JackpotEngine.open(path)  # new file: levels minor, major, mega
    with engine:
        played = [rng.choice(stakes) for _ in range(bets)]
        for spin, stake in enumerate(played):
            engine.contribute(stake, op_id=f"spin-{spin}")  # every level
        replay = engine.contribute(played[0], op_id="spin-0")  # same op_id: no double count
        win = engine.process_win("minor", op_id="win-1", winner="player-9")
        print(f"played {_n(bets, 'bet')}; replaying spin-0 changed nothing: {replay.replayed}")
        print(f"player-9 won the minor jackpot: {win.amount} (pool reset to {win.balance})")
        print()
        print(f"{'level':<8}{'amount':>18}{'seed':>14}{'version':>9}{'bets':>7}{'won':>14}")
        for p in engine.pools().values():
            print(f"{p.name:<8}{p.amount:>18}{p.seed:>14}{p.version:>9}"
                  f"{p.meters['bets']:>7}{p.meters['won']:>14}")
        report = engine.verify()
        print()
        print(f"audit: {'OK' if report.ok else 'FAILED'} - {report.levels} levels, "
              f"{report.ledger_rows} ledger rows reconciled to 0.000001")
        for problem in report.problems:
            print(f"  problem: {problem}")
        return report.ok


if __name__ == "__main__":
    run_script(main)
