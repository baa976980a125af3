"""The same kind of random program, split across real threads, checked against the model.

Each example opens an engine on a new file with two or three random levels
(the must-hit-by draw replaced by a deterministic function the model shares),
splits a random program of contributions (to one, some or all levels), wins
(whole, fixed, some with an expected version), config changes and
adjustments over two to four threads, and starts them together on a Barrier.
Some operations reuse another's op_id, for the same request or another one.

The interleaving is whatever the threads made of it; the checks accept
exactly the outcomes some serial execution allows:
- every op_id is applied at most once: one applied result per op_id, its
  ledger rows form one contiguous run of versions per level ending at the
  version the result reported; failed and replayed calls left no rows;
- a replay returns the applied result, and only for the same request; an
  IdempotencyConflictError only where another request applied that op_id;
- the versions the results report order the operations of each level; those
  orders must merge into one serial order (no cycle), and the reference model
  run in that order must produce every applied result exactly, and finally
  every snapshot exactly;
- each level's final amount is its seed plus what the results reported:
  contributions, minus payouts, plus the refills of resets, plus adjustments;
- verify() is ok.

Suspend, resume and retire are left to the sequential machines: which level
a `groups=None` bet skipped depends on the level's status, which the
versions of the levels it did touch cannot order.

Reproducing a failure: as in test_state_machine.py, paste the printed
`@reproduce_failure(...)` above `test_threads_agree_with_a_serial_order`,
or rerun with `--hypothesis-seed=<seed>`. Thread scheduling is not
reproducible, so rerun a few times; the printed program and outcomes are
usually enough to see the fault.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import jackpot.engine
import jackpot.requests
from jackpot import (
    Contribution,
    GroupConfig,
    IdempotencyConflictError,
    JackpotEngine,
    JackpotError,
    Win,
)

from .harness import (
    SLOW,
    amounts,
    engine_settings,
    group_config,
    ledger_rows,
    machine_settings,
    make_draw,
    nice_units,
    observed_hits,
    tmp_db,
)
from .reference import RATE, UNIT, Model, dec, replayed, to_units

pytestmark = [pytest.mark.slow, pytest.mark.timeout(0)] if SLOW else []

NAMES = ("minor", "major", "mega")


@dataclasses.dataclass
class Op:
    index: int
    thread: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any = None
    error: BaseException | None = None


@st.composite
def programs(draw: Callable[..., Any]) -> tuple[list[GroupConfig], int, list[Op]]:
    count = draw(st.integers(2, 3))
    # No max_contribution: one refusing level refuses most bets. (A min_bet may
    # leave a bet no level: its op_id is recorded all the same, and replays.)
    groups = [dataclasses.replace(draw(group_config(n, min_range=UNIT)),
                                  max_contribution=None)
              for n in NAMES[:count]]
    names = [g.name for g in groups]
    threads = draw(st.integers(2, 4))
    ops: list[Op] = []
    for i in range(draw(st.integers(threads * 2, threads * 7))):
        thread = draw(st.integers(0, threads - 1))
        kind = draw(st.sampled_from(["bet", "bet", "bet", "bet", "win", "part", "config",
                                     "adjust"]))
        op_id: str | None = f"op-{i}"
        if kind == "bet":
            groups_arg = draw(st.one_of(st.none(), st.sampled_from(names),
                                        st.lists(st.sampled_from(names), min_size=1,
                                                 unique=True)))
            op = Op(i, thread, "contribute", (draw(amounts(nice_units(1, 30 * UNIT))),),
                    {"groups": groups_arg})
        elif kind in ("win", "part"):
            amount = None if kind == "win" else draw(amounts(nice_units(1, 20 * UNIT)))
            op = Op(i, thread, "process_win", (draw(st.sampled_from(names)),),
                    {"amount": amount, "winner": "p1",
                     "expected_version": draw(st.one_of(st.none(), st.none(),
                                                        st.integers(1, 6)))})
        elif kind == "config":
            changes = draw(st.fixed_dictionaries({}, optional={
                "contribution_rate": st.integers(1_000, RATE // 4).map(
                    lambda r: Decimal(r) / RATE),
                "seed": nice_units(0, 40 * UNIT).map(dec),
                "cap": st.one_of(st.none(), nice_units(40 * UNIT, 200 * UNIT).map(dec)),
            }).filter(bool))
            op = Op(i, thread, "update_config", (draw(st.sampled_from(names)),), changes)
        else:
            units = draw(st.integers(-20 * UNIT, 20 * UNIT).filter(bool))
            op = Op(i, thread, "adjust", (draw(st.sampled_from(names)), dec(units)),
                    {"reason": "correction", "who": "ops"})
        if draw(st.integers(0, 9)) == 0:
            op_id = None
        elif ops and draw(st.integers(0, 3)) == 0:  # reuse another op's op_id
            other = draw(st.sampled_from(ops))
            if other.kwargs.get("op_id") is not None and not (
                    other.method == "contribute" and other.kwargs.get("groups") is None):
                op_id = other.kwargs["op_id"]
                if draw(st.booleans()):  # the very same request
                    op = Op(i, thread, other.method, other.args, dict(other.kwargs))
        op.kwargs["op_id"] = op_id
        ops.append(op)
    return groups, draw(st.integers(0, 2**32)), ops


def _run_threads(engine: JackpotEngine, ops: list[Op], threads: int) -> None:
    barrier = threading.Barrier(threads, timeout=60)
    crashes: list[BaseException] = []

    def work(mine: list[Op]) -> None:
        try:
            barrier.wait()
            for op in mine:
                try:
                    op.result = getattr(engine, op.method)(*op.args, **op.kwargs)
                except JackpotError as e:
                    op.error = e
        except BaseException as e:
            crashes.append(e)

    workers = [threading.Thread(target=work, args=([o for o in ops if o.thread == t],))
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker thread hung"
    if crashes:
        raise crashes[0]


def _touched(op: Op) -> dict[str, tuple[int, int]]:
    """Per level an applied op touched: its ordering key (version after, changed first)."""
    r = op.result
    versions: dict[str, int] = dict(r.versions) if hasattr(r, "versions") else \
        {r.group: r.version}
    return {name: (v, 0) for name, v in versions.items()}


def _serial_order(applied: list[Op], rows: list[dict[str, Any]]) -> list[Op]:
    """Merge the per-level orders (by version) into one serial order; fail on a cycle."""
    first_version: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["op_id"], row["level"])
        first_version.setdefault(key, row["version_after"])
    per_level: dict[str, list[tuple[tuple[int, int], Op]]] = defaultdict(list)
    for op in applied:
        for name, (after, _) in _touched(op).items():
            before = first_version.get((op.result.op_id, name), after + 1) - 1
            # An op that changed nothing on a level saw `after`: it goes after the op
            # that made `after`. One that changed it made before+1..after.
            key = (after, 1) if before == after else (before + 1, 0)
            per_level[name].append((key, op))
    successors: dict[int, set[int]] = defaultdict(set)
    indegree = {op.index: 0 for op in applied}

    def before(a: Op, b: Op) -> None:
        if b.index not in successors[a.index]:
            successors[a.index].add(b.index)
            indegree[b.index] += 1

    for entries in per_level.values():
        entries.sort(key=lambda e: e[0])
        starts = [k[0] for k, _ in entries if k[1] == 0]
        assert len(set(starts)) == len(starts), f"two operations claim one version: {entries}"
        writers = [op for k, op in entries if k[1] == 0]
        for a, b in itertools.pairwise(writers):
            before(a, b)
        # One that only saw version v (a bet that skipped the level) comes after
        # the writer that made v and before the next; such readers of one
        # version are not ordered among themselves.
        for (seen, changed), op in entries:
            if changed == 0:
                continue
            made = bisect.bisect_right(starts, seen)
            if made > 0:
                before(writers[made - 1], op)
            if made < len(writers):
                before(op, writers[made])
    by_index = {op.index: op for op in applied}
    ready = sorted(i for i, d in indegree.items() if d == 0)
    order: list[Op] = []
    while ready:
        i = ready.pop(0)
        order.append(by_index[i])
        for j in sorted(successors[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
        ready.sort()
    assert len(order) == len(applied), "the per-level orders contradict each other (a cycle)"
    return order


def _request(op: Op) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The request as the engine compares it: every form of one amount (str, int,
    Decimal) and every spelling of one set of levels is the same request."""
    args, kwargs = op.args, {k: v for k, v in op.kwargs.items() if k != "op_id"}
    if op.method == "contribute":
        args = (Decimal(args[0]),)
        groups = kwargs["groups"]
        if groups is not None:
            kwargs["groups"] = tuple(sorted([groups] if isinstance(groups, str) else groups))
    elif op.method == "process_win" and kwargs["amount"] is not None:
        kwargs["amount"] = Decimal(kwargs["amount"])
    return op.method, args, kwargs


def _check(engine: JackpotEngine, path: str, groups: list[GroupConfig], draw_fn: Any,
           ops: list[Op]) -> None:
    report = engine.verify()
    assert report.ok, report.problems
    rows = ledger_rows(path)
    for op in ops:
        assert op.error is None or isinstance(op.error, JackpotError), op

    # Every op_id applied at most once; replays and conflicts only where they belong.
    applied = [op for op in ops if op.error is None and not op.result.replayed]
    by_op_id: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kwargs["op_id"] is not None:
            by_op_id[op.kwargs["op_id"]].append(op)
    for op_id, members in by_op_id.items():
        winners = [m for m in members if m in applied]
        assert len(winners) <= 1, f"op_id {op_id} applied {len(winners)} times: {winners}"
        for m in members:
            if m.error is None and m.result.replayed:
                assert winners, f"{m} replayed a result that was never applied"
                assert _request(m) == _request(winners[0]), (m, winners[0])
                assert m.result == replayed(winners[0].result), (m, winners[0])
            if isinstance(m.error, IdempotencyConflictError):
                assert winners, f"{m}: conflict with nothing applied"
                assert _request(m) != _request(winners[0]), m
    applied_ids = {op.result.op_id for op in applied}
    for row in rows:
        if not row["op_id"].startswith("create:"):
            assert row["op_id"] in applied_ids, f"ledger row of an op that was not applied: {row}"
    for op in applied:
        for name, (after, _) in _touched(op).items():
            versions = [r["version_after"] for r in rows
                        if r["op_id"] == op.result.op_id and r["level"] == name]
            if versions:
                assert versions == list(range(versions[0], after + 1)), (op, versions)

    # Final amounts: the seed plus what the results reported.
    expected = {g.name: to_units(g.seed) for g in groups}
    for op in applied:
        r = op.result
        wins: list[Win] = list(r.hits) if isinstance(r, Contribution) else []
        if isinstance(r, Contribution):
            for name, added in r.contributions.items():
                expected[name] += to_units(added)
        elif isinstance(r, Win):
            wins.append(r)
        elif op.method == "adjust":
            expected[op.args[0]] += to_units(op.args[1])
        for w in wins:
            expected[w.group] += to_units(w.balance if w.reset else 0) - to_units(w.amount)
    pools = engine.pools()
    assert {n: to_units(p.amount) for n, p in pools.items()} == expected

    # Some serial order explains every applied result exactly.
    model = Model(make_draw(draw_fn.salt))
    for g in groups:
        model.create(g)
    for op in _serial_order(applied, rows):
        extra: dict[str, Any] = {"auto_op_id": op.result.op_id}
        if op.method == "contribute":
            extra["observed"] = observed_hits(op.result)
        want = getattr(model, op.method)(*op.args, **op.kwargs, **extra)
        assert want == op.result, f"serial replay differs at {op}:\n model {want}"
    for name, snap in pools.items():
        assert snap == model.snapshot(name, snap.last_modified_at), name
    assert report.ledger_rows == len(rows) == len(model.ledger)


@machine_settings(examples=30, steps=1, slow_examples=5_000, slow_steps=1)
@given(program=programs())
def test_threads_agree_with_a_serial_order(
        program: tuple[list[GroupConfig], int, list[Op]]) -> None:
    groups, salt, ops = program
    ops = [dataclasses.replace(op, result=None, error=None) for op in ops]
    threads = max(op.thread for op in ops) + 1
    directory = tempfile.mkdtemp(prefix="jackpot-conc-")
    draw_fn = make_draw(salt)
    try:
        with mock.patch.object(jackpot.requests, "draw", draw_fn), \
                mock.patch.object(jackpot.engine, "draw", draw_fn):
            path = tmp_db(directory)
            engine = JackpotEngine.open(path, groups, settings=engine_settings())
            try:
                _run_threads(engine, ops, threads)
                _check(engine, path, groups, draw_fn, ops)
            finally:
                engine.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


CALLS_ONCE: dict[str, Callable[[JackpotEngine, str], Any]] = {
    "bet-every-level": lambda e, op_id: e.contribute(Decimal(3), op_id=op_id),
    "bet-one-level": lambda e, op_id: e.contribute(Decimal(3), groups="minor", op_id=op_id),
    "bet-two-levels": lambda e, op_id: e.contribute(Decimal(3), groups=["minor", "major"],
                                                    op_id=op_id),
    "win-part": lambda e, op_id: e.process_win("minor", amount=Decimal(1), op_id=op_id),
    "adjust": lambda e, op_id: e.adjust("major", Decimal(-1), who="ops", reason="r", op_id=op_id),
}


@pytest.mark.parametrize("name", list(CALLS_ONCE))
def test_one_op_id_sent_by_many_threads_at_once_is_applied_once(tmp_path: Any,
                                                                 name: str) -> None:
    """Requests queued together share a transaction (group commit): still one applies."""
    call = CALLS_ONCE[name]
    threads, rounds = 8, 4
    engine = JackpotEngine.open(tmp_path / "pools.db", [
        GroupConfig("minor", Decimal(100), Decimal("0.1")),
        GroupConfig("major", Decimal(200), Decimal("0.01"))], settings=engine_settings())
    try:
        model = Model()
        model.create(GroupConfig("minor", Decimal(100), Decimal("0.1")))
        model.create(GroupConfig("major", Decimal(200), Decimal("0.01")))
        for r in range(rounds):
            barrier = threading.Barrier(threads, timeout=60)
            results: list[Any] = [None] * threads

            def send(i: int, barrier: threading.Barrier, results: list[Any],
                     op_id: str) -> None:
                barrier.wait()
                results[i] = call(engine, op_id)

            workers = [threading.Thread(target=send, args=(i, barrier, results, f"{name}-{r}"))
                       for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=120)
            assert not any(w.is_alive() for w in workers)
            first = [x for x in results if x is not None and not x.replayed]
            assert len(first) == 1, results
            assert first[0] == call(model, f"{name}-{r}")  # type: ignore[arg-type]
            assert all(x == replayed(first[0]) for x in results if x is not first[0])
        rows = [{k: v for k, v in row.items() if k != "seq"}
                for row in ledger_rows(engine._path)]
        assert rows[2:] == model.ledger[2:]  # after the two create rows: once per round
        for level, snap in engine.pools().items():
            assert snap == model.snapshot(level, snap.last_modified_at)
    finally:
        engine.close()
