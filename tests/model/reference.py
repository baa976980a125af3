"""A deliberately simple, single-threaded reference model of the jackpot rules.

Plain Python integers (money in units of 1e-6, rates in parts of 1e-9), no
actors, no SQL, no cleverness: each rule of DESIGN.md and issue 3 is written
out once, in the most obvious way, so that the engine can be checked against
it step by step. Where the model and the engine compute the same quantity,
the model does it differently on purpose:

- A contribution is not "bet x rate plus a carried fraction": the model keeps
  the exact running total of bet x rate of every qualifying bet and credits
  floor(total) minus what it credited before. No fraction can be lost.
- Amounts are parsed with `fractions.Fraction`, never by scaling digits.

The must-hit-by trigger is random in the engine. The model keeps what it
knows about the trigger as an interval [lo, hi]: with a deterministic `draw`
(shared with the engine by the tests) lo == hi and the model decides every
hit itself; with the engine's real random draw the model reads the hits the
engine reported (`observed`) and accepts them only if they are consistent
with everything it has seen (the trigger lies in (seed, must_hit_by], above
every amount the pool held since its reset, and a hit pays the trigger or,
if the pool was already past it, the whole pool). Either way the pool can
never pass must_hit_by without a hit: the interval would become empty and the
model raises `ModelMismatch`.

Refusals are `Refused(error_class, about)`: the engine must raise exactly
`error_class` with a message containing `about`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from jackpot import (
    AdminResult,
    ConcurrencyViolationError,
    ConfigResult,
    Contribution,
    GroupConfig,
    GroupRetiredError,
    GroupSuspendedError,
    IdempotencyConflictError,
    InsufficientFundsError,
    JackpotError,
    PoolSnapshot,
    UnknownGroupError,
    ValidationError,
    Win,
)

UNIT = 10**6           # units per currency unit
RATE = 10**9           # rate parts per whole
MAX_UNITS = 10**17     # the engine's documented range (100 billion)
MAX_HITS_PER_BET = 100  # documented: a bet triggering more hits than this is refused
MAX_TEXT = 256
FIELDS = ("seed", "contribution_rate", "cap", "reserve_rate", "min_bet",
          "max_contribution", "must_hit_by", "overflow_to")
DEFERRED = ("seed", "must_hit_by")  # wait for the next reset
METERS = ("bets", "wagered", "contributed", "overflow", "reserve_in", "house_funded",
          "reserve_funded", "won", "wins", "hits", "adjusted", "transferred",
          "reserve_transferred")
COUNTS = ("bets", "wins", "hits")
PARTS = ("contributed", "overflow", "reserve_in", "house_funded", "reserve_funded", "paid",
         "adjusted", "transferred", "reserve_transferred")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_PLAIN = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?", re.ASCII)

Draw = Callable[[int, int], int]


class Refused(Exception):  # noqa: N818 - it is what the model says, not a failure of the model
    """The rules refuse the call: the engine must raise `error` naming `about`."""

    def __init__(self, error: type[JackpotError], about: str) -> None:
        super().__init__(f"{error.__name__}: {about}")
        self.error = error
        self.about = about


class ModelMismatch(AssertionError):  # noqa: N818
    """The engine reported something no correct engine could report."""


# -- money ------------------------------------------------------------------------------

def dec(units: int) -> Decimal:
    """Return units as a Decimal (compared by value)."""
    return Decimal(units) / UNIT


def text6(units: int) -> str:
    """Return units as the engine's six-decimal string, e.g. '100.000000'."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNIT)
    return f"{sign}{whole}.{frac:06d}"


def rate_text(parts: int) -> str:
    """Return a rate as the shortest plain decimal string, e.g. '0.005', '0.000000061', '0'."""
    whole, frac = divmod(parts, RATE)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def to_units(amount: Decimal | int | str) -> int:
    """Return a valid amount in units (for the tests' own bookkeeping)."""
    f = Fraction(Decimal(amount)) * UNIT
    assert f.denominator == 1, amount
    return int(f)


def _decimal(value: object, name: str) -> Decimal:
    # True is an int, and a float cannot hold money: both are refused.
    if isinstance(value, (bool, float)) or not isinstance(value, (Decimal, int, str)):
        raise Refused(ValidationError, name)
    if isinstance(value, str) and (len(value) > 64 or not _PLAIN.fullmatch(value)):
        raise Refused(ValidationError, name)
    d = Decimal(value)
    if not d.is_finite():
        raise Refused(ValidationError, name)
    return d


def _exact(d: Decimal, scale: int, name: str) -> int:
    """Return d x scale, refusing anything that is not a whole number of steps."""
    if d != 0 and d.adjusted() < -30:
        raise Refused(ValidationError, name)  # far finer than one step (and 10**huge is slow)
    f = Fraction(d) * scale
    if f.denominator != 1:
        raise Refused(ValidationError, name)
    return int(f)


def units_of(value: object, name: str, *, zero: bool = False) -> int:
    """Parse a non-negative money amount (positive unless `zero`) into units."""
    d = _decimal(value, name)
    if d.is_signed() or d > MAX_UNITS // UNIT:
        raise Refused(ValidationError, name)
    units = _exact(d, UNIT, name)
    if units == 0 and not zero:
        raise Refused(ValidationError, name)
    return units


def signed_units_of(value: object, name: str) -> int:
    """Parse a signed, non-zero money amount (an adjustment) into units."""
    d = _decimal(value, name)
    if abs(d) > MAX_UNITS // UNIT:
        raise Refused(ValidationError, name)
    units = _exact(d, UNIT, name)
    if units == 0:
        raise Refused(ValidationError, name)
    return units


def rate_of(value: object, name: str, *, zero: bool = False) -> int:
    """Parse a rate in (0, 1) (or [0, 1) with `zero`) into parts of 1e9."""
    d = _decimal(value, name)
    if d.is_signed() or d >= 1 or (d == 0 and not zero):
        raise Refused(ValidationError, name)
    return _exact(d, RATE, name)


def text_of(value: object, name: str, *, optional: bool = True) -> str | None:
    """Parse an op_id, winner, who or reason: 1-256 printable characters, not blank."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT \
            or not value.isprintable():
        raise Refused(ValidationError, name)
    return value


def version_arg(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Refused(ValidationError, "expected_version")
    return value


# -- levels -----------------------------------------------------------------------------

@dataclass
class Config:
    """A level's settings in units / rate parts (public field names)."""

    seed: int
    contribution_rate: int
    cap: int | None = None
    reserve_rate: int = 0
    min_bet: int | None = None
    max_contribution: int | None = None
    must_hit_by: int | None = None
    overflow_to: str = "meter"

    def view(self) -> dict[str, str | None]:
        """The public form used in config results and audit rows."""
        out: dict[str, str | None] = {}
        for key in FIELDS:
            v = getattr(self, key)
            if key == "overflow_to":
                out[key] = v
            elif key.endswith("rate"):
                out[key] = rate_text(v)
            else:
                out[key] = None if v is None else text6(v)
        return out

    def problem(self, current: int) -> str | None:
        """Return the name of the first contradiction (None when consistent)."""
        if self.contribution_rate + self.reserve_rate >= RATE:
            return "reserve_rate"
        if self.must_hit_by is not None and self.must_hit_by <= self.seed:
            return "must_hit_by"
        if self.cap is not None and self.cap < max(self.seed, current, self.must_hit_by or 0):
            return "cap"
        return None


@dataclass
class Level:
    """Everything the rules say a level is."""

    name: str
    config: Config
    amount: int
    version: int = 1
    status: str = "active"
    reserve: int = 0
    pending: dict[str, int | None] = field(default_factory=dict)
    accrued: int = 0          # exact sum of bet x rate (and fractions moved in), in parts
    credited: int = 0         # whole units of `accrued` added so far
    reserve_accrued: int = 0
    reserve_credited: int = 0
    lo: int | None = None     # the trigger lies in [lo, hi]; None: no mystery jackpot
    hi: int | None = None
    meters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METERS, 0))
    wins: list[tuple[Decimal, str, str | None, bool, int]] = field(default_factory=list)

    def ceiling(self) -> int:
        """The highest amount a transfer or adjustment may lift the pool to."""
        c = self.config
        return min(x for x in (c.cap, c.must_hit_by, MAX_UNITS) if x is not None)


def config_of(g: GroupConfig) -> Config:
    def units(v: Decimal | None) -> int | None:
        return None if v is None else to_units(v)
    return Config(to_units(g.seed), int(Fraction(g.contribution_rate) * RATE),
                  units(g.cap), int(Fraction(g.reserve_rate) * RATE), units(g.min_bet),
                  units(g.max_contribution), units(g.must_hit_by), g.overflow_to)


# -- the model --------------------------------------------------------------------------

class Model:
    """The rules, applied one call at a time.

    Methods mirror `JackpotEngine` (same arguments, same results) plus two
    keywords: `observed` (contribute only: the hits the engine reported, per
    level, in units; None if the engine raised) and `auto_op_id` (the op_id
    the engine generated when the caller gave none).
    """

    def __init__(self, draw: Draw | None = None) -> None:
        """`draw`: the deterministic trigger draw the engine uses, or None (random)."""
        self.draw = draw
        self.levels: dict[str, Level] = {}
        self.ops: dict[str, tuple[tuple[Any, ...], Any]] = {}  # op_id -> (request, result)
        self.ledger: list[dict[str, Any]] = []
        self._entries: list[dict[str, Any]] = []
        self._observed: dict[str, list[int]] | None = None

    # -- set-up ---------------------------------------------------------------------

    def create(self, g: GroupConfig) -> None:
        """A new level at its seed, house funded (ledger op_id 'create:<name>')."""
        if g.name in self.levels:
            return  # open() keeps a level the file already has
        c = config_of(g)
        lv = Level(g.name, c, c.seed)
        lv.meters["house_funded"] = c.seed
        self._new_trigger(lv)
        self.levels[g.name] = lv
        self.ledger.append(self._row(f"create:{g.name}", "create", lv, c.seed, 0,
                                     detail={"config": c.view()}, house_funded=c.seed))

    def _new_trigger(self, lv: Level) -> None:
        c = lv.config
        if c.must_hit_by is None:
            lv.lo = lv.hi = None
        elif self.draw is not None:
            t = self.draw(c.seed + 1, c.must_hit_by)
            assert c.seed < t <= c.must_hit_by
            lv.lo = lv.hi = t
        else:
            lv.lo, lv.hi = c.seed + 1, c.must_hit_by

    # -- bookkeeping ----------------------------------------------------------------

    @staticmethod
    def _row(op_id: str, kind: str, lv: Level, delta: int, reserve_delta: int, *,
             who: str | None = None, detail: dict[str, Any] | None = None,
             **parts: int) -> dict[str, Any]:
        """One ledger row: what changed, why (detail) and by whom, with its breakdown."""
        row = {"op_id": op_id, "kind": kind, "level": lv.name, "delta": delta,
               "balance_after": lv.amount, "reserve_delta": reserve_delta,
               "reserve_after": lv.reserve, "version_after": lv.version, "who": who,
               "detail": detail}
        row.update({p: parts.get(p, 0) for p in PARTS})
        return row

    def _step(self, op_id: str, kind: str, lv: Level, *, amount: int = 0, reserve: int = 0,
              who: str | None = None, detail: dict[str, Any] | None = None,
              **parts: int) -> None:
        """Change a level by `amount` / `reserve`: one version, one ledger row."""
        lv.amount += amount
        lv.reserve += reserve
        lv.version += 1
        assert lv.amount >= 0
        assert lv.reserve >= 0
        self._entries.append(self._row(op_id, kind, lv, amount, reserve, who=who,
                                       detail=detail, **parts))

    def _run(self, kind: str, op_id: str, explicit: bool, request: tuple[Any, ...],
             apply: Callable[[dict[str, Level]], Any]) -> Any:
        """Apply `apply` to a copy of the levels; keep the copy only if it succeeds."""
        if explicit and op_id in self.ops:
            first_request, first = self.ops[op_id]
            if first_request != request:
                raise Refused(IdempotencyConflictError, "op_id")
            return replayed(first)
        work = copy.deepcopy(self.levels)
        self._entries = []
        result = apply(work)
        if self._entries:  # (a bet that qualified for no level changes nothing)
            self.levels = work
            self.ledger.extend(self._entries)
        if explicit:  # the rules: a later call with this op_id gets this result back
            self.ops[op_id] = (request, result)
        return result

    def _name(self, group: object, name: str = "group") -> str:
        if not isinstance(group, str) or not _NAME.fullmatch(group):
            raise Refused(ValidationError, name)
        if group not in self.levels:
            raise Refused(UnknownGroupError, "unknown level")
        return group

    @staticmethod
    def _op_id(op_id: object, auto_op_id: str | None) -> tuple[str, bool]:
        if op_id is None:
            return auto_op_id or "auto-unknown", False
        checked = text_of(op_id, "op_id", optional=False)
        assert checked is not None
        return checked, True

    @staticmethod
    def _open(lv: Level, what: str, *, suspended_ok: bool = False) -> None:
        """Refuse `what` on a retired level (or a suspended one): the message says what."""
        if lv.status == "retired":
            raise Refused(GroupRetiredError, f"retired: it refuses {what}")
        if lv.status == "suspended" and not suspended_ok:
            raise Refused(GroupSuspendedError, f"suspended: it refuses {what}")

    @staticmethod
    def _expect(lv: Level, version: int | None, shown: int | None) -> None:
        if version is not None and lv.version != version:
            raise Refused(ConcurrencyViolationError, "expected")
        if shown is not None and lv.amount != shown:
            raise Refused(ConcurrencyViolationError, "expected")

    # -- contribute -----------------------------------------------------------------

    def contribute(self, bet: object, *, groups: object = None, op_id: object = None,
                   player: object = None, observed: dict[str, list[int]] | None = None,
                   auto_op_id: str | None = None) -> Contribution:
        units = units_of(bet, "bet")
        names = self._groups(groups)
        who = text_of(player, "player")
        oid, explicit = self._op_id(op_id, auto_op_id)
        every = groups is None
        # The player is part of the request only when given (older bets replay as before).
        request = ("contribute", units, "*" if every else names,
                   *(() if who is None else (who,)))

        def apply(levels: dict[str, Level]) -> Contribution:
            self._observed = None if observed is None else {k: list(v)
                                                            for k, v in observed.items()}
            added: dict[str, int] = {}
            hits: list[Win] = []
            for name in names:
                lv = levels[name]
                if every and lv.status != "active":
                    continue
                added[name] = self._contribute(lv, units, oid, hits, who)
            if every and not added:  # no level takes bets: refused, not an empty success
                raise Refused(GroupSuspendedError, "no level takes bets")
            if self._observed and self.draw is None:  # (known triggers: results compared)
                left = {k: v for k, v in self._observed.items() if v}
                if left:
                    msg = f"engine reported hits the rules do not allow: {left}"
                    raise ModelMismatch(msg)
            return Contribution(oid, {n: dec(a) for n, a in added.items()},
                                {n: dec(levels[n].amount) for n in added},
                                {n: levels[n].version for n in added}, hits=tuple(hits))

        return self._run("contribute", oid, explicit, request, apply)

    def _groups(self, groups: object) -> tuple[str, ...]:
        if groups is None:
            return tuple(sorted(self.levels))
        if isinstance(groups, str):
            groups = (groups,)
        if isinstance(groups, (bytes, Mapping)) or not isinstance(groups, Iterable):
            raise Refused(ValidationError, "groups")
        names = [self._name(g) for g in groups]
        if not names or len(set(names)) != len(names):
            raise Refused(ValidationError, "groups")
        return tuple(sorted(names))

    def _contribute(self, lv: Level, bet: int, op_id: str, hits: list[Win],
                    player: str | None) -> int:
        """One bet on one level; return what it added to the pool (hits included).

        The bet's `player` is the winner of any hit it triggers.
        """
        self._open(lv, "contributions")
        c = lv.config
        if c.min_bet is not None and bet < c.min_bet:
            return 0  # does not qualify: nothing happens
        if c.max_contribution is not None and bet * c.contribution_rate > c.max_contribution * RATE:
            raise Refused(ValidationError, "max_contribution")  # the bet's exact share
        accrued = lv.accrued + bet * c.contribution_rate
        whole = accrued // RATE - lv.credited
        lv.accrued, lv.credited = accrued, lv.credited + whole
        reserve_accrued = lv.reserve_accrued + bet * c.reserve_rate
        reserve_in = reserve_accrued // RATE - lv.reserve_credited
        lv.reserve_accrued, lv.reserve_credited = reserve_accrued, lv.reserve_credited + reserve_in

        total_added = 0
        remaining = whole
        first = True
        level_hits = 0
        while first or remaining > 0:
            hit_at = self._hit_point(lv, remaining)
            if hit_at is not None:  # the pool fills up to the trigger, the rest goes on
                added, overflow = hit_at - lv.amount, 0
                remaining -= added
            else:  # no hit: up to the cap, the excess is overflow
                limit = MAX_UNITS if c.cap is None else c.cap
                added = min(remaining, max(limit - lv.amount, 0))
                overflow = remaining - added
                remaining = 0
            to_reserve = (reserve_in if first else 0) + \
                (overflow if c.overflow_to == "reserve" else 0)
            if to_reserve and lv.reserve + to_reserve > MAX_UNITS:
                raise Refused(ValidationError, "reserve")  # beyond the engine's range
            self._step(op_id, "contribute", lv, amount=added, reserve=to_reserve,
                       detail={"bet": bet} if first else {"carried_over": True},
                       contributed=added + overflow, overflow=overflow, reserve_in=to_reserve)
            m = lv.meters
            m["bets"] += first
            m["wagered"] += bet if first else 0
            m["contributed"] += added + overflow
            m["overflow"] += overflow
            m["reserve_in"] += to_reserve
            total_added += added
            first = False
            if hit_at is not None:
                if level_hits == MAX_HITS_PER_BET:
                    raise Refused(ValidationError, "hits")
                level_hits += 1
                hits.append(self._pay(lv, None, op_id, player, hit=True))
            c = lv.config  # a hit applies pending changes
        return total_added

    def _hit_point(self, lv: Level, adding: int) -> int | None:
        """Return the amount the pool is paid at if adding `adding` hits, else None."""
        if lv.lo is None or lv.hi is None:
            return None
        if lv.lo == lv.hi:  # known trigger: the model decides
            t = lv.lo
            return max(t, lv.amount) if lv.amount + adding >= t else None
        pending = None if self._observed is None else self._observed.get(lv.name)
        if pending:  # the engine says it hit: accept it if it is possible
            paid = pending.pop(0)
            low = max(lv.amount, lv.lo)
            if not (low <= paid <= lv.amount + adding and (paid == lv.amount or paid <= lv.hi)):
                msg = (f"{lv.name}: hit paying {paid} units is impossible: pool {lv.amount}, "
                       f"adding {adding}, trigger in [{lv.lo}, {lv.hi}]")
                raise ModelMismatch(msg)
            return paid  # the reset that follows draws a new trigger
        # No hit: the trigger lies above where the pool now stands.
        lv.lo = max(lv.lo, lv.amount + adding + 1)
        if lv.lo > lv.hi and self._observed is not None:
            msg = (f"{lv.name}: the pool reached {lv.amount + adding} units with no hit, "
                   f"but its trigger is at most {lv.hi} (must_hit_by "
                   f"{lv.config.must_hit_by})")
            raise ModelMismatch(msg)
        return None

    # -- wins -------------------------------------------------------------------------

    def _pay(self, lv: Level, fixed: int | None, op_id: str, winner: str | None, *,
             hit: bool = False) -> Win:
        """Pay `fixed`, or the whole pool and reset to the seed (from the reserve first)."""
        paid = lv.amount if fixed is None else fixed
        kind = "hit" if hit else "win"
        m = lv.meters
        m["won"] += paid
        m["wins"] += 1
        m["hits"] += hit
        house = from_reserve = 0
        if fixed is None:
            c = replace(lv.config, **lv.pending)
            lv.config, lv.pending = c, {}
            from_reserve = min(lv.reserve, c.seed)
            house = c.seed - from_reserve
            m["house_funded"] += house
            m["reserve_funded"] += from_reserve
            self._new_trigger(lv)
        self._step(op_id, kind, lv, amount=house + from_reserve - paid, reserve=-from_reserve,
                   who=winner, detail={"reset": fixed is None}, paid=paid, house_funded=house,
                   reserve_funded=from_reserve)
        lv.wins.append((dec(paid), op_id, winner, hit, lv.version))
        return Win(op_id, lv.name, dec(paid), dec(lv.amount), lv.version, winner,
                   fixed is None, False, hit)

    def process_win(self, group: object, *, op_id: object = None, amount: object = None,
                    winner: object = None, expected_version: object = None,
                    expected_amount: object = None, auto_op_id: str | None = None) -> Win:
        name = self._name(group)
        fixed = None if amount is None else units_of(amount, "amount")
        who = text_of(winner, "winner")
        version = version_arg(expected_version)
        shown = None if expected_amount is None else units_of(
            expected_amount, "expected_amount", zero=True)
        oid, explicit = self._op_id(op_id, auto_op_id)
        request = ("win", name, fixed, who, version, shown)

        def apply(levels: dict[str, Level]) -> Win:
            lv = levels[name]
            self._expect(lv, version, shown)
            self._open(lv, "wins")
            if fixed is None and lv.amount == 0:
                raise Refused(InsufficientFundsError, "empty pool")
            if fixed is not None and fixed > lv.amount:
                raise Refused(InsufficientFundsError, "exceeds the pool")
            return self._pay(lv, fixed, oid, who)

        return self._run("win", oid, explicit, request, apply)

    # -- config -----------------------------------------------------------------------

    def update_config(self, group: object, *, op_id: object = None,
                      expected_version: object = None, who: object = None,
                      reason: object = None, auto_op_id: str | None = None,
                      **changes: object) -> ConfigResult:
        name = self._name(group)
        version = version_arg(expected_version)
        parsed = parse_changes(changes)
        by, why = text_of(who, "who"), text_of(reason, "reason")
        oid, explicit = self._op_id(op_id, auto_op_id)
        request = ("config", name, version, tuple(sorted(parsed.items())), by, why)

        def apply(levels: dict[str, Level]) -> ConfigResult:
            lv = levels[name]
            self._expect(lv, version, None)
            self._open(lv, "config changes", suspended_ok=True)
            before = lv.config
            after = replace(before, **{k: v for k, v in parsed.items() if k not in DEFERRED})
            asked = {**lv.pending, **{k: v for k, v in parsed.items() if k in DEFERRED}}
            pending = {k: v for k, v in asked.items() if v != getattr(before, k)}  # no no-ops
            for candidate in (after, replace(after, **pending)):
                problem = candidate.problem(lv.amount)
                if problem is not None:
                    raise Refused(ValidationError, problem)
            lv.config, lv.pending = after, pending
            self._step(oid, "config", lv, who=by, detail={
                "before": before.view(), "after": after.view(),
                "pending": pending_view(pending), "reason": why})
            return ConfigResult(oid, name, lv.version, before.view(), after.view(), False,
                                pending_view(pending))

        return self._run("config", oid, explicit, request, apply)

    # -- operator actions -------------------------------------------------------------

    def suspend(self, group: object, *, reason: object = None, op_id: object = None,
                who: object = None, auto_op_id: str | None = None) -> AdminResult:
        return self._status("suspend", group, reason=reason, op_id=op_id, who=who,
                            auto_op_id=auto_op_id)

    def resume(self, group: object, *, op_id: object = None, who: object = None,
               reason: object = None, auto_op_id: str | None = None) -> AdminResult:
        return self._status("resume", group, reason=reason, op_id=op_id, who=who,
                            auto_op_id=auto_op_id)

    def _status(self, action: str, group: object, *, reason: object, op_id: object,
                who: object, auto_op_id: str | None) -> AdminResult:
        name = self._name(group)
        by = text_of(who, "who")
        why = text_of(reason, "reason", optional=action == "resume")
        oid, explicit = self._op_id(op_id, auto_op_id)
        status = "suspended" if action == "suspend" else "active"

        def apply(levels: dict[str, Level]) -> AdminResult:
            lv = levels[name]
            asked = "suspended" if action == "suspend" else "resumed"
            if lv.status == "retired":
                raise Refused(GroupRetiredError, f"retired: it cannot be {asked}")
            if lv.status == status:
                raise Refused(ValidationError, f"already {status}: it cannot be {asked}")
            lv.status = status
            self._step(oid, action, lv, who=by, detail={"reason": why})
            return admin(oid, action, name, [lv])

        return self._run(action, oid, explicit, (action, name, by, why), apply)

    def adjust(self, group: object, delta: object, *, reason: object = None,
               op_id: object = None, who: object = None,
               auto_op_id: str | None = None) -> AdminResult:
        name = self._name(group)
        units = signed_units_of(delta, "delta")
        by = text_of(who, "who", optional=False)  # who lowered a pool: always recorded
        why = text_of(reason, "reason", optional=False)
        oid, explicit = self._op_id(op_id, auto_op_id)

        def apply(levels: dict[str, Level]) -> AdminResult:
            lv = levels[name]
            self._open(lv, "adjustments", suspended_ok=True)
            if lv.amount + units < 0:
                raise Refused(InsufficientFundsError, "below zero")
            if units > 0 and lv.amount + units > lv.ceiling():
                raise Refused(ValidationError, "above")
            lv.meters["adjusted"] += units
            self._step(oid, "adjust", lv, amount=units, who=by, detail={"reason": why},
                       adjusted=units)
            return admin(oid, "adjust", name, [lv])

        return self._run("adjust", oid, explicit, ("adjust", name, units, by, why), apply)

    def retire(self, group: object, *, transfer_to: object = None, reason: object = None,
               op_id: object = None, who: object = None,
               auto_op_id: str | None = None) -> AdminResult:
        name = self._name(group)
        target = self._name(transfer_to, "group")
        if target == name:
            raise Refused(ValidationError, "transfer_to")
        by = text_of(who, "who", optional=False)  # who lowered a pool: always recorded
        why = text_of(reason, "reason", optional=False)
        oid, explicit = self._op_id(op_id, auto_op_id)

        def apply(levels: dict[str, Level]) -> AdminResult:
            src, tgt = levels[name], levels[target]
            if src.status == "retired":
                raise Refused(GroupRetiredError, "retired: it cannot be retired again")
            if tgt.status == "retired":
                raise Refused(GroupRetiredError, f"retired: it cannot take the pool of level "
                                                 f"{name!r}")
            pool, reserve = src.amount, src.reserve
            # the source's fractions of a unit join the target's; whole units move on
            carry = src.accrued - src.credited * RATE
            reserve_carry = src.reserve_accrued - src.reserve_credited * RATE
            src.accrued -= carry
            src.reserve_accrued -= reserve_carry
            tgt.accrued += carry
            tgt.reserve_accrued += reserve_carry
            units = tgt.accrued // RATE - tgt.credited
            reserve_units = tgt.reserve_accrued // RATE - tgt.reserve_credited
            tgt.credited += units
            tgt.reserve_credited += reserve_units
            into_pool = min(pool + units, max(tgt.ceiling() - tgt.amount, 0))
            into_reserve = reserve + reserve_units + pool + units - into_pool
            if tgt.reserve + into_reserve > MAX_UNITS:
                raise Refused(ValidationError, "reserve")  # beyond the engine's range
            src.status = "retired"
            src.meters["transferred"] -= pool
            src.meters["reserve_transferred"] -= reserve
            detail: dict[str, Any] = {"reason": why, "from": name, "to": target}
            if carry or reserve_carry:
                detail["carried"] = {"carry": carry, "reserve_carry": reserve_carry,
                                     "units": units, "reserve_units": reserve_units}
            self._step(oid, "retire", src, amount=-pool, reserve=-reserve, who=by,
                       detail=detail, transferred=-pool, reserve_transferred=-reserve)
            tgt.meters["transferred"] += into_pool
            tgt.meters["reserve_transferred"] += into_reserve
            self._step(oid, "transfer_in", tgt, amount=into_pool, reserve=into_reserve, who=by,
                       detail=detail, transferred=into_pool,
                       reserve_transferred=into_reserve)
            return admin(oid, "retire", name, sorted([src, tgt], key=lambda lv: lv.name))

        return self._run("retire", oid, explicit, ("retire", name, target, by, why), apply)

    # -- reads ------------------------------------------------------------------------

    def snapshot(self, name: str, last_modified_at: int) -> PoolSnapshot:
        """The snapshot the engine must show (its clock reading passed in)."""
        lv = self.levels[name]
        c = lv.config

        def opt(v: int | None) -> Decimal | None:
            return None if v is None else dec(v)

        meters = {k: v if k in COUNTS else dec(v) for k, v in lv.meters.items()}
        return PoolSnapshot(name, dec(lv.amount), dec(c.seed),
                            rate_dec(c.contribution_rate), opt(c.cap), lv.version,
                            None, last_modified_at, dec(lv.reserve), lv.status,
                            rate_dec(c.reserve_rate), opt(c.min_bet),
                            opt(c.max_contribution), opt(c.must_hit_by), c.overflow_to,
                            pending_view(lv.pending), meters)

    def history(self, name: str, limit: int) -> list[tuple[Decimal, str, str | None, bool, int]]:
        """The level's last `limit` wins and hits, newest first (no timestamps)."""
        return list(reversed(self.levels[name].wins))[:limit]


def rate_dec(parts: int) -> Decimal:
    return Decimal(parts) / RATE


def pending_view(pending: dict[str, int | None]) -> dict[str, str | None]:
    return {k: None if v is None else text6(v) for k, v in pending.items()}


def admin(op_id: str, action: str, group: str, levels: Iterable[Level]) -> AdminResult:
    levels = list(levels)
    return AdminResult(op_id, action, group, {lv.name: dec(lv.amount) for lv in levels},
                       {lv.name: lv.version for lv in levels})


def replayed(result: Any) -> Any:
    """The first result, marked as a replay (a contribution's hits too)."""
    if isinstance(result, Contribution):
        return replace(result, replayed=True,
                       hits=tuple(replace(h, replayed=True) for h in result.hits))
    return replace(result, replayed=True)


def parse_changes(changes: dict[str, object]) -> dict[str, Any]:
    """Validate config changes alone (not against the level): public names, units."""
    if not changes:
        raise Refused(ValidationError, "no config change")
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise Refused(ValidationError, unknown[0])
    parsed: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "overflow_to":
            if not isinstance(value, str) or value not in ("meter", "reserve"):
                raise Refused(ValidationError, key)
            parsed[key] = value
        elif key == "contribution_rate":
            parsed[key] = rate_of(value, key)
        elif key == "reserve_rate":
            parsed[key] = rate_of(value, key, zero=True)
        elif key == "seed":
            parsed[key] = units_of(value, key, zero=True)
        else:  # cap, min_bet, max_contribution, must_hit_by: None removes them
            parsed[key] = None if value is None else units_of(value, key)
    return parsed
