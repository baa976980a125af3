"""Run the engine under a steady load long enough for a sampling profiler.

    mkdir -p benchmarks/out   # git ignores it
    py-spy record --idle --threads --format raw -o benchmarks/out/profile.txt -- \\
        python benchmarks/profile_engine.py --seconds 20
    python benchmarks/profile_engine.py --summarize benchmarks/out/profile.txt

The load is compare.py's headline workload: 64 caller threads, 3-level
contributions, fresh op_ids, WAL + synchronous=FULL. `--summarize` reads
py-spy's raw (collapsed) output and says where each kind of thread spends its
samples, and which engine functions hold the time; a file that is not one
(a line that is not a stack and its count, or no samples at all: py-spy's
other formats, an empty profile) is refused in one line, status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from compare import (
    HERE,
    LEVELS1,
    LEVELS3,
    at_least_one,
    closed_loop,
    contribute_op,
    open_system,
    quiet_logging,
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def count_batches() -> Counter[int]:
    """Count the size of every transaction the engine's actors run (diagnostic only).

    Wraps the internal `execute_batch` where the actors call it; internal
    names may change, so this degrades to counting nothing.
    """
    sizes: Counter[int] = Counter()
    try:
        from jackpot.actors import coordinator, pool  # noqa: PLC0415 - optional probe
    except ImportError:
        return sizes
    for module in (coordinator, pool):
        original = getattr(module, "execute_batch", None)
        if original is None:
            continue

        def counted(store: object, ops: list[object], *args: object, _f: Any = original,
                    **kwargs: object) -> Any:
            sizes[len(ops)] += 1
            return _f(store, ops, *args, **kwargs)

        module.execute_batch = counted  # type: ignore[attr-defined]
    return sizes


def run(seconds: float, callers: int, levels: int, kind: str) -> None:
    quiet_logging()
    batches = count_batches() if kind == "engine" else Counter()
    # On this disk, as compare.py's files (not /tmp, which may be memory), and
    # under out/, which git ignores: a run cut short leaves nothing git shows.
    (HERE / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / "out") as tmp:
        system = open_system(kind, Path(tmp) / "profile.db")
        try:
            r = closed_loop(contribute_op(system, LEVELS3 if levels == 3 else LEVELS1),
                            callers, 1.0, seconds)
        finally:
            system.close()
    print(f"{kind}, {callers} callers, {levels}-level: {r['ops_per_s']:.0f} ops/s, "
          f"errors {r['errors']['total']}")
    if batches:
        txs = sum(batches.values())
        ops = sum(k * v for k, v in batches.items())
        print(f"{txs} transactions for {ops} operations (warm-up included): "
              f"{ops / txs:.1f} per transaction on average; most common sizes "
              f"{batches.most_common(8)}")


def _thread_kind(stack: list[str]) -> str:
    text = ";".join(stack)
    if "coordinator.py" in text:
        return "coordinator actor"
    if "pool.py" in text:
        return "pool actors"
    if "compare.py" in text and "worker" in text:
        return "callers"
    return "other"


def _where(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"].rsplit("/", 1)[-1]
    return f"{m['func']} ({file})"


class NotAProfileError(Exception):
    """The file given to --summarize is missing, no py-spy raw profile, or holds no samples."""


_SAMPLE = re.compile(r"^(?P<stack>.*) (?P<count>[0-9]+)$")
_RAW = "not a py-spy raw profile (py-spy record --format raw)"


def read_profile(path: Path) -> list[tuple[list[str], int]]:
    """Return the stacks of a py-spy raw (collapsed) profile, each with its samples.

    Raises NotAProfileError, saying why, for a file with a line that is not
    "STACK COUNT" or with no samples at all (empty): it was summarized as
    "0 samples" and exit status 0. And for a file missing, or not to be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        msg = f"not text: {_RAW}"
        raise NotAProfileError(msg) from None
    except FileNotFoundError:
        msg = "no such file (py-spy's -o file)"
        raise NotAProfileError(msg) from None
    except OSError as e:
        msg = f"cannot read it: {e.strerror or e}"
        raise NotAProfileError(msg) from None
    stacks = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SAMPLE.match(line)
        if m is None:
            msg = f"line {number} is not a stack and its sample count: {_RAW}"
            raise NotAProfileError(msg)
        stacks.append(([f for f in m["stack"].split(";") if f], int(m["count"])))
    if sum(n for _, n in stacks) == 0:
        msg = f"no samples in it (an empty profile, or {_RAW})"
        raise NotAProfileError(msg)
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int) -> None:
    """Print, per thread kind, the share of samples and the heaviest leaves and frames."""
    by_kind: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for frames, n in stacks:
        # py-spy puts "process ..." and "thread ..." first with --threads
        body = [f for f in frames if not f.startswith(("process ", "thread "))]
        kind = _thread_kind(body)
        total += n
        by_kind[kind] += n
        if body:
            leaves[kind][_where(body[-1])] += n
        for frame in {_where(f) for f in body}:
            inclusive[kind][frame] += n
    print(f"{total} samples")
    for kind, n in by_kind.most_common():
        print(f"\n== {kind}: {n} samples ({100 * n / total:.1f}%)")
        print("  leaf (where the thread is when sampled):")
        for where, m in leaves[kind].most_common(top):
            print(f"    {100 * m / n:5.1f}%  {where}")
        print("  inclusive (engine and SQLite-facing frames):")
        shown = 0
        for where, m in inclusive[kind].most_common():
            if any(s in where for s in ("jackpot", "service.py", "sqlite.py", "pool.py",
                                        "coordinator.py", "_mailbox", "_ticket", "engine.py",
                                        "requests.py", "domain.py", "money.py", "results.py",
                                        "stats.py")):
                print(f"    {100 * m / n:5.1f}%  {where}")
                shown += 1
                if shown >= top:
                    break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="measured seconds, after 1 of warm-up (default 20)")
    parser.add_argument("--callers", type=at_least_one, default=64,
                        help="caller threads (default 64)")
    parser.add_argument("--levels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--system", choices=("engine", "baseline"), default="engine")
    parser.add_argument("--summarize", type=Path, help="summarize a py-spy raw profile")
    parser.add_argument("--top", type=at_least_one, default=15,
                        help="lines per list in the summary (default 15)")
    args = parser.parse_args()
    if not 0 < args.seconds <= 3600:  # (0 divided by zero at the end; inf never ended)
        parser.error(f"--seconds must be above 0 and at most 3600, got {args.seconds}")
    if args.summarize:
        try:
            stacks = read_profile(args.summarize)
        except NotAProfileError as e:  # (one line, no usage: the file, not the command line,
            # is wrong; a missing one too, as the other scripts say of a file they cannot use)
            print(f"{parser.prog}: error: --summarize {args.summarize}: {e}", file=sys.stderr)
            return 2
        summarize(stacks, args.top)
    else:
        run(args.seconds, args.callers, args.levels, args.system)
    return 0


if __name__ == "__main__":
    from _script import run_script  # (benchmarks/_script.py: how every script ends)

    run_script(main)
