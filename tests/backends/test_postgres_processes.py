"""Several engines in separate processes (standing in for hosts) on one PostgreSQL database.

The workers (_engine_worker.py, started with subprocess) are released together
and run mixed plans: contributions to one to three levels, whole-pool wins,
seed changes, replays of their own earlier op_ids, and op_ids that every
worker sends at about the same moment. The parent proves the books from the
results alone and cross-checks them against the ledger: each op_id was
applied exactly once (every other call for it got a replay of that very
result), each committed version of a level went to exactly one result, and
the money adds up to the smallest unit, carried fractions included.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from _helpers import run_python, run_workers
from jackpot import GroupConfig, JackpotEngine
from jackpot.money import RATE_SCALE, SCALE

from .pg import fresh_schema, read_books, require_pg_url

PG_URL = require_pg_url()
WORKER = Path(__file__).with_name("_engine_worker.py")
PROCESSES, OPS = 4, 60
# Rates with 7 decimals on bets with 2: most contributions leave a fraction of
# a unit that must be carried, so "to the smallest unit" is really tested.
GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)
RATES = {g.name: int(g.contribution_rate * RATE_SCALE) for g in GROUPS}


@pytest.fixture
def pg_target() -> Iterator[str]:
    with fresh_schema(PG_URL) as url:
        yield url


def plan(k: int, rng: random.Random) -> list[dict[str, Any]]:
    """Worker k's ops: mostly bets, with wins, seed changes, replays and shared op_ids."""
    ops: list[dict[str, Any]] = []
    for i in range(OPS):
        if i % 12 == 3:  # every worker sends this very request at about this point
            op = {"kind": "contribute", "bet": "7.77", "groups": ["major", "minor"],
                  "op_id": f"shared-{i}"}
        elif i % 10 == 9:
            op = {"kind": "win", "group": ("minor", "major")[(i // 10 + k) % 2],
                  "op_id": f"p{k}-w{i}"}
        elif i % 15 == 7:
            op = {"kind": "config", "group": "minor", "op_id": f"p{k}-cfg{i}",
                  "changes": {"seed": str(100 + 10 * ((i + k) % 3))}}
        elif i % 6 == 5:
            op = dict(ops[rng.randrange(len(ops))])  # a retry of one of its own requests
        else:
            groups = sorted(rng.sample(["major", "mega", "minor"], rng.randint(1, 3)))
            op = {"kind": "contribute", "bet": str(Decimal(rng.randint(1, 200_000)).scaleb(-2)),
                  "groups": groups, "op_id": f"p{k}-c{i}"}
        ops.append(op)
    return ops


def units(d: str | Decimal) -> int:
    exact = Decimal(d) * SCALE
    assert exact == exact.to_integral_value(), d
    return int(exact)


def test_engines_in_separate_processes_keep_the_books(pg_target: str, tmp_path: Path) -> None:
    with JackpotEngine.open(pg_target, GROUPS):
        pass
    rng = random.Random(20_261_129)
    plans = [plan(k, rng) for k in range(PROCESSES)]
    reports = run_workers(tmp_path, WORKER,
                          [{"target": pg_target, "settings": {}, "ops": ops} for ops in plans])

    # Every call succeeded; per op_id exactly one applied it, all others replayed it.
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for report in reports:
        stats = report["stats"]  # every conflict and lost race detected was retried
        assert stats["retries"] == stats["conflicts"] + stats["busy_incidents"], stats
        for outcome in report["outcomes"]:
            assert "error" not in outcome, outcome
            by_op[outcome["op"]["op_id"]].append(outcome)
    requests = {op["op_id"]: op for ops in plans for op in ops}
    assert set(by_op) == set(requests)
    applied: dict[str, dict[str, Any]] = {}
    for op_id, outcomes in by_op.items():
        first = [o for o in outcomes if not o["replayed"]]
        assert len(first) == 1, (op_id, outcomes)
        applied[op_id] = first[0]["result"]
        assert all(o["result"] == applied[op_id] for o in outcomes), op_id

    # The books, from the applied results alone.
    expected = {g.name: units(g.seed) for g in GROUPS}
    sub_units = dict.fromkeys(expected, 0)  # sum of bet x rate, exact
    granted: dict[tuple[str, int], str] = {}
    touched: dict[str, int] = {}
    for op_id, r in applied.items():
        request = requests[op_id]
        if request["kind"] == "contribute":
            assert r["hits"] == []
            for level, added in r["contributions"].items():
                expected[level] += units(added)
                sub_units[level] += units(request["bet"]) * RATES[level]
                assert granted.setdefault((level, r["versions"][level]), op_id) == op_id
            touched[op_id] = len(r["contributions"])
        elif request["kind"] == "win":
            expected[r["group"]] += units(r["balance"]) - units(r["amount"])  # paid, reset
            assert granted.setdefault((r["group"], r["version"]), op_id) == op_id
            touched[op_id] = 1
        else:
            assert granted.setdefault((r["group"], r["version"]), op_id) == op_id
            touched[op_id] = 1

    levels, ledger, totals = read_books(pg_target)
    assert {n: s.amount for n, s in levels.items()} == expected
    for name, s in levels.items():
        # To the smallest unit: credited units plus the carried fraction equal
        # the exact sum of bet x rate over every bet applied to the level.
        assert totals[name].meters["contributed"] * RATE_SCALE + s.carry == sub_units[name]
        assert s.version == 1 + sum(1 for level, _ in granted if level == name)
    rows_per_op = Counter(r.op_id for r in ledger if r.kind != "create")
    assert rows_per_op == touched
    for r in ledger:
        if r.kind != "create":
            assert granted[(r.level, r.version_after)] == r.op_id
    with JackpotEngine.open(pg_target) as engine:
        report = engine.verify()
    assert (report.ok, report.problems) == (True, [])


_FORKED_OPEN = """
import os, signal, sys, threading
from jackpot import JackpotEngine
from jackpot.storage import postgres
held, forked = threading.Event(), threading.Event()

def opening():  # the parent opening an engine (a first connection, over the network)
    with postgres._POOLS._lock:
        held.set()
        forked.wait()

threading.Thread(target=opening).start()
held.wait()
child = os.fork()
if child == 0:  # a worker opens its own engine, as the README says to
    signal.alarm(int(sys.argv[2]))  # a hung child ends, and says nothing
    with JackpotEngine.open(sys.argv[1]) as own:
        print("child", own.contribute("1", groups="minor").versions, flush=True)
    os._exit(0)
forked.set()
os.waitpid(child, 0)
with JackpotEngine.open(sys.argv[1]) as engine:
    print("parent", engine.contribute("1", groups="minor").versions, flush=True)
"""


def test_a_forked_childs_own_engine_opens_though_a_pool_was_opening(pg_target: str) -> None:
    # The lock over the process's pools is held while one opens: one the
    # parent held as it forked stayed held in the child, whose own engine
    # then hung opening (a forked child may not use its parent's pools).
    hang = 30  # seconds: only a hang waits this long
    done = run_python(_FORKED_OPEN, pg_target, str(hang), timeout=hang * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child {'minor': 2}", "parent {'minor': 3}"], done.stderr


_FORKED_CLOSE = """
import os, sys
from jackpot.storage.postgres import PostgresStore

store = PostgresStore(sys.argv[1])
child = os.fork()
if child == 0:  # a worker forked with a store open closes it, as a worker would
    try:
        store.close()
    except BaseException as e:
        print("child", type(e).__name__, e, flush=True)
        os._exit(1)
    print("child closed", flush=True)
    os._exit(0)
_, status = os.waitpid(child, 0)
print("parent", store.schema_version() > 0, flush=True)  # its pool is untouched
store.close()
print("parent closed", flush=True)
"""


def test_a_forked_child_closing_its_parents_store_leaves_the_parents_pool(
        pg_target: str) -> None:
    # A store closed in a forked child raised KeyError: it looked for its pool
    # under the child's process id. The pool (and its connections) are the
    # parent's: the child's close gives nothing back and closes nothing.
    JackpotEngine.open(pg_target).close()
    done = run_python(_FORKED_CLOSE, pg_target, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child closed", "parent True", "parent closed"], done.stderr
