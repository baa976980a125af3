"""Drive the engine and the reference model side by side, and compare them.

`Driver.call` sends one public call to the engine and the same call to the
model, then asserts that both agree: the same result, or the same refusal
(error class, and a message naming what was wrong). `Driver.check` compares
everything observable afterwards: every snapshot, the new ledger rows (read
from the file through a separate read-only connection), the idempotency
records, the win history and `verify()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from jackpot import Contribution, GroupConfig, JackpotEngine, JackpotError, Settings

from .reference import (
    PARTS,
    RATE,
    UNIT,
    Model,
    Refused,
    dec,
    text6,
    to_units,
)

SLOW = os.environ.get("JACKPOT_SLOW") == "1"
"""JACKPOT_SLOW=1 selects the soak profile (tens of thousands of examples)."""
QUICK = os.environ.get("JACKPOT_QUICK") == "1"
"""JACKPOT_QUICK=1: a few derandomized examples (the mutation run uses it)."""

LEDGER_COLUMNS = ("seq", "op_id", "kind", "level", "delta", "balance_after", "reserve_delta",
                  "reserve_after", "version_after", *PARTS, "who", "detail")
OPERATIONS = ("contribute", "process_win", "update_config", "suspend", "resume", "adjust",
              "retire")


def machine_settings(*, examples: int, steps: int, slow_examples: int,
                     slow_steps: int) -> settings:
    """Hypothesis settings for a state machine: fast by default, a soak with JACKPOT_SLOW=1.

    `print_blob=True`: a failure prints `@reproduce_failure(...)` to paste
    above the test class (see the module docstrings).
    """
    if QUICK:  # fail fast: no shrinking (a mutant is killed by any failure)
        return settings(max_examples=max(examples // 6, 5), stateful_step_count=steps,
                        deadline=None, derandomize=True, database=None,
                        phases=[Phase.explicit, Phase.generate],
                        report_multiple_bugs=False,
                        suppress_health_check=list(HealthCheck))
    return settings(
        max_examples=slow_examples if SLOW else examples,
        stateful_step_count=slow_steps if SLOW else steps,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


def engine_settings() -> Settings:
    # Metrics off: nothing here reads them, and they cost time on every call.
    return Settings(enable_metrics=False, lock_timeout_ms=10_000, log_level="warning")


# -- reading the file ---------------------------------------------------------------------

def _read(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def ledger_rows(path: str, after_seq: int = 0) -> list[dict[str, Any]]:
    """Committed ledger rows with seq > after_seq, in seq order."""
    rows = _read(path, f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE seq > ? "
                       "ORDER BY seq", (after_seq,))
    out = [dict(zip(LEDGER_COLUMNS, r, strict=True)) for r in rows]
    for row in out:
        row["detail"] = None if row["detail"] is None else json.loads(row["detail"])
    return out


def recorded_operations(path: str) -> dict[str, str]:
    """op_id -> kind of every idempotency record."""
    return dict(_read(path, "SELECT op_id, kind FROM operations"))  # type: ignore[arg-type]


def observed_hits(result: Contribution) -> dict[str, list[int]]:
    """The hits a contribution reported, per level, as units paid."""
    hits: dict[str, list[int]] = {}
    for h in result.hits:
        hits.setdefault(h.group, []).append(to_units(h.amount))
    return hits


# -- side by side ------------------------------------------------------------------------

class Driver:
    """Engines on one file (usually one; a second plays another process), and the model."""

    def __init__(self, path: str, groups: list[GroupConfig], model: Model,
                 engine_draw: CountedDraw | None = None) -> None:
        self.engine_draw = engine_draw
        self.path = path
        self.groups = groups
        self.model = model
        for g in groups:
            model.create(g)
        self.engines = [JackpotEngine.open(path, groups, settings=engine_settings())]
        self.shared = False  # a second engine has written: retries may draw again
        self.seq = 0
        self.versions: dict[str, int] = {}
        # verify() after every step is most of a machine's time; a step that
        # committed nothing left the file, so verify()'s answer, as it was.
        self._watch: apsw.Connection | None = None  # opened by check(), closed by close()
        self._verified_at: int | None = None  # its PRAGMA data_version at the last verify()

    def close(self) -> None:
        try:
            while self.engines:
                self.engines.pop().close()
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch, self._verified_at = None, None

    def reopen(self, groups: list[GroupConfig] | None) -> None:
        self.close()
        for g in groups or []:
            self.model.create(g)
        self.engines = [JackpotEngine.open(self.path, groups, settings=engine_settings())]

    def open_another(self) -> None:
        """A second engine on the same file, as another worker process would have."""
        self.engines.append(JackpotEngine.open(self.path, settings=engine_settings()))
        self.shared = True

    @property
    def live(self) -> JackpotEngine:
        assert self.engines
        return self.engines[0]

    def call(self, method: str, *args: Any, via: int = 0, **kwargs: Any) -> Any:
        """Make one call on both (on engine `via`); assert they agree; return the result."""
        assert method in OPERATIONS
        got: Any = None
        error: JackpotError | None = None
        try:
            got = getattr(self.engines[via % len(self.engines)], method)(*args, **kwargs)
        except JackpotError as e:
            error = e
        extra: dict[str, Any] = {}
        if got is not None and kwargs.get("op_id") is None:
            assert got.op_id.startswith("auto-"), got.op_id
            extra["auto_op_id"] = got.op_id
        if method == "contribute":
            extra["observed"] = None if got is None else observed_hits(got)
        want: Any = None
        refused: Refused | None = None
        try:
            want = getattr(self.model, method)(*args, **kwargs, **extra)
        except Refused as r:
            refused = r
        if refused is not None:
            r = refused
            assert error is not None, (
                f"{method}{args}{kwargs}: the rules refuse with {r}, the engine returned {got}")
            assert type(error) is r.error, (
                f"{method}{args}{kwargs}: expected {r.error.__name__}, got {error!r}")
            assert r.about in str(error), (
                f"{method}{args}{kwargs}: the message {str(error)!r} should name {r.about!r}")
            return None
        assert error is None, f"{method}{args}{kwargs}: engine refused {error!r}, want {want}"
        assert got == want, f"{method}{args}{kwargs}:\n engine {got}\n model  {want}"
        return got

    def check(self) -> None:
        """Everything observable agrees with the model."""
        engine, model = self.live, self.model
        pools = engine.pools()
        for other in self.engines[1:]:
            assert other.pools() == pools
        assert sorted(pools) == sorted(model.levels)
        for name, snap in pools.items():
            want = model.snapshot(name, snap.last_modified_at)
            assert snap == want, f"{name}:\n engine {snap}\n model  {want}"
            assert snap.amount >= 0
            assert snap.reserve >= 0
            assert snap.version >= self.versions.get(name, 1)
            self.versions[name] = snap.version
            history = [(h.amount, h.op_id, h.winner, h.hit, h.version)
                       for h in engine.history(name, limit=4)]
            assert history == model.history(name, 4), name
        self._check_ledger()
        recorded = recorded_operations(self.path)
        # Every op_id the caller gave is recorded, also a bet's that qualified for
        # no level (it changed nothing, and a retry must replay just that).
        assert set(recorded) == set(model.ops)
        if self.engine_draw is not None and not self.shared:
            model_draw = self.model.draw
            assert isinstance(model_draw, CountedDraw)
            assert self.engine_draw.calls == model_draw.calls, "triggers drawn unexpectedly"
        name = min(pools)
        assert engine.pool(name) == pools[name]
        # data_version moves whenever another connection commits (SQLite's
        # own signal): unmoved, nothing changed since the last verify().
        if self._watch is None:
            self._watch = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
        [[data_version]] = self._watch.execute("PRAGMA data_version")
        if data_version == self._verified_at:
            return
        report = engine.verify()
        assert report.ok, report.problems
        assert report.problems == []
        assert report.levels == len(model.levels)
        assert report.ledger_rows == len(model.ledger)
        self._verified_at = data_version

    def _check_ledger(self) -> None:
        rows = ledger_rows(self.path, self.seq)
        done = len(self.model.ledger) - len(rows)
        want = self.model.ledger[done:]
        got = [{k: v for k, v in r.items() if k != "seq"} for r in rows]
        assert got == want, f"ledger rows differ:\n engine {got}\n model  {want}"
        if rows:
            self.seq = rows[-1]["seq"]
        # Versions of every level run 1..N without a gap.
        last: dict[str, int] = {}
        for row in self.model.ledger:
            assert row["version_after"] == last.get(row["level"], 0) + 1, row
            last[row["level"]] = row["version_after"]


# -- values -------------------------------------------------------------------------------

def money(units: int, form: str) -> Decimal | int | str:
    """Spell an amount the ways a caller may: Decimal, int (when whole) or str."""
    if form == "int" and units % UNIT == 0:
        return units // UNIT
    if form == "str":
        return text6(units).rstrip("0").rstrip(".") if units % UNIT else str(units // UNIT)
    if form == "padded":
        return Decimal(text6(units) + "000")  # same value, more digits
    return dec(units)


FORMS = st.sampled_from(["decimal", "int", "str", "padded"])


def amounts(units: st.SearchStrategy[int]) -> st.SearchStrategy[Decimal | int | str]:
    return st.tuples(units, FORMS).map(lambda t: money(*t))


def nice_units(low: int, high: int) -> st.SearchStrategy[int]:
    """Units in [low, high], often round (cents or whole), sometimes to the last digit."""
    first, last = -(-low // 10_000), high // 10_000
    if first > last:
        return st.integers(low, high)
    return st.one_of(st.integers(first, last).map(lambda c: c * 10_000),
                     st.integers(low, high))


RATES = st.one_of(st.sampled_from([RATE // 100, RATE // 20, RATE // 10, RATE // 4]),
                  st.integers(1_000, 300_000_000))

BAD_AMOUNTS = st.sampled_from([
    0, -1, Decimal("-2.5"), Decimal("-0"), 1.5, float("nan"), Decimal("NaN"),
    Decimal("Infinity"), Decimal("1E+40"), "1e-30", "0.0000001", Decimal("1E-7"), " 5",
    "\uff15", True, None, [1], "abc", 10**12, "",
])


@st.composite
def group_config(draw: Callable[..., Any], name: str, *, min_range: int = 1) -> GroupConfig:
    """A valid level; small numbers so that caps and triggers are reached in a few bets."""
    seed = draw(nice_units(0, 50 * UNIT))
    contribution_rate = draw(RATES)
    reserve_rate = draw(st.one_of(st.just(0), st.integers(0, RATE // 5)))
    cap = draw(st.one_of(st.none(), nice_units(max(seed, 1), seed + 100 * UNIT)))
    must_hit_by = None
    top = seed + 60 * UNIT if cap is None else cap
    if top >= seed + min_range and draw(st.booleans()):
        must_hit_by = draw(st.one_of(st.just(seed + min_range),
                                     st.integers(seed + min_range,
                                                 min(top, seed + min_range + 1000)),
                                     nice_units(seed + min_range, top)))
    min_bet = draw(st.one_of(st.none(), nice_units(1, 5 * UNIT)))
    max_contribution = draw(st.one_of(st.none(), nice_units(1, 20 * UNIT)))
    return GroupConfig(name, dec(seed), Decimal(contribution_rate) / RATE,
                       None if cap is None else dec(cap), Decimal(reserve_rate) / RATE,
                       None if min_bet is None else dec(min_bet),
                       None if max_contribution is None else dec(max_contribution),
                       None if must_hit_by is None else dec(must_hit_by),
                       draw(st.sampled_from(["meter", "reserve"])))


def same_call(call: tuple[str, tuple[Any, ...], dict[str, Any]], op_id: str
              ) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """`call` with its op_id replaced."""
    method, args, kwargs = call
    return method, args, {**kwargs, "op_id": op_id}


def replace_op_id(result: Any, op_id: str) -> Any:
    return dataclasses.replace(result, op_id=op_id)


class CountedDraw:
    """A deterministic stand-in for the trigger draw that counts its calls.

    The engine and the model each get one with the same salt: they draw the
    same trigger for the same range, and must draw equally often (a trigger
    drawn again at a restart, say, would show as an extra call).
    """

    def __init__(self, salt: int) -> None:
        self.salt = salt
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, low: int, high: int) -> int:
        with self._lock:
            self.calls += 1
        return low + (self.salt * 2_654_435_761 + low * 40_503 + high) % (high - low + 1)


def make_draw(salt: int) -> CountedDraw:
    return CountedDraw(salt)


def tmp_db(directory: str) -> str:
    return str(Path(directory) / "pools.db")
