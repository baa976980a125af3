"""Single-call latency of each operation, engine and naive baseline side by side.

    python -m pytest benchmarks/test_bench.py

Each benchmark runs one call at a time on a file database in `tmp_path`
(WAL, synchronous=FULL: every call is one durable commit for both systems).
pytest-benchmark groups the two systems per operation, so its table reads as a
comparison. Not part of the test suite (its testpaths is tests/): these are
measurements, not assertions.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from baseline import DEFAULT_LEVELS, NaiveJackpot

from jackpot import GroupConfig, JackpotEngine, Settings

BET = Decimal("1.25")
LEVELS3 = ("major", "mega", "minor")


def op_id() -> str:
    return os.urandom(16).hex()


def open_system(kind: str, path: Path) -> Any:
    if kind == "engine":
        groups = [GroupConfig(n, Decimal(s), Decimal(r)) for n, s, r in DEFAULT_LEVELS]
        return JackpotEngine.open(path, groups, settings=Settings(synchronous="FULL"))
    return NaiveJackpot.open(path, DEFAULT_LEVELS)


@pytest.fixture(params=["engine", "baseline"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = open_system(request.param, tmp_path / f"{request.param}.db")
    for _ in range(20):  # warm the statement cache, the actors and the file
        s.contribute(BET, groups=LEVELS3, op_id=op_id())
    yield s
    s.close()


def run(benchmark: Any, call: Callable[[], object]) -> None:
    benchmark.pedantic(call, rounds=300, warmup_rounds=20, iterations=1)


@pytest.mark.benchmark(group="contribute, 1 level")
def test_contribute_one_level(benchmark: Any, system: Any) -> None:
    run(benchmark, lambda: system.contribute(BET, groups=("minor",), op_id=op_id()))


@pytest.mark.benchmark(group="contribute, 3 levels")
def test_contribute_three_levels(benchmark: Any, system: Any) -> None:
    run(benchmark, lambda: system.contribute(BET, groups=LEVELS3, op_id=op_id()))


@pytest.mark.benchmark(group="process_win (whole pool, reset to seed)")
def test_process_win(benchmark: Any, system: Any) -> None:
    # A won pool resets to its seed (100), so it is never empty.
    run(benchmark, lambda: system.process_win("minor", op_id=op_id()))


@pytest.mark.benchmark(group="update_config (contribution_rate)")
def test_update_config(benchmark: Any, system: Any) -> None:
    rates = itertools.cycle([Decimal("0.004"), Decimal("0.006")])
    run(benchmark, lambda: system.update_config("minor", op_id=op_id(),
                                                contribution_rate=next(rates)))


@pytest.mark.benchmark(group="pool read")
def test_pool_read(benchmark: Any, system: Any) -> None:
    benchmark(lambda: system.pool("minor"))
