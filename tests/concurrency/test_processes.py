"""Several engines on one database file: in other processes, and side by side.

Each engine caches its levels; another process writing a level makes that cache
stale. The engine must notice (as it takes the write lock, it sees that another
connection committed and compares its cache with the rows; failing that, the
version-checked UPDATE touches no row), count a conflict, re-read under the
write lock and retry, never overwrite. The
multi-process tests release real worker processes together (tests/concurrency/
_worker.py, started with subprocess), collect every result they were given and
prove the books from those results alone, cross-checked row by row against the
ledger: every committed version of a level was handed to exactly one result,
every op_id was applied exactly once, and the money adds up to the unit.

Sizes grow with JACKPOT_SLOW=1 (the soak); the default run uses the short form.
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from _helpers import read_ledger, run_together, run_workers, table_dump
from jackpot import (
    ConcurrencyViolationError,
    ConfigResult,
    GroupConfig,
    JackpotEngine,
    Settings,
)

SLOW = os.environ.get("JACKPOT_SLOW") == "1"
WORKER = Path(__file__).with_name("_worker.py")
WARM_UP = "warm-up"  # the op_id the workers replay (see _worker.py)

# Rates with 7 decimals on bets with 2: most contributions leave a fraction of
# a unit that must be carried, so "to the unit" is really tested.
GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)
SEEDS = {g.name: g.seed for g in GROUPS}


# -- helpers -------------------------------------------------------------------


def units(n: int) -> Decimal:
    """Return integer storage units (1e-6) as an exact Decimal."""
    return Decimal(n).scaleb(-6)


def create_db(path: Path, groups: tuple[GroupConfig, ...] = GROUPS) -> None:
    with JackpotEngine.open(path, groups):
        pass


def create_shared_db(path: Path, groups: tuple[GroupConfig, ...] = GROUPS
                     ) -> dict[str, Any]:
    """Create the file for workers, with the warm-up bet they replay; return its record."""
    with JackpotEngine.open(path, groups) as engine:
        warm = engine.contribute(Decimal(1), groups=None, op_id=WARM_UP)
    return {**warm.to_record(), "replayed": False}


def bet(rng: random.Random) -> str:
    return str(Decimal(rng.randint(1, 200_000)).scaleb(-2))  # 0.01 .. 2000.00


def check_books(db: Path, applied: list[dict[str, Any]], kinds: dict[str, str],
                seeds: dict[str, Decimal] = SEEDS) -> dict[str, int]:
    """Prove the file's books from the applied (first, not replayed) results alone.

    `kinds` maps each applied op_id to its kind. Checks: each version of a
    level went to exactly one result (no lost update, no double grant); the
    ledger row of that version carries the same op_id and balance; each op_id
    has exactly one ledger row per level it touched and nothing else is in the
    ledger; every final amount is the seed plus the contributions minus the
    payouts plus the seeds paid in at resets, exactly. Returns the final
    version of each level.
    """
    ledger = read_ledger(db)
    rows = {(r["level"], r["version_after"]): r for r in ledger}
    rows_per_op = Counter(r["op_id"] for r in ledger)
    expected = dict(seeds)
    granted: dict[str, dict[int, str]] = defaultdict(dict)

    def grant(level: str, version: int, op_id: str, balance: Decimal | None) -> None:
        other = granted[level].get(version)
        assert other is None, f"{level} version {version} reported by {other} and {op_id}"
        granted[level][version] = op_id
        row = rows.get((level, version))
        assert row is not None, f"{op_id} reported {level} version {version}: not in the ledger"
        assert row["op_id"] == op_id, f"{level} v{version}: ledger says {row['op_id']}"
        if balance is not None:
            assert units(row["balance_after"]) == balance, (level, version, op_id)

    for rec in applied:
        op_id, kind = rec["op_id"], kinds[rec["op_id"]]
        if kind == "contribute":
            assert rec["hits"] == []
            for level, added in rec["contributions"].items():
                expected[level] += Decimal(added)
                grant(level, rec["versions"][level], op_id, Decimal(rec["balances"][level]))
            touched = len(rec["contributions"])
        elif kind == "win":
            paid, balance = Decimal(rec["amount"]), Decimal(rec["balance"])
            expected[rec["group"]] += (balance - paid) if rec["reset"] else -paid
            grant(rec["group"], rec["version"], op_id, balance)
            touched = 1
        else:
            grant(rec["group"], rec["version"], op_id, None)
            touched = 1
        assert rows_per_op[op_id] == touched, f"{op_id} has {rows_per_op[op_id]} ledger rows"
    strangers = {r["op_id"] for r in ledger} - set(kinds) - {f"create:{n}" for n in seeds}
    assert not strangers, f"ledger rows of operations nobody was told about: {strangers}"

    with JackpotEngine.open(db) as engine:
        pools = engine.pools()
        report = engine.verify()
    assert report.ok, report.problems
    versions = {}
    assert sorted(pools) == sorted(seeds)
    for level in seeds:
        assert pools[level].amount == expected[level], (level, pools[level].amount)
        # Version 1 is the creation; every later one was handed out exactly once.
        assert sorted(granted[level]) == list(range(2, pools[level].version + 1)), level
        versions[level] = pools[level].version
    return versions


def first_results(reports: list[dict[str, Any]], warm: dict[str, Any]
                  ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Return the applied (not replayed) results, the warm-up's first, and each op_id's kind."""
    applied, kinds = [warm], {WARM_UP: "contribute"}
    for report in reports:
        for o in report["outcomes"]:
            if "result" in o and not o["result"]["replayed"]:
                applied.append(o["result"])
                kinds[o["result"]["op_id"]] = o["op"]["kind"]
    return applied, kinds


# -- two processes, same levels --------------------------------------------------


def contention_plan(k: int, n: int, rng: random.Random) -> list[dict[str, Any]]:
    levels = ("major", "minor")
    ops: list[dict[str, Any]] = []
    for i in range(n):
        op_id, r = f"p{k}-{i}", rng.random()
        if r < 0.1:
            ops.append({"kind": "win", "group": rng.choice(levels), "amount": None,
                        "op_id": op_id, "winner": f"player-{k}"})
        else:
            groups = list(levels) if r < 0.35 else [rng.choice(levels)]
            ops.append({"kind": "contribute", "bet": bet(rng), "groups": groups,
                        "op_id": op_id})
    return ops


@pytest.mark.slow
def test_two_processes_contend_on_the_same_levels_without_lost_updates(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    db = tmp_path / "pools.db"
    groups = (GROUPS[0], GROUPS[2])  # major and minor
    warm = create_shared_db(db, groups)
    n = 3000 if SLOW else 400
    rng = random.Random(4)
    reports = run_workers(tmp_path, WORKER, [{"db": str(db), "settings": {},
                                              "ops": contention_plan(k, n, rng)}
                                             for k in range(2)])

    failures = [o for r in reports for o in r["outcomes"] if "error" in o]
    assert not failures, f"{len(failures)} operations failed, first: {failures[:3]}"
    stats = [r["stats"] for r in reports]
    for s in stats:
        # Every conflict (and busy incident) was followed by exactly one retry,
        # and since no operation failed, every one of them was resolved.
        assert s["retries"] == s["conflicts"] + s["busy_incidents"], s
    conflicts, retries = sum(s["conflicts"] for s in stats), sum(s["retries"] for s in stats)
    reloads = sum(s["reloads"] for s in stats)
    record_property("conflicts", conflicts)
    record_property("retries", retries)
    record_property("reloads", reloads)
    # Each process found levels the other had changed, as it took the write
    # lock (a reload; the version checks would count what that missed).
    assert reloads + conflicts > 0, "the two processes never raced: the test proved nothing"

    applied, kinds = first_results(reports, warm)
    assert len(applied) == 1 + 2 * n
    versions = check_books(db, applied, kinds, {g.name: g.seed for g in groups})
    writes = Counter(level for rec in applied
                     for level in rec.get("contributions", {rec.get("group"): None}))
    assert versions == {level: 1 + writes[level] for level in ("major", "minor")}


# -- one process, two engines: the deterministic conflict ---------------------------


def test_a_stale_writer_reloads_as_it_takes_the_lock_even_with_no_retries(
        tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    create_db(db)
    with JackpotEngine.open(db, settings=Settings(max_retry_attempts=0)) as strict:
        strict.contribute("10", groups=("major", "minor"), op_id="strict-1")  # both at v2
        with JackpotEngine.open(db) as writer:
            moved = writer.contribute("20", groups="minor", op_id="writer-1")
        bet = strict.contribute("30", groups=("major", "minor"), op_id="strict-2")
        assert bet.versions == {"major": 3, "minor": 4}
        assert bet.balances["minor"] == moved.balances["minor"] + bet.contributions["minor"]
        counts = strict.stats.snapshot()
        assert (counts["conflicts"], counts["retries"], counts["reloads"]) == (0, 0, 1)
        assert counts["reloads:contribute:minor"] == 1  # minor moved; major had not
        assert strict.verify().ok


@pytest.mark.usefixtures("blind_to_other_writers")
def test_stale_writer_conflicts_once_never_overwrites(tmp_path: Path) -> None:
    """Where a write cannot tell that another committed, the version-checked UPDATE catches it."""
    db = tmp_path / "pools.db"
    create_db(db)
    opened: list[JackpotEngine] = []

    def engine(retries: int) -> JackpotEngine:
        opened.append(JackpotEngine.open(db, settings=Settings(max_retry_attempts=retries)))
        return opened[-1]

    try:
        strict = engine(0)
        first = strict.contribute("10", groups="minor", op_id="strict-1")
        assert first.versions == {"minor": 2}  # strict now holds minor at version 2
        writer = engine(3)  # opened after version 2 was committed: loads version 2
        moved = writer.contribute("20", groups="minor", op_id="writer-1")
        assert moved.versions == {"minor": 3}
        assert writer.stats.snapshot()["conflicts"] == 0

        before = table_dump(db)
        with pytest.raises(ConcurrencyViolationError) as info:
            strict.contribute("30", groups="minor", op_id="strict-2")
        assert info.value.operation == "contribute"
        assert info.value.group == "minor"
        assert info.value.conflict_details["expected_version"] == 2
        assert table_dump(db) == before  # nothing changed
        counts = strict.stats.snapshot()
        assert (counts["conflicts"], counts["retries"]) == (1, 0)

        # With retries, a stale writer conflicts exactly once and then succeeds.
        other = engine(3)  # loads version 3
        third = other.contribute("40", groups="minor", op_id="other-1")
        assert third.versions == {"minor": 4}
        again = writer.contribute("50", groups="minor", op_id="writer-2")  # cached: v3
        assert again.versions == {"minor": 5}
        assert again.balances["minor"] == third.balances["minor"] + again.contributions["minor"]
        counts = writer.stats.snapshot()
        assert (counts["conflicts"], counts["retries"]) == (1, 1)

        assert strict.pool("minor").version == 5  # create + 4 committed contributions
        rows = [r for r in read_ledger(db) if r["level"] == "minor"]
        assert [(r["version_after"], r["op_id"]) for r in rows] == [
            (1, "create:minor"), (2, "strict-1"), (3, "writer-1"), (4, "other-1"),
            (5, "writer-2")]
        assert strict.verify().ok
    finally:
        for e in opened:
            e.close()


@pytest.mark.usefixtures("blind_to_other_writers")
def test_stale_multi_level_writer_changes_no_level(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    create_db(db)
    with JackpotEngine.open(db, settings=Settings(max_retry_attempts=0)) as strict:
        strict.contribute("10", groups=("major", "minor"), op_id="strict-1")
        with JackpotEngine.open(db) as writer:
            writer.contribute("20", groups="minor", op_id="writer-1")  # minor only
            before = table_dump(db)
            with pytest.raises(ConcurrencyViolationError) as info:
                strict.contribute("30", groups=("major", "mega", "minor"), op_id="strict-2")
            assert info.value.group == "minor"
            assert table_dump(db) == before  # major and mega untouched too
            assert strict.stats.snapshot()["conflicts"] == 1


@pytest.mark.usefixtures("blind_to_other_writers")
def test_two_writers_at_the_same_version_exactly_one_wins(tmp_path: Path) -> None:
    """Both engines hold version v, both write at once: one commits, one conflicts.

    (With the check as the lock is taken, the second reloads and commits v + 2:
    see `test_a_stale_writer_reloads_as_it_takes_the_lock_even_with_no_retries`.)
    """
    db = tmp_path / "pools.db"
    create_db(db)
    rounds = 40 if SLOW else 8
    strict = Settings(max_retry_attempts=0)
    for rnd in range(rounds):
        with JackpotEngine.open(db, settings=strict) as a:
            v = a.contribute("1", groups="minor", op_id=f"seed-{rnd}").versions["minor"]
            # b opens after version v was committed, so its actor loads v; the
            # replay is served by that actor (it has started) and changes
            # nothing. Both engines now hold version v.
            with JackpotEngine.open(db, settings=strict) as b:
                assert b.contribute("1", groups="minor", op_id=f"seed-{rnd}").replayed
                got = run_together(
                    lambda a=a, rnd=rnd: a.contribute("3", groups="minor", op_id=f"a-{rnd}"),
                    lambda b=b, rnd=rnd: b.contribute("5", groups="minor", op_id=f"b-{rnd}"))
            errors = [g for g in got if isinstance(g, Exception)]
            wins = [g for g in got if not isinstance(g, Exception)]
            assert len(wins) == 1, got
            assert len(errors) == 1, got
            assert isinstance(errors[0], ConcurrencyViolationError), got
            assert wins[0].versions == {"minor": v + 1}
            assert a.pool("minor").version == v + 1
    with JackpotEngine.open(db) as engine:
        assert engine.pool("minor").version == 1 + 2 * rounds
        assert engine.verify().ok


def test_two_config_changes_with_the_same_expected_version_one_wins(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    create_db(db)
    rounds = 40 if SLOW else 10
    with JackpotEngine.open(db) as a, JackpotEngine.open(db) as b:
        for rnd in range(rounds):
            v = a.pool("major").version
            got = run_together(
                lambda rnd=rnd, v=v: a.update_config(
                    "major", op_id=f"a-{rnd}", expected_version=v,
                    contribution_rate=Decimal("0.0021")),
                lambda rnd=rnd, v=v: b.update_config(
                    "major", op_id=f"b-{rnd}", expected_version=v,
                    contribution_rate=Decimal("0.0037")))
            done = [g for g in got if isinstance(g, ConfigResult)]
            refused = [g for g in got if isinstance(g, ConcurrencyViolationError)]
            assert (len(done), len(refused)) == (1, 1), got
            assert done[0].version == v + 1
            assert a.pool("major").version == v + 1
            assert a.pool("major").contribution_rate == Decimal(
                done[0].after["contribution_rate"])
        configs = [r for r in read_ledger(db) if r["kind"] == "config"]
        assert len(configs) == rounds
        assert a.verify().ok


# -- four processes, mixed operations ----------------------------------------------


def contribution(rng: random.Random, op_id: str | None) -> dict[str, Any]:
    levels = sorted(rng.sample(sorted(SEEDS), rng.randint(1, 3)))
    groups = None if len(levels) == 3 and rng.random() < 0.5 else levels
    return {"kind": "contribute", "bet": bet(rng), "groups": groups, "op_id": op_id}


def mixed_plans(n: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    plans: list[list[dict[str, Any]]] = []
    for k in range(4):
        ops: list[dict[str, Any]] = []
        own: list[dict[str, Any]] = []
        for i in range(n):
            op_id, r = f"m{k}-{i}", rng.random()
            level = rng.choice(sorted(SEEDS))
            if r < 0.12:
                ops.append({"kind": "win", "group": level, "amount": None, "op_id": op_id})
            elif r < 0.20:
                amount = str(Decimal(rng.randint(1, 30_000)).scaleb(-2))
                ops.append({"kind": "win", "group": level, "amount": amount, "op_id": op_id})
            elif r < 0.28:
                change = rng.choice([
                    {"contribution_rate": rng.choice(["0.0012345", "0.0031234", "0.0051234"])},
                    {"seed": str(SEEDS[level] + rng.randint(-20, 20))}])
                ops.append({"kind": "config", "group": level, "changes": change,
                            "op_id": op_id,
                            "expected_version": rng.choice(["current", None])})
            elif r < 0.36 and own:
                ops.append({**rng.choice(own), "expect": "replay"})
            else:
                explicit = rng.random() < 0.8
                op = contribution(rng, op_id if explicit else None)
                ops.append(op)
                if explicit:
                    own.append(op)
        plans.append(ops)
    # Same op_id, same request, sent by two processes: applied once, replayed once.
    for j in range(max(3, n // 6)):
        op = contribution(rng, f"shared-{j}")
        for k in rng.sample(range(4), 2):
            plans[k].insert(rng.randrange(len(plans[k]) + 1), dict(op))
    # Same op_id, different requests: one applies, the other is refused.
    for j in range(max(2, n // 20)):
        for k in rng.sample(range(4), 2):
            plans[k].insert(rng.randrange(len(plans[k]) + 1), contribution(rng, f"clash-{j}"))
    return plans


def allowed_errors(op: dict[str, Any]) -> set[str]:
    if op["kind"] == "contribute":
        clash = (op["op_id"] or "").startswith("clash-")
        return {"IdempotencyConflictError"} if clash else set()
    if op["kind"] == "win":
        return {"InsufficientFundsError"} if op["amount"] is not None else set()
    return {"ConcurrencyViolationError"} if op["expected_version"] is not None else set()


@pytest.mark.slow
def test_four_processes_mixed_operations_conserve_money_and_apply_each_op_once(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    db = tmp_path / "pools.db"
    warm = create_shared_db(db)
    n = 800 if SLOW else 150
    reports = run_workers(tmp_path, WORKER, [
        {"db": str(db), "settings": {"retry_delay_ms": 5}, "ops": ops}
        for ops in mixed_plans(n, random.Random(11))])

    by_op_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for k, report in enumerate(reports):
        replayed = 0
        for o in report["outcomes"]:
            op = o["op"]
            if "error" in o:
                assert o["error"] in allowed_errors(op), f"process {k}: {o}"
            else:
                replayed += o["result"]["replayed"]
                if op.get("expect") == "replay":
                    assert o["result"]["replayed"], f"process {k}: {o}"
            if op["op_id"] is not None:
                by_op_id[op["op_id"]].append(o)
        s = report["stats"]
        assert s["replays"] == replayed, (k, s)
        assert s["retries"] == s["conflicts"] + s["busy_incidents"], (k, s)
    record_property("conflicts", sum(r["stats"]["conflicts"] for r in reports))

    applied, kinds = first_results(reports, warm)
    for op_id, outs in by_op_id.items():
        done = [o["result"] for o in outs if "result" in o]
        first = [r for r in done if not r["replayed"]]
        if op_id.startswith("clash-"):
            assert len(outs) == 2, outs
            assert len(first) == 1, outs  # one of the two requests, never both
            assert [o.get("error") for o in outs].count("IdempotencyConflictError") == 1
        elif done:
            assert len(first) == 1, f"{op_id} applied {len(first)} times"
            for r in done:  # every replay returned exactly the first result
                assert {**r, "replayed": False} == first[0], op_id
        if op_id.startswith("shared-"):
            assert len(done) == 2, outs
    # Refused operations left no trace: check_books finds no ledger row of an
    # op_id that no result reported as applied.
    check_books(db, applied, kinds)
