"""All levels or none, in memory and on disk; config changes under load; stale versions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import apsw
import pytest

from _helpers import run_together
from jackpot import (
    ConcurrencyViolationError,
    Contribution,
    JackpotEngine,
    StorageError,
    domain,
)
from jackpot.money import parse_rate, split_contribution
from jackpot.storage import SQLiteStore

LEVELS = ("major", "mega", "minor")


class InjectedError(Exception):
    """The failure a test injects."""


def fail_on_call(monkeypatch: pytest.MonkeyPatch, owner: object, attr: str, n: int,
                 error: Callable[[], BaseException]) -> list[int]:
    """Make owner.attr raise error() on its n-th call (only that one); return the call count."""
    real = getattr(owner, attr)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapper)
    return calls


@dataclass(frozen=True)
class Injection:
    owner: object  # the module or class whose attribute fails
    attr: str
    call: int  # which call fails (only that one)
    error: Callable[[], BaseException]
    seen: type[BaseException]  # what the caller gets

    def arm(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        return fail_on_call(monkeypatch, self.owner, self.attr, self.call, self.error)


MULTI_LEVEL_FAILURES = [
    pytest.param(Injection(domain, "contribute", 2, lambda: InjectedError("second level"),
                           InjectedError), id="rule-of-second-level"),
    pytest.param(Injection(SQLiteStore, "update_level", 2, lambda: apsw.IOError("disk I/O"),
                           StorageError), id="write-of-second-level"),
    pytest.param(Injection(SQLiteStore, "append_entries", 1,
                           lambda: apsw.FullError("disk is full"), StorageError),
                 id="ledger-append"),
    pytest.param(Injection(SQLiteStore, "record_operations", 1,
                           lambda: apsw.IOError("disk I/O"), StorageError),
                 id="idempotency-record"),
]


@pytest.mark.parametrize("injection", MULTI_LEVEL_FAILURES)
def test_failed_multi_level_contribution_changes_nothing(
        engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch, dump_db: Callable[..., Any],
        injection: Injection) -> None:
    engine.contribute(Decimal("12.34"), op_id="before")  # every level at version 2
    pools = engine.pools()
    before = dump_db()
    calls = injection.arm(monkeypatch)

    with pytest.raises(injection.seen):
        engine.contribute(Decimal(100), groups=LEVELS, op_id="doomed")

    assert calls[0] == injection.call  # the failure happened where it was meant to
    assert dump_db() == before
    assert engine.pools() == pools
    assert engine.verify().ok
    # In memory: the actors kept the old state. Were they ahead, the next write
    # would hit a version conflict (counted) before it could succeed.
    c = engine.contribute(Decimal(100), groups=LEVELS, op_id="doomed")  # retry: now applies
    assert c.replayed is False
    assert c.versions == {name: pools[name].version + 1 for name in LEVELS}
    assert c.balances == {name: pools[name].amount + 100 * pools[name].contribution_rate
                          for name in LEVELS}
    for name in LEVELS:  # each pool actor on its own
        single = engine.contribute(Decimal(1), groups=name)
        assert single.versions == {name: pools[name].version + 2}
        assert single.balances == {name: c.balances[name] + pools[name].contribution_rate}
    stats = engine.stats.snapshot()
    assert (stats["conflicts"], stats["retries"]) == (0, 0)
    assert engine.verify().ok


@pytest.mark.parametrize("injection", [
    pytest.param(Injection(domain, "contribute", 1, lambda: InjectedError("rule"),
                           InjectedError), id="rule"),
    pytest.param(Injection(SQLiteStore, "append_entries", 1, lambda: apsw.IOError("disk I/O"),
                           StorageError), id="ledger-append"),
])
def test_failed_single_level_contribution_changes_nothing(
        engine: JackpotEngine, monkeypatch: pytest.MonkeyPatch, dump_db: Callable[..., Any],
        injection: Injection) -> None:
    engine.contribute(Decimal("12.34"), groups="minor")
    pools = engine.pools()
    before = dump_db()
    injection.arm(monkeypatch)
    with pytest.raises(injection.seen):
        engine.contribute(Decimal(100), groups="minor", op_id="doomed")
    assert dump_db() == before
    c = engine.contribute(Decimal(100), groups="minor", op_id="doomed")
    assert (c.replayed, c.versions, c.balances) == (
        False, {"minor": 3}, {"minor": pools["minor"].amount + Decimal("0.5")})
    assert engine.verify().ok


def test_no_reader_sees_a_bet_on_some_levels_only(engine: JackpotEngine) -> None:
    """While bets go to all three levels, every snapshot shows the same count on each."""
    reads = [0]
    cond = threading.Condition()
    stop = threading.Event()
    errors: list[BaseException] = []

    def bettor() -> None:
        try:
            for i in range(120):
                if i == 60:  # pause until the reader has looked at least twice
                    with cond:
                        seen_so_far = reads[0]
                        assert cond.wait_for(lambda n=seen_so_far: reads[0] >= n + 2, 10)
                engine.contribute(Decimal(1), groups=LEVELS)
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    thread = threading.Thread(target=bettor)
    thread.start()
    seen = set()
    while not stop.is_set():
        pools = engine.pools()
        counts = {p.meters["bets"] for p in pools.values()}
        assert len(counts) == 1, counts
        assert len({p.version for p in pools.values()}) == 1
        seen |= counts
        with cond:
            reads[0] += 1
            cond.notify_all()
    thread.join(30)
    assert not errors
    assert {p.meters["bets"] for p in engine.pools().values()} == {120}
    assert 60 in seen


# -- stale expected_version ------------------------------------------------------------

def test_stale_expected_version_is_a_concurrency_violation(
        engine: JackpotEngine, dump_db: Callable[..., Any]) -> None:
    version = engine.pool("minor").version
    engine.contribute(Decimal(10), groups="minor")  # someone else moved the level
    before = dump_db()
    with pytest.raises(ConcurrencyViolationError) as info:
        engine.update_config("minor", op_id="cfg-1", expected_version=version,
                             contribution_rate=Decimal("0.02"))
    e = info.value
    assert (e.operation, e.group) == ("config", "minor")
    assert e.conflict_details == {"expected_version": version, "actual_version": version + 1}
    assert f"expected {version}" in str(e)
    assert dump_db() == before  # never a silent overwrite
    assert engine.pool("minor").contribution_rate == Decimal("0.005")
    # the op_id was not used up: the caller re-reads and decides again
    r = engine.update_config("minor", op_id="cfg-1", expected_version=version + 1,
                             contribution_rate=Decimal("0.02"))
    assert (r.version, r.replayed) == (version + 2, False)
    assert engine.pool("minor").contribution_rate == Decimal("0.02")


def test_two_config_writers_on_one_version_exactly_one_wins(engine: JackpotEngine) -> None:
    for round_ in range(10):
        version = engine.pool("major").version
        outcomes = run_together(*[
            lambda i=i, version=version: engine.update_config(
                "major", expected_version=version, seed=Decimal(1000 + i))
            for i in range(2)])
        lost = [o for o in outcomes if isinstance(o, ConcurrencyViolationError)]
        won = [o for o in outcomes if not isinstance(o, ConcurrencyViolationError)]
        assert (len(won), len(lost)) == (1, 1), (round_, outcomes)
        assert won[0].version == version + 1
        assert lost[0].conflict_details == {"expected_version": version,
                                            "actual_version": version + 1}
        assert engine.pool("major").seed == Decimal(won[0].after["seed"])
    assert engine.pool("major").version == 11
    assert engine.verify().ok


# -- config changes while bets run -----------------------------------------------------

def test_config_updates_while_contributions_run(
        engine: JackpotEngine, ledger: Callable[..., list[dict[str, Any]]]) -> None:
    """Each bet uses the rate in force at its version, however the writes interleave."""
    rates = [Decimal(f"0.00{i}") for i in range(1, 10)] * 3
    started, configured = threading.Barrier(5), threading.Event()
    results: list[Contribution] = []
    errors: list[BaseException] = []
    cond = threading.Condition()

    def bettor(k: int) -> None:
        try:
            started.wait(10)
            done = 0
            while not configured.is_set() and done < 5000:
                groups = LEVELS if done % 2 else LEVELS[k % 3]
                c = engine.contribute(Decimal("0.37") * (k + 1), groups=groups)
                with cond:
                    results.append(c)
                    cond.notify_all()
                done += 1
        except BaseException as e:
            with cond:
                errors.append(e)
                cond.notify_all()

    threads = [threading.Thread(target=bettor, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    started.wait(10)
    try:
        for rate in rates:
            for name in LEVELS:
                # No expected_version: on a level that bets move all the time a
                # compare-and-set would mostly lose (tested on its own above).
                r = engine.update_config(name, contribution_rate=rate, who="ops")
                assert r.after["contribution_rate"] == str(rate)
                # Let 9 more bets finish: some bettor then made 3 of them, the
                # last 2 started after this change, and one went to every level.
                with cond:
                    n = len(results)
                    assert cond.wait_for(lambda n=n: len(results) >= n + 9 or errors, 60)
    finally:
        configured.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert engine.verify().ok

    by_version: dict[str, dict[int, tuple[Decimal, Decimal]]] = {n: {} for n in LEVELS}
    for c in results:
        for name, v in c.versions.items():
            by_version[name][v] = (c.contributions[name], c.balances[name])
    for name in LEVELS:
        rows = ledger(name)
        assert [r["version_after"] for r in rows] == list(range(1, len(rows) + 1))
        assert [r["kind"] for r in rows].count("config") == len(rates)
        # a bet went in after every config change, before the next one
        configs = [i for i, r in enumerate(rows) if r["kind"] == "config"]
        for a, b in zip(configs, [*configs[1:], len(rows)], strict=True):
            assert any(r["kind"] == "contribute" for r in rows[a + 1:b]), (name, a)
        # replay the level from its ledger: every bet at the rate then in force
        rate, carry, amount = None, 0, 0
        for r in rows:
            detail = json.loads(r["detail"])
            if r["kind"] == "create":
                rate = parse_rate(detail["config"]["contribution_rate"], name="rate")
            elif r["kind"] == "config":
                rate = parse_rate(detail["after"]["contribution_rate"], name="rate")
            else:
                assert r["kind"] == "contribute"
                assert rate is not None
                whole, carry = split_contribution(detail["bet"], rate, carry)
                assert r["delta"] == whole, r
                contribution, balance = by_version[name].pop(r["version_after"])
                assert contribution * 10**6 == r["delta"]
                assert balance * 10**6 == r["balance_after"]
            amount += r["delta"]
            assert amount == r["balance_after"]
        assert by_version[name] == {}  # every reported result is in the ledger
        assert engine.pool(name).contribution_rate == rates[-1]
