"""Real threads on a file database, released together: exact outcomes, no lost money.

Threads start on a `threading.Barrier`; every exception is collected and
re-raised; the assertions are exact (Decimal) and rebuilt from the results the
threads were given, cross-checked against the ledger.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from jackpot import (
    Contribution,
    EngineClosedError,
    InsufficientFundsError,
    JackpotEngine,
    Win,
)

LEVELS = ("major", "mega", "minor")
SEEDS = {"major": Decimal(1000), "mega": Decimal(10000), "minor": Decimal(100)}
RATES = {"major": Decimal("0.003"), "mega": Decimal("0.001"), "minor": Decimal("0.005")}
UNIT = Decimal("0.000001")


def run_threads(workers: list[Callable[[], Any]], timeout: float = 120) -> list[Any]:
    """Start every worker on one barrier; return their return values; re-raise any error."""
    barrier = threading.Barrier(len(workers))
    out: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            out[i] = workers[i]()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), name=f"worker-{i}")
               for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    if errors:
        raise errors[0]
    return out


def bet_of(k: int, i: int) -> Decimal:
    """A varied bet with fractions finer than a unit once multiplied by the rates."""
    return Decimal("0.01") * (1 + (k * 7 + i * 13) % 250) + Decimal("0.000001") * (k + i)


def test_32_threads_contributing_to_all_levels(
        engine: JackpotEngine, ledger: Callable[..., list[dict[str, Any]]]) -> None:
    threads, per_thread = 32, 200

    def bettor(k: int) -> list[tuple[Decimal, Contribution]]:
        return [(bet_of(k, i), engine.contribute(bet_of(k, i), groups=LEVELS))
                for i in range(per_thread)]

    out = run_threads([lambda k=k: bettor(k) for k in range(threads)])
    results = [pair for thread in out for pair in thread]
    assert len(results) == threads * per_thread

    pools = engine.pools()
    report = engine.verify()
    assert (report.ok, report.problems) == (True, [])
    assert report.ledger_rows == 3 * (1 + threads * per_thread)
    for name in LEVELS:
        reported = sum(c.contributions[name] for _, c in results)
        assert pools[name].amount == SEEDS[name] + reported
        # within one smallest unit of the exact sum of bet x rate, never above it
        exact = sum(bet * RATES[name] for bet, _ in results)
        assert reported <= exact < reported + UNIT
        # every result has its own version: 2..N+1, no gap, no repeat
        versions = sorted(c.versions[name] for _, c in results)
        assert versions == list(range(2, threads * per_thread + 2))
        assert pools[name].version == threads * per_thread + 1
        # the ledger carries versions 1..N and the balances the results reported
        rows = ledger(name)
        assert [r["version_after"] for r in rows] == list(range(1, len(rows) + 1))
        balance_at = {r["version_after"]: r["balance_after"] for r in rows}
        for _, c in results:
            assert c.balances[name] * 10**6 == balance_at[c.versions[name]]
        assert pools[name].meters["bets"] == threads * per_thread
    # one bet, one version on every level: the three levels moved together
    for _, c in results:
        assert len(set(c.versions.values())) == 1


def test_16_threads_winning_one_level_while_others_contribute(
        engine: JackpotEngine, ledger: Callable[..., list[dict[str, Any]]]) -> None:
    winners, wins_each, bettors, bets_each = 16, 12, 8, 150
    fixed = Decimal("60.5")

    def winner(k: int) -> list[Win | InsufficientFundsError]:
        out: list[Win | InsufficientFundsError] = []
        for i in range(wins_each):
            try:
                if (k + i) % 3:
                    out.append(engine.process_win("minor", winner=f"p{k}"))
                else:
                    out.append(engine.process_win("minor", amount=fixed, winner=f"p{k}"))
            except InsufficientFundsError as e:
                out.append(e)
        return out

    def bettor(k: int) -> list[Contribution]:
        groups: tuple[str, ...] = LEVELS if k % 2 else ("minor",)
        return [engine.contribute(Decimal(10) + k, groups=groups) for _ in range(bets_each)]

    workers = [lambda k=k: winner(k) for k in range(winners)]
    workers += [lambda k=k: bettor(k) for k in range(bettors)]
    out = run_threads(workers)
    wins = [w for thread in out[:winners] for w in thread if isinstance(w, Win)]
    refused = [w for thread in out[:winners] for w in thread if not isinstance(w, Win)]
    bets = [c for thread in out[winners:] for c in thread]
    assert len(wins) + len(refused) == winners * wins_each
    assert all(w.amount == fixed for w in wins if not w.reset)
    assert all(w.group == "minor" and not w.replayed for w in wins)

    # Rebuild the level from the results, in version order.
    events: dict[int, tuple[str, Any]] = {}
    for w in wins:
        assert w.version not in events
        events[w.version] = ("win", w)
    for c in bets:
        assert c.versions["minor"] not in events
        events[c.versions["minor"]] = ("bet", c)
    assert sorted(events) == list(range(2, len(events) + 2))  # no gap, no repeat

    pool, paid, expected_paid = SEEDS["minor"], Decimal(0), Decimal(0)
    whole_wins = 0
    for version in sorted(events):
        kind, r = events[version]
        if kind == "bet":
            pool += r.contributions["minor"]
            assert r.balances["minor"] == pool
        elif r.reset:
            assert r.amount == pool  # paid exactly what the pool held at its turn
            expected_paid += pool
            pool = SEEDS["minor"]
            assert r.balance == pool
            whole_wins += 1
        else:
            assert r.amount <= pool  # never more than the pool held
            expected_paid += r.amount
            pool -= r.amount
            assert r.balance == pool
        paid += r.amount if kind == "win" else 0
        assert pool >= 0
    assert paid == expected_paid
    assert whole_wins > 0
    assert all(isinstance(e, InsufficientFundsError) for e in refused)
    assert len(refused) < winners * wins_each

    p = engine.pool("minor")
    assert (p.amount, p.version, p.lock_holder) == (pool, len(events) + 1, None)
    assert (p.meters["won"], p.meters["wins"]) == (paid, len(wins))
    rows = ledger("minor")
    assert [r["version_after"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["balance_after"] >= 0 for r in rows)
    assert sum(r["paid"] for r in rows) == paid * 10**6
    report = engine.verify()
    assert (report.ok, report.problems) == (True, [])
    # the other levels only saw the multi-level bets
    for name in ("major", "mega"):
        n = sum(1 for c in bets if name in c.versions)
        assert engine.pool(name).version == n + 1
        assert engine.pool(name).amount == SEEDS[name] + sum(
            c.contributions[name] for c in bets if name in c.versions)


def test_close_while_threads_contribute_keeps_exactly_the_acknowledged(
        open_engine: Callable[..., JackpotEngine],
        ledger: Callable[..., list[dict[str, Any]]]) -> None:
    """Every caller gets its result or EngineClosedError; the file holds exactly the results."""
    engine = open_engine()
    acknowledged: list[str] = []
    cond = threading.Condition()

    def bettor(k: int) -> EngineClosedError:
        i = 0
        while True:
            groups = LEVELS if i % 2 else LEVELS[k % 3]
            oid = f"t{k}-{i}"
            try:
                engine.contribute(Decimal("1.25"), groups=groups, op_id=oid)
            except EngineClosedError as e:
                return e
            with cond:
                acknowledged.append(oid)
                cond.notify_all()
            i += 1

    def closer() -> None:
        with cond:
            assert cond.wait_for(lambda: len(acknowledged) >= 300, 60)
        engine.close()

    out = run_threads([lambda k=k: bettor(k) for k in range(8)] + [closer])
    assert all(isinstance(e, EngineClosedError) for e in out[:8])

    reopened = open_engine()
    applied = {r["op_id"] for r in ledger() if r["kind"] == "contribute"}
    assert applied == set(acknowledged)
    assert reopened.verify().ok
    for oid in acknowledged[-20:]:  # and each one replays as applied
        k, i = (int(x) for x in oid[1:].split("-"))
        groups = LEVELS if i % 2 else LEVELS[k % 3]
        assert reopened.contribute(Decimal("1.25"), groups=groups, op_id=oid).replayed


def test_totals_per_level_under_mixed_single_and_multi_level_bets(
        engine: JackpotEngine) -> None:
    """Single-level bets (pool actors) and multi-level bets (coordinator) on one level at once."""
    def bettor(k: int) -> list[Contribution]:
        choices: list[Any] = [LEVELS, "minor", ("minor", "mega"), "major", None]
        return [engine.contribute(bet_of(k, i), groups=choices[(k + i) % len(choices)])
                for i in range(120)]

    out = run_threads([lambda k=k: bettor(k) for k in range(12)])
    results = [c for thread in out for c in thread]
    pools = engine.pools()
    for name in LEVELS:
        mine = [c for c in results if name in c.versions]
        assert sorted(c.versions[name] for c in mine) == list(range(2, len(mine) + 2))
        assert pools[name].amount == SEEDS[name] + sum(c.contributions[name] for c in mine)
    stats: dict[str, int] = defaultdict(int, engine.stats.snapshot())
    assert stats["lock_timeouts"] == 0
    assert engine.verify().ok
