"""Property: whatever bets, wins, config changes and adjustments come, the books balance
to the smallest unit and no fraction of a contribution is ever lost.

Levels here have a reserve, a cap and a must-hit-by, so overflow (to the meter
and to the reserve), seed funding from reserve and house, mystery hits and
pending changes all happen. The reconciliation is recomputed from the ledger
entries alone, independently of the meters (which are then compared with it):

    opening amount + contributions + seed funding + adjustments
        = current amount + wins + overflow
    reserve in (bet shares + overflow sent there) - reserve funding = reserve

and "no fraction lost" is exact integer arithmetic: the units credited times
1e9 plus the carried fraction equal the exact sum of bet x rate (in 1e-9 parts
of a unit), for the pool share and the reserve share separately.

The domain property runs many examples fast; the engine property runs the
same kind of sequence through the public API on a file database, fewer times.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _helpers import read_ledger
from jackpot import (
    GroupConfig,
    GroupSuspendedError,
    InsufficientFundsError,
    JackpotEngine,
    Settings,
    ValidationError,
)
from jackpot.domain import (
    METER_FIELDS,
    Entry,
    LevelState,
    adjust,
    contribute,
    create,
    parse_changes,
    reconfigure,
    set_status,
    win,
)
from jackpot.money import RATE_SCALE, from_units

T0 = 1_700_000_000_000
U = 1_000_000

CONFIGS = (
    GroupConfig("minor", Decimal(10), Decimal("0.1"), cap=Decimal(50),
                reserve_rate=Decimal("0.02"), must_hit_by=Decimal(40),
                overflow_to="reserve"),
    GroupConfig("minor", Decimal(5), Decimal("0.05"), cap=Decimal(8),
                reserve_rate=Decimal("0.333333333"), min_bet=Decimal("0.5"),
                max_contribution=Decimal(8), overflow_to="reserve"),
    GroupConfig("minor", Decimal(0), Decimal("0.123456789"), cap=Decimal(30),
                reserve_rate=Decimal("0.01"), must_hit_by=Decimal(5)),
    GroupConfig("minor", Decimal(10), Decimal("0.2"), cap=Decimal(15),
                reserve_rate=Decimal("0.05")),
)

currency = st.integers(min_value=0, max_value=60)
change = st.one_of(
    st.tuples(st.just("contribution_rate"),
              st.integers(min_value=1, max_value=300_000_000).map(
                  lambda p: Decimal(p).scaleb(-9))),
    st.tuples(st.just("reserve_rate"),
              st.integers(min_value=0, max_value=300_000_000).map(
                  lambda p: Decimal(p).scaleb(-9))),
    st.tuples(st.just("cap"), st.none() | currency.map(Decimal)),
    st.tuples(st.just("seed"), currency.map(Decimal)),
    st.tuples(st.just("must_hit_by"), st.none() | currency.map(Decimal)),
    st.tuples(st.just("overflow_to"), st.sampled_from(["meter", "reserve"])),
    st.tuples(st.just("min_bet"), st.none() | st.sampled_from([Decimal("0.5"), Decimal(2)])),
    st.tuples(st.just("max_contribution"), st.none() | st.sampled_from([Decimal(3),
                                                                        Decimal(20)])),
)
bets = st.one_of(st.integers(min_value=1, max_value=999),            # fractions only
                 st.integers(min_value=U // 2, max_value=200 * U))   # whole units
step = st.one_of(
    st.tuples(st.just("bet"), bets),
    st.tuples(st.just("bet"), bets),
    st.tuples(st.just("bet"), bets),
    st.tuples(st.just("bet"), bets),
    st.tuples(st.just("bet"), bets),
    st.tuples(st.just("win"), st.none() | st.integers(min_value=1, max_value=30 * U)),
    st.tuples(st.just("config"), st.lists(change, min_size=1, max_size=3).map(dict)),
    st.tuples(st.just("adjust"), st.integers(min_value=-20 * U, max_value=20 * U)),
    st.tuples(st.just("status"), st.sampled_from(["suspended", "active"])),
)


@dataclass
class Books:
    """What the entries say, summed independently of the level's own meters."""

    entries: list[Entry] = field(default_factory=list)
    exact_pool: int = 0     # sum of bet x rate, in 1e-9 parts of a unit
    exact_reserve: int = 0  # sum of bet x reserve_rate, same parts
    overflow_to_reserve: int = 0

    def total(self, column: str) -> int:
        return sum(getattr(e, column) for e in self.entries)


def check_books(s: LevelState, books: Books) -> None:
    entries = books.entries
    # the chain: versions 1..N, each balance and reserve is the previous plus its delta
    assert [e.version_after for e in entries] == list(range(1, s.version + 1))
    balance = reserve = 0
    for e in entries:
        balance += e.delta
        reserve += e.reserve_delta
        assert (e.balance_after, e.reserve_after) == (balance, reserve)
        assert e.delta == (e.contributed - e.overflow + e.house_funded + e.reserve_funded
                           - e.paid + e.adjusted + e.transferred)
        assert e.reserve_delta == e.reserve_in - e.reserve_funded + e.reserve_transferred
        assert min(e.balance_after, e.reserve_after) >= 0
    assert (balance, reserve) == (s.amount, s.reserve)
    t = books.total
    opening = entries[0].house_funded
    seed_funding = t("house_funded") - opening + t("reserve_funded")
    assert (opening + t("contributed") + seed_funding + t("adjusted")
            == s.amount + t("paid") + t("overflow"))
    assert t("reserve_in") - t("reserve_funded") == s.reserve
    # the meters are the same sums
    m = s.meters
    assert (m.contributed, m.overflow, m.reserve_in, m.house_funded, m.reserve_funded,
            m.won, m.adjusted) == (t("contributed"), t("overflow"), t("reserve_in"),
                                   t("house_funded"), t("reserve_funded"), t("paid"),
                                   t("adjusted"))
    assert (m.wins, m.hits) == (sum(e.kind in ("win", "hit") for e in entries),
                                sum(e.kind == "hit" for e in entries))
    # no fraction lost, for the pool share and the reserve share
    assert t("contributed") * RATE_SCALE + s.carry == books.exact_pool
    assert ((t("reserve_in") - books.overflow_to_reserve) * RATE_SCALE + s.reserve_carry
            == books.exact_reserve)
    assert 0 <= s.carry < RATE_SCALE
    assert 0 <= s.reserve_carry < RATE_SCALE


def check_limits(s: LevelState) -> None:
    c = s.config
    if c.cap is not None:
        assert s.amount <= c.cap
    assert (s.trigger is None) == (c.must_hit_by is None)
    if c.must_hit_by is not None:
        assert s.trigger is not None
        assert c.seed < s.trigger <= c.must_hit_by
        assert s.amount <= c.must_hit_by


def apply_step(s: LevelState, books: Books, kind: str, value: Any,
               draw: Any) -> LevelState:
    """Apply one step; a refusal must leave the level as it was (it returns `s`)."""
    c = s.config
    try:
        if kind == "bet":
            nxt, entries, hits = contribute(s, value, T0, draw)
            if entries:  # qualified
                books.exact_pool += value * c.rate
                books.exact_reserve += value * c.reserve_rate
                if c.overflow_to == "reserve":
                    books.overflow_to_reserve += sum(e.overflow for e in entries)
            else:
                assert c.min_bet is not None
                assert value < c.min_bet
                assert nxt == s
            # a qualifying bet never leaves the pool at or past its trigger
            assert not entries or nxt.trigger is None or nxt.amount < nxt.trigger
            ceiling = max(x.must_hit_by or 0 for x in (c, nxt.config))
            for h in hits:  # a hit pays the whole pool it reached, never past must_hit_by
                assert h.kind == "hit"
                assert h.paid == h.balance_after - h.delta <= ceiling
        elif kind == "win":
            nxt, entry = win(s, value, T0, draw)
            entries = [entry]
        elif kind == "config":
            nxt, entry = reconfigure(s, parse_changes(value), T0, who="prop", reason="test")
            entries = [entry]
        elif kind == "adjust":
            nxt, entry = adjust(s, value, T0, reason="test")
            entries = [entry]
        else:
            nxt, entry = set_status(s, value, T0)
            entries = [entry]
    except (ValidationError, InsufficientFundsError, GroupSuspendedError):
        return s
    books.entries.extend(entries)
    assert nxt.version == s.version + len(entries)
    return nxt


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(CONFIGS), steps=st.lists(step, min_size=5, max_size=60),
       rnd=st.randoms(use_true_random=False))
def test_domain_books_balance_and_no_fraction_is_lost(
        config: GroupConfig, steps: list[tuple[str, Any]], rnd: random.Random) -> None:
    draws: list[tuple[int, int]] = []

    def draw(low: int, high: int) -> int:
        draws.append((low, high))
        return rnd.randint(low, high)

    s, first = create(config, T0, draw)
    books = Books(entries=[first])
    assert len(draws) == (s.config.must_hit_by is not None)
    check_books(s, books)
    for kind, value in steps:
        drawn, written, before = len(draws), len(books.entries), s
        s = apply_step(s, books, kind, value, draw)
        if before.pending and not s.pending:
            event("pending changes applied at a reset")
        check_books(s, books)
        check_limits(s)
        # every reset of a mystery level draws one new trigger in (seed, must_hit_by]
        new = books.entries[written:]
        if not new:  # refused, or a bet below min_bet: whatever it drew was thrown away
            del draws[drawn:]
        resets = sum(e.detail == {"reset": True} for e in new)
        for e in new:
            event(e.kind)
            if e.overflow:
                event("overflow to " + s.config.overflow_to)
            if e.reserve_funded:
                event("seed funded from the reserve")
            if e.kind == "config" and e.detail and e.detail["pending"]:
                event("pending change")
        c = s.config
        if c.must_hit_by is None:
            assert len(draws) == drawn
        else:
            assert draws[drawn:] == [(c.seed + 1, c.must_hit_by)] * resets


# -- the same through the engine ------------------------------------------------------------

ENGINE_GROUPS = [
    GroupConfig("mystery", Decimal(1), Decimal("0.2"), cap=Decimal(3),
                reserve_rate=Decimal("0.05"), must_hit_by=Decimal(2),
                overflow_to="reserve"),
    GroupConfig("capped", Decimal(2), Decimal("0.333333333"), cap=Decimal("2.1"),
                reserve_rate=Decimal("0.1"), min_bet=Decimal("0.2")),
]
engine_bets = st.one_of(st.integers(min_value=1, max_value=999),
                        st.integers(min_value=U // 10, max_value=5 * U))
engine_step = st.one_of(
    st.tuples(st.just("bet"), engine_bets,
              st.sampled_from([("mystery",), ("capped",), ("capped", "mystery")])),
    st.tuples(st.just("bet"), engine_bets,
              st.sampled_from([("mystery",), ("capped",), ("capped", "mystery")])),
    st.tuples(st.just("win"), st.none() | st.integers(min_value=1, max_value=3 * U),
              st.sampled_from(["mystery", "capped"])),
    st.tuples(st.just("config"), st.lists(change, min_size=1, max_size=2).map(dict),
              st.sampled_from(["mystery", "capped"])),
    st.tuples(st.just("adjust"), st.integers(min_value=-2 * U, max_value=2 * U),
              st.sampled_from(["mystery", "capped"])),
)


@dataclass
class Exact:
    pool: int = 0
    reserve: int = 0


def _read_levels(path: Path) -> dict[str, tuple[int, int]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {name: (carry, reserve_carry) for name, carry, reserve_carry in
                conn.execute("SELECT name, carry, reserve_carry FROM levels")}
    finally:
        conn.close()


def _units(d: Decimal) -> int:
    units = int(d * U)
    assert units == d * U
    return units


def _parts(rate: Decimal) -> int:
    """A rate in parts of 1e9 (exact)."""
    parts = int(rate.scaleb(9))
    assert parts == rate.scaleb(9)
    return parts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(engine_step, min_size=12, max_size=30))
def test_engine_books_balance_and_no_fraction_is_lost(
        steps: list[tuple[str, Any, Any]]) -> None:
    with _engine() as (path, engine):
        exact = {g.name: Exact() for g in ENGINE_GROUPS}
        to_reserve: dict[tuple[str, str], bool] = {}  # (op_id, level): overflow went there
        for i, (kind, value, target) in enumerate(steps):
            pools = engine.pools()
            op_id = f"step-{i}"
            try:
                if kind == "bet":
                    result = engine.contribute(from_units(value), groups=target, op_id=op_id)
                    for name in target:
                        p = pools[name]
                        to_reserve[op_id, name] = p.overflow_to == "reserve"
                        if p.min_bet is not None and value < _units(p.min_bet):
                            assert result.versions[name] == p.version
                            continue
                        exact[name].pool += value * _parts(p.contribution_rate)
                        exact[name].reserve += value * _parts(p.reserve_rate)
                elif kind == "win":
                    engine.process_win(target, amount=None if value is None
                                       else from_units(value), op_id=op_id)
                elif kind == "config":
                    engine.update_config(target, op_id=op_id, **value)
                else:
                    engine.adjust(target, from_units(value), who="ops", reason="prop", op_id=op_id)
            except (ValidationError, InsufficientFundsError):
                assert engine.pools() == pools  # a refusal changes nothing
        report = engine.verify()
        assert report.ok, report.problems
        _reconcile(path, engine, exact, to_reserve)
        for r in read_ledger(path):
            for column in ("overflow", "reserve_funded", "adjusted"):
                if r[column]:
                    event(f"engine: {column}")
            event(f"engine: {r['kind']}")


@contextmanager
def _engine() -> Iterator[tuple[Path, JackpotEngine]]:
    """One fresh engine on a file database, closed afterwards (one per example)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pools.db"
        engine = JackpotEngine.open(path, ENGINE_GROUPS, settings=Settings(
            enable_metrics=False, log_level="warning"))
        try:
            yield path, engine
        finally:
            engine.close()


def _reconcile(path: Path, engine: JackpotEngine, exact: dict[str, Exact],
               to_reserve: dict[tuple[str, str], bool]) -> None:
    rows = read_ledger(path)
    carries = _read_levels(path)
    for name, snap in engine.pools().items():
        mine = [r for r in rows if r["level"] == name]

        def total(column: str, rows: list[dict[str, Any]] = mine) -> int:
            return sum(r[column] for r in rows)

        amount, reserve = _units(snap.amount), _units(snap.reserve)
        opening = mine[0]["house_funded"]
        assert mine[0]["kind"] == "create"
        seed_funding = total("house_funded") - opening + total("reserve_funded")
        assert (opening + total("contributed") + seed_funding + total("adjusted")
                == amount + total("paid") + total("overflow"))
        assert total("reserve_in") - total("reserve_funded") == reserve
        meters = snap.meters
        for meter, column in (("contributed", "contributed"), ("overflow", "overflow"),
                              ("reserve_in", "reserve_in"), ("house_funded", "house_funded"),
                              ("reserve_funded", "reserve_funded"), ("won", "paid"),
                              ("adjusted", "adjusted")):
            assert meters[meter] == from_units(total(column)), meter
        assert set(meters) == set(METER_FIELDS)
        carry, reserve_carry = carries[name]
        overflow_in_reserve = sum(r["overflow"] for r in mine
                                  if r["kind"] == "contribute"
                                  and to_reserve.get((r["op_id"], name), False))
        assert total("contributed") * RATE_SCALE + carry == exact[name].pool
        assert ((total("reserve_in") - overflow_in_reserve) * RATE_SCALE + reserve_carry
                == exact[name].reserve)
        if snap.cap is not None:
            assert snap.amount <= snap.cap
        if snap.must_hit_by is not None:
            assert snap.amount <= snap.must_hit_by
