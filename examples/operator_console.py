"""An operator's session: change a level's settings, suspend, resume, adjust, retire, audit.

Players bet for a while, then the operator works through the console the way
a slot floor manager would. Every action names who did it and why, is applied
atomically, lands in the ledger, and can be retried with the same op_id
without being applied twice. The transcript shows each action as the
`jackpot` command that does it (with JACKPOT_DB set to the database) and what
the engine answered, refusals included; the example itself calls the
engine's methods, which the commands call too.

Run: python examples/operator_console.py [--bets N] [--quick] [--db PATH]

--db keeps the database in a new file (an existing one is refused: the
session's op_ids and expected versions are fixed).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from _script import opening_db, run_script  # (examples/_script.py: how every example ends)

from jackpot import GroupConfig, JackpotEngine, JackpotError

LEVELS = [
    GroupConfig("minor", seed=Decimal(100), contribution_rate=Decimal("0.01"),
                reserve_rate=Decimal("0.002")),
    GroupConfig("major", seed=Decimal(1000), contribution_rate=Decimal("0.005"),
                cap=Decimal(1200)),
    GroupConfig("summer-promo", seed=Decimal(50), contribution_rate=Decimal("0.02")),
]
OPERATOR = "manager:alice"


def jackpot(*args: str, note: str = "") -> str:
    """Return the `jackpot` command line that does what the next action does."""
    return f"jackpot {shlex.join(args)}" + (f"   # {note}" if note else "")


def command(line: str, action: Callable[[], Any]) -> Any:
    """Print a console line, run it, print the answer (or the refusal) and return it."""
    print(f"\noperator> {line}")
    try:
        result = action()
    except JackpotError as e:
        print(f"  refused: {type(e).__name__}: {e}")
        return None
    return result


def show_pools(engine: JackpotEngine) -> None:
    print(f"  {'level':<14}{'status':<11}{'amount':>10}{'reserve':>9}{'seed':>9}{'rate':>7}"
          f"{'cap':>9}{'version':>9}  pending")
    for p in engine.pools().values():
        cap = "-" if p.cap is None else f"{p.cap:.2f}"
        pending = ", ".join(f"{k}={v}" for k, v in p.pending_changes.items()) or "-"
        print(f"  {p.name:<14}{p.status:<11}{p.amount:>10.2f}{p.reserve:>9.2f}{p.seed:>9.2f}"
              f"{p.contribution_rate:>7}{cap:>9}{p.version:>9}  {pending}")


def play(engine: JackpotEngine, bets: int, first: int, groups: tuple[str, ...]) -> None:
    rng = random.Random(first)
    for n in range(first, first + bets):
        engine.contribute(rng.choice(["0.50", "1", "2", "5"]), groups=groups, op_id=f"spin-{n}")
    print(f"\n[floor] players placed {_n(bets, 'bet')} on {', '.join(groups)}")


def session(engine: JackpotEngine, bets: int) -> bool:
    play(engine, bets, 0, ("minor", "major", "summer-promo"))

    command(jackpot("status"), lambda: show_pools(engine))

    version = engine.pool("minor").version
    changed = command(
        jackpot("config", "minor", "contribution_rate=0.015", "seed=120",
                "--expected-version", str(version), "--who", OPERATOR,
                "--reason", "weekend promotion", "--op-id", "ops-1"),
        lambda: engine.update_config("minor", contribution_rate="0.015", seed=120,
                                     expected_version=version, who=OPERATOR,
                                     reason="weekend promotion", op_id="ops-1"))
    print(f"  done at version {changed.version}: rate {changed.before['contribution_rate']} "
          f"-> {changed.after['contribution_rate']} now; waits for the next reset: "
          f"{changed.pending}")

    command(jackpot("config", "minor", "cap=150", "--expected-version", str(version),
                    "--who", "manager:bob", "--reason", "cap it", "--op-id", "ops-2",
                    note="a second console, stale"),
            lambda: engine.update_config("minor", cap=150, expected_version=version,
                                         who="manager:bob", reason="cap it", op_id="ops-2"))

    suspended = command(
        jackpot("suspend", "major", "--reason", "meter inspection", "--who", OPERATOR,
                "--op-id", "ops-3"),
        lambda: engine.suspend("major", reason="meter inspection", who=OPERATOR,
                               op_id="ops-3"))
    print(f"  major suspended at {suspended.balances['major']:.2f} (version "
          f"{suspended.versions['major']})")
    print("\n[floor] a player bets on major while it is suspended:")
    try:
        engine.contribute("5", groups=("major",), op_id="spin-suspended")
    except JackpotError as e:
        print(f"  the game server is told: {type(e).__name__}: {e}")
    command(jackpot("resume", "major", "--who", OPERATOR, "--op-id", "ops-4"),
            lambda: engine.resume("major", who=OPERATOR, op_id="ops-4"))
    print("  major takes bets again")

    top_up = ("adjust", "major", "+25.00", "--reason", "marketing top-up, ticket OPS-42",
              "--who", OPERATOR, "--op-id", "ops-5")
    topped = command(
        jackpot(*top_up),
        lambda: engine.adjust("major", "25.00", reason="marketing top-up, ticket OPS-42",
                              who=OPERATOR, op_id="ops-5"))
    print(f"  major now {topped.balances['major']:.2f}")
    again = command(
        jackpot(*top_up, note="sent twice"),
        lambda: engine.adjust("major", "25.00", reason="marketing top-up, ticket OPS-42",
                              who=OPERATOR, op_id="ops-5"))
    print(f"  replayed: {again.replayed}; major still {again.balances['major']:.2f}")
    command(jackpot("adjust", "major", "-5000", "--reason", "typo", "--who", OPERATOR,
                    "--op-id", "ops-6"),
            lambda: engine.adjust("major", "-5000", reason="typo", who=OPERATOR,
                                  op_id="ops-6"))

    win = engine.process_win("minor", op_id="spin-win-1", winner="player-31")
    print(f"\n[floor] player-31 hits the minor jackpot: paid {win.amount:.2f}, "
          f"the pool resets to {win.balance:.2f} (the pending seed took effect)")

    retired = command(
        jackpot("retire", "summer-promo", "--transfer-to", "major", "--reason",
                "promotion ended", "--who", OPERATOR, "--op-id", "ops-7"),
        lambda: engine.retire("summer-promo", transfer_to="major", reason="promotion ended",
                              who=OPERATOR, op_id="ops-7"))
    print("  moved: " + ", ".join(f"{n} {v:.2f}" for n, v in retired.balances.items()))
    print("\n[floor] a player bets on the retired level:")
    try:
        engine.contribute("1", groups=("summer-promo",), op_id="spin-retired")
    except JackpotError as e:
        print(f"  the game server is told: {type(e).__name__}: {e}")

    play(engine, bets, bets, ("minor", "major"))
    command(jackpot("status"), lambda: show_pools(engine))

    def history() -> None:
        for h in engine.history("minor", limit=5):
            print(f"  version {h.version:>5}  paid {h.amount:>9.2f}  to {h.winner}  "
                  f"(op {h.op_id}{', mystery hit' if h.hit else ''})")

    command(jackpot("history", "minor", "--limit", "5"), history)

    health = command(jackpot("health"), engine.health)
    print(f"  status: {health.status}" + "".join(f"; {r}" for r in health.reasons))
    report = command(jackpot("verify"), engine.verify)
    print(f"  audit: {'OK' if report.ok else 'FAILED'} - {report.levels} levels, "
          f"{report.ledger_rows} ledger rows reconciled to 0.000001")
    for problem in report.problems:
        print(f"  problem: {problem}")
    return bool(report.ok)


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
                        help="bets the players place before the operator's session, and "
                             "as many again after it (default: 400, or 40 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 40 bets each time, unless --bets is given")
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
    # (--quick replaced it: `--quick --bets 1000` placed 40).
    bets = args.bets if args.bets is not None else 40 if args.quick else 400
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "console.db"
        # Without --db the file goes at the end: say so, or a reader copies
        # the export and finds no database for the commands below.
        kept = "" if args.db else (" (a temporary file, removed at the end: "
                                   "give --db PATH to keep it and run these commands yourself)")
        print(f"the operator's console: export JACKPOT_DB={shlex.quote(str(db))}{kept}")
        with opening_db(db, given=args.db is not None):  # (refused: one line, status 2)
            engine = JackpotEngine.open(db, LEVELS)
        with engine:
            ok = session(engine, bets)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    run_script(main)
