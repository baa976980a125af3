"""The audit of each level's settings and status: what its ledger rows say they must be.

The ledger records a level's settings when it is created (the create row's
config view) and at every change (a config row: the settings after it and
the changes waiting for the next reset); a reset (a win of the whole pool, or
a must-hit-by hit) applies the waiting changes; suspend, resume and retire
rows set its status. Replaying those rows in order gives the settings,
waiting changes and status the level row must hold, so a level edited
outside the engine (a rate, a cap, a minimum bet, a status) is reported even
before any bet is made under the edited settings. The must-hit-by trigger,
drawn at each reset, must lie in (seed, must_hit_by] of the settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from jackpot.domain import LevelState, config_view, pending_view
from jackpot.money import from_units
from jackpot.storage import LedgerRow, UnreadDetail

__all__ = ["CONFIG_KINDS", "check_config"]

CONFIG_KINDS = ("create", "config", "win", "hit", "suspend", "resume", "retire")
"""The ledger row kinds that set a level's settings, waiting changes or status."""

_STATUS = {"suspend": "suspended", "resume": "active", "retire": "retired"}


def check_config(level: LevelState, rows: Iterable[LedgerRow]) -> list[str]:
    """Compare `level`'s settings, waiting changes, status and trigger with its rows.

    `rows` are the level's rows of `CONFIG_KINDS`, oldest first (a detail
    that is not JSON kept, as `UnreadDetail`). Raises ValueError (or KeyError,
    TypeError) on a row the engine never writes.
    """
    replayed = _replay(rows)
    if replayed is None:
        return []  # no create row: the version check already reports the missing rows
    config, pending, status = replayed
    name = level.name
    held = config_view(level.config)
    problems = [
        f"{name}: setting {key} is {_shown(held.get(key))}, the ledger says {_shown(value)}"
        for key, value in sorted(config.items()) if not _same(held.get(key), value)]
    held_pending = pending_view(level)
    if held_pending.keys() != pending.keys() or not all(
            _same(held_pending[k], pending[k]) for k in pending):
        problems.append(f"{name}: changes waiting for the next reset are "
                        f"{pending_view(level)}, the ledger says {pending}")
    if level.status != status:
        problems.append(f"{name}: status is {level.status}, the ledger says {status}")
    if not _trigger_fits(level):
        trigger = None if level.trigger is None else from_units(level.trigger)
        problems.append(f"{name}: must-hit-by trigger {_shown(trigger)} is outside "
                        "(seed, must_hit_by] of its settings")
    return problems


def _replay(rows: Iterable[LedgerRow]) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """Return (settings, waiting changes, status) the rows leave; None without a create row."""
    config: dict[str, Any] | None = None
    pending: dict[str, Any] = {}
    status = "active"
    for row in rows:
        detail = row.detail or {}
        if isinstance(detail, UnreadDetail) and row.kind not in _STATUS:
            raise detail.error  # (a status row's detail is not read: its kind says it all)
        if row.kind == "create":
            config, pending, status = dict(detail["config"]), {}, "active"
        elif config is None:
            msg = f"ledger row {row.seq} ({row.kind}) comes before the level's create row"
            raise ValueError(msg)
        elif row.kind == "config":
            config, pending = dict(detail["after"]), dict(detail["pending"])
        elif row.kind in ("win", "hit"):
            if detail["reset"]:  # a reset applies the waiting changes
                config.update(pending)
                pending = {}
        else:
            status = _STATUS[row.kind]
    return None if config is None else (config, pending, status)


def _trigger_fits(level: LevelState) -> bool:
    """Whether the must-hit-by trigger is set exactly when must_hit_by is, within its range."""
    c, trigger = level.config, level.trigger
    if c.must_hit_by is None or trigger is None:
        return c.must_hit_by is None and trigger is None
    return c.seed < trigger <= c.must_hit_by


def _same(held: object, recorded: object) -> bool:
    """Whether a setting as held equals the ledger's view of it, compared as numbers.

    The views are decimal strings; an older engine wrote a small rate as
    '2E-7' where this one writes '0.0000002': the same setting.
    """
    if held == recorded:
        return True
    if not (isinstance(held, str) and isinstance(recorded, str)):
        return False
    try:
        return Decimal(held) == Decimal(recorded)
    except ArithmeticError:  # not numbers (overflow_to): the strings differ
        return False


def _shown(value: object) -> str:
    return "none" if value is None else str(value)
