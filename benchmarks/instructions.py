"""Instructions per contribution, counted by valgrind: a figure a busy machine does not move.

    python benchmarks/instructions.py [--levels 1|3] [--threads N] [--ops N] [SRC ...]

Times vary with whatever else the machine does; instruction counts do not.
This runs a small load under `valgrind --tool=callgrind` twice, `--ops` and
`--ops` x 6 contributions (fresh op_ids, after 200 to warm up), one engine
on a file in /dev/shm (the disk's fsync is not the engine's work), and
prints (second - first) / (the difference in contributions): the
instructions of one contribution, its thread hand-offs, commit and
checkpoints included, the start and the close left out. Two runs of one
tree agree within about 0.5% with one caller; with several callers the
batches differ from run to run, so more. With source trees SRC (clones of
the repository), each tree is measured with its `src` first on the path, to
compare commits; without, the jackpot that `python` imports, named by where
it was imported from (with PYTHONPATH=src in a clone: that clone's). Needs valgrind (Debian: `apt-get install valgrind`); under
it the engine runs some 50x slower, so keep `--ops` small.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

_COLLECTED = re.compile(r"Collected : (\d+)")


def load(ops: int, threads: int, levels: int) -> int:
    """Run `ops` contributions from `threads` callers (the measured part, in the child).

    Returns how many were applied, each a new one: `ops` rounded down to a
    multiple of `threads`.
    """
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # (the log is not the measured work; given back after)
    try:
        return _contribute(ops, threads, levels)
    finally:
        logging.disable(before)


def _contribute(ops: int, threads: int, levels: int) -> int:
    from jackpot import JackpotEngine  # noqa: PLC0415 - only the child needs the engine

    groups = None if levels == 3 else ["minor"]
    bet = Decimal("1.00")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None
                                     ) as tmp, JackpotEngine.open(
            Path(tmp) / "count.db") as engine:
        for i in range(200):
            engine.contribute(bet, groups=groups, op_id=f"warm-{i}")
        start = threading.Barrier(threads)

        def caller(t: int) -> None:
            start.wait()
            for i in range(ops // threads):
                engine.contribute(bet, groups=groups, op_id=f"t{t}-{i}")

        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return engine.pool("minor").version - 201


def count(src: str | None, ops: int, threads: int, levels: int) -> tuple[int, str]:
    """Return the instructions valgrind counts for one run of `load` (start and close too).

    And where the run imported jackpot from (the directory of its package).
    """
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
             sys.executable, __file__, "--child", str(ops), str(threads), str(levels)],
            env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    printed = done.stdout.splitlines()
    if done.returncode or found is None or not printed:
        sys.exit(f"valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1)), printed[-1]


def main() -> None:
    """Parse the arguments; print instructions per contribution for each tree."""
    if sys.argv[1:2] == ["--child"]:
        load(*map(int, sys.argv[2:5]))
        import jackpot  # noqa: PLC0415 - loaded already, by load

        print(Path(jackpot.__file__).resolve().parent)  # (what the count is of)
        return
    from compare import at_least_one  # noqa: PLC0415 - not in the child, which valgrind runs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, choices=(1, 3), default=1)
    parser.add_argument("--threads", type=at_least_one, default=1,
                        help="callers (default 1)")
    parser.add_argument("--ops", type=at_least_one, default=200,
                        help="the first run's contributions, at least --threads (default 200)")
    parser.add_argument("src", nargs="*", help="source trees (clones) to compare")
    args = parser.parse_args()
    if args.ops < args.threads:
        # Each caller makes ops // threads: with none the first run measured
        # nothing and the figure was the second run's start-up, divided.
        parser.error(f"--ops must be at least --threads ({args.threads}): every caller needs "
                     f"a contribution, got {args.ops}")
    for tree in args.src:
        if not Path(tree, "src", "jackpot", "__init__.py").is_file():
            # (its src went first on the path, found nothing, and the installed
            # jackpot was counted under the mistyped name)
            parser.error(f"{tree}: not a clone of jackpot (no src/jackpot/__init__.py)")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    # The callers make ops // threads each: what was applied, not what was asked.
    small, big = (n // args.threads * args.threads for n in (args.ops, args.ops * 6))
    for tree in args.src or [None]:
        src = None if tree is None else str(Path(tree, "src").resolve())
        (low, where), (high, _) = (count(src, n, args.threads, args.levels)
                                   for n in (small, big))
        # (without SRC, not "installed jackpot": PYTHONPATH may name a clone's src)
        print(f"{tree or f'jackpot from {where}'}: {args.levels} level(s), {args.threads} "
              f"caller(s): {(high - low) // (big - small):,} instructions per contribution")


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
