"""Event-loop lag: AsyncJackpotEngine against awaiting Pykka futures directly.

    python benchmarks/aio_lag.py [--quick] [--players N] [--bets N] [--json PATH]

Both ways send the same operations to the same actors; they differ only in
how the caller waits for the answer:

- async: `await AsyncJackpotEngine.contribute(...)`. The answer comes back
  through a Ticket notify callback and `call_soon_threadsafe`; the loop runs
  other tasks meanwhile.
- pykka: the answer is put in a Pykka future (`Ticket(notify)` setting it)
  and awaited. Its `__await__` yields once, then calls the blocking `get()`:
  the whole loop sleeps until that one answer arrives.

Workloads (each in a fresh process, on a fresh file, default levels, every bet
on a fresh op_id; odd bets go to all three levels through the coordinator,
even bets to level minor alone):

- paced: PLAYERS tasks each place BETS bets, watching the reels 0.2-0.6 s
  before each one (as tests/aio/test_aio.py does).
- saturated: PLAYERS tasks bet back to back with no pause: the most the
  engine can take. The actor threads then run flat out and share the GIL with
  the event loop, so the lag is the GIL's (a loop that shares its process with
  one busy Python thread already lags ~5 ms at p50).

A ticker task sleeps 1 ms in a loop and records how late it wakes (the lag).
Reported: lag p50 / p99 / max over all ticks, the throughput (bets/s over the
run) and the mean time from sending a bet to its answer. Every run ends with
verify() and a check that each pool equals its seed plus the contributions
reported to the players.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pykka
from compare import at_least_one, writable_dir

from jackpot import AsyncJackpotEngine
from jackpot.actors import Ticket

MODES = ("async", "pykka")
WORKLOADS = ("paced", "saturated")
SPIN_SECONDS = (0.2, 0.6)
TICK = 0.001
LAG_P99_LIMIT_MS = 20.0
"""The target: at the paced load, the async engine keeps the loop's lag p99 under this."""
STAKES = [Decimal("0.20"), Decimal("1.00"), Decimal("2.50"), Decimal(10)]
SEEDS = {"minor": Decimal(100), "major": Decimal(1000), "mega": Decimal(10000)}


def pykka_settle(future: pykka.ThreadingFuture[Any], result: Any,
                 error: BaseException | None) -> None:
    """Put an actor's answer in a Pykka future (in the actor's thread)."""
    if error is None:
        future.set(result)
    else:
        future.set_exception((type(error), error, error.__traceback__))


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def run_one(mode: str, workload: str, players: int, bets: int, path: Path
                  ) -> dict[str, Any]:
    async with await AsyncJackpotEngine.open(path) as engine:
        sync = engine.sync
        rng = random.Random(8)
        lags: list[float] = []
        latencies: list[float] = []
        added: dict[str, Decimal] = dict.fromkeys(SEEDS, Decimal(0))
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.sleep(TICK)
                lags.append(time.perf_counter() - started - TICK)

        async def bet(p: int, b: int) -> None:
            stake = STAKES[(p + b) % len(STAKES)]
            groups = None if (p + b) % 2 else "minor"
            op_id = f"p{p}-b{b}"
            started = time.perf_counter()
            if mode == "async":
                result = await engine.contribute(stake, groups=groups, op_id=op_id)
            else:
                op = sync._requests.contribute(stake, groups=groups, op_id=op_id)
                future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
                sync._send(op, Ticket(lambda r, e, f=future: pykka_settle(f, r, e)))
                result = await future
            latencies.append(time.perf_counter() - started)
            for name, amount in result.contributions.items():
                added[name] += amount

        async def player(p: int) -> None:
            if workload == "paced":
                await asyncio.sleep(rng.uniform(*SPIN_SECONDS))
            for b in range(bets):
                await bet(p, b)
                if workload == "paced":
                    await asyncio.sleep(rng.uniform(*SPIN_SECONDS))

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(TICK)
        started = time.perf_counter()
        await asyncio.gather(*(player(p) for p in range(players)))
        seconds = time.perf_counter() - started
        done.set()
        await tick
        report = await engine.verify()
        pools = await engine.pools()
        accounted = all(pools[n].amount == SEEDS[n] + added[n] for n in SEEDS)
    return {
        "mode": mode, "workload": workload, "players": players, "bets": players * bets,
        "seconds": round(seconds, 3),
        "bets_per_s": round(players * bets / seconds),
        "ticks": len(lags),
        "lag_p50_ms": round(quantile(lags, 0.50) * 1000, 2),
        "lag_p99_ms": round(quantile(lags, 0.99) * 1000, 2),
        "lag_max_ms": round(max(lags) * 1000, 2),
        "latency_mean_ms": round(sum(latencies) / len(latencies) * 1000, 2),
        "verify_ok": report.ok, "accounted": accounted,
    }


def one(mode: str, workload: str, players: int, bets: int) -> dict[str, Any]:
    """Run one configuration in this process, on a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(run_one(mode, workload, players, bets, Path(tmp) / "lag.db"))


def in_subprocess(mode: str, workload: str, players: int, bets: int) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter (no heap or threads left over)."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", mode, workload, "--players", str(players),
         "--bets", str(bets)],
        check=True, capture_output=True, text=True, env={**os.environ, "JACKPOT_LOG_LEVEL": "warning"})
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<10}{'mode':<7}{'bets':>7}{'bets/s':>8}{'ticks':>7}"
            f"{'lag p50':>10}{'lag p99':>10}{'lag max':>10}{'latency':>10}  audit")
    lines = [head, "-" * len(head)]
    for r in rows:
        audit = "OK" if r["verify_ok"] and r["accounted"] else "FAILED"
        lines.append(
            f"{r['workload']:<10}{r['mode']:<7}{r['bets']:>7}{r['bets_per_s']:>8}{r['ticks']:>7}"
            f"{r['lag_p50_ms']:>8.2f}ms{r['lag_p99_ms']:>8.2f}ms{r['lag_max_ms']:>8.2f}ms"
            f"{r['latency_mean_ms']:>8.2f}ms  {audit}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="200 players, 2 bets each (a count given as well is kept)")
    parser.add_argument("--players", type=at_least_one, default=None,
                        help="player tasks (default: 1000)")
    parser.add_argument("--bets", type=at_least_one, default=None,
                        help="bets per player (default: 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json is not None and not args.one:
        # Checked before the workloads: it was a traceback once they had all run.
        why = "a directory" if args.json.is_dir() else writable_dir(args.json.resolve().parent)
        if why:
            parser.error(f"--json {args.json}: cannot write there: {why}")
    # A count given is played as given, --quick or not (as the examples do):
    # `--quick --players 50` ran 200 players.
    players = args.players or (200 if args.quick else 1000)
    bets = args.bets or (2 if args.quick else 3)
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], players, bets)))
        return
    rows = []
    for workload in WORKLOADS:
        for mode in MODES:
            rows.append(in_subprocess(mode, workload, players, bets))
            print(f"done: {workload} {mode}", file=sys.stderr)
    print(f"event-loop lag, {players} players x {bets} bets, {os.cpu_count()} CPUs, "
          f"ticker sleeps {TICK * 1000:.0f} ms")
    print(table(rows))
    paced = next(r for r in rows if r["workload"] == "paced" and r["mode"] == "async")
    met = paced["lag_p99_ms"] < LAG_P99_LIMIT_MS
    print(f"target: paced async lag p99 {paced['lag_p99_ms']:.2f} ms < "
          f"{LAG_P99_LIMIT_MS:.0f} ms: {'PASS' if met else 'FAIL'}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not all(r["verify_ok"] and r["accounted"] for r in rows):
        sys.exit("audit FAILED")
    if not met:
        sys.exit("lag target FAILED")


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
