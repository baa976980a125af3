"""Engine vs the naive baseline, side by side, in one run.

    python benchmarks/compare.py [--quick] [--out DIR] [--only SECTION,...] [--pg URL]
                                 [--latency-rounds N]

Every figure is measured for the engine and for `baseline.NaiveJackpot` in the
same run, on the same disk, and reported with the ratio engine/baseline, since
absolute numbers vary from machine to machine. Both run with WAL and
`synchronous=FULL`: every acknowledged operation is durable. Every operation
carries a fresh random op_id (an idempotency key, as a game server's round id),
so both pay the unique-key check.

Sections (in run order):

- rest: single-call latency at rest (one caller, sequential calls).
- throughput: closed loop, 1 / 16 / 64 caller threads, 1-level and 3-level
  contributions; capacity = the best of the three.
- latency: open loop at half of each system's own capacity: a scheduler thread
  releases requests at fixed times to a pool of 64 worker threads; latency is
  measured from the scheduled time, so queueing behind a slow call counts
  (no coordinated omission). In rounds (3; --quick 1; --latency-rounds N),
  the systems alternating, each on a fresh file at the load set once from its
  capacity: each system's p50/p99/p999 are those of its round of median p99
  (one real round, not quantiles mixed from several), every round's p99
  shown beside them, so that one stall of the machine shows as an outlier
  instead of being the figure.
- mix: game-like, 64 callers: 3-level bets, every 1,000th operation a win,
  every 10,000th a config change (the first operation is one, so short runs
  include it).
- processes: 4 processes x 16 callers on one file against 1 process x 64
  callers (the same total), 3-level contributions.
- ledger: 64 callers, 3-level, on a copy of a file whose ledger already holds
  5 million rows against an empty file; with random op_ids (the headline:
  three rounds alternating a fresh empty file and the big one; the ratio is
  the median of the three rounds' ratios, each file's median round shown),
  then with time-ordered ones (which keep index inserts at the B-tree's edge). The big file is built once (bulk
  insert of rows extrapolated from two real contributions to a filler level,
  then checked with the system's own verify()) and cached under OUT/cache.
- rss: a fresh process per system (the two at once) runs 1 million 1-level
  contributions with 16 callers after a warm-up; RSS is sampled throughout.

For every workload the engine's counters (conflicts, retries, busy incidents,
lock timeouts) are reported as the change during it, and every failed call is
counted as an error (never as throughput). After each workload the file is
audited with the system's own verify(). The table goes to OUT/results.md and
OUT/results.json.

With `--pg URL` (or JACKPOT_BENCH_PG_URL) the table gains a PostgreSQL column:
the same workloads, run by the engine on that server after every SQLite
workload has finished (so the SQLite figures are measured as without it), each
in a fresh schema that is dropped afterwards. Its ratio is to the engine on
SQLite. The big ledger is filled server-side (INSERT ... SELECT over
generate_series, extrapolated the same way), in a fresh schema each run. The
server's CPU is not this process's: a local server shows as background.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the installation
    sys.exit("benchmarks/compare.py needs psutil (to measure RSS): "
             "pip install -e '.[test]' installs it with the rest of what the benchmarks use")
from _script import children_started
from baseline import DEFAULT_LEVELS, NaiveJackpot

import jackpot
from jackpot import GroupConfig, JackpotEngine, Settings

try:  # only --pg needs psycopg (the postgres extra): without it the rest still runs
    import psycopg
    from psycopg import sql as pgsql
except ImportError:  # pragma: no cover - depends on the installation
    psycopg = pgsql = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
SYSTEMS = ("engine", "baseline")
PG = "engine-pg"  # the engine on PostgreSQL (--pg): a column of its own
COUNTERS = ("conflicts", "retries", "busy_incidents", "lock_timeouts", "reloads")
LEVELS1 = ("minor",)
LEVELS3 = ("major", "mega", "minor")
BET = Decimal("1.25")
FILLER = "filler"
FILLER_BET = Decimal("0.00001")  # x rate 0.1 = exactly one unit, no carried fraction
MB = 1024 * 1024
SETTINGS = Settings(synchronous="FULL")
"""The engine's settings; the baseline gets the same page cache (a one-line PRAGMA)."""


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    warmup_s: float
    duration_s: float
    rest_calls: int
    open_loop_s: float
    mix_ops: int
    mp_duration_s: float
    big_rows: int
    rss_ops: int
    rss_warmup: int
    threads: tuple[int, ...] = (1, 16, 64)
    open_loop_workers: int = 64
    mix_callers: int = 64
    mp_procs: int = 4
    mp_callers: int = 64
    big_callers: int = 64
    ledger_rounds: int = 3
    latency_rounds: int = 3
    rss_callers: int = 16
    fsync_probe_s: float = 2.0


FULL = Sizes(warmup_s=1.0, duration_s=6.0, rest_calls=2000, open_loop_s=15.0, mix_ops=30_000,
             mp_duration_s=8.0, big_rows=5_000_000, rss_ops=1_000_000, rss_warmup=20_000)
QUICK = Sizes(warmup_s=0.2, duration_s=0.8, rest_calls=200, open_loop_s=1.5, mix_ops=2_000,
              mp_duration_s=1.0, big_rows=50_000, rss_ops=10_000, rss_warmup=1_000,
              fsync_probe_s=0.3, ledger_rounds=1, latency_rounds=1)
SECTIONS = ("rest", "throughput", "latency", "mix", "processes", "ledger", "rss")


def median_index(values: list[float], *, lower_is_better: bool = False) -> int:
    """Return the index of the median of `values`; of an even number, the worse middle one.

    Worse: the lower of the two middle values for a throughput, the higher for
    a latency (`lower_is_better`). A NaN (a round in which no call succeeded:
    no latency to take a quantile of) counts as the worst value of all.
    """
    worst = math.inf if lower_is_better else -math.inf
    order = sorted(range(len(values)),
                   key=lambda i: worst if math.isnan(values[i]) else values[i])
    n = len(order)
    return order[n // 2 if lower_is_better else (n - 1) // 2]


def median_round(rounds: list[dict[str, Any]], by: str = "ops_per_s", *,
                 lower_is_better: bool = False, detail: tuple[str, ...] = (),
                 ) -> dict[str, Any]:
    """Return the round of median `by` (see `median_index`), with what the others add.

    The figures are those of that one round (for a latency: its p50, p99 and
    p999 together, not quantiles picked from different rounds); every round's
    `by` is under `rounds_<by>` in the order run, the chosen round's number
    (from 1) under `chosen_round`. Its failed calls and counters are those of
    all the rounds (a round of errors must not vanish with the round), and
    each round's audit and `detail` figures are kept under `rounds`.
    """
    chosen = median_index([r[by] for r in rounds], lower_is_better=lower_is_better)
    middle = rounds[chosen]
    errors = Errors()
    for r in rounds:
        for name, n in r["errors"]["by_type"].items():
            errors.counts[name] += n
            errors.first.setdefault(name, r["errors"]["first"].get(name, ""))
    own = {k: v for k, v in middle.items() if k != "verify"}  # with the others, below
    kept = ("verify", *detail)
    return {**own, f"rounds_{by}": [r[by] for r in rounds], "chosen_round": chosen + 1,
            "errors": errors.as_dict(),
            "counters": add_counters([r.get("counters") for r in rounds]),
            "rounds": {f"round {i}": {k: r[k] for k in kept if k in r}
                       for i, r in enumerate(rounds, 1) if any(k in r for k in kept)}}


LATENCY_DETAIL = ("p50_ms", "p99_ms", "p999_ms", "max_dispatch_lag_ms", "other_cores_busy",
                  "steal_cores")
"""What the latency section keeps of every round beside its p99: enough to tell a stall."""


def paired_ratio(big: list[float], empty: list[float]) -> float:
    """The median of the rounds' big / empty throughput ratios.

    The rounds alternate the two files, so each ratio compares two windows a
    few seconds apart; a ratio of the two medians would pair windows from
    different rounds and lose that.
    """
    return statistics.median(b / e for b, e in zip(big, empty, strict=True))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def new_op_id() -> str:
    return os.urandom(16).hex()


# -- the two systems behind one face -------------------------------------------


def open_system(kind: str, path: Path | str, *, filler: bool = False) -> Any:
    """Open the engine or the baseline on `path` (PG: a URL) with the same three levels."""
    levels = [*DEFAULT_LEVELS, *([(FILLER, "0", "0.1")] if filler else [])]
    if kind in ("engine", PG):
        groups = [GroupConfig(n, Decimal(seed), Decimal(rate)) for n, seed, rate in levels]
        target = str(path) if kind == PG else Path(path)
        return JackpotEngine.open(target, groups, settings=SETTINGS)
    return NaiveJackpot.open(Path(path), levels, cache_mb=SETTINGS.page_cache_mb)


def counters(system: Any) -> dict[str, int] | None:
    if isinstance(system, JackpotEngine):
        snap = system.stats.snapshot()
        return {k: snap.get(k, 0) for k in COUNTERS}
    return None


def delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in COUNTERS}


def add_counters(items: list[dict[str, int] | None]) -> dict[str, int] | None:
    if any(i is None for i in items):
        return None
    return {k: sum(i[k] for i in items if i is not None) for k in COUNTERS}


def verify(kind: str, path: Path | str) -> dict[str, Any]:
    """Audit a file with the system's own verify(); return ok and the first problems."""
    system = open_system(kind, path)
    try:
        if kind in ("engine", PG):
            report = system.verify()
            return {"ok": report.ok, "problems": list(report.problems)[:5]}
        problems = system.verify()
        return {"ok": not problems, "problems": problems[:5]}
    finally:
        system.close()


_ORDERED = itertools.count()


def ordered_op_id() -> str:
    """A time-ordered op_id: index inserts land at the right edge of the B-tree.

    Starts with "t" so it sorts after every random (hex) op_id.
    """
    return f"t{time.time_ns():020d}-{next(_ORDERED):010d}"


def contribute_op(system: Any, groups: tuple[str, ...],
                  op_ids: Callable[[], str] = new_op_id) -> Callable[[int], None]:
    def op(_worker: int) -> None:
        system.contribute(BET, groups=groups, op_id=op_ids())
    return op


class Errors:
    """Failed calls, by exception type, with the first message of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, e: BaseException) -> None:
        name = type(e).__name__
        with self._lock:
            self.counts[name] += 1
            self.first.setdefault(name, str(e)[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_type": dict(self.counts), "first": self.first}


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(latencies: list[float]) -> dict[str, float]:
    s = sorted(latencies)
    return {"p50_ms": pct(s, 0.50) * 1e3, "p99_ms": pct(s, 0.99) * 1e3,
            "p999_ms": pct(s, 0.999) * 1e3, "max_ms": (s[-1] if s else math.nan) * 1e3,
            "samples": len(s)}


# -- load generators --------------------------------------------------------------


def closed_loop(op: Callable[[int], None], threads: int, warmup: float,
                duration: float) -> dict[str, Any]:
    """`threads` callers call `op` back to back; count calls that end in the window.

    A call that ends after the window is not counted: each caller's last call
    would otherwise add one operation per caller that the window did not hold.
    """
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    errors = Errors()
    window: list[float] = []

    def worker(k: int) -> None:
        barrier.wait()
        begin, end = window
        n = 0
        while True:
            try:
                op(k)
            except Exception as e:
                errors.add(e)
                now = time.perf_counter()
            else:
                now = time.perf_counter()
                if begin <= now < end:
                    n += 1
            if now >= end:
                break
        counts[k] = n

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    start = time.perf_counter()
    window.extend([start + warmup, start + warmup + duration])
    barrier.wait()
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    meter = LoadMeter()
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    load = meter.stop()
    for t in pool:
        t.join()
    ops = sum(counts)
    cpu = load["cpu_cores_busy"] * duration
    return {"ops": ops, "ops_per_s": ops / duration, "callers": threads,
            "duration_s": duration, "cpu_us_per_op": cpu / ops * 1e6 if ops else math.nan,
            **load, "errors": errors.as_dict()}


def _own_usage() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, blocks read from the disk) of this process and its children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return (me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime,
            me.ru_inblock + kids.ru_inblock)


def _machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    # Not steal either: no process here ran then (LoadMeter reports it on its own).
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0) - getattr(t, "steal", 0.0))


class LoadMeter:
    """CPU used by this run (this process and its children) and by everything else.

    The machine may be shared: `other_cores_busy` shows how much CPU other
    processes took during a measurement, so a disturbed figure can be seen;
    `steal_cores` how much the hypervisor kept from this guest. Diagnostics
    for a figure out of line: `system_share` (the kernel's part of this
    run's CPU) and `disk_read_mb` (what this run read from the disk, not the
    page cache).
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._own0 = _own_usage()
        self._busy0 = _machine_busy_seconds()
        self._steal0 = getattr(psutil.cpu_times(), "steal", 0.0)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        user, system, blocks = (b - a for a, b in zip(self._own0, _own_usage(), strict=True))
        own = user + system
        busy = _machine_busy_seconds() - self._busy0
        steal = getattr(psutil.cpu_times(), "steal", 0.0) - self._steal0
        return {"cpu_cores_busy": own / wall, "other_cores_busy": max(0.0, busy - own) / wall,
                "steal_cores": steal / wall, "system_share": system / own if own else 0.0,
                "disk_read_mb": blocks * 512 / 1e6}


def counted_loop(op: Callable[[int], None], threads: int, total: int,
                 latencies: list[float] | None = None) -> dict[str, Any]:
    """`threads` callers share `total` calls of `op(i)` (i = 1..total)."""
    ticket = itertools.count(1)
    errors = Errors()
    lat: list[list[float]] = [[] for _ in range(threads)]
    counts = [0] * threads
    timed = latencies is not None  # a million floats would be 32 MB of our own RSS

    def worker(k: int) -> None:
        mine = lat[k]
        n = 0
        while (i := next(ticket)) <= total:
            t0 = time.perf_counter()
            try:
                op(i)
            except Exception as e:
                errors.add(e)
            else:
                n += 1
                if timed:
                    mine.append(time.perf_counter() - t0)
        counts[k] = n

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    meter = LoadMeter()
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    load = meter.stop()
    if latencies is not None:
        for chunk in lat:
            latencies.extend(chunk)
    done = sum(counts)
    return {"ops": done, "ops_per_s": done / elapsed, "elapsed_s": elapsed,
            "callers": threads, **load, "errors": errors.as_dict()}


def whole_number(text: str) -> int:
    """Argparse type for a count whose least value the script checks itself (it depends)."""
    try:
        return int(text)
    except ValueError:  # argparse would say "invalid whole_number value", naming this function
        msg = f"must be a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def at_least_one(text: str) -> int:
    """Argparse type for the benchmark scripts' counts: a whole number, at least 1.

    With no player, bet or row a workload has nothing to measure.
    """
    value = whole_number(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def open_loop(op: Callable[[int], None], rate: float, duration: float,
              workers: int) -> dict[str, Any]:
    """Release calls at fixed times (rate per second); latency from the scheduled time."""
    n = max(1, int(rate * duration))
    inbox: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
    latency = [math.nan] * n
    errors = Errors()

    def worker(k: int) -> None:
        while (item := inbox.get()) is not None:
            i, scheduled = item
            try:
                op(k)
            except Exception as e:
                errors.add(e)
            else:
                latency[i] = time.perf_counter() - scheduled

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(workers)]
    for t in pool:
        t.start()
    meter = LoadMeter()
    start = time.perf_counter() + 0.05
    late = 0.0
    for i in range(n):
        scheduled = start + i / rate
        wait = scheduled - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late = max(late, -wait)
        inbox.put((i, scheduled))
    for _ in pool:
        inbox.put(None)
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    load = meter.stop()
    done = [x for x in latency if not math.isnan(x)]
    return {"offered_per_s": rate, "achieved_per_s": len(done) / elapsed,
            "max_dispatch_lag_ms": late * 1e3, "workers": workers, **load,
            **summary_ms(done), "errors": errors.as_dict()}


def mix_kind(i: int) -> str:
    """The game-like mix: a config change per 10,000 (first: op 1), a win per 1,000."""
    if i % 10_000 == 1:
        return "config"
    return "win" if i % 1_000 == 0 else "bet"


# -- workloads ---------------------------------------------------------------------


class Bench:
    """One run of the comparison: sizes, places, and the results gathered so far."""

    def __init__(self, sizes: Sizes, out: Path, *, quick: bool,
                 pg_url: str | None = None) -> None:
        self.sizes = sizes
        self.quick = quick
        self.out = out
        self.work = out / "work"
        self.cache = out / "cache"
        self.results: dict[str, Any] = {}
        self._serial = itertools.count()
        self.pg_url = pg_url
        self.systems: tuple[str, ...] = SYSTEMS  # those the sections run now
        self._schemas: dict[str, str] = {}  # PG target URL -> its schema

    def fresh_path(self, label: str) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / f"{next(self._serial):03d}-{label}.db"
        remove_db(path)
        return path

    def fresh(self, kind: str, label: str) -> Path | str:
        """A new, empty place for `kind`: a file, or (PG) a new schema's URL."""
        if kind != PG:
            return self.fresh_path(f"{label}-{kind}")
        assert self.pg_url is not None
        name = f"bench_{os.getpid()}_{next(self._serial):03d}_{label.replace('-', '_')}"
        with pg_connect(self.pg_url) as conn:
            conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(name)))
        target = with_search_path(self.pg_url, name)
        self._schemas[target] = name
        return target

    def discard(self, kind: str, target: Path | str) -> None:
        """Remove a place `fresh` made (a file, or a schema with everything in it)."""
        if kind != PG:
            remove_db(Path(target))
            return
        assert self.pg_url is not None
        name = self._schemas.pop(str(target))
        with pg_connect(self.pg_url) as conn:
            conn.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(name)))

    def discard_all(self) -> None:
        """Drop every schema still left (after a failed workload)."""
        for target in list(self._schemas):
            self.discard(PG, target)

    def record(self, section: str, out: dict[str, Any]) -> None:
        """Add a section's results (each pass of systems adds its own keys)."""
        merged = self.results.setdefault(section, {})
        for key, value in out.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value

    def run(self, kind: str, label: str, body: Callable[[Any], dict[str, Any]], *,
            path: Path | str | None = None, audit: bool = True, keep: bool = False,
            ) -> dict[str, Any]:
        """Open `kind` on a fresh file, run `body`, add counters and the audit."""
        path = path if path is not None else self.fresh(kind, label)
        system = open_system(kind, path)
        try:
            before = counters(system)
            result = body(system)
            result["counters"] = delta(before, counters(system))
        finally:
            system.close()
        if audit:
            result["verify"] = verify(kind, path)
        if not keep:
            self.discard(kind, path)
        return result

    # rest --------------------------------------------------------------------

    def rest(self) -> None:
        out = {}
        for levels in (LEVELS1, LEVELS3):
            for kind in self.systems:
                def body(system: Any, levels: tuple[str, ...] = levels) -> dict[str, Any]:
                    op = contribute_op(system, levels)
                    for _ in range(50):
                        op(0)
                    lat = []
                    errors = Errors()
                    meter = LoadMeter()
                    for _ in range(self.sizes.rest_calls):
                        t0 = time.perf_counter()
                        try:
                            op(0)
                        except Exception as e:
                            errors.add(e)
                        else:
                            lat.append(time.perf_counter() - t0)
                    return {**summary_ms(lat), **meter.stop(), "errors": errors.as_dict()}
                key = f"{len(levels)}-level/{kind}"
                out[key] = self.run(kind, f"rest-{len(levels)}", body)
                log(f"rest {key}: p50 {out[key]['p50_ms']:.3f} ms")
        self.record("rest", out)

    # throughput ----------------------------------------------------------------

    def throughput(self) -> None:
        out = {}
        for levels in (LEVELS1, LEVELS3):
            for threads in self.sizes.threads:
                for kind in self.systems:
                    def body(system: Any, levels: tuple[str, ...] = levels,
                             threads: int = threads) -> dict[str, Any]:
                        return closed_loop(contribute_op(system, levels), threads,
                                           self.sizes.warmup_s, self.sizes.duration_s)
                    key = f"{len(levels)}-level/{threads}/{kind}"
                    out[key] = self.run(kind, f"tput-{len(levels)}-{threads}", body)
                    log(f"throughput {key}: {out[key]['ops_per_s']:.0f} ops/s")
        self.record("throughput", out)

    def capacity(self, kind: str, levels: int) -> float:
        tput = self.results.get("throughput", {})
        best = [v["ops_per_s"] for k, v in tput.items()
                if k.startswith(f"{levels}-level/") and k.endswith(f"/{kind}")]
        if best:
            return max(best)
        # Measured here when the throughput section was skipped.
        group = LEVELS1 if levels == 1 else LEVELS3
        r = self.run(kind, "capacity", lambda s: closed_loop(
            contribute_op(s, group), 16, self.sizes.warmup_s, self.sizes.duration_s),
            audit=False)
        return float(r["ops_per_s"])

    # latency at half capacity --------------------------------------------------------

    def latency(self) -> None:
        out = {}
        n = self.sizes.latency_rounds
        for levels in (LEVELS1, LEVELS3):
            # The offered load is set once per system, from its own capacity; the
            # rounds then alternate the systems, so that a stall of the machine
            # falls in one round of one system and shows as an outlier among its
            # rounds instead of being the published figure.
            rates = {kind: self.capacity(kind, len(levels)) / 2 for kind in self.systems}
            rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in self.systems}
            for i in range(n):
                for kind in self.systems:
                    rate = rates[kind]

                    def body(system: Any, levels: tuple[str, ...] = levels,
                             rate: float = rate) -> dict[str, Any]:
                        op = contribute_op(system, levels)
                        for _ in range(100):
                            op(0)
                        return open_loop(op, rate, self.sizes.open_loop_s,
                                         self.sizes.open_loop_workers)
                    key = f"{len(levels)}-level/{kind}"
                    r = self.run(kind, f"lat-{len(levels)}", body)
                    rounds[kind].append(r)
                    log(f"latency {key} at {rate:.0f}/s (round {i + 1} of {n}): p50 "
                        f"{r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} p999 {r['p999_ms']:.2f} ms, "
                        f"dispatch lag {r['max_dispatch_lag_ms']:.1f} ms")
            for kind in self.systems:
                key = f"{len(levels)}-level/{kind}"
                out[key] = median_round(rounds[kind], "p99_ms", lower_is_better=True,
                                        detail=LATENCY_DETAIL)
                if n > 1:
                    log(f"latency {key}: round {out[key]['chosen_round']} has the median "
                        f"p99 of {', '.join(f'{x:.2f}' for x in out[key]['rounds_p99_ms'])} ms")
        self.record("latency", out)

    # game-like mix ---------------------------------------------------------------

    def mix(self) -> None:
        out = {}
        for kind in self.systems:
            def body(system: Any) -> dict[str, Any]:
                def op(i: int) -> None:
                    kind = mix_kind(i)
                    if kind == "config":
                        level = LEVELS3[(i // 10_000) % 3]
                        rate = Decimal("0.004") if (i // 10_000) % 2 else Decimal("0.002")
                        system.update_config(level, op_id=new_op_id(), contribution_rate=rate)
                    elif kind == "win":
                        system.process_win(LEVELS3[(i // 1_000) % 3], op_id=new_op_id())
                    else:
                        system.contribute(BET, groups=LEVELS3, op_id=new_op_id())

                lat: list[float] = []
                r = counted_loop(op, self.sizes.mix_callers, self.sizes.mix_ops, lat)
                kinds = Counter(mix_kind(i) for i in range(1, self.sizes.mix_ops + 1))
                return {**r, **summary_ms(lat), "kinds": dict(kinds)}
            out[kind] = self.run(kind, "mix", body)
            log(f"mix {kind}: {out[kind]['ops_per_s']:.0f} ops/s {out[kind]['kinds']}")
        self.record("mix", out)

    # several processes on one file -------------------------------------------------

    def processes(self) -> None:
        out = {}
        s = self.sizes
        for kind in self.systems:
            for procs in (1, s.mp_procs):
                path = self.fresh(kind, f"procs-{procs}")
                open_system(kind, path).close()  # create the file before the race
                r = run_processes(kind, path, procs=procs, callers=s.mp_callers // procs,
                                  levels=LEVELS3, warmup=s.warmup_s,
                                  duration=s.mp_duration_s)
                r["verify"] = verify(kind, path)
                self.discard(kind, path)
                out[f"{procs}/{kind}"] = r
                log(f"processes {procs} {kind}: {r['ops_per_s']:.0f} ops/s "
                    f"counters {r['counters']}")
        self.record("processes", out)

    # big ledger ------------------------------------------------------------------

    def ledger(self) -> None:
        out: dict[str, Any] = {"rows": self.sizes.big_rows, "templates": {}}
        s = self.sizes
        for kind in self.systems:
            if kind != PG:
                template, meta = big_template(kind, s.big_rows, self.cache)
                out["templates"][kind] = meta
            if kind == PG:  # no file to copy: filled server-side in a new schema
                big = self.fresh(kind, "ledger-big")
                out["templates"][kind] = big_pg(big, s.big_rows)
            else:
                big = self.fresh_path(f"ledger-big-{kind}")
                t0 = time.perf_counter()
                shutil.copyfile(template, big)
                fsync_file(big)  # else its write-back competes with the commits
                log(f"copied {template.name} in {time.perf_counter() - t0:.1f} s")
            # Random op_ids (the headline: what uuid4 round ids cost), measured in
            # rounds that alternate the two: one window of each is too noisy for a
            # ratio (the same workload moves by 10-30% from window to window here),
            # and drift over the section falls on both alike. Each round of the
            # empty ledger starts empty (a fresh file, audited); the big one keeps
            # what the rounds add (~100,000 rows a round beside its millions).
            rounds: dict[str, list[dict[str, Any]]] = {"empty": [], "big": []}
            for i in range(s.ledger_rounds):
                for size in ("empty", "big"):
                    r = self.run(kind, "ledger", lambda system: closed_loop(
                        contribute_op(system, LEVELS3, new_op_id), s.big_callers,
                        s.warmup_s, s.duration_s),
                        path=big if size == "big" else None, audit=size == "empty",
                        keep=size == "big")
                    rounds[size].append(r)
                    log(f"ledger {size} random op_ids {kind} (round {i + 1}): "
                        f"{r['ops_per_s']:.0f} ops/s, {r['cpu_us_per_op']:.0f} us CPU/op "
                        f"({r['system_share']:.0%} kernel), {r['disk_read_mb']:.1f} MB read "
                        f"from disk, steal {r['steal_cores']:.2f}")
            for size in ("empty", "big"):
                out[f"{size}/{kind}"] = median_round(rounds[size])
            ratios = [b["ops_per_s"] / e["ops_per_s"]
                      for b, e in zip(rounds["big"], rounds["empty"], strict=True)]
            out[f"ratio/{kind}"] = {"rounds": ratios, "median": paired_ratio(
                [r["ops_per_s"] for r in rounds["big"]],
                [r["ops_per_s"] for r in rounds["empty"]])}
            # Then time-ordered ones (a fresh empty file, the same big one), to tell
            # the ledger's size from the locality of the keys (one window each: not
            # a target).
            for size in ("empty", "big"):
                key = f"{size}-ordered/{kind}"
                out[key] = self.run(
                    kind, "ledger", lambda system: closed_loop(
                        contribute_op(system, LEVELS3, ordered_op_id), s.big_callers,
                        s.warmup_s, s.duration_s),
                    path=big if size == "big" else None, audit=size == "empty")
                log(f"ledger {size} ordered op_ids {kind}: {out[key]['ops_per_s']:.0f} ops/s")
        self.record("ledger", out)

    # memory -----------------------------------------------------------------------

    def rss(self) -> None:
        # Both systems run at once, each in a fresh process of its own: memory is
        # per process, and a million operations each, one after the other,
        # would take most of the run. Their throughput here is not a comparison.
        # The engine on PostgreSQL runs in a pass of its own, alone.
        s = self.sizes
        paths = {kind: self.fresh(kind, "rss") for kind in self.systems}
        results = in_children({kind: (_rss_child, (kind, str(paths[kind]), s.rss_ops,
                                                   s.rss_warmup, s.rss_callers))
                               for kind in self.systems})
        for kind, r in results.items():
            r["verify"] = verify(kind, paths[kind])
            self.discard(kind, paths[kind])
            log(f"rss {kind}: start {r['rss_start_mb']:.1f} MB, end {r['rss_end_mb']:.1f} MB, "
                f"peak {r['peak_rss_mb']:.1f} MB over {r['ops']} ops")
        self.record("rss", results)


# -- child processes --------------------------------------------------------------


def quiet_logging() -> None:
    # APSW logs every SQLite notice (busy, constraint) to the root logger; the
    # runner counts failures itself.
    logging.getLogger().addHandler(logging.NullHandler())


def _mp_child(kind: str, path: str, callers: int, levels: tuple[str, ...],  # noqa: PLR0917
              warmup: float, duration: float, ready: Any, go: Any, out: Any) -> None:
    # Positional: it is a Process target.
    quiet_logging()
    try:
        system = open_system(kind, path)
        before = counters(system)
        ready.put(os.getpid())
        go.wait(60)
        r = closed_loop(contribute_op(system, levels), callers, warmup, duration)
        r["counters"] = delta(before, counters(system))
        system.close()
        out.put(r)
    except BaseException as e:
        ready.put(-1)
        out.put({"crash": f"{type(e).__name__}: {e}"})
        raise


def run_processes(kind: str, path: Path | str, *, procs: int, callers: int,
                  levels: tuple[str, ...], warmup: float, duration: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = [ctx.Process(target=_mp_child, args=(kind, str(path), callers, levels, warmup,
                                                    duration, ready, go, out))
                for _ in range(procs)]
    with children_started(children):
        for _ in children:
            ready.get(timeout=120)
        meter = LoadMeter()
        go.set()
        results = [out.get(timeout=duration + warmup + 300) for _ in children]
        for c in children:
            c.join(60)
        load = meter.stop()  # the window includes the children's warm-up and shutdown
    crashes = [r["crash"] for r in results if "crash" in r]
    if crashes:
        msg = f"{kind} child process failed: {crashes[0]}"
        raise RuntimeError(msg)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"]["by_type"])
    ops = sum(r["ops"] for r in results)
    return {"processes": procs, "callers_per_process": callers, "ops": ops,
            "ops_per_s": ops / duration, "per_process_ops_per_s":
            [r["ops_per_s"] for r in results],
            "counters": add_counters([r["counters"] for r in results]),
            "other_cores_busy": load["other_cores_busy"],
            "errors": {"total": sum(errors.values()), "by_type": dict(errors),
                       "first": {k: v for r in results for k, v in r["errors"]["first"].items()}}}


def _child_entry(fn: Callable[..., dict[str, Any]], out: Any, *args: Any) -> None:
    quiet_logging()
    try:
        out.put(fn(*args))
    except BaseException as e:
        out.put({"crash": f"{type(e).__name__}: {e}"})
        raise


def in_children(jobs: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]],
                ) -> dict[str, dict[str, Any]]:
    """Run each `fn(*args)` at once, each in a fresh spawned process; return the results."""
    ctx = mp.get_context("spawn")
    queues = {key: ctx.Queue() for key in jobs}
    children = {key: ctx.Process(target=_child_entry, args=(fn, queues[key], *args))
                for key, (fn, args) in jobs.items()}
    with children_started(list(children.values())):
        results: dict[str, dict[str, Any]] = {key: q.get(timeout=3600)
                                              for key, q in queues.items()}
        for child in children.values():
            child.join(60)
    for key, result in results.items():
        if "crash" in result:
            msg = f"child process {key} failed: {result['crash']}"
            raise RuntimeError(msg)
    return results


def _rss_child(kind: str, path: str, ops: int, warmup: int, callers: int) -> dict[str, Any]:
    proc = psutil.Process()
    system = open_system(kind, path)
    try:
        op = contribute_op(system, LEVELS1)
        counted_loop(op, callers, warmup)
        gc.collect()
        start = proc.memory_info().rss
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:
            while not stop.wait(0.25):
                samples.append((time.perf_counter() - t0, proc.memory_info().rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        before = counters(system)
        r = counted_loop(op, callers, ops)
        r["counters"] = delta(before, counters(system))
        stop.set()
        sampler.join()
        gc.collect()
        end = proc.memory_info().rss
    finally:
        system.close()
    peak = _high_water_rss()
    step = max(1, len(samples) // 40)
    return {**r, "warmup_ops": warmup, "rss_start_mb": start / MB, "rss_end_mb": end / MB,
            "rss_growth_mb": (end - start) / MB,
            "peak_rss_mb": max([peak, end, *(x for _, x in samples)]) / MB,
            "samples_mb": [(round(t, 1), round(x / MB, 1)) for t, x in samples[::step]]}


def _high_water_rss() -> int:
    """Peak RSS of this process image in bytes (VmHWM), or 0 where unknown.

    Not ru_maxrss: on Linux that survives fork + exec, so a spawned child
    would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the big-ledger file -------------------------------------------------------------


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_db(path: Path) -> None:
    """Remove a SQLite file and the files beside it (the engine's `-lock` too: it stays)."""
    for suffix in ("", "-wal", "-shm", "-journal", "-lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# Bumped when big_template changes what it writes, so older cached files are
# rebuilt: 2 = each extrapolated operation's stored result repeats its own
# ledger row (verify() checks stored results since then).
TEMPLATE_FORMAT = 2


def schema_tag(kind: str, scratch: Path) -> str:
    """A short digest of the system's schema, so a cached file follows schema changes."""
    import hashlib  # noqa: PLC0415 - only here

    path = scratch / f"schema-{kind}.db"
    remove_db(path)
    open_system(kind, path, filler=True).close()
    conn = apsw.Connection(str(path))
    sql = "\n".join(r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"))
    conn.close()
    remove_db(path)
    return hashlib.sha256(f"{TEMPLATE_FORMAT}\n{sql}".encode()).hexdigest()[:12]


def _row(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any]:
    cursor = conn.execute(sql, params)
    values = cursor.fetchone()
    names = [d[0] for d in cursor.getdescription()]
    return dict(zip(names, values, strict=True))


def _is_time(column: str) -> bool:
    return column.endswith(("_ms", "_at"))


def _extrapolate_level(s0: dict[str, Any], s1: dict[str, Any], s2: dict[str, Any],
                       k: int) -> dict[str, Any]:
    """Level row after `k` more contributions like the last one (each column linear)."""
    final = {}
    for c, v2 in s2.items():
        v0, v1 = s0[c], s1[c]
        if v0 == v1 == v2 or _is_time(c):
            continue
        if (isinstance(v2, int) and isinstance(v1, int) and isinstance(v0, int)
                and v2 - v1 == v1 - v0):
            final[c] = v2 + k * (v2 - v1)
            continue
        msg = f"level column {c!r} does not grow linearly ({v0!r}, {v1!r}, {v2!r})"
        raise RuntimeError(msg)
    return final


def _ledger_rows(r1: dict[str, Any], r2: dict[str, Any], ids: list[str],
                 ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Columns and rows continuing the ledger after r2, one per op_id in `ids`."""
    columns = [c for c in r2 if c != "seq"]
    parts: list[Callable[[int, str], Any]] = []
    for c in columns:
        v1, v2 = r1[c], r2[c]
        if c == "op_id":
            parts.append(lambda _j, oid: oid)
        elif v1 == v2 or _is_time(c):
            parts.append(lambda _j, _oid, v=v2: v)
        elif isinstance(v1, int) and isinstance(v2, int):
            parts.append(lambda j, _oid, v=v2, d=v2 - v1: v + j * d)
        elif isinstance(v2, str) and r2["op_id"] in v2:
            parts.append(lambda _j, oid, v=v2, old=r2["op_id"]: v.replace(old, oid))
        else:
            msg = f"ledger column {c!r} differs between contributions ({v1!r}, {v2!r})"
            raise RuntimeError(msg)
    rows = (tuple(p(j, oid) for p in parts) for j, oid in enumerate(ids, start=1))
    return columns, rows


_VERSION, _BALANCE = "@version@", "@balance@"


def _result_template(result: str) -> str:
    """Return a stored bet result with the filler's version and balance as slots.

    Each extrapolated operation's stored result must repeat its own ledger row
    (verify() checks what a replay would return), not the sampled one's.
    """
    record = json.loads(result)
    record["versions"][FILLER] = _VERSION
    record["balances"][FILLER] = _BALANCE
    return json.dumps(record, sort_keys=True).replace(f'"{_VERSION}"', _VERSION)


def _result_for(template: str, old_id: str, oid: str, version: int, balance: int) -> str:
    """Fill a `_result_template` for one extrapolated operation."""
    return (template.replace(old_id, oid).replace(_VERSION, str(version))
            .replace(_BALANCE, f"{balance // 1_000_000}.{balance % 1_000_000:06d}"))


def sample_filler(system: Any, row: Callable[[str], dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Make two real contributions to the filler level, then close `system`.

    Returns the filler's level row before and after each, and the two ledger
    rows, read with `row(sql)`: what a big ledger is extrapolated from.
    """
    level_sql = f"SELECT * FROM levels WHERE name = '{FILLER}'"
    ledger_sql = f"SELECT * FROM ledger WHERE level = '{FILLER}' ORDER BY seq DESC LIMIT 1"
    try:
        states = [row(level_sql)]
        ledger = []
        for _ in range(2):
            system.contribute(FILLER_BET, groups=(FILLER,), op_id=new_op_id())
            states.append(row(level_sql))
            ledger.append(row(ledger_sql))
    finally:
        system.close()
    return states, ledger


def verified_meta(kind: str, target: Any, what: str, *, rows: int, filler: int,
                  built: float, size: int) -> dict[str, Any]:
    """Verify a freshly filled big ledger with the system's own verify(); describe it."""
    log(f"inserted {filler - 2:,} rows in {built:.0f} s; verifying")
    t1 = time.perf_counter()
    report = verify(kind, target)
    if not report["ok"]:
        msg = f"{what} does not verify: {report['problems']}"
        raise RuntimeError(msg)
    return {"ledger_rows": rows, "filler_rows": filler, "build_s": round(built, 1),
            "verify_s": round(time.perf_counter() - t1, 1), "verify": report,
            "size_mb": round(size / MB, 1)}


BIG_MIN_ROWS = len(DEFAULT_LEVELS) + 1 + 2
"""The fewest ledger rows a big template holds: a row for each level's creation (the
filler's too) and for each of the filler's two real contributions (see `sample_filler`)."""


def big_template(kind: str, rows: int, cache: Path) -> tuple[Path, dict[str, Any]]:
    """Return a file whose ledger holds `rows` rows (cached), and how it was made."""
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{kind}-ledger-{rows}-{schema_tag(kind, cache)}.db"
    meta_path = final.with_suffix(".json")
    if final.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        log(f"using cached {final.name}")
        return final, {**meta, "cached": True}
    log(f"building {final.name} ({rows:,} ledger rows); cached for later runs")
    t0 = time.perf_counter()
    tmp = cache / f"{final.name}.building"
    remove_db(tmp)
    try:
        meta = _build_big(kind, tmp, rows, t0)
        remove_db(final)
        tmp.replace(final)
    finally:
        remove_db(tmp)  # (a build cut short, Ctrl-C or a failure: not kept half-built)
    meta_path.write_text(json.dumps(meta))
    for stale in cache.glob(f"{kind}-ledger-{rows}-*"):  # built for an older schema
        if stale.name not in (final.name, meta_path.name):
            stale.unlink()
    log(f"built {final.name}: {meta}")
    return final, {**meta, "cached": False}


def _build_big(kind: str, tmp: Path, rows: int, t0: float) -> dict[str, Any]:
    """Fill a new file at `tmp` up to `rows` ledger rows, verify it; return how it was made."""
    system = open_system(kind, tmp, filler=True)
    conn = apsw.Connection(str(tmp))
    s, ledger = sample_filler(system, lambda sql: _row(conn, sql))
    op2 = _row(conn, "SELECT * FROM operations WHERE op_id = ?", (ledger[1]["op_id"],))
    (have,) = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
    k = max(0, rows - have)
    level = _extrapolate_level(s[0], s[1], s[2], k)
    ids = [new_op_id() for _ in range(k)]
    columns, ledger_rows = _ledger_rows(ledger[0], ledger[1], ids)
    op_columns = list(op2)
    old = op2["op_id"]
    template = _result_template(op2["result"])
    r1, r2 = ledger
    step = {c: r2[c] - r1[c] for c in ("version_after", "balance_after")}

    def op_rows() -> Iterator[tuple[Any, ...]]:
        # key order: a compact index, built fast; row j's result repeats ledger row j
        for j in sorted(range(1, k + 1), key=lambda j: ids[j - 1]):
            oid = ids[j - 1]
            result = _result_for(template, old, oid,
                                 r2["version_after"] + j * step["version_after"],
                                 r2["balance_after"] + j * step["balance_after"])
            yield tuple(oid if c == "op_id" else result if c == "result" else
                        v.replace(old, oid) if isinstance(v, str) else v
                        for c, v in op2.items())

    conn.execute("PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF; "
                 "PRAGMA cache_size = -1000000")
    with conn:
        indexes = [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' "
            "AND sql IS NOT NULL")]
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' "
            "AND sql IS NOT NULL")]
        for name in names:
            conn.execute(f'DROP INDEX "{name}"')
        conn.executemany(f"INSERT INTO ledger ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' * len(columns))})", ledger_rows)
        for sql in indexes:
            conn.execute(sql)
        conn.executemany(f"INSERT INTO operations ({', '.join(op_columns)}) VALUES "
                         f"({', '.join('?' * len(op_columns))})", op_rows())
        if level:
            conn.execute(f"UPDATE levels SET {', '.join(f'{c} = ?' for c in level)} "
                         f"WHERE name = ?", (*level.values(), FILLER))
    (total,) = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    meta = verified_meta(kind, tmp, f"the built {kind} file", rows=total, filler=k + 2,
                         built=time.perf_counter() - t0, size=tmp.stat().st_size)
    fsync_file(tmp)
    return meta


# -- PostgreSQL ----------------------------------------------------------------------


def with_search_path(url: str, schema: str) -> str:
    """Return `url` with `schema` first on its search_path (libpq `options`)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


def _pg_row(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = (),
            ) -> dict[str, Any]:
    cursor = conn.execute(query, params)
    values = cursor.fetchone()
    assert values is not None, query
    assert cursor.description is not None, query
    return dict(zip([d.name for d in cursor.description], values, strict=True))


def _pg_fill(conn: psycopg.Connection[Any], table: str, template: dict[str, Any], *,
             old_id: str, salt: str, k: int, steps: dict[str, int],
             ordered: bool = False,
             computed: Callable[[pgsql.Composable], dict[str, pgsql.Composable]] | None = None
             ) -> None:
    """INSERT ... SELECT k rows like `template` from generate_series, on the server.

    Row j (1..k) gets a random-looking op_id (md5 of `salt` and j), `template`'s
    op_id replaced by it in every text column, and each column in `steps`
    advanced by j times its step; `computed(op_id expression)` may give other
    columns an expression of their own; every other column as in `template`.
    """
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,)).fetchall())
    oid = pgsql.SQL("md5({} || j::text)").format(pgsql.Literal(salt))
    own = computed(oid) if computed is not None else {}
    columns, exprs = [], []
    for c, v in template.items():
        if c == "seq":
            continue
        cast = pgsql.SQL(types[c])
        if c in own:
            expr = own[c]
        elif c == "op_id":
            expr = oid
        elif c in steps:
            expr = pgsql.SQL("({}::{} + j * {})").format(pgsql.Literal(v), cast,
                                                        pgsql.Literal(steps[c]))
        elif isinstance(v, str) and old_id in v:
            expr = pgsql.SQL("replace({}, {}, {})::{}").format(
                pgsql.Literal(v), pgsql.Literal(old_id), oid, cast)
        else:
            expr = pgsql.SQL("{}::{}").format(pgsql.Literal(v), cast)
        columns.append(pgsql.Identifier(c))
        exprs.append(expr)
    conn.execute(pgsql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM generate_series(1, {}::bigint) AS j{}").format(
        pgsql.Identifier(table), pgsql.SQL(", ").join(columns), pgsql.SQL(", ").join(exprs),
        pgsql.Literal(k), pgsql.SQL(" ORDER BY 1" if ordered else "")))


def big_pg(target: str, rows: int) -> dict[str, Any]:
    """Fill the empty schema at `target` until its ledger holds `rows` rows; say how.

    As `big_template` does for a file: two real contributions to a filler level,
    the rest extrapolated from them, then the engine's own verify(); but the
    rows are made by the server (INSERT ... SELECT over generate_series), not
    sent one by one. Built fresh each run (a schema cannot be copied like a file).
    """
    log(f"filling a PostgreSQL ledger to {rows:,} rows, server-side")
    t0 = time.perf_counter()
    system = open_system(PG, target, filler=True)
    with pg_connect(target) as conn:
        s, ledger = sample_filler(system, lambda sql: _pg_row(conn, sql))
        op2 = _pg_row(conn, "SELECT * FROM operations WHERE op_id = %s", (ledger[1]["op_id"],))
        have = _pg_row(conn, "SELECT count(*) AS n FROM ledger")["n"]
        k = max(0, rows - have)
        level = _extrapolate_level(s[0], s[1], s[2], k)
        r1, r2 = ledger
        _ledger_rows(r1, r2, [])  # refuses a column that does not grow linearly
        steps = {c: r2[c] - r1[c] for c in r2 if c not in ("seq", "op_id") and not _is_time(c)
                 and isinstance(r2[c], int) and r2[c] != r1[c]}
        with conn.transaction():
            # The ledger's secondary indexes are built once after the fill,
            # not row by row (as big_template does on a file).
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename = 'ledger' AND indexname "
                "NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'ledger'::regclass)"
            ).fetchall()
            for name, _ in indexes:
                conn.execute(pgsql.SQL("DROP INDEX {}").format(pgsql.Identifier(name)))
            salt = new_op_id()  # the same op_ids in both tables
            _pg_fill(conn, "ledger", r2, old_id=r2["op_id"], salt=salt, k=k, steps=steps)
            for _, definition in indexes:
                conn.execute(definition)
            template = _result_template(op2["result"])

            def result(oid: pgsql.Composable) -> dict[str, pgsql.Composable]:
                """Row j's stored result, repeating ledger row j's version and balance."""
                version = pgsql.SQL("({} + j * {})").format(
                    pgsql.Literal(r2["version_after"]), pgsql.Literal(steps["version_after"]))
                balance = pgsql.SQL("({}::bigint + j * {})").format(
                    pgsql.Literal(r2["balance_after"]), pgsql.Literal(steps["balance_after"]))
                text = pgsql.SQL("(({} / 1000000)::text || '.' || "
                                 "lpad(({} % 1000000)::text, 6, '0'))").format(balance, balance)
                return {"result": pgsql.SQL(
                    "replace(replace(replace({}, {}, {}), {}, {}::text), {}, {})").format(
                        pgsql.Literal(template), pgsql.Literal(op2["op_id"]), oid,
                        pgsql.Literal(_VERSION), version, pgsql.Literal(_BALANCE), text)}

            _pg_fill(conn, "operations", op2, old_id=op2["op_id"], salt=salt, k=k, steps={},
                     ordered=True, computed=result)
            if level:
                conn.execute(pgsql.SQL("UPDATE levels SET {} WHERE name = %s").format(
                    pgsql.SQL(", ").join(pgsql.SQL("{} = %s").format(pgsql.Identifier(c))
                                         for c in level)), (*level.values(), FILLER))
        conn.execute("ANALYZE ledger")
        conn.execute("ANALYZE operations")
        total = _pg_row(conn, "SELECT count(*) AS n FROM ledger")["n"]
        size = _pg_row(conn, "SELECT pg_total_relation_size('ledger') + "
                             "pg_total_relation_size('operations') AS b")["b"]
    meta = {**verified_meta(PG, target, "the filled PostgreSQL ledger", rows=total,
                            filler=k + 2, built=time.perf_counter() - t0, size=size),
            "cached": False, "how": "INSERT ... SELECT over generate_series (server-side)"}
    log(f"filled the PostgreSQL ledger: {meta}")
    return meta


class SetupError(Exception):
    """A run that cannot start, with why on one line (said before anything runs)."""


def pg_error(e: Exception) -> str:
    """A psycopg error's message on one line (libpq words some on several)."""
    return " ".join(str(e).split())


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection of the runner's own, bounded as the engine's are.

    Without the engine's connect_timeout and keepalives a server that
    accepts and then says nothing (hung, a stalled proxy) held the runner
    at its first connection for psycopg's own default bound (130 s with
    psycopg 3.3).
    """
    from jackpot.storage.postgres import network_defaults  # noqa: PLC0415 - needs psycopg

    return psycopg.connect(url, autocommit=True, **network_defaults(url))


def pg_info(url: str) -> dict[str, Any]:
    """The PostgreSQL server the column ran on (no password)."""
    from jackpot.storage.postgres import describe  # noqa: PLC0415 - needs psycopg

    with pg_connect(url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (["server_version", "fsync", "synchronous_commit", "wal_sync_method",
              "shared_buffers", "max_connections"],)).fetchall())
        # Every workload runs in a schema of its own: a role that may not make
        # one would fail the PostgreSQL pass, after all the SQLite workloads.
        probe = pgsql.Identifier(f"bench_{os.getpid()}_probe")
        try:
            conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(probe))
        except psycopg.errors.InsufficientPrivilege as e:
            msg = ("the role may not create schemas there (every workload runs in a fresh "
                   f"one; GRANT CREATE ON DATABASE to it): {pg_error(e)}")
            raise SetupError(msg) from e
        conn.execute(pgsql.SQL("DROP SCHEMA {}").format(probe))
    return {"where": describe(url), **settings}


# -- the machine ----------------------------------------------------------------------


def _cmd(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False,
                              timeout=10).stdout.strip()
    except OSError:
        return ""


def fsync_rate(directory: Path, seconds: float) -> float:
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def machine(out: Path, sizes: Sizes) -> dict[str, Any]:
    lscpu = dict(line.split(":", 1) for line in _cmd("lscpu").splitlines() if ":" in line)
    source, fstype = ([*_cmd("findmnt", "-no", "SOURCE,FSTYPE", "-T", str(out)).split(), "", ""]
                      [:2])
    dev = Path(source).name.rstrip("0123456789") if source else ""
    rotational = Path(f"/sys/block/{dev}/queue/rotational")
    src = Path(jackpot.__file__).resolve().parent
    return {
        "cpu": lscpu.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "hypervisor": lscpu.get("Hypervisor vendor", "").strip() or None,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "disk": {"device": source, "fs": fstype,
                 "rotational": rotational.read_text().strip() if rotational.exists() else None,
                 "fsync_per_s": round(fsync_rate(out, sizes.fsync_probe_s))},
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
        "jackpot": str(src),
        "commit": _cmd("git", "-C", str(src), "rev-parse", "--short", "HEAD") or "unknown",
        "src_dirty": bool(_cmd("git", "-C", str(src), "status", "--porcelain", ".")),
    }


# -- the report ------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    figure: str
    engine: float | None
    baseline: float | None
    unit: str
    better: str  # "higher" or "lower"
    counters: dict[str, int] | None = None
    errors: str = ""
    background: str = ""
    ratio: float | None = field(default=None)
    postgresql: float | None = None  # the engine on PostgreSQL (--pg)
    pg_counters: dict[str, int] | None = None
    pg_errors: str = ""
    pg_ratio: float | None = field(default=None)  # postgresql / engine (on SQLite)

    def __post_init__(self) -> None:
        if self.engine is not None and self.baseline:
            self.ratio = self.engine / self.baseline
        if self.postgresql is not None and self.engine:
            self.pg_ratio = self.postgresql / self.engine


@dataclass
class Target:
    name: str
    value: float | None
    op: str
    limit: float
    detail: str

    @property
    def passed(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.limit if self.op == ">=" else (
            self.value <= self.limit if self.op == "<=" else self.value < self.limit)


def _err(*results: dict[str, Any] | None) -> str:
    return "/".join(str(r["errors"]["total"]) if r else "-" for r in results)


def _background(*results: dict[str, Any] | None) -> str:
    return "/".join(f"{r['other_cores_busy']:.2f}" if r and "other_cores_busy" in r else "-"
                    for r in results)


def build_rows(results: dict[str, Any], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []

    def pair(section: str, key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        sec = results.get(section, {})
        return sec.get(f"{key}engine"), sec.get(f"{key}baseline")

    def pg(section: str, key: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = results.get(section, {}).get(f"{key}{PG}")
        return result

    def add(section: str, figure: str, e: dict[str, Any] | None,  # noqa: PLR0917
            b: dict[str, Any] | None, metric: str, unit: str, better: str,
            p: dict[str, Any] | None = None) -> None:
        if e is None and b is None and p is None:
            return
        rows.append(Row(section, figure, e[metric] if e else None, b[metric] if b else None,
                        unit, better, e.get("counters") if e else None, _err(e, b),
                        _background(e, b), postgresql=p[metric] if p else None,
                        pg_counters=p.get("counters") if p else None,
                        pg_errors=_err(p) if p else ""))

    for lv in (1, 3):
        e, b = pair("rest", f"{lv}-level/")
        p = pg("rest", f"{lv}-level/")
        add("at rest", f"{lv}-level contribute, 1 caller, p50", e, b, "p50_ms", "ms", "lower", p)
        add("at rest", f"{lv}-level contribute, 1 caller, p99", e, b, "p99_ms", "ms", "lower", p)
    for lv in (1, 3):
        for t in sizes.threads:
            e, b = pair("throughput", f"{lv}-level/{t}/")
            add("throughput", f"{lv}-level contribute, {t} callers", e, b, "ops_per_s",
                "ops/s", "higher", pg("throughput", f"{lv}-level/{t}/"))
    for lv in (1, 3):
        t = max(sizes.threads)
        e, b = pair("throughput", f"{lv}-level/{t}/")
        p = pg("throughput", f"{lv}-level/{t}/")
        add("throughput", f"{lv}-level, {t} callers: CPU time per operation", e, b,
            "cpu_us_per_op", "us", "lower", p)
        add("throughput", f"{lv}-level, {t} callers: CPU cores busy", e, b,
            "cpu_cores_busy", "cores", "lower", p)
    for lv in (1, 3):
        e, b = pair("latency", f"{lv}-level/")
        p = pg("latency", f"{lv}-level/")
        fig = f"{lv}-level at half capacity"
        add("latency", f"{fig}: offered load", e, b, "offered_per_s", "ops/s", "higher", p)
        for q in ("p50", "p99", "p999"):
            add("latency", f"{fig}: {q}", e, b, f"{q}_ms", "ms", "lower", p)
    e, b = pair("mix", "")
    p = pg("mix", "")
    add("mix", f"3-level bets + wins + config, {sizes.mix_callers} callers", e, b,
        "ops_per_s", "ops/s", "higher", p)
    add("mix", "all operations, p99", e, b, "p99_ms", "ms", "lower", p)
    for procs in (1, sizes.mp_procs):
        e, b = pair("processes", f"{procs}/")
        add("processes", f"{procs} process(es) x {sizes.mp_callers // procs} callers, 3-level",
            e, b, "ops_per_s", "ops/s", "higher", pg("processes", f"{procs}/"))
    e1, b1 = pair("processes", "1/")
    e4, b4 = pair("processes", f"{sizes.mp_procs}/")
    p1, p4 = pg("processes", "1/"), pg("processes", f"{sizes.mp_procs}/")
    if (e1 and e4 and b1 and b4) or (p1 and p4):
        rows.append(Row("processes", f"{sizes.mp_procs} processes / 1 process",
                        _over(e4, e1), _over(b4, b1), "x", "higher",
                        postgresql=_over(p4, p1)))
    for keys, suffix in (("random op_ids", ""), ("time-ordered op_ids", "-ordered")):
        for size, label in (("empty", "empty ledger"),
                            ("big", f"{sizes.big_rows:,}-row ledger")):
            e, b = pair("ledger", f"{size}{suffix}/")
            add("ledger", f"{label}, {keys}, {sizes.big_callers} callers, 3-level", e, b,
                "ops_per_s", "ops/s", "higher", pg("ledger", f"{size}{suffix}/"))
        eb, bb = pair("ledger", f"big{suffix}/")
        ee, be = pair("ledger", f"empty{suffix}/")
        pb, pe = pg("ledger", f"big{suffix}/"), pg("ledger", f"empty{suffix}/")
        if (eb and ee and bb and be) or (pb and pe):
            # Random op_ids were measured in rounds: the median of their ratios.
            paired = results.get("ledger", {}) if not suffix else {}
            rows.append(Row("ledger", f"big / empty, {keys}",
                            _big_over_empty(paired, "engine", eb, ee),
                            _big_over_empty(paired, "baseline", bb, be), "x", "higher",
                            postgresql=_big_over_empty(paired, PG, pb, pe)))
    e, b = pair("rss", "")
    p = pg("rss", "")
    ops = f"{sizes.rss_ops:,} ops"
    add("rss", f"RSS after warm-up ({sizes.rss_callers} callers, 1-level)", e, b,
        "rss_start_mb", "MB", "lower", p)
    add("rss", f"RSS growth over {ops}", e, b, "rss_growth_mb", "MB", "lower", p)
    add("rss", f"peak RSS over {ops}", e, b, "peak_rss_mb", "MB", "lower", p)
    return rows


def _big_over_empty(section: dict[str, Any], kind: str, big: dict[str, Any] | None,
                    empty: dict[str, Any] | None) -> float | None:
    """The median of the rounds' big / empty ratios where measured in rounds, else one."""
    paired = section.get(f"ratio/{kind}")
    return paired["median"] if paired else _over(big, empty)


def _over(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """Throughput of `a` over that of `b` (None unless both ran)."""
    return a["ops_per_s"] / b["ops_per_s"] if a and b and b["ops_per_s"] else None


def build_targets(results: dict[str, Any], sizes: Sizes) -> list[Target]:
    def get(*keys: str) -> Any:
        node: Any = results
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    targets = []
    for lv in (3, 1):
        e = get("throughput", f"{lv}-level/64/engine", "ops_per_s")
        b = get("throughput", f"{lv}-level/64/baseline", "ops_per_s")
        targets.append(Target(f"64 callers, {lv}-level: engine / baseline throughput",
                              ratio(e, b), ">=", 4.0, f"{_f(e)} vs {_f(b)} ops/s"))
    for lv in (3, 1):
        # The round of median p99 (see latency()): one stall is not the figure.
        p99 = get("latency", f"{lv}-level/engine", "p99_ms")
        rest = get("rest", f"{lv}-level/engine", "p50_ms")
        each = get("latency", f"{lv}-level/engine", "rounds_p99_ms") or []
        of = (f" (round {get('latency', f'{lv}-level/engine', 'chosen_round')}, the median "
              f"of the rounds' {', '.join(_f(x, 2) for x in each)})" if len(each) > 1 else "")
        targets.append(Target(f"{lv}-level p99 at half capacity / single-call p50 at rest",
                              ratio(p99, rest), "<=", 5.0,
                              f"p99 {_f(p99, 2)} ms{of} vs {_f(rest, 3)} ms at rest"))
    one = get("processes", "1/engine", "ops_per_s")
    many = get("processes", f"{sizes.mp_procs}/engine", "ops_per_s")
    targets.append(Target(f"{sizes.mp_procs} processes / 1 process (engine, aggregate)",
                          ratio(many, one), ">=", 0.8, f"{_f(many)} vs {_f(one)} ops/s"))
    big = get("ledger", "big/engine", "ops_per_s")
    empty = get("ledger", "empty/engine", "ops_per_s")
    paired = get("ledger", "ratio/engine")
    shown = [get("ledger", f"{size}/engine", "rounds_ops_per_s") or []
             for size in ("big", "empty")]
    if paired and len(paired["rounds"]) > 1:
        value, detail = paired["median"], (
            f"median of the rounds' ratios {', '.join(_f(x, 2) for x in paired['rounds'])} "
            f"(big {', '.join(map(_f, shown[0]))} vs empty {', '.join(map(_f, shown[1]))} "
            "ops/s, alternating)")
    else:
        value, detail = ratio(big, empty), f"{_f(big)} vs {_f(empty)} ops/s"
    targets.append(Target(f"{sizes.big_rows:,}-row ledger / empty (engine)",
                          value, ">=", 0.8, detail))
    growth = get("rss", "engine", "rss_growth_mb")
    peak = get("rss", "engine", "peak_rss_mb")
    targets.append(Target(f"RSS growth over {sizes.rss_ops:,} ops (engine), MB", growth, "<",
                          50.0, f"peak {_f(peak, 1)} MB"))
    return targets


def _f(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _num(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    digits = 0 if unit in ("ops/s", "us") else 3 if unit == "ms" and abs(x) < 10 else (
        2 if unit in ("x", "ms", "cores") else 1)
    return _f(x, digits)


def _pg_header(report: dict[str, Any]) -> str:
    pg = report["postgresql"]
    ledger = report["results"].get("ledger", {}).get("templates", {}).get(PG)
    fill = (f"; its {ledger['ledger_rows']:,}-row ledger filled server-side in "
            f"{ledger['build_s']} s (INSERT ... SELECT over generate_series)" if ledger else "")
    return (f"PostgreSQL column: the engine on PostgreSQL {pg.get('server_version', '?')} at "
            f"{pg['where']} (fsync={pg.get('fsync', '?')}, the engine commits with "
            f"synchronous_commit=on), run after the SQLite workloads, each workload in a fresh "
            f"schema{fill}. postgresql/engine compares it with the engine on SQLite. A local "
            "server's CPU is not the runner's: it shows as background, not in CPU per "
            "operation.")


def markdown(report: dict[str, Any], rows: list[Row], targets: list[Target]) -> str:
    pg = bool(report.get("postgresql"))
    m = report["machine"]
    mode = "quick: shrunk sizes, not target evidence" if report["quick"] else "full"
    guest = f", {m['hypervisor']} guest" if m["hypervisor"] else ""
    lines = [
        "# jackpot: engine vs naive baseline",
        "",
        (f"Run {report['started']} ({mode}), {report['elapsed_s']:.0f} s, commit "
         f"{m['commit']}{' with uncommitted changes in src' if m['src_dirty'] else ''} "
         f"(jackpot from {m['jackpot']})."),
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{guest}; disk "
         f"{m['disk']['device']} ({m['disk']['fs']}, rotational={m['disk']['rotational']}), "
         f"{m['disk']['fsync_per_s']:,} fsync/s (4 KiB write + fsync); "
         f"Python {m['python']}, SQLite {m['sqlite']}, APSW {m['apsw']}."),
        "Both systems: WAL, synchronous=FULL, a fresh random op_id per call.",
        *([_pg_header(report)] if report.get("postgresql") else []),
        "",
        "## Targets",
        "",
        "| target | measured | limit | result | detail |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for t in targets:
        verdict = {True: "PASS", False: "**FAIL**", None: "not measured"}[t.passed]
        lines.append(f"| {t.name} | {_f(t.value, 2)} | {t.op} {t.limit:g} | {verdict} | "
                     f"{t.detail} |")
    lines += [
        "",
        "## Engine vs baseline",
        "",
        ("Counters are the engine's, counted during that workload: conflicts / retries / "
         "busy incidents / lock timeouts / reloads (cached levels another process moved, "
         "re-read as the write lock was taken). Errors: failed calls, engine/baseline. "
         "Background: CPU cores other processes on the machine used meanwhile, "
         "engine/baseline (near 0 on a quiet machine; 2 cores in all)."),
        "",
        ("| section | figure | unit | engine | baseline | engine/baseline | better | "
         "conflicts/retries/busy/timeouts/reloads | errors | background |"
         + (" postgresql | postgresql/engine | postgresql conflicts/retries/busy/timeouts/reloads | "
            "postgresql errors |" if pg else "")),
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"
        + (" ---: | ---: | --- | --- |" if pg else ""),
    ]
    for r in rows:
        c = "/".join(str(r.counters[k]) for k in COUNTERS) if r.counters else ""
        line = (f"| {r.section} | {r.figure} | {r.unit} | {_num(r.engine, r.unit)} | "
                f"{_num(r.baseline, r.unit)} | {_f(r.ratio, 2)} | {r.better} | {c} | "
                f"{r.errors} | {r.background} |")
        if pg:
            pc = "/".join(str(r.pg_counters[k]) for k in COUNTERS) if r.pg_counters else ""
            line += (f" {_num(r.postgresql, r.unit)} | {_f(r.pg_ratio, 2)} | {pc} | "
                     f"{r.pg_errors} |")
        lines.append(line)
    audits = report.get("audits", [])
    bad = [a for a in audits if not a["ok"]]
    lines += ["", (f"Audits: {len(audits) - len(bad)} of {len(audits)} files verified clean "
                   "by the system's own verify().")]
    lines += [f"- **{a['where']}**: {a['problems']}" for a in bad]
    errors = report.get("error_samples", {})
    if errors:
        lines += ["", "First error of each kind:"]
        lines += [f"- {where}: {msg}" for where, msg in errors.items()]
    lat = report["results"].get("latency", {})
    if lat:
        lines += ["", latency_rounds_note(lat)]
    return "\n".join(lines) + "\n"


def latency_rounds_note(lat: dict[str, Any]) -> str:
    """Say which round each latency figure is from, with every round's p99 and dispatch lag."""
    lines = [("Latency at half capacity: each system's p50, p99 and p999 are those of one "
              "round, its round of median p99 (the systems alternate round by round, at the "
              "load set once from each one's capacity). Per round: p99, and the largest lag "
              "of the scheduler behind its schedule (counted in the latencies):")]
    for key, v in lat.items():
        each = v.get("rounds", {})
        p99s = v.get("rounds_p99_ms", [v["p99_ms"]])
        lags = [r.get("max_dispatch_lag_ms", math.nan) for r in each.values()] or [
            v["max_dispatch_lag_ms"]]
        if len(p99s) > 1:
            lines.append(f"- {key}: p99 {_num(v['p99_ms'], 'ms')} ms, round "
                         f"{v.get('chosen_round', '?')} of {len(p99s)} (rounds: "
                         f"{', '.join(_num(x, 'ms') for x in p99s)} ms; dispatch lag "
                         f"{', '.join(_f(x, 1) for x in lags)} ms)")
        else:
            lines.append(f"- {key}: p99 {_num(v['p99_ms'], 'ms')} ms, one round (dispatch lag "
                         f"{_f(v['max_dispatch_lag_ms'], 1)} ms)")
    return "\n".join(lines)


def collect_audits(results: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    audits, errors = [], {}

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        if isinstance(node.get("verify"), dict):
            audits.append({"where": where, **node["verify"]})
        err = node.get("errors")
        if isinstance(err, dict) and err.get("total"):
            for kind, msg in err.get("first", {}).items():
                errors[f"{where} {kind} (x{err['by_type'].get(kind, '?')})"] = msg
        for k, v in node.items():
            if k not in ("verify", "errors"):
                walk(v, f"{where}/{k}" if where else k)

    walk(results, "")
    return audits, errors


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shrink every size (about a minute; a smoke test, not evidence)")
    parser.add_argument("--out", type=Path, default=HERE / "out",
                        help="directory for results.md, results.json and cached files "
                             "(default: benchmarks/out, which git ignores)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--pg", metavar="URL", default=None,
                        help="also run every workload with the engine on this PostgreSQL "
                             "database (a fresh schema each; default: $JACKPOT_BENCH_PG_URL)")
    parser.add_argument("--latency-rounds", metavar="N", type=at_least_one, default=None,
                        help=f"rounds of the latency section, the systems alternating; each "
                             f"system's figures are from its round of median p99 (default "
                             f"{FULL.latency_rounds}, with --quick {QUICK.latency_rounds})")
    return parser


def writable_dir(path: Path) -> str | None:
    """Make `path` a directory if need be and check that a file can be written there.

    Return why not (one line), or None. The results are written there at the
    end, the cache and the probes before.
    """
    if path.exists() and not path.is_dir():
        return "not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


@dataclass(frozen=True)
class Options:
    """What a run was asked for, checked before anything runs."""

    quick: bool
    sections: list[str]
    sizes: Sizes
    out: Path
    pg_url: str | None
    pg: dict[str, Any] | None  # the server (pg_info), with --pg


def options(argv: list[str] | None = None) -> Options:
    """Parse and check the command line; a bad one exits 2 with a one-line reason.

    Everything a run will need is checked here, before the first workload: a
    mistake found later (an unwritable --out at the end, a PostgreSQL server
    refusing after the SQLite workloads) cost the run and its results.
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if not sections:
        # It ran nothing and wrote an empty table over the last results.
        parser.error(f"--only names no section; choose from {SECTIONS}")
    sizes = QUICK if args.quick else FULL
    if args.latency_rounds is not None:
        if "latency" not in sections:
            parser.error("--latency-rounds is for the latency section, which --only leaves out")
        sizes = replace(sizes, latency_rounds=args.latency_rounds)
    out = args.out.resolve()
    why = writable_dir(out)
    if why:
        parser.error(f"--out {out}: cannot write there: {why}")
    pg_url, pg_from = ((args.pg, "--pg") if args.pg is not None else
                       (os.environ.get("JACKPOT_BENCH_PG_URL"), "JACKPOT_BENCH_PG_URL"))
    pg_url = pg_url or None
    if pg_url and psycopg is None:
        parser.error(f"{pg_from} needs psycopg: pip install 'jackpot[postgres]'")
    pg = None
    if pg_url:
        from jackpot.storage.postgres import describe  # noqa: PLC0415 - needs psycopg

        try:
            pg = pg_info(pg_url)
        except (psycopg.Error, SetupError) as e:
            parser.error(f"{pg_from} {describe(pg_url)}: {pg_error(e)}")
    return Options(quick=args.quick, sections=sections, sizes=sizes, out=out, pg_url=pg_url,
                   pg=pg)


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    quiet_logging()
    sections, sizes, out, pg_url, pg = (opts.sections, opts.sizes, opts.out, opts.pg_url,
                                        opts.pg)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    t0 = time.perf_counter()
    bench = Bench(sizes, out, quick=opts.quick, pg_url=pg_url)
    info = machine(out, sizes)
    log(f"machine: {info}")
    if pg:
        log(f"postgresql: {pg}")
    # SQLite first, then PostgreSQL: the SQLite figures are measured as without it.
    sqlite_only: dict[str, Any] | None = None  # the results as the SQLite pass left them
    pg_failed: BaseException | None = None
    try:
        for systems in (SYSTEMS, *([(PG,)] if pg_url else [])):
            bench.systems = systems
            if systems == (PG,):
                sqlite_only = copy.deepcopy(bench.results)
            for name in SECTIONS:
                if name in sections:
                    log(f"== {name} ({', '.join(systems)})")
                    getattr(bench, name)()
    except BaseException as e:
        # A PostgreSQL pass that fails (a server restarted, Ctrl-C) lost the SQLite
        # results of the whole run with it: they are written, and then it is raised.
        if sqlite_only is None:
            raise
        pg_failed, bench.results, pg = e, sqlite_only, None
    finally:
        if pg_url:
            bench.discard_all()
        # However the run ends: a Ctrl-C in the ledger section of a full run
        # left its copy of the big file (gigabytes) here until the next run.
        shutil.rmtree(bench.work, ignore_errors=True)
    rows = build_rows(bench.results, sizes)
    targets = build_targets(bench.results, sizes)
    audits, error_samples = collect_audits(bench.results)
    report = {"started": started, "quick": opts.quick, "elapsed_s": time.perf_counter() - t0,
              "machine": info, "postgresql": pg, "sizes": asdict(sizes), "sections": sections,
              "targets": [{**asdict(t), "passed": t.passed} for t in targets],
              "rows": [asdict(r) for r in rows], "audits": audits,
              "error_samples": error_samples, "results": bench.results}
    text = markdown(report, rows, targets)
    if pg_failed is not None:
        said = " ".join(str(pg_failed).split()) or type(pg_failed).__name__
        report["postgresql_failed"] = said
        text += (f"\nThe PostgreSQL pass failed ({said}): these are the SQLite "
                 "workloads' results alone.\n")
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(text)
    log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    if pg_failed is not None:
        raise pg_failed
    return 0


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
