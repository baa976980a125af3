"""A level's life through the public API on a file database.

Cap and overflow, reserve funding, suspend and resume, adjust, retire,
pending config changes, history, and wins guarded by what the player was
shown. Each step is checked on the ledger rows it wrote (kind, delta,
reserve_delta and every per-meter column, read from the file through a
read-only connection), on the snapshot's meters, and with `verify()`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pytest

from _helpers import run_together
from jackpot import (
    AdminResult,
    ConcurrencyViolationError,
    GroupConfig,
    GroupRetiredError,
    GroupSuspendedError,
    InsufficientFundsError,
    JackpotEngine,
    UnknownGroupError,
    ValidationError,
    Win,
    _cli,
    requests,
)

from .test_must_hit_by import read_level

U = 1_000_000
PARTS = ("contributed", "overflow", "reserve_in", "house_funded", "reserve_funded", "paid",
         "adjusted", "transferred", "reserve_transferred")
COUNTS = ("bets", "wins", "hits")
METERS = ("bets", "wagered", "contributed", "overflow", "reserve_in", "house_funded",
          "reserve_funded", "won", "wins", "hits", "adjusted", "transferred",
          "reserve_transferred")

Ledger = Callable[..., list[dict[str, Any]]]


def view(r: dict[str, Any]) -> dict[str, Any]:
    """What a test checks of a ledger row."""
    out = {k: r[k] for k in ("kind", "level", "delta", "reserve_delta", "balance_after",
                             "reserve_after", "version_after", "who", *PARTS)}
    out["detail"] = None if r["detail"] is None else json.loads(r["detail"])
    return out


def row(kind: str, level: str, *, delta: int, balance: int, version: int,
        reserve_delta: int = 0, reserve: int = 0, who: str | None = None,
        detail: dict[str, Any] | None = None, **parts: int) -> dict[str, Any]:
    """An expected ledger row; the per-meter columns are zero unless named."""
    assert set(parts) <= set(PARTS), parts
    return {"kind": kind, "level": level, "delta": delta, "reserve_delta": reserve_delta,
            "balance_after": balance, "reserve_after": reserve, "version_after": version,
            "who": who, **{p: parts.get(p, 0) for p in PARTS}, "detail": detail}


def rows(ledger: Ledger, op_id: str) -> list[dict[str, Any]]:
    return [view(r) for r in ledger() if r["op_id"] == op_id]


def meters(**given: object) -> dict[str, Decimal | int]:
    """A full meters dict: counts as int, money as Decimal, zero unless named."""
    assert set(given) <= set(METERS), given
    return {m: int(given.get(m, 0)) if m in COUNTS  # type: ignore[call-overload]
            else Decimal(str(given.get(m, 0))) for m in METERS}


def verified(engine: JackpotEngine) -> None:
    report = engine.verify()
    assert report.ok, report.problems


# -- cap and overflow -------------------------------------------------------------------

def test_cap_and_overflow_to_the_meter(open_engine: Callable[..., JackpotEngine],
                                       ledger: Ledger, db_checksum: Callable[..., str]) -> None:
    engine = open_engine(groups=[GroupConfig("capped", Decimal(10), Decimal("0.1"),
                                             cap=Decimal(11), reserve_rate=Decimal("0.01"))])
    first = engine.contribute("5", groups="capped", op_id="b1")
    assert (first.contributions, first.balances, first.versions) == (
        {"capped": Decimal("0.5")}, {"capped": Decimal("10.5")}, {"capped": 2})
    capped = engine.contribute("10", groups="capped", op_id="b2")  # adds 1: room for 0.5
    assert (capped.contributions, capped.balances, capped.versions, capped.hits) == (
        {"capped": Decimal("0.5")}, {"capped": Decimal(11)}, {"capped": 3}, ())
    assert rows(ledger, "b2") == [row(
        "contribute", "capped", delta=U // 2, balance=11 * U, version=3,
        reserve_delta=100_000, reserve=150_000, contributed=U, overflow=U // 2,
        reserve_in=100_000, detail={"bet": 10 * U})]
    at_cap = engine.contribute("3", groups="capped", op_id="b3")  # all of 0.3 overflows
    assert (at_cap.contributions, at_cap.balances) == ({"capped": 0}, {"capped": Decimal(11)})
    assert rows(ledger, "b3") == [row(
        "contribute", "capped", delta=0, balance=11 * U, version=4, reserve_delta=30_000,
        reserve=180_000, contributed=300_000, overflow=300_000, reserve_in=30_000,
        detail={"bet": 3 * U})]
    p = engine.pool("capped")
    assert (p.amount, p.reserve, p.cap, p.version) == (11, Decimal("0.18"), 11, 4)
    assert p.meters == meters(bets=3, wagered=18, contributed="1.8", overflow="0.8",
                              reserve_in="0.18", house_funded=10)
    verified(engine)

    digest = db_checksum()
    with pytest.raises(ValidationError,
                       match=r"^cap 10\.999999 is below the current amount 11\.000000"):
        engine.update_config("capped", cap="10.999999", contribution_rate="0.2")
    assert db_checksum() == digest
    assert engine.pool("capped").contribution_rate == Decimal("0.1")  # all or nothing
    raised = engine.update_config("capped", cap=12, op_id="c1", who="ops", reason="more room")
    assert (raised.after["cap"], raised.pending, raised.version) == ("12.000000", {}, 5)
    assert engine.contribute("10", groups="capped").balances == {"capped": 12}
    verified(engine)


def test_overflow_to_the_reserve_funds_the_next_resets(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger) -> None:
    engine = open_engine(groups=[GroupConfig(
        "floor", Decimal(10), Decimal("0.1"), cap=Decimal(12), reserve_rate=Decimal("0.05"),
        overflow_to="reserve")])
    engine.contribute("50", groups="floor", op_id="b1")  # +5: 2 in, 3 overflow to reserve
    assert rows(ledger, "b1") == [row(
        "contribute", "floor", delta=2 * U, balance=12 * U, version=2,
        reserve_delta=5_500_000, reserve=5_500_000, contributed=5 * U, overflow=3 * U,
        reserve_in=5_500_000, detail={"bet": 50 * U})]

    # reserve 5.5 < seed 10: the house funds the other 4.5
    w1 = engine.process_win("floor", op_id="w1", winner="p1")
    assert w1 == Win("w1", "floor", Decimal(12), Decimal(10), 3, "p1", reset=True)
    assert rows(ledger, "w1") == [row(
        "win", "floor", delta=-2 * U, balance=10 * U, version=3, reserve_delta=-5_500_000,
        reserve=0, paid=12 * U, reserve_funded=5_500_000, house_funded=4_500_000,
        who="p1", detail={"reset": True})]
    verified(engine)

    # reserve 43 > seed 10: the reserve funds all of it and keeps 33
    engine.contribute("300", groups="floor", op_id="b2")  # +30: 2 in, 28 overflow; +15 share
    w2 = engine.process_win("floor", op_id="w2")
    assert (w2.amount, w2.balance, w2.version) == (12, 10, 5)
    assert rows(ledger, "w2") == [row(
        "win", "floor", delta=-2 * U, balance=10 * U, version=5, reserve_delta=-10 * U,
        reserve=33 * U, paid=12 * U, reserve_funded=10 * U, detail={"reset": True})]
    p = engine.pool("floor")
    assert (p.amount, p.reserve, p.overflow_to) == (10, 33, "reserve")
    assert p.meters == meters(bets=2, wagered=350, contributed=35, overflow=31,
                              reserve_in="48.5", house_funded="14.5", reserve_funded="15.5",
                              won=24, wins=2)
    verified(engine)


# -- suspend and resume --------------------------------------------------------------------

def test_suspend_keeps_the_amount_and_refuses_bets_and_wins_until_resumed(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger,
        db_checksum: Callable[..., str]) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1")),
                                 GroupConfig("major", Decimal(50), Decimal("0.2"))])
    engine.contribute("3.333333", op_id="b1")
    before = engine.pools()
    held = engine.suspend("minor", reason="machine fault", who="ops", op_id="s1")
    assert held == AdminResult("s1", "suspend", "minor", {"minor": before["minor"].amount},
                               {"minor": 3})
    assert rows(ledger, "s1") == [row(
        "suspend", "minor", delta=0, balance=10_333_333, version=3, who="ops",
        detail={"reason": "machine fault"})]
    p = engine.pool("minor")
    assert (p.status, p.amount) == ("suspended", Decimal("10.333333"))
    assert p.meters == before["minor"].meters == meters(
        bets=1, wagered="3.333333", contributed="0.333333", house_funded=10)
    verified(engine)

    digest = db_checksum()
    for call in (lambda: engine.contribute("1", groups="minor"),
                 lambda: engine.contribute("1", groups=["major", "minor"]),  # all or nothing
                 lambda: engine.process_win("minor"),
                 lambda: engine.process_win("minor", amount="1")):
        with pytest.raises(GroupSuspendedError, match=r"^level 'minor' is suspended"):
            call()
    with pytest.raises(ValidationError,
                       match=r"^level 'minor' is already suspended: it cannot be suspended"):
        engine.suspend("minor", reason="again")
    assert db_checksum() == digest

    every = engine.contribute("10", op_id="b2")  # every level that takes bets: major only
    assert (every.contributions, every.balances) == ({"major": 2}, {"major": Decimal("52.666666")})
    assert engine.pool("minor").amount == before["minor"].amount

    back = engine.resume("minor", op_id="r1")
    assert (back.action, back.versions) == ("resume", {"minor": 4})
    assert rows(ledger, "r1") == [row("resume", "minor", delta=0, balance=10_333_333,
                                      version=4, detail={"reason": None})]
    assert engine.contribute("10", groups="minor").balances == {"minor": Decimal("11.333333")}
    assert engine.pool("minor").status == "active"
    verified(engine)


def test_a_bet_on_every_level_when_none_takes_bets_is_refused_not_an_empty_success(
        open_engine: Callable[..., JackpotEngine], db_checksum: Callable[..., str]) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1")),
                                 GroupConfig("major", Decimal(50), Decimal("0.2")),
                                 GroupConfig("old", Decimal(5), Decimal("0.1"))])
    engine.retire("old", transfer_to="major", who="ops", reason="merged")
    engine.suspend("minor", reason="fault")
    engine.suspend("major", reason="fault")
    digest = db_checksum()
    with pytest.raises(GroupSuspendedError, match=(
            r"^a bet on every level, but no level takes bets: suspended major, minor; "
            r"retired old \(resume a suspended level first\)$")):
        engine.contribute("10", op_id="b1")
    assert db_checksum() == digest  # the op_id is not used up
    engine.resume("major")
    assert engine.contribute("10", op_id="b1").contributions == {"major": 2}
    verified(engine)


def test_a_bet_on_every_level_when_all_are_retired_does_not_say_resume(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    # Only possible when the pool went to a level another engine added.
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))])
    with JackpotEngine.open(db_path, [GroupConfig("bonus", Decimal(1), Decimal("0.1"))]) as other:
        other.retire("minor", transfer_to="bonus", who="ops", reason="merged")
    with pytest.raises(GroupSuspendedError, match=(
            r"^a bet on every level, but no level takes bets: retired minor \(a retired level "
            r"never takes bets again: open the engine with a new level\)$")):
        engine.contribute("10", op_id="b1")


# -- adjust ------------------------------------------------------------------------------

def test_adjustments_are_audited_and_bounded(open_engine: Callable[..., JackpotEngine],
                                             ledger: Ledger,
                                             db_checksum: Callable[..., str]) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"),
                                             cap=Decimal(20))])
    up = engine.adjust("minor", "2.5", reason="goodwill", who="ops", op_id="a1")
    assert up == AdminResult("a1", "adjust", "minor", {"minor": Decimal("12.5")}, {"minor": 2})
    assert rows(ledger, "a1") == [row("adjust", "minor", delta=2_500_000, balance=12_500_000,
                                      version=2, adjusted=2_500_000, who="ops",
                                      detail={"reason": "goodwill"})]
    down = engine.adjust("minor", Decimal("-12.5"), reason="correction", who="ops",
                         op_id="a2")
    assert down.balances == {"minor": 0}
    assert rows(ledger, "a2") == [row("adjust", "minor", delta=-12_500_000, balance=0,
                                      version=3, adjusted=-12_500_000, who="ops",
                                      detail={"reason": "correction"})]
    assert engine.pool("minor").meters == meters(house_funded=10, adjusted=-10)
    verified(engine)

    digest = db_checksum()
    with pytest.raises(InsufficientFundsError, match=r"would take its pool 0\.000000 below zero"):
        engine.adjust("minor", "-0.000001", who="ops", reason="x")
    with pytest.raises(ValidationError, match=r"would lift its pool above 20\.000000"):
        engine.adjust("minor", "20.000001", who="ops", reason="x")
    with pytest.raises(ValidationError, match=r"^delta must not be zero, got 0$"):
        engine.adjust("minor", 0, who="ops", reason="x")
    with pytest.raises(InsufficientFundsError, match=r"has an empty pool"):
        engine.process_win("minor")
    again = engine.adjust("minor", "2.5", reason="goodwill", who="ops", op_id="a1")
    assert (again.replayed, again.balances) == (True, {"minor": Decimal("12.5")})
    assert db_checksum() == digest  # refusals and the replay changed nothing
    top = engine.adjust("minor", 20, who="ops", reason="top up", op_id="a3")  # exactly to the cap
    assert top.balances == {"minor": 20}
    verified(engine)


# -- retire --------------------------------------------------------------------------------

def test_retire_moves_pool_and_reserve_in_one_transaction(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger,
        db_checksum: Callable[..., str], db_path: Path) -> None:
    groups = [GroupConfig("old", Decimal(10), Decimal("0.1"), reserve_rate=Decimal("0.05")),
              GroupConfig("new", Decimal(20), Decimal("0.1"), cap=Decimal(25))]
    engine = open_engine(groups=groups)
    engine.contribute("100", groups="old", op_id="b1")  # old: pool 20, reserve 5
    result = engine.retire("old", transfer_to="new", reason="rebrand", who="ops", op_id="ret")
    assert result == AdminResult("ret", "retire", "old", {"old": 0, "new": 25},
                                 {"old": 3, "new": 2})
    detail = {"reason": "rebrand", "from": "old", "to": "new"}
    # new has room for 5 under its cap: the other 15 of the pool and the reserve 5 go to
    # its reserve
    assert rows(ledger, "ret") == [
        row("retire", "old", delta=-20 * U, balance=0, version=3, reserve_delta=-5 * U,
            reserve=0, transferred=-20 * U, reserve_transferred=-5 * U, who="ops",
            detail=detail),
        row("transfer_in", "new", delta=5 * U, balance=25 * U, version=2,
            reserve_delta=20 * U, reserve=20 * U, transferred=5 * U,
            reserve_transferred=20 * U, who="ops", detail=detail),
    ]
    old, new = engine.pool("old"), engine.pool("new")
    assert (old.status, old.amount, old.reserve) == ("retired", 0, 0)
    assert old.meters == meters(bets=1, wagered=100, contributed=10, reserve_in=5,
                                house_funded=10, transferred=-20, reserve_transferred=-5)
    assert (new.status, new.amount, new.reserve) == ("active", 25, 20)
    assert new.meters == meters(house_funded=20, transferred=5, reserve_transferred=20)
    verified(engine)

    digest = db_checksum()
    refusals: list[tuple[Callable[[], object], str]] = [
        (lambda: engine.contribute("1", groups="old"), "it refuses contributions"),
        (lambda: engine.contribute("1", groups=["new", "old"]), "it refuses contributions"),
        (lambda: engine.process_win("old"), "it refuses wins"),
        (lambda: engine.update_config("old", contribution_rate="0.2"),
         "it refuses config changes"),
        (lambda: engine.suspend("old", reason="x"), "it cannot be suspended"),
        (lambda: engine.resume("old"), "it cannot be resumed"),
        (lambda: engine.adjust("old", "1", who="ops", reason="x"), "it refuses adjustments"),
        (lambda: engine.retire("old", transfer_to="new", who="ops", reason="again"),
         "it cannot be retired again"),
        (lambda: engine.retire("new", transfer_to="old", who="ops", reason="back"),
         "it cannot take the pool of level 'new'"),
    ]
    for call, says in refusals:
        with pytest.raises(GroupRetiredError, match=rf"^level 'old' is retired: {says}"):
            call()
    assert db_checksum() == digest
    assert engine.contribute("10").contributions == {"new": 0}  # at its cap; old skipped
    verified(engine)

    engine.close()
    reopened = JackpotEngine.open(db_path, groups)
    try:
        assert reopened.pool("old").status == "retired"
        with pytest.raises(GroupRetiredError):
            reopened.contribute("1", groups="old")
        verified(reopened)
    finally:
        reopened.close()


def test_adjustments_recorded_without_who_before_it_was_required_still_read_and_verify(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger, db_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A database an engine wrote when `who` was optional holds NULL there: still sound."""
    groups = [GroupConfig("old", Decimal(10), Decimal("0.1")),
              GroupConfig("new", Decimal(20), Decimal("0.1"))]
    engine = open_engine(groups=groups)
    with monkeypatch.context() as older:  # the check as it was: None taken, stored NULL
        older.setattr(requests, "_check_who", lambda who, _action: who)
        engine.adjust("old", "-2.5", reason="meter fix", op_id="a1")
        engine.retire("old", transfer_to="new", reason="merge", op_id="r1")
    engine.process_win("new", op_id="w1", winner="p-1")
    engine.close()

    engine = open_engine()  # reopened by an engine that requires who
    assert [(r["kind"], r["who"]) for r in ledger() if r["op_id"] in ("a1", "r1")] == [
        ("adjust", None), ("retire", None), ("transfer_in", None)]
    verified(engine)
    assert [(h.op_id, h.amount, h.winner) for h in engine.history("new")] == [
        ("w1", Decimal("27.5"), "p-1")]
    assert engine.pool("new").meters["transferred"] == Decimal("7.5")
    capsys.readouterr()
    assert _cli.run(["ledger", "--level", "old", "--tail", "2", "--json",
                     "--db", str(db_path)]) == 0
    assert [(r["op_id"], r["who"]) for r in json.loads(capsys.readouterr().out)] == [
        ("a1", None), ("r1", None)]
    assert _cli.run(["ledger", "--level", "old", "--tail", "2", "--db", str(db_path)]) == 0
    assert capsys.readouterr().out.count(" - ") >= 2  # (who shown as "-")


def test_retire_moves_the_carried_fractions_and_records_them(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger, db_path: Path) -> None:
    engine = open_engine(groups=[
        GroupConfig("old", Decimal(0), Decimal("0.333333333"),
                    reserve_rate=Decimal("0.333333333")),
        GroupConfig("new", Decimal(0), Decimal("0.5"))])
    # 0.000003 x 0.333333333: 0.999999999 of a unit owed to the pool and to the reserve
    engine.contribute(Decimal("0.000003"), groups="old", op_id="b1")
    engine.contribute(Decimal("0.000001"), groups="new", op_id="b2")  # half a unit carried
    engine.retire("old", transfer_to="new", who="ops", reason="merge", op_id="r1")
    carried = {"carry": 999_999_999, "reserve_carry": 999_999_999, "units": 1,
               "reserve_units": 0}
    detail = {"reason": "merge", "from": "old", "to": "new", "carried": carried}
    assert rows(ledger, "r1") == [
        row("retire", "old", delta=0, balance=0, version=3, who="ops", detail=detail),
        row("transfer_in", "new", delta=1, balance=1, version=3, transferred=1, who="ops",
            detail=detail),
    ]
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        carries = {r[0]: r[1:] for r in conn.execute(
            "SELECT name, carry, reserve_carry FROM levels")}
    finally:
        conn.close()
    assert carries == {"old": (0, 0), "new": (499_999_999, 999_999_999)}
    assert engine.pool("new").amount == Decimal("0.000001")
    verified(engine)


def test_a_reserve_past_the_engine_range_is_refused_and_nothing_changes(
        open_engine: Callable[..., JackpotEngine], db_checksum: Callable[..., str]) -> None:
    hoard = {"seed": Decimal(0), "contribution_rate": Decimal("0.000000001"),
             "reserve_rate": Decimal("0.999999998")}
    engine = open_engine(groups=[GroupConfig("x", **hoard), GroupConfig("y", **hoard)])
    top = Decimal(10**11)  # the largest bet: each reserve takes almost all of it
    engine.contribute(top, groups=("x", "y"), op_id="b1")
    digest = db_checksum()
    with pytest.raises(ValidationError, match=r"would lift the reserve of level 'x' to "
                                              r"199999999600\.000000, beyond the engine's range"):
        engine.contribute(top, groups=("x", "y"), op_id="b2")
    with pytest.raises(ValidationError, match=r"^retiring level 'x' into it would lift the "
                                              r"reserve of level 'y' to 199999999600\.000000"):
        engine.retire("x", transfer_to="y", who="ops", reason="merge", op_id="r1")
    assert db_checksum() == digest
    verified(engine)


# -- pending changes -------------------------------------------------------------------------

def test_seed_waits_for_the_reset_and_rates_apply_at_once(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"),
                                             reserve_rate=Decimal("0.01"))])
    changed = engine.update_config("minor", op_id="c1", who="ops", reason="promo", seed=12,
                                   contribution_rate="0.2", reserve_rate="0.02")
    assert changed.pending == {"seed": "12.000000"}
    assert (changed.before["seed"], changed.after["seed"]) == ("10.000000", "10.000000")
    assert (changed.before["contribution_rate"], changed.after["contribution_rate"]) == (
        "0.1", "0.2")
    (r,) = rows(ledger, "c1")
    assert r == row("config", "minor", delta=0, balance=10 * U, version=2, who="ops",
                    detail=r["detail"])
    assert r["detail"]["pending"] == {"seed": "12.000000"}
    assert r["detail"]["reason"] == "promo"
    assert (r["detail"]["before"]["reserve_rate"], r["detail"]["after"]["reserve_rate"]) == (
        "0.01", "0.02")
    p = engine.pool("minor")
    assert (p.seed, p.contribution_rate, p.reserve_rate, p.pending_changes) == (
        10, Decimal("0.2"), Decimal("0.02"), {"seed": "12.000000"})
    bet = engine.contribute("10", groups="minor", op_id="b1")  # the new rates, at once
    assert bet.contributions == {"minor": 2}
    assert rows(ledger, "b1")[0]["reserve_in"] == 200_000
    engine.process_win("minor", amount="1")  # no reset: still pending
    assert engine.pool("minor").pending_changes == {"seed": "12.000000"}
    w = engine.process_win("minor", op_id="w1")
    assert (w.amount, w.balance) == (11, 12)
    assert rows(ledger, "w1")[0]["house_funded"] == 12 * U - 200_000  # reserve paid 0.2
    p = engine.pool("minor")
    assert (p.seed, p.amount, p.pending_changes) == (12, 12, {})
    verified(engine)


# -- history --------------------------------------------------------------------------------

def test_history_lists_wins_and_hits_newest_first(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger, db_path: Path) -> None:
    engine = open_engine(groups=[
        GroupConfig("mystery", Decimal(10), Decimal("0.5"), must_hit_by=Decimal(20)),
        GroupConfig("other", Decimal(10), Decimal("0.1"))])
    engine.process_win("mystery", amount="1", winner="p1", op_id="w1")
    engine.process_win("other", winner="p9", op_id="elsewhere")
    amount, trigger = read_level(db_path, "mystery")
    hit = engine.contribute(str(Decimal(2 * (trigger - amount)) / U), groups="mystery",
                            op_id="h1")  # adds exactly what the trigger needs
    assert [h.amount for h in hit.hits] == [Decimal(trigger) / U]
    engine.update_config("mystery", contribution_rate="0.4")  # not a win
    engine.process_win("mystery", winner="p2", op_id="w2")
    engine.process_win("mystery", amount="2", op_id="w3")

    by_op = {r["op_id"]: r for r in ledger("mystery") if r["kind"] in ("win", "hit")}
    history = engine.history("mystery", limit=10)
    assert [(e.op_id, e.amount, e.winner, e.hit) for e in history] == [
        ("w3", 2, None, False),
        ("w2", 10, "p2", False),
        ("h1", Decimal(trigger) / U, None, True),
        ("w1", 1, "p1", False),
    ]
    assert [(e.at_ms, e.version) for e in history] == [
        (by_op[e.op_id]["at_ms"], by_op[e.op_id]["version_after"]) for e in history]
    assert [e.version for e in history] == sorted((e.version for e in history), reverse=True)
    assert engine.history("mystery", limit=2) == history[:2]
    assert engine.history("mystery") == history  # the default limit (10) holds them all
    assert [e.op_id for e in engine.history("other")] == ["elsewhere"]
    for bad in (0, 10_001, True, "3", 2.0):
        with pytest.raises(ValidationError, match=r"^limit must be an int in \[1, 10000\]"):
            engine.history("mystery", limit=bad)  # type: ignore[arg-type]
    with pytest.raises(UnknownGroupError):
        engine.history("nope")
    verified(engine)


# -- wins against what the player was shown ---------------------------------------------------

def test_wins_with_a_stale_version_or_amount_are_refused(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger,
        db_checksum: Callable[..., str]) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))])
    shown = engine.pool("minor")
    engine.contribute("10", groups="minor")  # the pool moves on
    digest = db_checksum()
    with pytest.raises(ConcurrencyViolationError, match=r"at version 2, not the expected 1") as e:
        engine.process_win("minor", expected_version=shown.version, op_id="late")
    assert (e.value.operation, e.value.group, e.value.conflict_details) == (
        "win", "minor", {"expected_version": 1, "actual_version": 2})
    with pytest.raises(ConcurrencyViolationError,
                       match=r"holds 11\.000000, not the 10\.000000 the caller expected") as e:
        engine.process_win("minor", expected_amount=shown.amount, amount="1")
    assert e.value.conflict_details == {"expected_amount": "10.000000",
                                        "actual_amount": "11.000000"}
    with pytest.raises(ConcurrencyViolationError):  # both given, one stale
        engine.process_win("minor", expected_version=2, expected_amount=shown.amount)
    assert db_checksum() == digest
    assert [r["op_id"] for r in ledger() if r["op_id"] == "late"] == []

    now = engine.pool("minor")
    paid = engine.process_win("minor", expected_version=now.version,
                              expected_amount=now.amount, op_id="on-time")
    assert (paid.amount, paid.version) == (now.amount, now.version + 1)
    # a second player shown the same pool is refused; without a guard he gets the seed
    with pytest.raises(ConcurrencyViolationError):
        engine.process_win("minor", expected_version=now.version)
    assert engine.process_win("minor").amount == 10
    verified(engine)


def test_simultaneous_guarded_wins_pay_exactly_once(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))])
    engine.contribute("55", groups="minor")
    shown = engine.pool("minor")
    players = 8
    outcomes = run_together(*[lambda i=i: engine.process_win(
        "minor", expected_version=shown.version, expected_amount=shown.amount,
        winner=f"p{i}", op_id=f"win-{i}") for i in range(players)])
    wins = [o for o in outcomes if isinstance(o, Win)]
    refused = [o for o in outcomes if not isinstance(o, Win)]
    assert len(wins) == 1
    assert len(refused) == players - 1
    assert all(isinstance(o, ConcurrencyViolationError) for o in refused)
    assert wins[0].amount == shown.amount == Decimal("15.5")
    win_rows = [r for r in ledger("minor") if r["kind"] == "win"]
    assert [r["op_id"] for r in win_rows] == [wins[0].op_id]
    p = engine.pool("minor")
    assert (p.amount, p.version, p.meters["wins"]) == (10, shown.version + 1, 1)
    verified(engine)


def test_simultaneous_unguarded_wins_are_served_in_turn(
        open_engine: Callable[..., JackpotEngine], ledger: Ledger) -> None:
    engine = open_engine(groups=[GroupConfig("minor", Decimal(10), Decimal("0.1"))])
    engine.contribute("55", groups="minor")
    players = 6
    paid = run_together(*[lambda i=i: engine.process_win("minor", op_id=f"win-{i}")
                          for i in range(players)])
    errors = [w for w in paid if not isinstance(w, Win)]
    assert not errors, errors
    # one after the other: the first takes the pool, each later one the seed it found
    assert sorted(w.version for w in paid) == list(range(3, 3 + players))
    by_version = sorted(paid, key=lambda w: w.version)
    assert [w.amount for w in by_version] == [Decimal("15.5")] + [Decimal(10)] * (players - 1)
    win_rows = [r for r in ledger("minor") if r["kind"] == "win"]
    assert [r["paid"] for r in win_rows] == [15_500_000] + [10 * U] * (players - 1)
    assert [r["house_funded"] for r in win_rows] == [10 * U] * players
    p = engine.pool("minor")
    assert (p.amount, p.meters["wins"], p.meters["won"]) == (10, players, Decimal("65.5"))
    verified(engine)
