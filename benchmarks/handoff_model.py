"""The engine's shape with no engine in it: what one CPython process allows.

N caller threads each spend `--caller-us` of Python (building a request),
hand the request to one server thread and wait for its answer on a lock,
as the engine's callers wait on their ticket. The server takes everything
queued as one batch, spends `--server-us` of Python per request (the rules,
the rows, the result), then `--commit-us` with the GIL released (the fsync
of a commit) and answers each request. With `--releases N` the server gives
the GIL up N times while its Python runs, as the engine's actor does for each
SQLite statement, `stat()` and `flock()` of a batch (about a dozen).

No SQLite, no engine code: the figures bound what the engine can do on the
machine for a given amount of Python per operation, and say how far that
Python must shrink for a target (see RESULTS.md, "Where the time goes"):

    python benchmarks/handoff_model.py                       # a grid of settings
    python benchmarks/handoff_model.py --caller-us 30 --server-us 60
    python benchmarks/handoff_model.py --caller-us 30 --server-us 60 --releases 12

The "work" is a loop reading the thread's CPU clock, so it holds the GIL as
Python code does and is measured in CPU time, not wall time.
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
from dataclasses import dataclass

# (caller us, server us) per request: none at all, then the engine's measured
# split on the machine of run 10 (about 50 / 100), then shrinking.
GRID = ((0.0, 0.0), (50.0, 100.0), (30.0, 60.0), (20.0, 40.0), (15.0, 30.0))


def burn(us: float) -> None:
    """Hold the GIL for `us` microseconds of this thread's CPU time."""
    end = time.thread_time() + us / 1e6
    while time.thread_time() < end:
        pass


@dataclass(frozen=True)
class Figures:
    """What one setting did in its measured window."""

    ops_per_s: float
    per_batch: float
    cpu_us_per_op: float
    cores: float


def run(callers: int, *, caller_us: float, server_us: float, commit_us: float,
        seconds: float, releases: int = 0, warmup: float = 1.0) -> Figures:
    """Run the model for `warmup` + `seconds`; return the window's figures.

    With `releases`, the server's Python of a batch runs in that many parts,
    the GIL given up after each (`time.sleep(0)`: back at once unless another
    thread took it); with 0, in one part, as before the option.
    """
    queued: collections.deque[threading.Lock] = collections.deque()
    ready = threading.Condition()
    done = threading.Event()
    counts = [0] * callers
    batches = [0]

    def server() -> None:
        while True:
            with ready:
                while not queued and not done.is_set():
                    ready.wait(0.1)
                if not queued:  # done, and every request queued has been answered
                    return
                batch = list(queued)
                queued.clear()
            for _ in range(max(1, releases)):
                burn(server_us * len(batch) / max(1, releases))
                if releases:
                    time.sleep(0)
            if commit_us:
                time.sleep(commit_us / 1e6)
            batches[0] += 1
            for answer in batch:
                answer.release()

    def caller(k: int) -> None:
        while True:
            burn(caller_us)
            answer = threading.Lock()
            answer.acquire()
            with ready:
                if done.is_set():  # (checked under the server's lock: none is left unanswered)
                    return
                queued.append(answer)
                ready.notify()
            answer.acquire()
            counts[k] += 1

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    threads.append(threading.Thread(target=server, daemon=True))
    for t in threads:
        t.start()
    time.sleep(warmup)
    ops0, batches0 = sum(counts), batches[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    ops, nbatches = sum(counts) - ops0, batches[0] - batches0
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    with ready:
        done.set()
        ready.notify_all()
    for t in threads:
        t.join()
    return Figures(ops / wall, ops / max(1, nbatches), cpu / max(1, ops) * 1e6, cpu / wall)


def main() -> None:
    """Print one line per setting (the grid unless one is given)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--callers", type=int, default=64, help="caller threads (default 64)")
    p.add_argument("--caller-us", type=float, help="Python per request in each caller")
    p.add_argument("--server-us", type=float, help="Python per request in the server")
    p.add_argument("--commit-us", type=float, default=500.0,
                   help="GIL released per batch, as an fsync (default 500)")
    p.add_argument("--releases", type=int, default=0,
                   help="times the server gives the GIL up during a batch's Python (default 0)")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="measured seconds per setting, after 1 of warm-up (default 4)")
    a = p.parse_args()
    if (a.caller_us is None) != (a.server_us is None):
        p.error("give both --caller-us and --server-us, or neither (the grid)")
    grid = GRID if a.caller_us is None else ((a.caller_us, a.server_us),)
    if a.releases < 0:
        p.error("--releases must be 0 or more")
    if a.callers < 1:
        p.error(f"--callers must be at least 1, got {a.callers}")
    for flag, us in (("--caller-us", a.caller_us), ("--server-us", a.server_us),
                     ("--commit-us", a.commit_us)):
        # (a negative --commit-us killed the server thread, and the callers
        # waited for their answers for ever; nan and inf measured nothing)
        if us is not None and not 0 <= us <= 1e6:
            p.error(f"{flag} must be 0 or more and at most 1000000 (a second), got {us}")
    if not 0 < a.seconds <= 3600:  # (0 measured no window; inf never ended)
        p.error(f"--seconds must be above 0 and at most 3600, got {a.seconds}")
    print(f"{a.callers} callers, {a.commit_us:g} us commit per batch, "
          f"the GIL given up {a.releases} time(s) per batch besides")
    print("| caller us | server us | ops/s | per batch | CPU us/op | cores |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for caller_us, server_us in grid:
        f = run(a.callers, caller_us=caller_us, server_us=server_us, commit_us=a.commit_us,
                seconds=a.seconds, releases=a.releases)
        print(f"| {caller_us:g} | {server_us:g} | {f.ops_per_s:,.0f} | {f.per_batch:.1f} | "
              f"{f.cpu_us_per_op:.0f} | {f.cores:.2f} |", flush=True)


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
