"""The benchmark runner's own arithmetic and the baseline's fairness (no timing asserted)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # compare.py imports baseline.py as a top-level module
import compare  # noqa: E402 - after the path it lives on


def test_closed_loop_counts_only_calls_that_end_in_the_window() -> None:
    # Each caller's last call ends after the window; it must not be counted.
    gate = threading.Event()
    calls = []

    def op(_k: int) -> None:
        calls.append(1)
        gate.wait(0.05)

    r = compare.closed_loop(op, threads=4, warmup=0.0, duration=0.12)
    # every caller's last call ended at or after the window's end
    assert r["ops"] == len(calls) - 4
