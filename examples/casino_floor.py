"""A casino floor: several worker processes, one jackpot database.

Each worker process is a bank of slot machines (one thread per machine) with
its own bet sizes and its own set of levels; some levels are shared by
several banks (a floor-wide progressive and a must-hit-by mystery jackpot),
so processes contend for the same rows. Every process opens its own engine
on the same file; the engine's version checks and the database's write lock
keep the books exact. A machine whose call times out or loses a race resends
it with the same op_id: it is never applied twice. A spin's outcome is drawn
from its round with a secret of the bank's process, so it is the same for a
resent spin but cannot be foretold from the machine and the spin number.

The parent process samples the pools while the floor plays, then prints each
level's meters, checks them against what the banks say they paid, runs the
audit, and draws the pool amounts over time (a PNG, if matplotlib is installed:
pip install 'jackpot[charts]').

Run: python examples/casino_floor.py [--machines N] [--spins N] [--quick] [--chart PATH] [--db PATH]

--db keeps the database in a new file (an existing one is refused: the spins'
op_ids are the same on every run, and the check of what the banks paid
against the meters counts this run only).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import hmac
import multiprocessing
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TypeVar

from _script import opening_db, run_script  # (examples/_script.py: how every example ends)

from jackpot import (
    ConcurrencyViolationError,
    GroupConfig,
    JackpotEngine,
    LockTimeoutError,
    Win,
)

T = TypeVar("T")

LEVELS = [
    GroupConfig("floor-mega", seed=Decimal(5000), contribution_rate=Decimal("0.002")),
    GroupConfig("mystery", seed=Decimal(50), contribution_rate=Decimal("0.02"),
                must_hit_by=Decimal(60)),
    GroupConfig("penny-minor", seed=Decimal(20), contribution_rate=Decimal("0.01"),
                reserve_rate=Decimal("0.002")),
    GroupConfig("dollar-major", seed=Decimal(500), contribution_rate=Decimal("0.005"),
                min_bet=Decimal(1)),
    GroupConfig("high-grand", seed=Decimal(2500), contribution_rate=Decimal("0.004"),
                cap=Decimal(2600), overflow_to="reserve", min_bet=Decimal(5)),
]


@dataclass(frozen=True)
class Bank:
    """A bank of machines: its stakes, its levels and the odds of each paid level."""

    name: str
    stakes: tuple[str, ...]
    levels: tuple[str, ...]
    odds: dict[str, int]  # level -> 1 in N spins wins it (mystery levels need none)


BANKS = [
    Bank("penny", ("0.01", "0.05", "0.10", "0.25", "0.50"),
         ("penny-minor", "mystery", "floor-mega"), {"penny-minor": 300, "floor-mega": 40_000}),
    Bank("dollar", ("1", "2", "3", "5"),
         ("dollar-major", "mystery", "floor-mega"), {"dollar-major": 1_500, "floor-mega": 40_000}),
    Bank("high-limit", ("5", "10", "25", "50", "100"),
         ("high-grand", "floor-mega"), {"high-grand": 2_000, "floor-mega": 40_000}),
    Bank("video-poker", ("0.25", "1.25", "5"),
         ("penny-minor", "dollar-major", "mystery"), {"penny-minor": 500, "dollar-major": 3_000}),
]


def retrying(call: Callable[[], T]) -> T:
    """Resend a call that timed out or lost a race: same op_id, so at most once."""
    for _ in range(9):
        try:
            return call()
        except (LockTimeoutError, ConcurrencyViolationError):
            continue
    return call()


def play_machine(engine: JackpotEngine, bank: Bank, machine: int, spins: int,  # noqa: PLR0917
                 paid: list[Win], secret: bytes) -> Decimal:
    """One machine: `spins` bets; returns the amount wagered. Appends what it paid."""
    rng = random.Random(f"{bank.name}-{machine}")
    wagered = Decimal(0)
    for n in range(spins):
        op_id = f"{bank.name}-m{machine}-s{n}"
        stake = Decimal(rng.choice(bank.stakes))
        bet = retrying(partial(engine.contribute, stake, groups=bank.levels, op_id=op_id))
        wagered += stake
        paid.extend(h for h in bet.hits if not h.replayed)
        # The outcome is a function of the round (a resent spin gets the same
        # one) and of the secret (no one can work out which spins will pay).
        outcome = random.Random(hmac.digest(secret, op_id.encode(), hashlib.sha256))
        for level, odds in bank.odds.items():
            if outcome.randrange(odds) == 0:
                win = retrying(partial(engine.process_win, level, op_id=f"{op_id}:{level}",
                                       winner=f"{bank.name}-{machine}"))
                if not win.replayed:
                    paid.append(win)
    return wagered


@dataclass
class BankReport:
    """What a bank's process reports back: its play, its payouts, its engine's counters."""

    bank: str
    spins: int
    wagered: Decimal
    paid: dict[str, Decimal] = field(default_factory=dict)
    jackpots: int = 0
    hits: int = 0
    conflicts: int = 0
    retries: int = 0


def run_bank(path: str, bank: Bank, machines: int, spins: int) -> BankReport:
    """A worker process: its own engine on the shared file, one thread per machine."""
    paid: list[Win] = []
    # A real floor keeps its secret the same across restarts (or stores each
    # round's outcome), so that a spin resent after a restart keeps its outcome.
    secret = secrets.token_bytes(32)
    # Not in opening_db: the main process opened this file first, so a worker
    # that cannot is a failure of the run (its traceback, status 1), not a bad --db.
    with JackpotEngine.open(path, LEVELS) as engine, \
            concurrent.futures.ThreadPoolExecutor(machines) as pool:
        jobs = [pool.submit(play_machine, engine, bank, m, spins, paid, secret)
                for m in range(machines)]
        wagered = sum((j.result() for j in jobs), Decimal(0))
        stats = engine.stats.snapshot()
    report = BankReport(bank.name, machines * spins, wagered, jackpots=len(paid),
                        hits=sum(w.hit for w in paid), conflicts=stats["conflicts"],
                        retries=stats["retries"])
    for w in paid:
        report.paid[w.group] = report.paid.get(w.group, Decimal(0)) + w.amount
    return report


def sample(engine: JackpotEngine, started: float, timeline: list[tuple[float, dict[str, Decimal]]],
           stop: threading.Event, every: float) -> None:
    """Record every level's amount every `every` seconds until `stop` is set."""
    while True:
        timeline.append((time.perf_counter() - started,
                         {n: p.amount for n, p in engine.pools().items()}))
        if stop.wait(every):
            return


def chart(timeline: list[tuple[float, dict[str, Decimal]]], limits: dict[str, Decimal],
          out: Path) -> str:
    """Draw each level's amount over time, with its cap or must-hit-by dashed."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional extra
    except ImportError:
        return ("note: matplotlib is not installed, so no chart was drawn "
                "(pip install 'jackpot[charts]' to get one)")
    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(timeline[0][1])
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(9, 2 * len(names)))
    times = [t for t, _ in timeline]
    for ax, name in zip(axes, names, strict=True):
        ax.plot(times, [float(amounts[name]) for _, amounts in timeline], lw=1.2)
        if name in limits:
            ax.axhline(float(limits[name]), ls="--", lw=0.8, color="grey")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.grid(alpha=0.3)
    axes[0].set_title("jackpot pools over time (one process per bank)")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"chart: pool amounts over time written to {out}"


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
    parser.add_argument("--machines", type=_count, default=None,
                        help="machines (threads) per bank (default: 6, or 2 with --quick)")
    parser.add_argument("--spins", type=_count, default=None,
                        help="spins per machine (default: 300, or 40 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 2 machines x 40 spins per bank, unless --machines "
                             "or --spins is given")
    parser.add_argument("--chart", type=Path, default=Path("casino_floor.png"),
                        help="where to write the PNG chart (default: ./casino_floor.png)")
    parser.add_argument("--db", type=Path, default=None,
                        help="a new database file to keep (default: a temporary one)")
    args = parser.parse_args()
    # (os.path.exists: Path.exists raises on a name too long for its directory before
    # Python 3.13; the engine's open refuses that name, saying why.)
    if args.db is not None and os.path.exists(args.db):  # noqa: PTH110 - see above
        parser.error(f"--db {args.db}: the file exists; give a new path")
    if args.db is not None and not args.db.parent.is_dir():
        parser.error(f"--db {args.db}: no directory {args.db.parent}; create it first")
    if not args.chart.parent.is_dir():  # found now, not when the floor has played
        parser.error(f"--chart {args.chart}: no directory {args.chart.parent}; create it first")
    # --quick gives short defaults; a count given as well is played as given
    # (--quick replaced it: `--quick --spins 500` played 40).
    machines = args.machines if args.machines is not None else 2 if args.quick else 6
    spins = args.spins if args.spins is not None else 40 if args.quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        ok = run(args.db or Path(tmp) / "floor.db", machines, spins, args.chart,
                 kept=args.db is not None)
    raise SystemExit(0 if ok else 1)  # a script that runs it learns the audit's verdict


def run(path: Path, machines: int, spins: int, chart_path: Path, *, kept: bool) -> bool:
    """Play the floor, print the meters, the chart and the audit; return whether it passed."""
    where = str(path) if kept else "a temporary file (--db PATH keeps one)"
    print(f"casino floor: {len(BANKS)} banks (one process each) x {_n(machines, 'machine')} "
          f"x {_n(spins, 'spin')}, on {where}")
    with opening_db(path, given=kept):  # (the engine refuses a --db: one line, status 2)
        engine = JackpotEngine.open(path, LEVELS)  # creates the levels once
    with engine:
        timeline: list[tuple[float, dict[str, Decimal]]] = []
        stop = threading.Event()
        started = time.perf_counter()
        sampler = threading.Thread(target=sample, args=(engine, started, timeline, stop, 0.05))
        sampler.start()
        spawn = multiprocessing.get_context("spawn")  # no fork under running threads
        try:
            with concurrent.futures.ProcessPoolExecutor(len(BANKS), mp_context=spawn) as workers:
                jobs = [workers.submit(run_bank, str(path), b, machines, spins) for b in BANKS]
                banks = [j.result() for j in jobs]
        finally:
            stop.set()
            sampler.join()
        seconds = time.perf_counter() - started
        pools = engine.pools()
        report = engine.verify()

    print()
    print(f"{'bank':<12}{'spins':>7}{'wagered':>12}{'jackpots':>10}{'hits':>6}"
          f"{'conflicts':>11}{'retries':>9}")
    for b in banks:
        print(f"{b.bank:<12}{b.spins:>7}{b.wagered:>12.2f}{b.jackpots:>10}"
              f"{b.hits:>6}{b.conflicts:>11}{b.retries:>9}")
    print()
    print(f"{'level':<14}{'amount':>10}{'reserve':>9}{'bets':>7}{'wagered':>11}"
          f"{'contrib.':>10}{'overflow':>9}{'house':>9}{'from res.':>10}{'wins':>6}"
          f"{'hits':>6}{'won':>11}")
    for p in pools.values():
        m = p.meters
        print(f"{p.name:<14}{p.amount:>10.2f}{p.reserve:>9.2f}{m['bets']:>7}{m['wagered']:>11.2f}"
              f"{m['contributed']:>10.2f}{m['overflow']:>9.2f}{m['house_funded']:>9.2f}"
              f"{m['reserve_funded']:>10.2f}{m['wins']:>6}{m['hits']:>6}{m['won']:>11.2f}")
    print()
    print(f"{sum(b.spins for b in banks)} spins in {seconds:.1f} s across {len(BANKS)} processes")
    for name, p in pools.items():
        paid = sum((b.paid.get(name, Decimal(0)) for b in banks), Decimal(0))
        assert paid == p.meters["won"], f"{name}: banks paid {paid}, meters say {p.meters['won']}"
    print("every level's 'won' meter equals what the banks paid out")
    mystery = pools["mystery"]
    highest = max(amounts["mystery"] for _, amounts in timeline)
    assert mystery.must_hit_by is not None
    assert highest <= mystery.must_hit_by, "a must-hit-by pool passed its limit"
    print(f"mystery: {_n(mystery.meters['hits'], 'hit')}; highest pool seen {highest:.2f}, "
          f"never past its must-hit-by {mystery.must_hit_by:.2f}")
    limits = {n: limit for n, p in pools.items()
              if (limit := p.must_hit_by if p.must_hit_by is not None else p.cap) is not None}
    print(chart(timeline, limits, chart_path))
    print(f"audit: {'OK' if report.ok else 'FAILED'} - {report.levels} levels, "
          f"{report.ledger_rows} ledger rows reconciled to 0.000001")
    for problem in report.problems:
        print(f"  problem: {problem}")
    return report.ok


if __name__ == "__main__":
    run_script(main)
