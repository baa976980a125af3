"""Several processes on one file: does each get its share, and how long do calls wait?

    python benchmarks/fairness.py [--procs 4] [--callers 64] [--seconds 8] [--baseline]

`compare.py` reports the processes' aggregate throughput; this shows each
process's: its operations per second and the p50 / p99 / p999 / worst
latency of its calls (3-level contributions, closed loop, the callers split
evenly between the processes, a fresh file). SQLite's write lock has no
queue; the engine's writers take turns through `<database>-lock` (see
`jackpot.storage._turns`). `--baseline` runs `baseline.NaiveJackpot`
instead, which waits on SQLite's lock alone.

Figures vary with the machine and the hour: compare runs made minutes apart.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # the runner's helpers, beside this file
from _script import children_started


def _child(kind: str, path: str, callers: int, seconds: float, ready: Any, go: Any,  # noqa: PLR0917
           out: Any) -> None:
    compare.quiet_logging()
    system = compare.open_system(kind, path)
    op = compare.contribute_op(system, compare.LEVELS3)
    latencies: list[list[float]] = [[] for _ in range(callers)]

    def timed(k: int) -> None:
        started = time.perf_counter()
        op(k)
        latencies[k].append(time.perf_counter() - started)

    ready.put(1)
    go.wait(60)
    result = compare.closed_loop(timed, callers, 1.0, seconds)
    system.close()
    ms = sorted(x * 1000 for per_caller in latencies for x in per_caller)

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    out.put((result["ops_per_s"], q(0.5), q(0.99), q(0.999), ms[-1], result["errors"]["total"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=4, help="processes (default: 4)")
    parser.add_argument("--callers", type=int, default=64,
                        help="callers in all, split evenly between the processes (default: 64)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured seconds (default: 8)")
    parser.add_argument("--baseline", action="store_true",
                        help="run the naive baseline instead of the engine")
    args = parser.parse_args()
    # A process with no caller has no latency to report: it failed, and the
    # parent waited minutes for its figures before a traceback.
    if args.procs < 1:
        parser.error(f"--procs must be at least 1, got {args.procs}")
    if args.callers < args.procs:
        parser.error(f"--callers must be at least --procs ({args.procs}): every process "
                     f"needs a caller, got {args.callers}")
    if not 0 < args.seconds <= 3600:  # (inf ran for ever)
        parser.error(f"--seconds must be above 0 and at most 3600, got {args.seconds}")
    kind = "baseline" if args.baseline else "engine"
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "pools.db")
        compare.open_system(kind, path).close()
        ctx = mp.get_context("spawn")
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        children = [ctx.Process(target=_child, args=(kind, path, args.callers // args.procs,
                                                     args.seconds, ready, go, out))
                    for _ in range(args.procs)]
        with children_started(children):
            for _ in children:
                ready.get(timeout=120)
            go.set()
            results = [out.get(timeout=args.seconds + 300) for _ in children]
            for child in children:
                child.join(60)
    print(f"{kind}: {args.procs} processes x {args.callers // args.procs} callers, "
          f"3-level, {sum(r[0] for r in results):,.0f} ops/s in all")
    print("| process | ops/s | p50 ms | p99 ms | p999 ms | worst ms | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, (ops, p50, p99, p999, worst, errors) in enumerate(results, 1):
        print(f"| {i} | {ops:,.0f} | {p50:.1f} | {p99:.1f} | {p999:.1f} | {worst:.1f} | {errors} |")


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
