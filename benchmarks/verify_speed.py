"""How long `JackpotEngine.verify()` takes on a big ledger (a script, not a test).

    python benchmarks/verify_speed.py [--rows N] [--cache DIR] [--runs 3] [--extrapolated] [SRC ...]

Builds (once, cached in DIR) a SQLite file whose ledger holds N rows (or up
to 159 more: the calls under way when they are there still end) through the
engine's own API, as a game server fills it: 32 caller threads,
bets on three or four levels (one with a minimum bet, one a must-hit-by
mystery level), most with a caller's op_id (a stored result), some
without; a win every 2,000th call, a config change every 50,000th. With
`--extrapolated`, the file is compare.py's big ledger instead (two real
contributions to one filler level, the rest extrapolated: quicker to build,
one level, one row per operation). N is at least 4 (6 with `--extrapolated`):
making the file writes that many. Then times verify() on a copy of it. With one or more source trees SRC (a clone of the
repository), each run times every tree's verify() in a fresh process with
that tree's `src` first on the path, the trees alternating run by run: the
machine's noise falls on all of them alike. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import apsw
from compare import (
    BIG_MIN_ROWS,
    at_least_one,
    big_template,
    new_op_id,
    quiet_logging,
    remove_db,
    whole_number,
    writable_dir,
)

from jackpot import (
    ConcurrencyViolationError,
    ConfigResult,
    Contribution,
    GroupConfig,
    JackpotEngine,
    Settings,
    Win,
)

HERE = Path(__file__).resolve().parent


LEVELS = (GroupConfig("minor", Decimal(10), Decimal("0.01")),
          GroupConfig("major", Decimal(100), Decimal("0.005"), reserve_rate=Decimal("0.001")),
          GroupConfig("mega", Decimal(1000), Decimal("0.002"), min_bet=Decimal(2)),
          GroupConfig("mystery", Decimal(50), Decimal("0.003"), must_hit_by=Decimal(80)))
CALLERS = 32
MIN_ROWS = len(LEVELS)
"""The fewest ledger rows a built file holds: creating each level writes one."""
# A fill stops at the rows asked or at most this many more: each caller's call
# under way then still ends, and one call writes at most 5 rows (a bet on all
# four levels, and the mystery level's hit it may trigger).
OVERSHOOT = CALLERS * 5


def change_rate(engine: JackpotEngine, rate: Decimal) -> ConfigResult:
    """Change minor's rate, again while bets move its version on."""
    while True:
        try:
            return engine.update_config("minor", op_id=new_op_id(),
                                        expected_version=engine.pool("minor").version,
                                        contribution_rate=rate)
        except ConcurrencyViolationError:
            continue


class RowCount:
    """The ledger rows the callers know are written, from the versions their calls returned.

    A level's ledger rows carry its versions 1..N with no gap, so the rows
    are the sum of the levels' highest versions seen: no query, one lock and
    four numbers per call (the fill checked the file every 5 s, and a small
    `--rows` came out several times too big).
    """

    def __init__(self, engine: JackpotEngine, rows: int, reached: threading.Event) -> None:
        self._lock = threading.Lock()
        self._versions = {g.name: engine.pool(g.name).version for g in LEVELS}
        self._rows = rows
        self._reached = reached
        if sum(self._versions.values()) >= rows:  # (each level's creation is a row)
            reached.set()

    def add(self, result: Contribution | Win | ConfigResult) -> None:
        """Count what one call wrote; set `reached` once the rows are there."""
        if isinstance(result, Contribution):
            versions = [*result.versions.items(), *((h.group, h.version) for h in result.hits)]
        else:
            versions = [(result.group, result.version)]
        with self._lock:
            for level, version in versions:
                self._versions[level] = max(self._versions[level], version)
            if sum(self._versions.values()) >= self._rows:
                self._reached.set()


def build_real(rows: int, cache: Path) -> Path:
    """Return a file (cached) whose ledger holds `rows` rows, made through the API.

    Or fewer than OVERSHOOT more: each caller's call under way when the
    count is reached still ends.
    """
    final = cache / f"real-ledger-{rows}.db"
    if final.exists():
        return final
    tmp = cache / f"{final.name}.building"
    remove_db(tmp)
    try:
        _fill(tmp, rows)
        tmp.replace(final)
    finally:
        remove_db(tmp)  # (a fill cut short, Ctrl-C or a failed call: not cached, and not kept)
    return final


def _fill(path: Path, rows: int) -> None:
    """Fill a new file at `path` with CALLERS threads until its ledger holds `rows` rows."""
    engine = JackpotEngine.open(path, LEVELS, settings=Settings(synchronous="NORMAL"))
    calls = itertools.count()
    errors: list[BaseException] = []
    done = threading.Event()  # the rows are there, or a call failed
    threads: list[threading.Thread] = []
    conn = None

    def caller(written: RowCount) -> None:
        try:
            while not done.is_set():
                i = next(calls)
                if i % 50_000 == 49_999:
                    result: Contribution | Win | ConfigResult = change_rate(
                        engine, Decimal("0.01") + Decimal(i % 7) / 1000)
                elif i % 2_000 == 1_999:
                    result = engine.process_win(("minor", "major")[i % 2], op_id=new_op_id(),
                                                winner=f"p{i % 97}")
                else:
                    bet = Decimal(1 + i % 5) / 2
                    groups = ("minor", "major", "mega", "mystery")[:3 + i % 2]
                    result = engine.contribute(bet, groups=groups, player=f"p{i % 97}",
                                               op_id=None if i % 10 == 0 else new_op_id())
                written.add(result)
        except BaseException as e:
            errors.append(e)
            done.set()

    try:
        written = RowCount(engine, rows, done)
        for _ in range(CALLERS):
            thread = threading.Thread(target=caller, args=(written,))
            thread.start()
            threads.append(thread)  # (after: a thread never started cannot be joined)
        print(f"filling {path.name}: {rows:,} ledger rows, {CALLERS} callers", flush=True)
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        while not done.wait(5):
            (have,) = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger").fetchone()
            print(f"{have:,} ledger rows", flush=True)
    finally:
        if conn is not None:
            conn.close()
        done.set()
        for t in threads:
            t.join()
        engine.close()
    if errors:
        raise errors[0]


def time_verify(path: Path) -> tuple[float, float]:
    """Open the engine on `path`, time one verify() (not the open), and refuse a failed one.

    Returns the wall time and this process's CPU time (less moved by other
    processes on a shared machine: the audit runs on one core, busy).
    """
    system = JackpotEngine.open(path)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        report = system.verify()
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        system.close()
    if not report.ok:
        msg = f"verify() found problems: {report.problems[:5]}"
        raise RuntimeError(msg)
    return took, cpu


def make_parser() -> argparse.ArgumentParser:
    """Return the command line's parser (the cache sits under benchmarks/out, which git ignores)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=whole_number, default=1_000_000,
                        help="how many ledger rows the file holds, or up to 159 more; at "
                             f"least {MIN_ROWS}, {BIG_MIN_ROWS} with --extrapolated "
                             "(default: 1000000)")
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "verify-cache",
                        help="where the built file is kept for later runs "
                             "(default: benchmarks/out/verify-cache)")
    parser.add_argument("--runs", type=at_least_one, default=3,
                        help="timed runs of each tree (default: 3)")
    parser.add_argument("--extrapolated", action="store_true",
                        help="time compare.py's extrapolated one-level ledger instead")
    parser.add_argument("--time", type=Path, help=argparse.SUPPRESS)  # (a child's one run)
    parser.add_argument("trees", nargs="*", type=Path, metavar="SRC",
                        help="clones of the repository whose verify() to time (default: the "
                             "jackpot this script imports)")
    return parser


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    # Fewer rows than the file's making writes were a bigger file timed under the name of
    # the rows asked for (silently 4): refused, as the file cannot be made that small.
    if args.extrapolated and args.rows < BIG_MIN_ROWS:
        parser.error(f"--rows must be at least {BIG_MIN_ROWS} with --extrapolated: creating "
                     "its levels and its two real contributions write a row each, "
                     f"got {args.rows}")
    if args.rows < MIN_ROWS:
        parser.error(f"--rows must be at least {MIN_ROWS}: creating the file's {len(LEVELS)} "
                     f"levels writes a row each, got {args.rows}")
    quiet_logging()
    if args.time is not None:
        print("{:.3f} {:.3f}".format(*time_verify(args.time)))
        return
    # A tree without src/jackpot would time the installed jackpot under its name.
    for tree in args.trees:
        if not (tree / "src" / "jackpot" / "__init__.py").is_file():
            parser.error(f"{tree}: not a clone of jackpot (no src/jackpot/__init__.py)")
    why = writable_dir(args.cache)  # (makes it; a traceback when it could not)
    if why:
        parser.error(f"--cache {args.cache}: cannot write there: {why}")
    if args.extrapolated:
        template, _ = big_template("engine", args.rows, args.cache)
    else:
        template = build_real(args.rows, args.cache)
    print(f"template {template} ({template.stat().st_size / 2**20:.0f} MB)")
    work = args.cache / "verify-work.db"
    remove_db(work)
    try:
        shutil.copyfile(template, work)
        trees = args.trees or [None]
        label = {t: "the imported jackpot" if t is None else str(t) for t in trees}
        times: dict[str, list[tuple[float, float]]] = {label[t]: [] for t in trees}
        for run in range(args.runs):
            for tree in trees:
                if tree is None:
                    took, cpu = time_verify(work)
                else:
                    env = {**os.environ, "PYTHONPATH": f"{tree.resolve() / 'src'}"}
                    out = subprocess.run([sys.executable, __file__, "--time", str(work)],
                                         env=env, capture_output=True, text=True, check=True)
                    took, cpu = map(float, out.stdout.split()[-2:])
                times[label[tree]].append((took, cpu))
                print(f"run {run + 1}: {label[tree]}: {took:.1f} s ({cpu:.1f} s CPU)",
                      flush=True)
    finally:
        remove_db(work)  # (a copy of the big file: a run cut short kept it until the next)
    for tree, values in times.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(f"median {tree}: {statistics.median(walls):.1f} s "
              f"({', '.join(f'{v:.1f}' for v in walls)}), CPU {statistics.median(cpus):.1f} s "
              f"({', '.join(f'{v:.1f}' for v in cpus)})")


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
